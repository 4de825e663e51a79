"""The debiasing baselines: one tiny end-to-end run per method, and the pieces checked against hand computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from diffdebias.classifiers.debias_weighting import (
    DisEnt,
    DisEntModel,
    FixedSteps,
    LfFJoint,
    Upsample,
    committee_aligned,
    disent_factory,
)
from diffdebias.classifiers.losses import cross_entropy, gce
from diffdebias.classifiers.train import predict_logits, train_classifier
from diffdebias.classifiers.weighting import Batch
from diffdebias.config import BiasEnsembleConfig, Config, DisEntConfig, JTTConfig, TrainConfig, load_config
from diffdebias.data.base import ImageSet
from diffdebias.keys import NOTHING
from diffdebias.methods import METHODS
from diffdebias.methods.baselines import BASELINES, jtt_copies
from diffdebias.pipeline import execute
from diffdebias.runs import Run, load_tensors, read_json

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

STAGES = {
    "lff": ["lff"],
    "jtt": ["jtt_identify", "jtt_error_set", "jtt"],
    "gdro": ["gdro"],
    "disent": ["disent"],
    "lff_be": ["be_bias0", "be_bias1", "be_committee", "lff_be"],
    "disent_be": ["be_bias0", "be_bias1", "be_committee", "disent_be"],
}


def _sections(cfg: Config) -> Config:
    """The baseline sections, set by hand so the tests run whether or not Config already declares them."""
    cfg.jtt = JTTConfig(epochs_first=1, lambda_up=2)
    cfg.disent = DisEntConfig(curr_step=5, lr_decay_step=5)  # the swap and the decay both start within one epoch
    cfg.bias_ensemble = BiasEnsembleConfig(num_models=2, iterations=6, valid_freq=3, agreement=1)
    return cfg


def tiny(fake_mnist, method: str, **data) -> Config:
    cfg = load_config(None, [f"data.mnist_path={fake_mnist}", "data.conflict_ratio=0.05", "classifier.epochs=1",
                             "classifier.batch_size=64", "classifier.select=last", f"method={method}"])
    if method == "disent" or method == "disent_be":
        cfg.classifier.arch = "mlp16"
    return _sections(cfg)


@pytest.mark.parametrize("method", sorted(STAGES))
def test_method_runs_end_to_end(method, tmp_path, fake_mnist, monkeypatch):
    monkeypatch.setitem(METHODS, method, BASELINES[method])
    out = execute(tiny(fake_mnist, method), tmp_path / method, quiet=True)
    metrics = read_json(out / "metrics.json")
    for split in ("valid", "test"):
        for key in ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy"):
            assert 0.0 <= metrics[split][key] <= 1.0
    assert metrics["final_stage"] == STAGES[method][-1]
    assert metrics.get("supervised", False) == (method == "gdro")  # only Group-DRO reads the bias labels
    for stage in STAGES[method]:
        assert (out / stage / "DONE").exists(), stage
    history = read_json(out / STAGES[method][-1] / "history.json")
    assert all(math.isfinite(h["train_loss"]) for h in history)
    if method == "jtt":
        info = metrics["jtt_error_set"]
        assert 0 <= info["precision"] <= 1 and 0 <= info["recall"] <= 1 and info["size"] >= 0
    if method in ("lff_be", "disent_be"):
        p_y = load_tensors(out / "be_committee" / "committee.safetensors")[0]["p_y"]
        assert p_y.shape[1] == 2 and ((p_y >= 0) & (p_y <= 1)).all()
        assert "recall" in metrics["be_pseudo_conflicting"]


def test_jtt_error_set_is_stage_one_mistakes(tmp_path, fake_mnist, monkeypatch):
    monkeypatch.setitem(METHODS, "jtt", BASELINES["jtt"])
    cfg = tiny(fake_mnist, "jtt")
    out = execute(cfg, tmp_path / "jtt", quiet=True)
    from diffdebias.classifiers.train import load_classifier
    from diffdebias.data import load_dataset
    from diffdebias.runs import Stage

    train = load_dataset(cfg.data, log=lambda m: None).train
    model = load_classifier(Stage("jtt_identify", out / "jtt_identify", "", cfg.seed), cfg.classifier)
    wrong = (predict_logits(model, train.images).argmax(1) != train.labels).nonzero().squeeze(1)
    saved = load_tensors(out / "jtt_error_set" / "error_set.safetensors")[0]["index"]
    assert torch.equal(saved, wrong)
    # stage 2 depends on stage 1: a new T retrains everything downstream
    cfg.jtt.epochs_first = 2
    runs = []
    monkeypatch.setattr(Run, "cached", _spy(Run.cached, runs))
    execute(cfg, out, quiet=True)
    assert {"jtt_identify", "jtt_error_set", "jtt"} <= {name for name, skipped in runs if not skipped}


@pytest.mark.parametrize("method, early", [("jtt", "jtt_identify"), ("lff", "early_erm")])
def test_selection_on_valid_groups_from_an_early_erm_models_errors(tmp_path, fake_mnist, monkeypatch, method, early):
    """JTT (its stage-1 model) and LfF (an ERM model after lff.error_epochs) select on label x early-ERM errors."""
    from diffdebias.classifiers.train import evaluate, load_classifier
    from diffdebias.data import load_dataset
    from diffdebias.methods.detection import pseudo_group_bias
    from diffdebias.runs import Stage

    monkeypatch.setitem(METHODS, method, BASELINES[method])
    cfg = tiny(fake_mnist, method)
    cfg.classifier.epochs, cfg.classifier.lr = 3, 3e-5  # far from converged, so the group metrics differ
    cfg.classifier.select, cfg.classifier.select_metric = "valid", "unbiased_accuracy"
    groups = cfg.selection  # selection.valid_groups: JTT's and LfF's alike
    out = execute(cfg, tmp_path / method, quiet=True)
    valid = load_dataset(cfg.data, log=lambda m: None).valid
    first = load_classifier(Stage(early, out / early, "", cfg.seed), cfg.classifier)
    wrong = predict_logits(first, valid.images).argmax(1) != valid.labels
    pseudo = ImageSet(valid.images, valid.labels, pseudo_group_bias(valid.labels, wrong, 10))
    history = json.loads((out / method / "history.json").read_text())
    selected = json.loads((out / method / "selection.json").read_text())
    assert selected["epoch"] == max(range(3), key=lambda e: history[e]["valid"]["unbiased_accuracy"])
    final = load_classifier(Stage(method, out / method, "", cfg.seed), cfg.classifier)
    assert evaluate(final, pseudo, 10, 10)["unbiased_accuracy"] == history[selected["epoch"]]["valid"][
        "unbiased_accuracy"]
    # the true valid groups (JTT's own protocol): a different stage, whose history holds the true-group metric
    groups.valid_groups = "true"
    out2 = execute(cfg, tmp_path / f"{method}_true", quiet=True)
    true_history = json.loads((out2 / method / "history.json").read_text())
    true_final = load_classifier(Stage(method, out2 / method, "", cfg.seed), cfg.classifier)
    true_sel = json.loads((out2 / method / "selection.json").read_text())["epoch"]
    assert read_json(out2 / "metrics.json")["supervised"] is True
    assert "supervised" not in read_json(out / "metrics.json")
    assert evaluate(true_final, valid, 10, 10)["unbiased_accuracy"] == true_history[true_sel]["valid"][
        "unbiased_accuracy"]
    assert [h["valid"]["unbiased_accuracy"] for h in true_history] != [h["valid"]["unbiased_accuracy"]
                                                                     for h in history]
    groups.valid_groups = "random"
    with pytest.raises(ValueError, match="valid_groups"):
        execute(cfg, tmp_path / f"{method}_bad", quiet=True)


def _spy(cached, log):
    def wrapper(self, name, compute, what=NOTHING, version=0, **kwargs):
        st = self.stage(name, what, version)
        log.append((name, st.done))
        return cached(self, name, compute, what, version, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------------------------- JTT


def test_upsample_counts_are_exact():
    errors = torch.tensor([1, 4, 7])
    w = Upsample(errors, copies=3)
    order = w.order(10, 0, torch.Generator().manual_seed(0))
    counts = torch.bincount(order, minlength=10)
    expected = torch.ones(10, dtype=torch.long)
    expected[errors] = 4
    assert torch.equal(counts, expected) and len(order) == 10 + 3 * 3
    assert not torch.equal(order, order.sort().values)  # shuffled
    assert not torch.equal(order, w.order(10, 1, torch.Generator().manual_seed(1)))  # a new shuffle per epoch
    assert torch.equal(torch.bincount(Upsample(errors, 0).order(10, 0, torch.Generator()), minlength=10),
                       torch.ones(10, dtype=torch.long))


def test_jtt_auto_upweight():
    assert jtt_copies(5, 100, 10) == 5
    assert jtt_copies(-1, 100, 10) == int(90 / 10) - 1
    assert jtt_copies(-1, 100, 0) == 0
    with pytest.raises(ValueError):
        jtt_copies(-2, 100, 10)


# ----------------------------------------------------------------------------------------------------------- LfF


def _batch(index, x, y, step=0):
    return Batch(index=torch.tensor(index), x=x, labels=torch.tensor(y), logits=None, epoch=0, step=step)


def test_lff_biased_model_starts_from_given_weights_then_trains():
    """DDB's ddb.bias_model=trained: f_B starts as the amplifier (its first W reads the amplifier's losses) and takes
    its own GCE steps from there; without init_b it is a fresh model, as in LfF."""
    from diffdebias.classifiers.train import default_factory

    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.rand(4, 1, 2, 2)
    cfg = TrainConfig(arch="mlp", lr=1e-2)
    amp = default_factory(cfg, 2, (1, 2, 2))
    start = {k: v.clone() for k, v in amp.state_dict().items()}
    w = LfFJoint(labels, cfg, 2, (1, 2, 2), init_b=start)
    w.bind(torch.nn.Linear(1, 1), torch.Generator())
    assert all(torch.equal(w.model_b.state_dict()[k], v) for k, v in start.items())
    fresh = LfFJoint(labels, cfg, 2, (1, 2, 2))
    fresh.bind(torch.nn.Linear(1, 1), torch.Generator())
    assert any(not torch.equal(fresh.model_b.state_dict()[k], v) for k, v in start.items())
    ld = torch.tensor([0.5, 1.0, 0.2, 0.8])
    w.loss(ld, _batch([0, 1, 2, 3], x, [0, 0, 1, 1]))
    lb = cross_entropy(amp(x), labels).detach()
    nb, nd = lb / torch.stack([lb[:2].max(), lb[2:].max()])[labels], ld / torch.tensor([1.0, 1.0, 0.8, 0.8])
    assert torch.allclose(w.last_weights, nb / (nb + nd + 1e-8), atol=1e-6)
    assert any(not torch.equal(w.model_b.state_dict()[k], v) for k, v in start.items())  # then it trains
    assert all(torch.equal(amp.state_dict()[k], v) for k, v in start.items())  # the amplifier itself is untouched


def test_lff_ema_and_class_normalisation_by_hand():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.rand(4, 1, 2, 2)
    cfg = TrainConfig(arch="mlp", lr=1e-2)
    w = LfFJoint(labels, cfg, 2, (1, 2, 2), alpha=0.7, q=0.7)
    w.bind(torch.nn.Linear(1, 1), torch.Generator())

    # batch 1: every sample, first visit -> EMA = loss
    lb1 = cross_entropy(w.model_b(x), labels).detach()
    ld1 = torch.tensor([0.5, 1.0, 0.2, 0.8], requires_grad=True)
    before = [p.clone() for p in w.model_b.parameters()]
    out1 = w.loss(ld1, _batch([0, 1, 2, 3], x, [0, 0, 1, 1]))
    cmax_b = torch.stack([lb1[:2].max(), lb1[2:].max()])[labels]
    nb, nd = lb1 / cmax_b, ld1.detach() / torch.tensor([1.0, 1.0, 0.8, 0.8])
    w1 = nb / (nb + nd + 1e-8)
    assert torch.allclose(w.last_weights, w1, atol=1e-6)
    assert torch.allclose(out1, (w1 * ld1).mean(), atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, w.model_b.parameters()))  # f_B took a step

    # batch 2: samples 1 and 2 again -> alpha * old + (1 - alpha) * new; the max runs over the whole buffer
    lb2 = cross_entropy(w.model_b(x[[1, 2]]), labels[[1, 2]]).detach()
    ld2 = torch.tensor([3.0, 0.1])
    w.loss(ld2, _batch([1, 2], x[[1, 2]], [0, 1]))
    ema_b = lb1.clone()
    ema_b[[1, 2]] = 0.7 * lb1[[1, 2]] + 0.3 * lb2
    ema_d = torch.tensor([0.5, 0.7 * 1.0 + 0.3 * 3.0, 0.7 * 0.2 + 0.3 * 0.1, 0.8])
    assert torch.allclose(w.difficulty.ema_b.value, ema_b, atol=1e-6)
    assert torch.allclose(w.difficulty.ema_d.value, ema_d, atol=1e-6)
    nb = ema_b[[1, 2]] / torch.stack([ema_b[:2].max(), ema_b[2:].max()])
    nd = ema_d[[1, 2]] / torch.stack([ema_d[:2].max(), ema_d[2:].max()])
    assert torch.allclose(w.last_weights, nb / (nb + nd + 1e-8), atol=1e-6)
    assert torch.isfinite(w.last_weights).all() and ((w.last_weights >= 0) & (w.last_weights <= 1)).all()


def test_lff_bias_model_gets_gce_gradient():
    """f_B's update is one optimiser step on mean GCE (LfF) or on CE over the pseudo-aligned samples (BE)."""
    labels = torch.tensor([0, 1, 0, 1])
    x = torch.rand(4, 1, 2, 2)
    for aligned in (None, torch.tensor([True, False, False, True])):
        torch.manual_seed(0)
        w = LfFJoint(labels, TrainConfig(arch="mlp", optimizer="sgd", momentum=0.0, lr=0.1), 2, (1, 2, 2),
                     aligned_mask=aligned)
        w.bind(torch.nn.Linear(1, 1), torch.Generator())
        ref = [p.detach().clone().requires_grad_() for p in w.model_b.parameters()]
        logits = torch.func.functional_call(w.model_b, dict(zip([n for n, _ in w.model_b.named_parameters()], ref)),
                                            (x,))
        target = gce(logits, labels).mean() if aligned is None else cross_entropy(logits, labels)[aligned].mean()
        grads = torch.autograd.grad(target, ref)
        w.loss(torch.ones(4), _batch([0, 1, 2, 3], x, labels.tolist()))
        for p, r, g in zip(w.model_b.parameters(), ref, grads):
            assert torch.allclose(p, r - 0.1 * g, atol=1e-6)


def toy_set(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.randint(0, 30, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[torch.arange(n), labels, :4, :4] = 250
    return ImageSet(images, labels, labels.clone())


@pytest.mark.parametrize("kind", ["lff", "disent", "upsample"])
def test_killed_training_resumes_exactly(kind, tmp_path):
    data = toy_set()
    cfg = TrainConfig(arch="mlp16", epochs=3, batch_size=32, lr=1e-2, select="last")
    factory = disent_factory if kind == "disent" else None

    def make():
        if kind == "lff":
            return LfFJoint(data.labels, cfg, 3, (3, 8, 8))
        if kind == "disent":
            return DisEnt(data.labels, curr_step=2, lr_decay_step=2)  # swap and decay inside the run
        return Upsample(torch.tensor([0, 5]), 2)

    kw = {"build_model": factory} if factory else {}
    res = {}
    Run(tmp_path / "full", 3, quiet=True).cached(
        "clf", lambda s: res.update(a=train_classifier(s, data, cfg, 3, weighting=make(), **kw)))

    class Killed(Exception):
        pass

    def kill(epoch, model):
        if epoch == 1:
            raise Killed
        return {}

    part = Run(tmp_path / "part", 3, quiet=True)
    with pytest.raises(Killed):
        part.cached("clf", lambda s: train_classifier(s, data, cfg, 3, weighting=make(), on_epoch=kill, **kw))
    part.cached("clf", lambda s: res.update(b=train_classifier(s, data, cfg, 3, weighting=make(), **kw)))
    for (k, a), b in zip(res["a"].state_dict().items(), res["b"].state_dict().values()):
        assert torch.equal(a, b), k


# ------------------------------------------------------------------------------------------------------ Group-DRO


def test_gdro_without_bias_labels_is_a_clear_error(tmp_path, image_folder, monkeypatch):
    monkeypatch.setitem(METHODS, "gdro", BASELINES["gdro"])
    csv, root = image_folder
    lines = csv.read_text().splitlines()
    no_bias = tmp_path / "nobias.csv"
    no_bias.write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")
    cfg = load_config(None, ["method=gdro", "data.name=csv", f"data.csv={no_bias}", f"data.root={root}",
                             "classifier.epochs=1", "classifier.batch_size=8", "classifier.select=last"])
    with pytest.raises(ValueError, match="supervised.*bias label"):
        execute(_sections(cfg), tmp_path / "run", quiet=True)


def test_gdro_groups_are_label_by_bias():
    from diffdebias.methods.baselines import true_groups

    labels = torch.tensor([0, 0, 1, 1, 1])
    bias = torch.tensor([0, 1, 1, 1, 0])
    g = true_groups(ImageSet(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), labels, bias), 2)
    assert g.tolist() == [0, 1, 3, 3, 2]  # (0,0) (0,1) (1,0) (1,1) renumbered over present groups


# --------------------------------------------------------------------------------------------------- BiasEnsemble


def test_committee_agreement_rule():
    p_y = torch.tensor([
        [0.995, 0.999, 0.50, 0.991, 0.20],  # 3 flags -> aligned
        [0.990, 0.999, 0.999, 0.10, 0.20],  # 0.990 is not > 0.99: 2 flags -> conflicting
        [1.000, 1.000, 1.000, 1.000, 1.000],  # 5 flags
        [0.10, 0.20, 0.30, 0.40, 0.50],  # none
    ])
    assert committee_aligned(p_y, 0.99, 3).tolist() == [True, False, True, False]
    assert committee_aligned(p_y, 0.99, 2).tolist() == [True, True, True, False]
    assert committee_aligned(p_y, 0.5, 5).tolist() == [False, False, True, False]
    with pytest.raises(ValueError):
        committee_aligned(p_y, 0.99, 6)


def test_fixed_steps_order():
    w = FixedSteps(total_steps=7, steps_per_epoch=3, batch_size=4)
    assert w.epochs == 3
    g = torch.Generator().manual_seed(0)
    first, last = w.order(5, 0, g), w.order(5, 2, g)
    assert len(first) == 12 and len(last) == 4
    assert torch.equal(torch.bincount(first[:5], minlength=5), torch.ones(5, dtype=torch.long))  # whole passes


# ---------------------------------------------------------------------------------------------------------- DisEnt


def test_disent_swap_shapes_and_start():
    w = DisEnt(torch.zeros(6, dtype=torch.long), curr_step=10)
    model = DisEntModel("mlp16", 3, (3, 8, 8))
    w.bind(model, torch.Generator().manual_seed(0))
    z_i, z_b = torch.randn(6, 16), torch.randn(6, 16)
    y = torch.arange(6)
    assert w.swap(z_i, z_b, y, 9) is None and w.swap(z_i, z_b, y, 10) is None  # DisEnt: step > curr_step
    zi_mix, zb_mix, y_swap, perm = w.swap(z_i, z_b, y, 11)
    assert zi_mix.shape == zb_mix.shape == (6, 32)
    assert torch.equal(zi_mix[:, :16], z_i) and torch.equal(zi_mix[:, 16:], z_b[perm])
    assert torch.equal(zb_mix[:, 16:], z_b[perm]) and torch.equal(y_swap, y[perm])
    assert sorted(perm.tolist()) == list(range(6))
    assert torch.equal(perm, w.swap(z_i, z_b, y, 11)[3])  # a function of the step: resumable
    # StepLR counted from curr_step: first decay at curr_step + lr_decay_step
    w2 = DisEnt(torch.zeros(2, dtype=torch.long), curr_step=100, lr_decay_step=50, lr_gamma=0.5)
    assert [w2.lr_factor(s) for s in (0, 100, 149, 150, 199, 200)] == [1, 1, 1, 0.5, 0.5, 0.25]


def test_disent_detach_pattern_and_swap_switch():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    x = torch.rand(6, 3, 8, 8)

    def grads(lambda_dis_align, step):
        torch.manual_seed(1)
        model = DisEntModel("mlp16", 3, (3, 8, 8))
        w = DisEnt(labels, lambda_dis_align=lambda_dis_align, lambda_swap_align=0.0, lambda_swap=1.0, curr_step=3)
        w.bind(model, torch.Generator().manual_seed(0))
        model.train()
        logits = model(x)
        loss = w.loss(cross_entropy(logits, labels), _batch(list(range(6)), x, labels.tolist(), step=step))
        loss.backward()
        enc = lambda m: torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())  # noqa: E731
                                   for p in m.encoder.parameters()])
        return enc(model.model_i), enc(model.model_b), float(loss.detach())

    gi0, gb0, l0 = grads(0.0, step=0)
    assert gi0.abs().sum() > 0 and gb0.abs().sum() == 0  # C_i's loss never reaches E_b
    gi1, gb1, _ = grads(1.0, step=0)
    assert gb1.abs().sum() > 0 and torch.allclose(gi0, gi1)  # C_b's loss never reaches E_i
    _, _, l_swap = grads(0.0, step=4)
    assert l_swap != l0  # the swap term is added after curr_step


# ---------------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["lff", "jtt", "gdro", "disent", "lff_be"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / "cmnist" / f"{name}.yaml")
    assert cfg.method == name
    assert (cfg.classifier.lr, cfg.classifier.epochs) == ((0.01, 237) if name in ("disent", "lff_be") else (1e-3, 100))


def test_table_lists_published_method_keys():
    from diffdebias.bench import load_table
    from diffdebias.evaluation.published import PUBLISHED

    table = load_table(CONFIGS / "tables" / "cmnist.yaml")
    assert list(table.methods) == ["erm", "lff", "jtt", "gdro", "disent", "lff_be"]
    assert table.ratios == [0.005, 0.01, 0.02, 0.05] and table.seeds == [1, 2, 3]
    published = {m for (d, m) in PUBLISHED if d == "cmnist"}
    assert {"erm", "lff", "disent", "lff_be"} <= published
    for path in table.methods.values():
        assert yaml.safe_load((table.root / path).read_text())
    assert json.dumps(table.cells()[:1])


@pytest.mark.parametrize("method", ["erm", "disent"])
@pytest.mark.parametrize("metric, supervised", [("unbiased_accuracy", True), ("accuracy", False)])
def test_selection_on_true_valid_groups_marks_the_run_supervised(tmp_path, fake_mnist, monkeypatch, method, metric,
                                                                  supervised):
    """A model selected on a group metric of the real valid split has read its bias labels."""
    if method in BASELINES:
        monkeypatch.setitem(METHODS, method, BASELINES[method])
    cfg = tiny(fake_mnist, method)
    cfg.classifier.select, cfg.classifier.select_metric = "valid", metric
    metrics = read_json(execute(cfg, tmp_path / method, quiet=True) / "metrics.json")
    assert metrics.get("supervised", False) is supervised


# ------------------------------------------------------------------------------- DDB as a plug-in detector (#41)


@pytest.mark.parametrize("method", ["jtt", "lff_be"])
def test_ddb_flags_replace_a_methods_own_detection(tmp_path, fake_mnist, monkeypatch, method):
    """detection.source=ddb: JTT upsamples exactly the samples the DDB amplifier flags, LfF+BE's f_B trains on exactly
    the ones it does not; the method's own detection stages never run."""
    import diffdebias.methods.baselines as baselines
    from diffdebias.data import load_dataset
    from diffdebias.methods.detection import detect

    seen = {}
    upsample, lff_weighting = baselines.Upsample, baselines.lff_weighting

    def spy_upsample(index, copies):
        seen["flagged"] = index
        return upsample(index, copies)

    def spy_lff(ctx, train, aligned_mask=None):
        seen["flagged"] = (~aligned_mask).nonzero().squeeze(1)
        return lff_weighting(ctx, train, aligned_mask=aligned_mask)

    monkeypatch.setattr(baselines, "Upsample", spy_upsample)
    monkeypatch.setattr(baselines, "lff_weighting", spy_lff)
    ddb_cfg = tmp_path / "ddb_tiny.yaml"
    ddb_cfg.write_text(f"base: {CONFIGS / 'cmnist' / 'ddb.yaml'}\n"
                       "diffusion: {preset: tiny, steps: 6, batch_size: 16, checkpoint_every: 3}\n"
                       "sampling: {per_class: 6, steps: 3}\namplifier: {epochs: 2}\n"
                       "detection: {rule: quantile, quantile: 0.9}\n")
    cfg = tiny(fake_mnist, method)
    cfg.detection.source, cfg.detection.ddb_config = "ddb", str(ddb_cfg)
    out = tmp_path / method
    execute(cfg, out, quiet=True)
    own = {"jtt": ["jtt_error_set"], "lff_be": ["be_bias0", "be_committee"]}[method]
    assert (out / "amplifier" / "DONE").exists() and (out / method / "DONE").exists()
    assert not any((out / name).exists() for name in own)

    train = load_dataset(cfg.data).train
    t = load_tensors(out / "amplifier_scores" / "scores.safetensors")[0]
    rule = load_config(str(ddb_cfg)).detection  # DDB's rule, not this run's
    flags = torch.from_numpy(detect(rule, t["loss"].numpy(), t["pred"].numpy(), train.labels.numpy(),
                                    train.bias.numpy()))
    assert 0 < flags.sum() < len(flags)
    assert torch.equal(seen["flagged"], flags.nonzero().squeeze(1))
    assert json.loads((out / "metrics.json").read_text())["ddb_detection"]["size"] == int(flags.sum())

"""The per-epoch record of LfF-style sample weights per true bias group (issue #41), and its report figure."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from diffdebias.classifiers.debias_weighting import LfFJoint
from diffdebias.classifiers.train import train_classifier
from diffdebias.classifiers.weighting import SAMPLE_WEIGHT_LOSSES, FixedBiasLossWeights, RelativeDifficulty
from diffdebias.config import TrainConfig, load_config
from diffdebias.data.base import ImageSet
from diffdebias.evaluation.report import sample_weights_section
from diffdebias.methods import METHODS
from diffdebias.methods.baselines import BASELINES
from diffdebias.pipeline import execute
from diffdebias.runs import Run, read_json

CFG = TrainConfig(arch="mlp16", epochs=3, batch_size=32, lr=1e-2, select="last")
STATS = ("count", "mean", "median", "p10", "p90", *SAMPLE_WEIGHT_LOSSES)


def biased_set(n=96, bias=True):
    """3 classes; every 8th sample bias-conflicting (bias = label + 1), the others aligned."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    b = torch.where(torch.arange(n) % 8 == 0, (labels + 1) % 3, labels)
    images = torch.randint(0, 30, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[torch.arange(n), b, :4, :4] = 250  # the bias is the easy cue
    images[torch.arange(n), labels, 4:, 4:] = 120
    return ImageSet(images, labels, b if bias else None)


def make(kind, data):
    if kind == "lff":
        return LfFJoint(data.labels, CFG, 3, (3, 8, 8))
    g = torch.Generator().manual_seed(1)
    return FixedBiasLossWeights(torch.rand(len(data), generator=g) * 2, data.labels)  # Recipe II: a frozen L_amp


def train(tmp_path, name, data, weighting):
    out = {}
    run = Run(tmp_path / name, 3, quiet=True)
    stage = run.cached("clf", lambda s: out.update(m=train_classifier(s, data, CFG, 3, weighting=weighting)))
    return out["m"], read_json(stage.path("history.json"))


@pytest.mark.parametrize("kind", ["lff", "recipe2"])
def test_record_per_epoch_matches_the_weights_that_multiplied_the_losses(kind, tmp_path):
    data = biased_set()
    w = make(kind, data)
    applied = torch.full((len(data),), math.nan)
    loss = w.loss

    def spy(losses, batch):  # what multiplied each sample's loss, the last time it was seen
        out = loss(losses, batch)
        applied[batch.index] = w.last_weights.cpu()
        return out

    w.loss = spy
    _, history = train(tmp_path, kind, data, w)
    assert len(history) == CFG.epochs
    for h in history:
        sw = h["sample_weights"]
        ranking = {"ratio", "auroc", "auroc_loss_b"}
        assert set(sw) == {f"{g}_{k}" for g in ("aligned", "conflicting") for k in STATS} | ranking
        assert sw["aligned_count"] == 84 and sw["conflicting_count"] == 12
        for g in ("aligned", "conflicting"):
            assert 0 <= sw[f"{g}_p10"] <= sw[f"{g}_median"] <= sw[f"{g}_p90"] <= 1
    assert history[0]["sample_weights"] != history[-1]["sample_weights"]

    # the last record, by hand from the weighting's state after the last step
    state = w.difficulty.sample_weights()
    assert torch.equal(state["weight"], applied)  # exactly the W of each sample's last batch
    aligned = data.labels == data.bias
    mean_a, mean_c = float(applied[aligned].double().mean()), float(applied[~aligned].double().mean())
    last = history[-1]["sample_weights"]
    assert math.isclose(last["aligned_mean"], mean_a, rel_tol=1e-12)
    assert math.isclose(last["conflicting_mean"], mean_c, rel_tol=1e-12)
    assert math.isclose(last["ratio"], mean_c / mean_a, rel_tol=1e-12)
    assert math.isclose(last["conflicting_median"], float(applied[~aligned].double().quantile(0.5)), rel_tol=1e-12)
    assert math.isclose(last["auroc"], roc_auc_score((~aligned).numpy(), applied.double().numpy()), rel_tol=1e-12)
    assert math.isclose(last["auroc_loss_b"], roc_auc_score((~aligned).numpy(), state["loss_b_ema"].double().numpy()),
                        rel_tol=1e-12)
    d = w.difficulty
    assert math.isclose(last["conflicting_loss_d_ema"], float(d.ema_d.value[~aligned].double().mean()), rel_tol=1e-9)
    assert math.isclose(last["aligned_loss_b_ema"], float(d.ema_b.value[aligned].double().mean()), rel_tol=1e-9)
    # the normalised losses form W
    lb, ld = state["loss_b"], state["loss_d"]
    assert torch.allclose(lb / (lb + ld + 1e-8), applied)
    assert math.isclose(last["aligned_loss_b"], float(lb[aligned].double().mean()), rel_tol=1e-9)


@pytest.mark.parametrize("kind", ["lff", "recipe2"])
def test_training_is_unchanged_by_the_record_and_no_record_without_bias_labels(kind, tmp_path, monkeypatch):
    with_bias = biased_set()
    model_a, history_a = train(tmp_path, "a", with_bias, make(kind, with_bias))
    assert all("sample_weights" in h for h in history_a)

    no_bias = biased_set(bias=False)  # the same images and labels: the record cannot be made
    model_b, history_b = train(tmp_path, "b", no_bias, make(kind, no_bias))
    assert not any("sample_weights" in h for h in history_b)

    monkeypatch.setattr(RelativeDifficulty, "keep", lambda *a: None)  # and without the weighting's copies
    model_c, _ = train(tmp_path, "c", with_bias, make(kind, with_bias))
    for other in (model_b, model_c):
        for (k, a), b in zip(model_a.state_dict().items(), other.state_dict().values()):
            assert torch.equal(a, b), k
    for a, b in zip(history_a, history_b):
        assert a["train_loss"] == b["train_loss"] and a["train_accuracy"] == b["train_accuracy"]


def test_section_draws_the_figure_and_states_the_last_ratio(tmp_path, monkeypatch):
    def rec(epoch, a, c):
        groups = {g: {f"{g}_{k}": v * (0.5 if k == "p10" else 2 if k == "p90" else 1) for k in STATS}
                  for g, v in (("aligned", a), ("conflicting", c))}
        return {"epoch": epoch, "sample_weights": {**groups["aligned"], **groups["conflicting"], "ratio": c / a}}

    path = tmp_path / "figures" / "sample_weights.png"
    lines = sample_weights_section([rec(0, 0.4, 0.5), rec(1, 0.3, 0.6)], path)
    assert path.stat().st_size > 0
    assert "Last epoch (2)" in "\n".join(lines) and "**2x**" in "\n".join(lines)
    assert "figures/sample_weights.png" in lines[-2]
    assert "AUROC" not in "\n".join(lines)  # a record made before the ranking was kept

    ranked = [rec(0, 0.4, 0.5), rec(1, 0.3, 0.6)]
    for r, (w, b) in zip(ranked, ((0.61, 0.7), (0.93, 0.875))):
        r["sample_weights"].update(auroc=w, auroc_loss_b=b)
    text = "\n".join(sample_weights_section(ranked, path))
    assert "AUROC of W for the conflicting samples 0.6100 (first epoch recorded) -> 0.9300 (last)" in text
    assert "of the biased model's loss 0.7000 -> 0.8750" in text
    assert "fixed detectors" not in text
    import matplotlib.pyplot as plt
    drawn = []
    monkeypatch.setattr("diffdebias.evaluation.report.save_figure", lambda fig, path: drawn.append(fig))
    text = "\n".join(sample_weights_section(ranked, path, {"amplifier": 0.8, "gce_real reference": 0.9}))
    assert ("The biased model's loss against fixed detectors: amplifier (0.8000): reached from epoch 2; "
            "gce_real reference (0.9000): never reached.") in text
    panel = drawn[-1].axes[2]  # the third panel: AUROC per epoch, with one line per fixed detector
    assert [list(line.get_ydata()) for line in panel.lines[:2]] == [[0.7, 0.875], [0.61, 0.93]]
    assert [line.get_ydata()[0] for line in panel.lines[2:]] == [0.8, 0.9]
    plt.close("all")
    # a run resumed across the version that added the record: its first epochs lack it
    del ranked[0]["sample_weights"]["auroc"], ranked[0]["sample_weights"]["auroc_loss_b"]
    text = "\n".join(sample_weights_section(ranked, path))
    assert "AUROC of W for the conflicting samples 0.9300 (first epoch recorded) -> 0.9300 (last)" in text
    assert sample_weights_section([{"epoch": 0, "train_loss": 1.0}], tmp_path / "none.png") == []
    assert not (tmp_path / "none.png").exists()


def test_lff_run_report_shows_the_sample_weights(tmp_path, fake_mnist, monkeypatch):
    monkeypatch.setitem(METHODS, "lff", BASELINES["lff"])
    cfg = load_config(None, [f"data.mnist_path={fake_mnist}", "data.conflict_ratio=0.05", "classifier.epochs=2",
                             "classifier.batch_size=128", "classifier.select=last", "method=lff"])
    out = execute(cfg, tmp_path / "lff", quiet=True)
    history = read_json(out / "lff" / "history.json")
    assert len(history) == 2 and all(h["sample_weights"]["conflicting_count"] > 0 for h in history)
    assert (out / "figures" / "sample_weights.png").exists()
    report = (out / "report.md").read_text()
    ratio = history[-1]["sample_weights"]["ratio"]
    assert "## Sample weights W per true bias group" in report and f"**{ratio:.3g}x**" in report


def test_fixed_detectors_read_from_metrics():
    from diffdebias.evaluation.report import fixed_detectors

    metrics = {"detection": {"auroc": 0.94, "precision": 0.4}, "be_pseudo_conflicting": {"auroc": 0.99},
               "detection_references": {"gce_real": {"auroc": 0.95}, "erm_real": {"size": 3}}, "test": {"auroc": 0.5}}
    assert fixed_detectors(metrics) == {"amplifier": 0.94, "committee": 0.99, "gce_real reference": 0.95}
    assert fixed_detectors({"ddb_detection": {"auroc": 0.9}}) == {"amplifier": 0.9}  # DDB plugged into another method
    assert fixed_detectors({"detection": "none", "method": "lff"}) == {}

import csv
import json

import pytest
import torch

from diffdebias.cli import main
from diffdebias.methods.content_pools import misclassified, top_k_per_class
from diffdebias.methods.synthetic_filters import black_level, match_black_level, neighbours_agree, pearson
from tiny import cli, overrides, write_config

CHANGES = {"diffusion.steps": 6, "diffusion.checkpoint_every": 3, "injection.steps": 4, "classifier.epochs": 2,
           "amplifier.epochs": 2}
TINY = cli(overrides(CHANGES))


def run(fake_mnist, out, *extra, quiet=True):
    args = ["run", "configs/cmnist/diffinject.yaml", "--out", str(out), *(["--quiet"] if quiet else []),
            "--set", f"data.mnist_path={fake_mnist}", "--set", "data.conflict_ratio=0.05", *TINY, *extra]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def test_top_k_per_class_takes_each_class_highest_losses():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    loss = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.3, 0.0])
    assert top_k_per_class(loss, labels, 2).tolist() == [1, 2, 3, 4, 5]
    assert top_k_per_class(loss, labels, 1).tolist() == [1, 4, 5]


def test_error_set_pool_is_every_misclassified_sample():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert misclassified(torch.tensor([0, 1, 1, 0, 2, 0]), labels).tolist() == [1, 3, 5]
    assert misclassified(labels.clone(), labels).tolist() == []


def test_black_level_matching_gives_the_real_images_share_of_zeros():
    g = torch.Generator().manual_seed(0)
    real = torch.zeros(50, 3, 8, 8, dtype=torch.uint8)
    real[:, :, 2:5, 2:5] = torch.randint(1, 256, (50, 3, 3, 3), generator=g, dtype=torch.uint8)  # 3x3 strokes
    synthetic = real.clone()
    synthetic[:, :, :2] = torch.randint(0, 7, (50, 3, 2, 8), generator=g, dtype=torch.uint8)  # a noisy black
    synthetic[:, :, 5:] = torch.randint(0, 7, (50, 3, 3, 8), generator=g, dtype=torch.uint8)
    assert 3 <= black_level(synthetic, real) <= 6
    matched = match_black_level(synthetic, real)
    zero = lambda x: float((x == 0).double().mean())  # noqa: E731
    assert zero(synthetic) < 0.4 and abs(zero(matched) - zero(real)) < 0.05
    assert int(matched.max()) == 255 and int(synthetic.max()) == 255  # the top level stays
    stroke = synthetic[:, :, 2:5, 2:5].float()  # levels above b keep their order
    assert torch.equal(stroke.flatten().argsort(stable=True)[-100:],
                       matched[:, :, 2:5, 2:5].float().flatten().argsort(stable=True)[-100:])
    assert torch.equal(match_black_level(synthetic, real + 1), synthetic)  # no real zero: nothing to match


def test_pearson_is_one_for_a_level_change_and_minus_one_for_a_negative():
    a = torch.rand(5, 3, 8, 8)
    b = torch.rand(5, 3, 8, 8)
    assert torch.allclose(pearson(a, 2 * a + 7), torch.ones(5), atol=1e-6)
    assert torch.allclose(pearson(a, -a), -torch.ones(5), atol=1e-6)
    r = pearson(a, b)
    assert r.shape == (5,) and bool((r.abs() < 0.5).all())  # independent noise: near 0
    assert torch.allclose(pearson(a, b), pearson(b, a))


def test_neighbours_vote_by_shape_not_colour():
    from diffdebias.data.base import ImageSet

    g = torch.Generator().manual_seed(0)
    shapes = (torch.rand(3, 1, 8, 8, generator=g) > 0.6).float()  # one stroke pattern per class
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])  # class c drawn in colour c: the bias
    labels = torch.arange(3).repeat_interleave(20)
    jitter = 0.7 + 0.3 * torch.rand(60, 1, 1, 1, generator=g)
    real = ImageSet((shapes[labels] * colours[labels][:, :, None, None] * jitter * 255).to(torch.uint8), labels)
    # each shape drawn in the next class's colour: a bias-conflicting image, its label read from the shape
    recoloured = (shapes * colours.roll(1, 0)[:, :, None, None] * 200).to(torch.uint8)
    assert neighbours_agree(recoloured, torch.arange(3), real, 5).tolist() == [True, True, True]
    assert neighbours_agree(recoloured, torch.tensor([1, 2, 0]), real, 5).tolist() == [False, False, False]
    assert neighbours_agree(recoloured, torch.arange(3), real, 100).shape == (3,)  # k past the set: all of it votes
    assert neighbours_agree(recoloured[:0], torch.arange(0), real, 5).shape == (0,)


def test_keep_filters_join_in_order():
    from diffdebias.config import ConfigError, load_config

    cfg = load_config("configs/cmnist/diffinject.yaml", ["diffinject.keep=similar_neighbours_conflicting"])
    assert cfg.diffinject.keep_filters() == ["similar", "neighbours", "conflicting"]
    assert load_config("configs/cmnist/diffinject.yaml").diffinject.keep_filters() == []
    for bad in ("conflicting_similar", "similar_similar", "neighbours_", "useful"):
        with pytest.raises(ConfigError, match="diffinject.keep"):
            load_config("configs/cmnist/diffinject.yaml", [f"diffinject.keep={bad}"])
    with pytest.raises(ConfigError, match="diffinject.neighbours"):
        load_config("configs/cmnist/diffinject.yaml", ["diffinject.neighbours=0"])


def test_bad_content_pool_is_a_config_error():
    from diffdebias.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="diffinject.content_pool"):
        load_config("configs/cmnist/diffinject.yaml", ["diffinject.content_pool=random"])
    with pytest.raises(ConfigError, match="diffinject.synthetic_share"):
        load_config("configs/cmnist/diffinject.yaml", ["diffinject.synthetic_share=1.0"])
    with pytest.raises(ConfigError, match="diffinject.final_method"):
        load_config("configs/cmnist/diffinject.yaml", ["diffinject.final_method=jtt"])
    with pytest.raises(ConfigError, match="diffinject.keep"):
        load_config("configs/cmnist/diffinject.yaml", ["diffinject.keep=useful"])
    with pytest.raises(ConfigError, match="diffinject.min_similarity"):
        load_config("configs/cmnist/diffinject.yaml", ["diffinject.min_similarity=1.5"])
    with pytest.raises(ConfigError, match="unknown config key 'ddb.keep'"):  # a DiffInject option only
        load_config("configs/cmnist/ddb.yaml", ["ddb.keep=similar"])
    with pytest.raises(ConfigError, match="diffinject.upsample_errors must be"):
        load_config("configs/cmnist/diffinject.yaml", ["diffinject.upsample_errors=-2"])
    with pytest.raises(ConfigError, match="final_method=erm and synthetic_share null"):
        load_config("configs/cmnist/diffinject.yaml",
                    ["diffinject.upsample_errors=5", "diffinject.synthetic_share=0.5"])
    with pytest.raises(ConfigError, match="synthetic_share to null"):
        load_config("configs/cmnist/diffinject.yaml", ["diffinject.final_method=lff", "diffinject.synthetic_share=0.5"])


def test_diffinject_end_to_end_then_label_switch_reuses_the_diffusion_model(tmp_path, fake_mnist, capsys):
    out = tmp_path / "di"
    m = run(fake_mnist, out)
    pool = m["content_pool"]
    assert pool["pool"] == 100 and 0 <= pool["truly_conflicting"] <= 100
    assert m["synthetic_images"] == round(0.1 * (1350 - 100))
    assert 0 <= m["test"]["unbiased_accuracy"] <= 1
    cs = m["synthetic_colour_shape"]
    assert 0 <= cs["synthetic_aligned_fraction"] <= 1
    usable = cs["synthetic_usable_conflicting"]
    assert usable <= min(1 - cs["synthetic_aligned_fraction"], cs["synthetic_shape_fidelity"]) + 1e-12
    assert abs(m["pairs"]["content_conflicting"] - pool["purity"]) < 0.2  # contents drawn uniformly from the pool

    rows = list(csv.DictReader((out / "injection" / "images" / "synthetic.csv").open()))
    assert len(rows) == m["synthetic_images"]
    assert set(rows[0]) == {"path", "label", "seed", "style", "content", "content_label"}
    report = (out / "report.md").read_text()
    assert "## DiffInject" in report and "Content pool purity" in report and (out / "figures" / "triples.png").exists()
    capsys.readouterr()

    m2 = run(fake_mnist, out, "--set", "diffinject.label_source=content", quiet=False)
    log = capsys.readouterr().out
    assert "stage injection: done, skipped" in log and "stage classifier: running" in log  # same images, new labels
    assert m2["content_pool"] == pool and m2["test"] != m["test"]
    from diffdebias.evaluation.amplification import aligned_fraction
    from diffdebias.runs import load_tensors

    images = load_tensors(out / "injection" / "injected.safetensors")[0]["images"]
    by_content = torch.tensor([int(r["content_label"]) for r in rows])  # the colour-shape numbers read these labels
    assert m2["synthetic_colour_shape"]["synthetic_aligned_fraction"] == aligned_fraction(images, by_content)
    assert m["synthetic_colour_shape"]["synthetic_aligned_fraction"] == aligned_fraction(
        images, torch.tensor([int(r["label"]) for r in rows]))

    run(fake_mnist, out, "--set", "diffinject.label_source=content", "--set", "compare.erm=false",
        quiet=False)
    log = capsys.readouterr().out  # the report's ERM shapes neither the images nor the classifier
    assert "stage injection: done, skipped" in log and "stage classifier: done, skipped" in log

    m3 = run(fake_mnist, out, "--set", "diffinject.label_source=content", "--set", "compare.erm=false",
             "--set", "diffinject.synthetic_share=0.5", quiet=False)
    log = capsys.readouterr().out  # another sampling of the same images: only the classifier trains again
    assert "stage injection: done, skipped" in log and "stage classifier: running" in log
    assert m3["test"] != m2["test"] and "synthetic_share: 0.5" in (out / "config.yaml").read_text()
    assert "0.5 of each epoch of the final classifier" in (out / "report.md").read_text()

    m4 = run(fake_mnist, out, "--set", "diffinject.label_source=content", "--set", "compare.erm=false",
             "--set", "diffinject.final_method=lff", quiet=False)
    log = capsys.readouterr().out  # LfF's weights over the same images: only the classifier trains again
    assert "stage injection: done, skipped" in log and "stage classifier: running" in log
    assert m4["test"] not in (m2["test"], m3["test"]) and "final_method: lff" in (out / "config.yaml").read_text()
    assert "final classifier weighted by LfF" in (out / "report.md").read_text()

    m5 = run(fake_mnist, out, "--set", "diffinject.label_source=content", "--set", "compare.erm=false",
             "--set", "diffinject.final_method=lff", "--set", "classifier.select=valid",
             "--set", "classifier.select_metric=unbiased_accuracy", quiet=False)
    log = capsys.readouterr().out  # selected as LfF selects: on groups from an early ERM's errors, no bias label
    assert "stage early_erm: running" in log and "stage classifier: running" in log
    assert "supervised" not in m5  # with valid="real" the true groups would select, and mark the run

    m6 = run(fake_mnist, out, "--set", "diffinject.label_source=content", "--set", "compare.erm=false",
             "--set", "diffinject.match_black=true", quiet=False)
    log = capsys.readouterr().out  # the same images, their black level matched: the classifier and numbers again
    assert "stage injection: done, skipped" in log and "stage classifier: running" in log
    assert "stage synthetic_colour_shape: running" in log and m6["test"] != m2["test"]
    assert "black level matched" in (out / "report.md").read_text()

    def kept(keep, threshold):
        return run(fake_mnist, out, "--set", "diffinject.label_source=content", "--set", "compare.erm=false",
                   "--set", f"diffinject.keep={keep}", "--set", f"diffinject.min_similarity={threshold}")
    m7 = kept("similar", -1.0)  # every correlation passes: every image kept, but a stage of its own
    assert m7["synthetic_kept"] == m7["synthetic_images"] == m["synthetic_images"]
    assert (out / "report.md").read_text().count("kept by `similar`") == 1
    similar = kept("similar", 0.2)["synthetic_kept"]
    none = kept("similar", 1.0)["synthetic_kept"]  # nothing is an exact copy: the real images alone
    assert none <= similar < m["synthetic_images"]
    conflicting = kept("similar_conflicting", -1.0)["synthetic_kept"]
    assert 0 < conflicting < m["synthetic_images"]  # the GCE classifier assigns some synthetic images to their label
    assert kept("conflicting", 0.99)["synthetic_kept"] == conflicting  # the threshold reads only for similar
    neighbours = kept("neighbours_conflicting", -1.0)["synthetic_kept"]
    assert neighbours < conflicting  # some images' nearest real images carry another label
    report = (out / "report.md").read_text()
    assert "label of most of the 5 nearest real images" in report and "Kept and dropped" in report
    from PIL import Image

    assert Image.open(out / "figures" / "kept.png").size[1] == 2 + 2 * (28 + 2)  # a kept row and a dropped row


def test_synthetic_labels_follow_the_label_source(tmp_path, fake_mnist):
    from diffdebias.config import load_config
    from diffdebias.data import load_dataset

    out = tmp_path / "di"
    run(fake_mnist, out, "--set", "compare.erm=false")
    cfg = load_config("configs/cmnist/diffinject.yaml", [f"data.mnist_path={fake_mnist}", "data.conflict_ratio=0.05"])
    train = load_dataset(cfg.data).train
    rows = list(csv.DictReader((out / "injection" / "images" / "synthetic.csv").open()))
    styles = torch.tensor([int(r["style"]) for r in rows])
    assert torch.equal(torch.tensor([int(r["label"]) for r in rows]), train.labels[styles])
    contents_t = torch.tensor([int(r["content"]) for r in rows])
    assert torch.equal(torch.tensor([int(r["content_label"]) for r in rows]), train.labels[contents_t])
    from diffdebias.methods.common import Context
    from diffdebias.methods.diffinject import load_injected
    from diffdebias.runs import Run, Stage

    stage = Stage("injection", out / "injection", key="", seed=0)
    for source, index in (("style", styles), ("content", contents_t)):
        c = load_config("configs/cmnist/diffinject.yaml", [f"data.mnist_path={fake_mnist}", "data.conflict_ratio=0.05",
                                                            f"diffinject.label_source={source}"])
        synthetic, _ = load_injected(Context(c, Run(tmp_path / "probe", seed=0, quiet=True)), stage)
        assert torch.equal(synthetic.labels, train.labels[index])
    # unsupervised style pool: the content pool is excluded, nothing else
    contents = {int(r["content"]) for r in rows}
    assert not contents & set(styles.tolist())


def test_error_set_content_pool_end_to_end(tmp_path, fake_mnist):
    from diffdebias.config import load_config
    from diffdebias.data import load_dataset
    from diffdebias.runs import load_tensors

    out = tmp_path / "di"
    m = run(fake_mnist, out, "--set", "diffinject.content_pool=errors", "--set", "compare.erm=false")
    scores = load_tensors(out / "biased_scores" / "scores.safetensors")[0]
    cfg = load_config("configs/cmnist/diffinject.yaml", [f"data.mnist_path={fake_mnist}", "data.conflict_ratio=0.05"])
    labels = load_dataset(cfg.data).train.labels
    wrong = scores["pred"] != labels
    assert m["content_pool"]["pool"] == int(wrong.sum())
    contents = torch.tensor([int(r["content"]) for r in csv.DictReader(
        (out / "injection" / "images" / "synthetic.csv").open())])
    assert wrong[contents].all() and m["synthetic_images"] == round(0.1 * (1350 - int(wrong.sum())))
    assert "misclassified by the GCE classifier (`detection.source=own`)" in (out / "report.md").read_text()

    train = load_dataset(cfg.data).train  # the same errors, now also repeated in the final classifier's epochs
    m2 = run(fake_mnist, out, "--set", "diffinject.content_pool=errors", "--set", "compare.erm=false",
             "--set", "diffinject.upsample_errors=-1")
    n_wrong, truly = int(wrong.sum()), int((wrong & (train.labels != train.bias)).sum())
    auto = int((1350 - n_wrong) / n_wrong) - 1  # JTT's rule over the real training set
    assert m2["upsampled_errors"] == {"pool": n_wrong, "truly_conflicting": truly, "purity": truly / n_wrong,
                                      "copies": auto}
    assert m2["test"] != m["test"] and m2["synthetic_images"] == m["synthetic_images"]
    assert f"seen {1 + auto} times per epoch" in (out / "report.md").read_text()


def test_content_pool_ranked_by_a_ddb_amplifier(tmp_path, fake_mnist):
    ddb_cfg = write_config(tmp_path / "ddb_tiny.yaml", "configs/cmnist/ddb.yaml",
                           overrides({**CHANGES, "sampling.per_class": 6, "sampling.steps": 3}))
    out = tmp_path / "di"
    m = run(fake_mnist, out, "--set", "detection.source=ddb", "--set", f"detection.ddb_config={ddb_cfg}",
            "--set", "compare.erm=false")
    assert m["content_pool"]["pool"] == 100
    assert (out / "amplifier" / "DONE").exists() and not (out / "biased_classifier").exists()
    assert "by the DDB amplifier (`detection.source=ddb`)" in (out / "report.md").read_text()


def test_injection_with_a_smaller_unet_gives_images_at_the_data_size(tmp_path, fake_mnist):
    from diffdebias.runs import load_tensors

    out = tmp_path / "di"
    m = run(fake_mnist, out, "--set", "diffusion.image_size=16", "--set", "compare.erm=false")
    images = load_tensors(out / "injection" / "injected.safetensors")[0]["images"]
    assert images.shape[1:] == (3, 28, 28) and len(images) == m["synthetic_images"]
    assert images.float().std() > 10  # generated content, not a blank upsampled canvas
    assert load_tensors(out / "injection_diffusion" / "unet.safetensors")[1]["unet_config"]["sample_size"] == 16


def test_injection_gives_the_same_images_with_batches_in_parallel(tmp_path, fake_mnist):
    from diffdebias.runs import load_tensors

    images = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        run(fake_mnist, out, "--set", f"injection.workers={workers}", "--set", "injection.batch_size=16",
            "--set", "compare.erm=false", "--set", "classifier.epochs=1")
        images.append(load_tensors(out / "injection" / "injected.safetensors")[0]["images"])
    assert len(images[0]) > 16 * 3 and torch.equal(images[0], images[1])


def test_compiled_injection_gives_the_eager_images_in_a_stage_of_its_own(tmp_path, fake_mnist, capsys):
    from diffdebias.runs import load_tensors

    out = tmp_path / "di"
    # fp32 on every CPU: in bf16 (auto, on a CPU with bf16 units) the compiled and eager kernels round differently
    # and the tiny U-Net's 4 steps amplify that past any pixel tolerance
    fixed = ["--set", "injection.batch_size=16", "--set", "compare.erm=false",
             "--set", "classifier.epochs=1", "--set", "injection.precision=fp32"]
    run(fake_mnist, out, *fixed)
    eager = load_tensors(out / "injection" / "injected.safetensors")[0]["images"]
    capsys.readouterr()
    run(fake_mnist, out, "--set", "injection.compile=true", *fixed, quiet=False)
    assert "stage injection: running" in capsys.readouterr().out  # compiled kernels round differently: own key
    compiled = load_tensors(out / "injection" / "injected.safetensors")[0]["images"]
    assert len(eager) % 16 and len(compiled) == len(eager)  # the last batch was padded to the compiled shape
    assert (compiled.int() - eager.int()).abs().max() <= 2


def test_the_injection_stage_is_keyed_by_the_precision_it_computes_in(tmp_path, fake_mnist, capsys, monkeypatch):
    import diffdebias.devices as devices
    from diffdebias.runs import load_tensors

    out, fixed = tmp_path / "di", ["--set", "compare.erm=false", "--set", "classifier.epochs=1"]
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)  # a CPU where auto means fp32
    run(fake_mnist, out, "--set", "injection.precision=fp32", *fixed)
    fp32 = load_tensors(out / "injection" / "injected.safetensors")[0]["images"]
    capsys.readouterr()
    run(fake_mnist, out, *fixed, quiet=False)  # auto, resolved to fp32: the same images
    assert "stage injection: done, skipped" in capsys.readouterr().out
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)  # auto now means bf16: other numbers
    run(fake_mnist, out, *fixed, quiet=False)
    log = capsys.readouterr().out
    assert "stage injection: running" in log and ", bf16" in log
    bf16 = load_tensors(out / "injection" / "injected.safetensors")[0]["images"]
    assert not torch.equal(bf16, fp32)
    run(fake_mnist, out, "--set", "injection.precision=bf16", *fixed, quiet=False)  # what auto computed
    assert "stage injection: done, skipped" in capsys.readouterr().out


def test_map_batches_keeps_the_order_and_restores_the_thread_count():
    from diffdebias.devices import cpu_workers, map_batches

    threads = torch.get_num_threads()
    seen = []

    def square(i: int) -> int:
        seen.append(torch.get_num_threads())
        return i * i

    assert map_batches(square, range(7), workers=3) == [i * i for i in range(7)]
    assert set(seen) == {1} and torch.get_num_threads() == threads
    assert cpu_workers(torch.device("cpu"), 3) == 3 and cpu_workers(torch.device("meta")) == 1


def test_keep_key_holds_only_the_settings_its_filters_read():
    from diffdebias.config import load_config
    from diffdebias.methods.synthetic_filters import keep_key

    def key(*overrides):
        return keep_key(load_config("configs/cmnist/diffinject.yaml", list(overrides)).diffinject)

    assert key() == {}
    assert key("diffinject.keep=similar_conflicting") == {"keep": "similar_conflicting", "min_similarity": 0.7}
    assert key("diffinject.keep=neighbours_conflicting", "diffinject.min_similarity=0.2") == \
        key("diffinject.keep=neighbours_conflicting") == {"keep": "neighbours_conflicting", "neighbours": 5}
    assert key("diffinject.keep=similar_neighbours_conflicting", "diffinject.neighbours=3")["neighbours"] == 3
    assert key("diffinject.keep=similar_neighbours_conflicting") == {
        "keep": "similar_neighbours_conflicting", "min_similarity": 0.7, "neighbours": 5}

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffdebias.cli import main
from diffdebias.config import load_config
from diffdebias.data import load_dataset
from diffdebias.data.cmnist import COLORS
from diffdebias.diffusion import load_unet
from diffdebias.evaluation.amplification import aligned_fraction, stroke_colors, to_grey, usable_conflicting_fraction
from diffdebias.methods.generation import load_synthetic
from diffdebias.runs import Stage
from tiny import cli, overrides

TINY = cli(overrides({"diffusion.steps": 6, "diffusion.checkpoint_every": 3, "sampling.per_class": 6,
                      "sampling.steps": 3, "classifier.epochs": 2, "amplifier.epochs": 2}))


def run_ddb(tmp_path, fake_mnist, out, *extra):
    args = ["run", "configs/cmnist/ddb.yaml", "--out", str(out), "--quiet",
            "--set", f"data.mnist_path={fake_mnist}", "--set", "data.conflict_ratio=0.05", *TINY, *extra]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def test_ddb_end_to_end_both_recipes_share_stages(tmp_path, fake_mnist, capsys):
    out = tmp_path / "ddb"
    m = run_ddb(tmp_path, fake_mnist, out)
    for key in ("precision", "recall", "f1", "auroc", "average_precision"):
        assert 0.0 <= m["detection"][key] <= 1.0
    assert set(m["detection_references"]) == {"erm_real", "gce_real"}
    epochs = {stage: len(json.loads((out / stage / "history.json").read_text()))
              for stage in ("amplifier", "reference_gce")}
    assert epochs == {"amplifier": 2, "reference_gce": 1}  # the real-data GCE reference has its own epoch count
    assert 0.0 <= m["test"]["unbiased_accuracy"] <= 1.0
    assert m["amplification"]["synthetic_images"] == 60
    report = (out / "report.md").read_text()
    assert "Bias-conflicting detection" in report and (out / "figures" / "amplifier_losses.png").exists()
    assert "sample_weights" not in json.loads((out / "classifier" / "history.json").read_text())[0]
    assert "Sample weights W" not in report
    ranked = (out / "gallery" / "ranked.csv").read_text().splitlines()
    assert len(ranked) == 1 + 1350
    assert (out / "synthetic" / "images" / "synthetic.csv").exists()
    capsys.readouterr()

    assert main(["run", "configs/cmnist/ddb.yaml", "--out", str(out), "--set", f"data.mnist_path={fake_mnist}",
                 "--set", "data.conflict_ratio=0.05", *TINY, "--set", "ddb.recipe=lff"]) == 0
    log = capsys.readouterr().out
    assert "stage amplifier: done, skipped" in log and "stage classifier: running" in log
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["detection"] == m["detection"]  # same amplifier, same scores
    assert m2["test"] != m["test"]
    # Recipe II records its sample weights per true bias group every epoch (Recipe I has none), and the report
    # shows them
    history = json.loads((out / "classifier" / "history.json").read_text())
    assert len(history) == 2 and all(h["sample_weights"]["conflicting_count"] > 0 for h in history)
    assert "## Sample weights W per true bias group" in (out / "report.md").read_text()
    assert (out / "figures" / "sample_weights.png").exists()

    # a temperature below 1 sharpens the frozen amplifier's loss: its aligned samples' loss falls towards 0, so the
    # conflicting samples weigh more against them than under the paper's plain CE; T=1 is the paper's cached stage
    capsys.readouterr()
    assert main(["run", "configs/cmnist/ddb.yaml", "--out", str(out), "--set", f"data.mnist_path={fake_mnist}",
                 "--set", "data.conflict_ratio=0.05", *TINY, "--set", "ddb.recipe=lff",
                 "--set", "ddb.bias_temperature=0.25"]) == 0
    assert "stage amplifier_logits: running" in capsys.readouterr().out
    sharp = json.loads((out / "classifier" / "history.json").read_text())[-1]["sample_weights"]
    logits = load_file(out / "amplifier_logits" / "logits.safetensors")["logits"]
    d = load_dataset(load_config("configs/cmnist/ddb.yaml", [f"data.mnist_path={fake_mnist}",
                                                              "data.conflict_ratio=0.05"]).data)
    ce = torch.nn.functional.cross_entropy(logits / 0.25, d.train.labels, reduction="none")
    aligned = d.train.aligned_mask()
    assert sharp["aligned_loss_b_ema"] == pytest.approx(float(ce[aligned].mean()), rel=1e-5)
    assert sharp["conflicting_loss_b_ema"] == pytest.approx(float(ce[~aligned].mean()), rel=1e-5)
    assert main(["run", "configs/cmnist/ddb.yaml", "--out", str(out), "--set", f"data.mnist_path={fake_mnist}",
                 "--set", "data.conflict_ratio=0.05", *TINY, "--set", "ddb.recipe=lff",
                 "--set", "ddb.bias_temperature=1"]) == 0
    again = json.loads((out / "classifier" / "history.json").read_text())  # the paper's numbers, unchanged
    assert [(h["train_loss"], h["sample_weights"]) for h in again] == [(h["train_loss"], h["sample_weights"])
                                                                       for h in history]

    # a biased model that trains on (a variant): LfF's f_B starts from the amplifier and keeps learning, so its losses
    # move away from the frozen amplifier's; a new classifier stage, the amplifier reused
    capsys.readouterr()
    assert main(["run", "configs/cmnist/ddb.yaml", "--out", str(out), "--set", f"data.mnist_path={fake_mnist}",
                 "--set", "data.conflict_ratio=0.05", *TINY, "--set", "ddb.recipe=lff",
                 "--set", "ddb.bias_model=trained"]) == 0
    log = capsys.readouterr().out
    assert "stage amplifier: done, skipped" in log and "stage classifier: running" in log
    trained = json.loads((out / "classifier" / "history.json").read_text())[-1]["sample_weights"]
    frozen = history[-1]["sample_weights"]
    assert trained["aligned_loss_b_ema"] != pytest.approx(frozen["aligned_loss_b_ema"], rel=1e-3)


def test_recipe_stage_reruns_but_diffusion_is_reused(tmp_path, fake_mnist, capsys):
    from diffdebias.config import load_config
    from diffdebias.pipeline import execute

    overrides = [f"data.mnist_path={fake_mnist}", "data.conflict_ratio=0.05"] + TINY[1::2]
    out = tmp_path / "ddb"
    execute(load_config("configs/cmnist/ddb.yaml", overrides), out)
    capsys.readouterr()
    execute(load_config("configs/cmnist/ddb.yaml", overrides + ["detection.rule=oracle"]), out)
    log = capsys.readouterr().out
    assert "stage diffusion: done, skipped" in log and "stage synthetic: done, skipped" in log
    assert "stage classifier: running" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["supervised"] is True
    assert metrics["detection"]["precision"] == 1.0 and metrics["detection"]["recall"] == 1.0

    # execution settings (rows per sampling pass, logging) reuse every stage
    execute(load_config("configs/cmnist/ddb.yaml", overrides + ["detection.rule=oracle", "sampling.batch_size=7",
                                                                "diffusion.log_every=1"]), out)
    assert "running" not in capsys.readouterr().out

    # ddb.yaml's U-Net works at 16 px (diffusion.image_size); its samples come back at the data's 28 px
    assert load_unet(out / "diffusion" / "unet.safetensors").config.sample_size == 16
    assert load_synthetic(Stage("synthetic", out / "synthetic", "", 0)).images.shape[1:] == (3, 28, 28)
    # at the data's own size it is another model, trained anew
    execute(load_config("configs/cmnist/ddb.yaml", overrides + ["diffusion.image_size=0"]), out)
    assert "stage diffusion: running" in capsys.readouterr().out
    assert load_unet(out / "diffusion" / "unet.safetensors").config.sample_size == 28


def test_a_temperature_below_one_lifts_recipe_two_out_of_saturation():
    """The saturation seen on Colored MNIST: a frozen amplifier right on an aligned sample with margin 1.6 keeps a CE
    of ~0.18 while the target's falls to 0.01, so W ~ 0.95 for aligned and conflicting samples alike; at T = 0.25
    the conflicting samples weigh ~50x the aligned ones."""
    from diffdebias.classifiers.weighting import Batch, FixedBiasLossWeights

    labels = torch.zeros(100, dtype=torch.long)
    conflicting = torch.arange(100) < 2
    logits = torch.zeros(100, 2)
    logits[:, 0] = torch.where(conflicting, -8.0, 1.6)  # the amplifier: wrong and sure on conflicting samples
    target_loss = torch.where(conflicting, 2.0, 0.01)

    def ratio(t: float) -> float:
        amp_loss = torch.nn.functional.cross_entropy(logits / t, labels, reduction="none")
        w = FixedBiasLossWeights(amp_loss, labels, ema=False)
        w.loss(target_loss, Batch(torch.arange(100), torch.zeros(100, 1), labels, logits, 0, 0))
        return float(w.last_weights[conflicting].mean() / w.last_weights[~conflicting].mean())

    assert ratio(1.0) < 1.2
    assert ratio(0.25) > 40


def test_amplification_diagnostic_reads_colours_and_shapes():
    grey = torch.zeros(10, 28, 28, dtype=torch.uint8)
    grey[:, 5:20, 12:15] = 255
    grey[:, 4, 12:15] = 90
    labels = torch.arange(10)
    coloured = (COLORS[labels][:, :, None, None] * grey[:, None].float()).to(torch.uint8)
    assert torch.allclose(stroke_colors(coloured), COLORS[labels], atol=0.01)
    assert aligned_fraction(coloured, labels) == 1.0
    assert aligned_fraction(coloured, (labels + 1) % 10) == 0.0
    # a stroke that never saturates keeps its hue: every palette colour at 40 % brightness still reads as itself
    dim = (COLORS[labels][:, :, None, None] * grey[:, None].float() * 0.4).to(torch.uint8)
    assert aligned_fraction(dim, labels) == 1.0
    g = to_grey(coloured)
    assert g.shape == (10, 1, 28, 28) and int(g.amax()) == 255
    assert np.allclose(g[:, 0, 10, 13].numpy(), 255)  # every colour stretched to the same shape


def test_usable_conflicting_needs_the_labels_digit_in_another_colour():
    grey = torch.zeros(4, 28, 28, dtype=torch.uint8)
    grey[:, 5:20, 12:15] = 255
    labels = torch.tensor([0, 1, 2, 3])
    colours = torch.tensor([0, 5, 6, 3])  # images 1 and 2 are coloured as another class
    digits = torch.tensor([0, 1, 9, 3])  # image 2 shows the wrong digit
    images = (COLORS[colours][:, :, None, None] * grey[:, None].float()).to(torch.uint8)
    assert usable_conflicting_fraction(images, labels, digits) == 0.25  # only image 1
    assert usable_conflicting_fraction(images, labels, labels) == 0.5
    assert usable_conflicting_fraction(images, colours, colours) == 0.0


def test_diagnostic_ignores_a_flat_grey_background():
    grey = torch.zeros(10, 28, 28, dtype=torch.uint8)
    grey[:, 5:20, 12:15] = 255
    labels = torch.arange(10)
    coloured = (COLORS[labels][:, :, None, None] * grey[:, None].float()).round().to(torch.uint8)
    noisy_bg = torch.where(grey[:, None] == 0, torch.full_like(coloured, 40), coloured)  # a grey background
    assert aligned_fraction(noisy_bg, labels) == 1.0
    assert torch.equal(to_grey(noisy_bg) > 0, to_grey(coloured) > 0)


def test_valid_selection_on_pseudo_groups_needs_no_bias_labels(tmp_path, fake_mnist):
    from diffdebias.classifiers.models import build_classifier
    from diffdebias.classifiers.train import evaluate
    from diffdebias.config import load_config
    from diffdebias.data import load_dataset
    from diffdebias.data.base import ImageSet
    from diffdebias.methods.detection import pseudo_group_bias
    from diffdebias.runs import load_tensors

    out = tmp_path / "ddb"
    m = run_ddb(tmp_path, fake_mnist, out, "--set", "classifier.select=valid", "--set", "classifier.epochs=3",
                "--set", "classifier.lr=0.00003",  # far from converged, so the group metrics differ
                "--set", "classifier.select_metric=unbiased_accuracy", "--set", "detection.rule=error_set")
    history = json.loads((out / "classifier" / "history.json").read_text())
    selected = json.loads((out / "classifier" / "selection.json").read_text())
    assert selected["epoch"] == max(range(3), key=lambda e: history[e]["valid"]["unbiased_accuracy"])

    # the valid groups are (label x the amplifier's error set on valid), not the true colours
    valid = load_dataset(load_config(out / "config.yaml").data).valid
    scores, _ = load_tensors(out / "amplifier_valid_scores" / "scores.safetensors")
    assert len(scores["loss"]) == len(valid) == m["valid"]["size"]
    groups = ImageSet(valid.images, valid.labels, pseudo_group_bias(valid.labels, scores["pred"] != valid.labels, 10))
    weights, _ = load_tensors(out / "classifier" / "model.safetensors")
    model = build_classifier("mlp", 10, (3, 28, 28))
    model.load_state_dict(weights)
    pseudo = evaluate(model, groups, 10, 10)["unbiased_accuracy"]
    assert pseudo == history[selected["epoch"]]["valid"]["unbiased_accuracy"]
    assert pseudo != m["valid"]["unbiased_accuracy"]  # the true-colour metric of the same model differs


def test_plain_reference_recipe_drops_weight_decay_and_augmentation():
    import pytest

    from diffdebias.config import ConfigError, load_config
    from diffdebias.methods.ddb import reference_training

    cfg = load_config("configs/cmnist/ddb.yaml")
    assert cfg.amplifier.weight_decay > 0 and cfg.amplifier.augment
    plain = reference_training(cfg)  # the default: as JTT and LfF train, without the amplifier's regularisation
    assert plain.weight_decay == 0.0 and not plain.augment and plain.epochs == cfg.amplifier.epochs
    assert plain.loss == cfg.amplifier.loss and plain.lr == cfg.amplifier.lr
    regularised = load_config("configs/cmnist/ddb.yaml", ["ddb.reference_recipe=amplifier"])
    assert reference_training(regularised) == regularised.amplifier
    with pytest.raises(ConfigError, match="ddb.reference_recipe"):
        load_config("configs/cmnist/ddb.yaml", ["ddb.reference_recipe=memorise"])

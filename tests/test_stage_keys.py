"""Stages rerun when something they read changes, and only then (the two holes issue #39 found by reading)."""

from __future__ import annotations

import json
from pathlib import Path

from diffdebias.classifiers.train import evaluate, load_classifier
from diffdebias.cli import main
from diffdebias.config import load_config
from diffdebias.data import load_dataset
from diffdebias.methods.common import train_group_counts
from diffdebias.runs import Stage
from test_diffinject import TINY as DI_TINY


def test_a_last_epoch_models_valid_metrics_follow_the_valid_split(tmp_path, fake_mnist, capsys):
    """A select=last model never reads the valid split, so it stays cached when the split changes; its evaluation
    reads the split, so it reruns and reports the new split's metrics."""
    args = ["run", "configs/cmnist/erm.yaml", "--out", str(tmp_path / "r"), "--set", f"data.mnist_path={fake_mnist}",
            "--set", "data.conflict_ratio=0.05", "--set", "classifier.epochs=2", "--set", "classifier.select=last"]
    assert main(args) == 0
    before = json.loads((tmp_path / "r" / "metrics.json").read_text())
    capsys.readouterr()
    assert main([*args, "--set", "data.valid_bias_order=dataset"]) == 0
    log = capsys.readouterr().out
    assert "stage classifier: done, skipped" in log and "stage evaluation: running" in log
    after = json.loads((tmp_path / "r" / "metrics.json").read_text())
    cfg = load_config("configs/cmnist/erm.yaml", [f"data.mnist_path={fake_mnist}", "data.conflict_ratio=0.05",
                                                  "data.valid_bias_order=dataset"])
    d = load_dataset(cfg.data)
    model = load_classifier(Stage("classifier", tmp_path / "r" / "classifier", "", 0), cfg.classifier)
    fresh = evaluate(model, d.valid, d.num_classes, d.num_bias, group_weights=train_group_counts(d))
    assert after["test"] == before["test"] and after["valid"] == json.loads(json.dumps(fresh))


def test_diffinject_keeps_follow_the_classifier_that_filters_them(tmp_path, fake_mnist, capsys):
    """With the content pool ranked by a DDB amplifier, keep=conflicting still reads the GCE classifier (the
    amplifier section): changing it changes the kept images, so the final classifier must train again."""
    ddb_cfg = tmp_path / "ddb_tiny.yaml"
    ddb_cfg.write_text(f"base: {Path('configs/cmnist/ddb.yaml').resolve()}\n"
                       "diffusion: {preset: tiny, steps: 6, batch_size: 16, checkpoint_every: 3}\n"
                       "sampling: {per_class: 6, steps: 3}\namplifier: {epochs: 2}\n")
    args = ["run", "configs/cmnist/diffinject.yaml", "--out", str(tmp_path / "di"), "--quiet",
            "--set", f"data.mnist_path={fake_mnist}", "--set", "data.conflict_ratio=0.05", *DI_TINY,
            "--set", "diffinject.content_source=ddb", "--set", f"diffinject.ddb_config={ddb_cfg}",
            "--set", "diffinject.keep=conflicting", "--set", "diffinject.compare_erm=false"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([a for a in args if a != "--quiet"] + ["--set", "amplifier.epochs=1"]) == 0
    log = capsys.readouterr().out
    assert "stage injection: done, skipped" in log  # the pool and the pairs do not read the GCE classifier
    assert "stage biased_classifier: running" in log and "stage classifier: running" in log

"""The Python API: load_config and run give what the command line gives, and the run's model reproduces its
metrics."""

from __future__ import annotations

import json

import pytest

import diffdebias
from diffdebias.classifiers.train import evaluate
from diffdebias.config import ConfigError
from diffdebias.data import load_dataset


def test_run_from_python_returns_the_runs_metrics_and_its_model(tmp_path, fake_mnist):
    cfg = diffdebias.load_config("configs/cmnist/erm.yaml", [f"data.mnist_path={fake_mnist}",
                                                             "data.conflict_ratio=0.05", "classifier.epochs=2"])
    result = diffdebias.run(cfg, out=tmp_path / "r", quiet=True)
    assert result.run_dir == tmp_path / "r" and result.report.exists()
    assert result.metrics == json.loads((tmp_path / "r" / "metrics.json").read_text())
    d = load_dataset(cfg.data)
    again = evaluate(result.model(), d.test, d.num_classes, d.num_bias)
    assert again["unbiased_accuracy"] == pytest.approx(result.metrics["test"]["unbiased_accuracy"])
    assert diffdebias.run(cfg, out=tmp_path / "r", quiet=True).metrics["test"] == result.metrics["test"]  # skipped


def test_load_config_checks_like_the_command_line():
    assert diffdebias.load_config("configs/cmnist/erm.yaml", seed=3).seed == 3
    with pytest.raises(ConfigError, match="classifier.epochs"):
        diffdebias.load_config("configs/cmnist/erm.yaml", ["classifier.epochs=0"])

"""Every registered method runs a tiny config end to end and writes the metrics schema: a method added to the
registry is covered here without a line of its own (its config is configs/cmnist/<method>.yaml)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from diffdebias.cli import main
from diffdebias.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cmnist"
TINY = ["classifier.epochs=1", "classifier.batch_size=128", "amplifier.epochs=1", "diffusion.preset=tiny",
        "diffusion.steps=4", "diffusion.batch_size=16", "diffusion.checkpoint_every=2", "sampling.per_class=4",
        "sampling.steps=2", "injection.steps=3", "injection.batch_size=64", "ddb.reference_gce_epochs=1",
        "jtt.epochs_first=1", "bias_ensemble.num_models=2", "bias_ensemble.iterations=4",
        "bias_ensemble.valid_freq=2", "bias_ensemble.agreement=1", "disent.curr_step=2"]
SCHEMA = ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy", "worst_group_accuracy",
          "adjusted_accuracy")


def test_every_registered_method_has_a_config():
    assert sorted(METHODS) == sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem in METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_registered_method_runs_and_writes_the_metrics_schema(tmp_path, fake_mnist, method):
    args = ["run", str(CONFIGS / f"{method}.yaml"), "--out", str(tmp_path / method), "--quiet",
            "--set", f"data.mnist_path={fake_mnist}", "--set", "data.conflict_ratio=0.05"]
    for override in TINY:
        args += ["--set", override]
    assert main(args) == 0
    m = json.loads((tmp_path / method / "metrics.json").read_text())
    assert m["method"] == method and (tmp_path / method / "report.md").exists()
    final = tmp_path / method / m["final_stage"]
    assert (final / "model.safetensors").exists() and (final / "DONE").read_text() == (final / "KEY").read_text()
    for split in ("valid", "test"):
        for key in SCHEMA:
            value = m[split][key]
            assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0 and math.isfinite(value))
        # unbiased accuracy is the mean over the label x bias cells, so it lies between the worst cell and the best
        assert m[split]["worst_group_accuracy"] <= m[split]["unbiased_accuracy"] + 1e-9
    assert isinstance(m["supervised"], bool) if "supervised" in m else True


def test_no_method_imports_another_method():
    """Methods share building blocks (common, parts, amplifier, generation, detection), not each other."""
    import ast

    methods = {"baselines", "ddb", "diffinject", "erm"}
    for path in (CONFIGS.parents[1] / "src" / "diffdebias" / "methods").glob("*.py"):
        if path.stem == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module not in methods, f"{path.name} imports .{node.module}"

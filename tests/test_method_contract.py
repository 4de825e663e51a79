"""Every registered method runs a tiny config end to end, reading no config section it did not declare, and writes
the metrics schema: a method added to the registry is covered here without a line of its own (its config is
configs/cmnist/<method>.yaml)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from diffdebias.config import SECTIONS, load_config
from diffdebias.methods import METHODS
from diffdebias.pipeline import execute

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


class Undeclared:
    """Stands in for a config section the method did not declare: any read of it fails the run."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, key: str):
        raise AssertionError(f"the method read {self._name}.{key}, a section it does not declare (methods.METHODS)")

    def __setattr__(self, key: str, value) -> None:
        raise AssertionError(f"the method set {self._name}.{key}, a section it does not declare (methods.METHODS)")


def test_undeclared_sections_fail_when_read():
    with pytest.raises(AssertionError, match="read lff.alpha"):
        _ = Undeclared("lff").alpha


def test_every_declared_section_is_a_config_section():
    for name, method in METHODS.items():
        assert set(method.sections) <= set(SECTIONS) and {"data", "classifier"} <= set(method.sections), name


def run_declared(out: Path, mnist: Path, method: str, overrides: tuple[str, ...] = ()) -> Path:
    """Run configs/cmnist/<method>.yaml, tiny, with every section the method does not declare made :class:`Undeclared`;
    check that the run saved exactly the top-level fields and the declared sections."""
    cfg = load_config(CONFIGS / f"{method}.yaml", [f"data.mnist_path={mnist}", "data.conflict_ratio=0.05", *TINY,
                                                   *overrides])
    declared = METHODS[method].sections
    execute(dataclasses.replace(cfg, **{s: Undeclared(s) for s in SECTIONS if s not in declared}), out, quiet=True)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert set(saved) == {"name", "method", "seed", "device", *declared}  # what the method reads, nothing else
    return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_registered_method_runs_and_writes_the_metrics_schema(tmp_path, fake_mnist, method):
    run_declared(tmp_path / method, fake_mnist, method)
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


@pytest.mark.parametrize("method, overrides", [
    ("ddb", ("ddb.recipe=lff",)),  # Recipe II reads lff, not groupdro
    ("diffinject", ("diffinject.final_method=lff",)),
    ("jtt", ("detection.source=ddb", "detection.ddb_config={ddb}")),  # the plug-in detector reads its own file
], ids=["ddb-recipe2", "diffinject-lff", "jtt-ddb-detector"])
def test_a_methods_other_branches_read_only_declared_sections(tmp_path, fake_mnist, method, overrides):
    ddb = tmp_path / "ddb_tiny.yaml"
    ddb.write_text(f"base: {CONFIGS / 'ddb.yaml'}\ndiffusion: {{preset: tiny, steps: 4, batch_size: 16}}\n"
                   "sampling: {per_class: 4, steps: 2}\namplifier: {epochs: 1}\nddb: {references: false}\n")
    run_declared(tmp_path / "run", fake_mnist, method, tuple(o.format(ddb=ddb) for o in overrides))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == method


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

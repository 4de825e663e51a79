"""Every registered method runs a tiny config end to end, reading no config section it did not declare, and writes
the metrics schema: a method added to the registry is covered here without a line of its own (its config is
configs/cmnist/<method>.yaml). So does every entry of the variant registries (DiffInject's rankings, content pools,
synthetic-set filters and final samplers, DDB's recipes and detection rules, the detection sources of the methods that
plug DDB in), each run once through :func:`execute` with the override that selects it, and checked for what it
records. The runs of this module share one stage cache, so the diffusion models, the injection and the amplifiers are
computed once and a variant reruns only the stages it changes."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from conftest import fake_digits
from diffdebias.config import DETECTION_RULES, DETECTION_SOURCES, KEEP_FILTERS, SECTIONS, Config, load_config
from diffdebias.methods import METHODS
from diffdebias.methods.content_pools import POOLS, RANKINGS
from diffdebias.methods.ddb import RECIPES
from diffdebias.methods.detection import SUPERVISED_RULES
from diffdebias.methods.final_samplers import SAMPLERS, sampler_name
from diffdebias.methods.synthetic_filters import FILTERS
from diffdebias.pipeline import execute
from tiny import overrides, write_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cmnist"
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


class Shared(NamedTuple):
    mnist: Path  # one fake MNIST file: its path and time are in the data key, so every run reads this one
    stages: Path  # the stage cache every run of this module shares
    ddb: Path  # the tiny DDB config of the plug-in detectors: its stages are the tiny DDB run's


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    """The fake MNIST, the stage cache and the tiny DDB config of every run in this module."""
    root = tmp_path_factory.mktemp("contract")
    mnist = root / "mnist.pkl.gz"
    with gzip.open(mnist, "wb") as f:  # as conftest's fake_mnist
        pickle.dump(tuple(fake_digits(n, s) for n, s in ((1200, 0), (300, 1), (400, 2))), f)
    return Shared(mnist, root / "stages", write_config(root / "ddb_tiny.yaml", CONFIGS / "ddb.yaml", overrides()))


def run_declared(out: Path, shared: Shared, method: str, settings: tuple[str, ...] = ()) -> tuple[Config, dict]:
    """Run configs/cmnist/<method>.yaml, tiny, with ``settings`` on top and every section the method does not declare
    made :class:`Undeclared`; check that the run saved exactly the top-level fields and the declared sections, and
    that its metrics.json has the schema. Returns the config and the metrics."""
    cfg = load_config(CONFIGS / f"{method}.yaml", [f"data.mnist_path={shared.mnist}", "data.conflict_ratio=0.05",
                                                   *overrides(), *settings])
    declared = METHODS[method].sections
    execute(dataclasses.replace(cfg, **{s: Undeclared(s) for s in SECTIONS if s not in declared}), out, quiet=True,
            stage_cache=shared.stages)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert set(saved) == {"name", "method", "seed", "device", *declared}  # what the method reads, nothing else

    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and (out / "report.md").exists()
    final = out / m["final_stage"]
    assert (final / "model.safetensors").exists() and (final / "DONE").read_text() == (final / "KEY").read_text()
    for split in ("valid", "test"):
        for key in SCHEMA:
            value = m[split][key]
            assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0 and math.isfinite(value))
        # unbiased accuracy is the mean over the label x bias cells, so it lies between the worst cell and the best
        assert m[split]["worst_group_accuracy"] <= m[split]["unbiased_accuracy"] + 1e-9
    assert isinstance(m["supervised"], bool) if "supervised" in m else True
    return cfg, m


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_registered_method_runs_and_writes_the_metrics_schema(tmp_path, shared, method):
    run_declared(tmp_path / method, shared, method)


# ------------------------------------------------------------------------------------------------------ variants

# The settings that select each final sampler (final_samplers.sampler_name reads several fields, not one value): a
# sampler added to SAMPLERS fails its run below until it is given its settings here.
SAMPLER_SETTINGS = {
    "uniform": (),
    "synthetic_share": ("diffinject.synthetic_share=0.5",),
    "upsample_errors": ("diffinject.upsample_errors=2",),
    "lff": ("diffinject.final_method=lff",),
}
# What a setting needs beside it: DDB as a plug-in detector reads the tiny DDB config
NEEDS = {
    "detection.source=ddb": ("detection.ddb_config={ddb}",),
}
# DDB declares ``detection`` for its rule, DiffInject for who ranks its content (its rankings, below); the other
# methods that declare it read its source (DDB plugged in or not) and record how DDB's flags matched
SOURCE_READERS = tuple(m for m, method in METHODS.items()
                       if "detection" in method.sections and m not in ("ddb", "diffinject"))


def variants() -> list:
    """(method, variant, settings) for every entry of every variant registry, read from the registries and choice
    tuples themselves; settings None where a sampler has no entry in SAMPLER_SETTINGS."""
    def one(method: str, name: str, *settings: str) -> Any:
        settings = tuple(n for s in settings for n in (s, *NEEDS.get(s, ())))
        return pytest.param(method, name, settings, id=f"{method}-{name}")

    return [
        *(one("ddb", f"recipe={r}", f"ddb.recipe={r}") for r in RECIPES),
        *(one("ddb", f"rule={r}", "ddb.recipe=groupdro", f"detection.rule={r}") for r in DETECTION_RULES),
        *(one(m, f"source={s}", f"detection.source={s}") for m in SOURCE_READERS for s in DETECTION_SOURCES),
        *(one("diffinject", f"ranking={r}", f"detection.source={r}") for r in RANKINGS),
        *(one("diffinject", f"pool={p}", f"diffinject.content_pool={p}") for p in POOLS),
        # each filter alone, then all of them chained in their order
        *(one("diffinject", f"keep={k}", f"diffinject.keep={k}") for k in (*FILTERS, "_".join(FILTERS))),
        one("diffinject", "match_black", "diffinject.match_black=true"),
        *(pytest.param("diffinject", f"sampler={s}", SAMPLER_SETTINGS.get(s), id=f"diffinject-sampler={s}")
          for s in SAMPLERS),
    ]


def test_the_keep_filters_are_the_configs():
    assert tuple(FILTERS) == KEEP_FILTERS  # diffinject.keep chains them in this order


@pytest.mark.parametrize("method, variant, settings", variants())
def test_every_registered_variant_runs_and_records_what_it_did(tmp_path, shared, method, variant, settings):
    assert settings is not None, f"{variant}: add the settings that select it to SAMPLER_SETTINGS"
    cfg, m = run_declared(tmp_path / "run", shared, method, tuple(s.format(ddb=shared.ddb) for s in settings))
    RECORDS[method](cfg, m, tmp_path / "run")
    if variant.startswith("sampler="):
        assert sampler_name(cfg.diffinject) == variant.removeprefix("sampler=")


def diffinject_records(cfg: Config, m: dict, out: Path) -> None:
    di = cfg.diffinject
    pool = m["content_pool"]
    assert set(pool) == {"pool", "truly_conflicting", "purity"} and 0 <= pool["truly_conflicting"] <= pool["pool"]
    if di.content_pool == "top_k":
        assert pool["pool"] == 10 * di.top_k  # ten classes, each larger than K
    made, kept = m["synthetic_images"], m["synthetic_kept"]
    assert made > 0 and 0 <= kept <= made and (kept == made if di.keep == "all" else True)
    assert ("synthetic_colour_shape" in m) == (kept > 0)  # no synthetic image kept: the real images alone
    assert (out / "figures" / "kept.png").exists() == (di.keep != "all" and 0 < kept < made)
    assert set(m["pairs"]) == {"style_aligned", "content_conflicting"} and ("erm" in m) == cfg.compare.erm
    upsampled = m.get("upsampled_errors")
    assert (upsampled is not None) == (sampler_name(di) == "upsample_errors")
    if upsampled is not None:
        assert upsampled["copies"] == di.upsample_errors and upsampled["pool"] > 0
    report = (out / "report.md").read_text()
    assert "## DiffInject" in report and f"by {RANKINGS[cfg.detection.source].words}" in report
    assert ("black level matched" in report) == di.match_black
    assert (f"kept by `{di.keep}`" in report) == (di.keep != "all")


def ddb_records(cfg: Config, m: dict, out: Path) -> None:
    recipe, rule = cfg.ddb.recipe, cfg.detection.rule
    for key in ("precision", "recall", "f1", "auroc", "average_precision", "fraction"):
        assert 0.0 <= m["detection"][key] <= 1.0, key
    assert set(m["detection_references"]) == ({"erm_real", "gce_real"} if cfg.ddb.references else set())
    assert ("erm" in m) == cfg.compare.erm
    assert m["supervised"] == (rule in SUPERVISED_RULES and recipe == "groupdro")  # the oracle groups: a ceiling
    assert f"recipe `{recipe}`, detection rule `{rule}`" in (out / "report.md").read_text()
    history = json.loads((out / "classifier" / "history.json").read_text())
    assert ("sample_weights" in history[0]) == (recipe == "lff")  # Recipe II records its weights, Recipe I none


def source_records(cfg: Config, m: dict, out: Path) -> None:
    """JTT and LfF+BE: DDB plugged in records how well its flagged set matches; their own detection does not."""
    assert ("ddb_detection" in m) == (cfg.detection.source == "ddb")
    if cfg.detection.source == "ddb":
        assert m["ddb_detection"]["size"] > 0 and 0.0 <= m["ddb_detection"]["auroc"] <= 1.0


RECORDS = {"diffinject": diffinject_records, "ddb": ddb_records, **{m: source_records for m in SOURCE_READERS}}


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

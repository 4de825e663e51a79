"""A run saves, and a benchmark table compares, only the config sections its method reads (issue #39): a default
changed in another method's section leaves finished cells valid. Retired keys still load, with a warning."""

from __future__ import annotations

import dataclasses
import types
import warnings
from pathlib import Path

import pytest
import yaml

import diffdebias.bench
from diffdebias.bench import cell_config, collect
from diffdebias.cli import main
from diffdebias.config import (
    KEEP_FILTERS,
    MOVED,
    SECTIONS,
    ConfigError,
    DiffusionConfig,
    dump_yaml,
    load_config,
    settings_dict,
    to_dict,
)
from diffdebias.keys import Source
from diffdebias.methods import METHODS, method_settings
from diffdebias.methods.generation import diffusion_stage
from diffdebias.runs import config_hash
from test_bench import fake_run, make_table
from test_method_contract import CONFIGS
from tiny import nested

TOP_LEVEL = {"name", "method", "seed", "device"}
CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


def test_an_erm_run_saves_only_what_erm_reads(tmp_path, fake_mnist):
    out = tmp_path / "erm"
    assert main(["run", "configs/cmnist/erm.yaml", "--out", str(out), "--quiet", "--set", "classifier.epochs=1",
                 "--set", f"data.mnist_path={fake_mnist}", "--set", "data.conflict_ratio=0.05"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert set(saved) == TOP_LEVEL | {"data", "classifier"}
    again = load_config(out / "config.yaml")  # a saved config loads back: the sections it leaves out are defaults
    assert again.classifier.epochs == 1 and again.data.conflict_ratio == 0.05 and again.diffinject.top_k == 10


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_methods_saved_settings_load_back(tmp_path, method):
    cfg = load_config(CONFIGS / f"{method}.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(method_settings(cfg)))
    assert method_settings(load_config(path)) == method_settings(cfg)


def test_settings_keep_the_top_level_fields_and_the_given_sections_only():
    cfg = load_config(None, ["method=jtt", "seed=3"])
    out = settings_dict(cfg, ("data", "jtt"))
    assert out == {"name": "run", "method": "jtt", "seed": 3, "device": "auto", "data": to_dict(cfg.data),
                   "jtt": to_dict(cfg.jtt)}
    assert set(SECTIONS) | TOP_LEVEL == {f.name for f in dataclasses.fields(cfg)}


def finished_erm(tmp_path, saved_as=method_settings):
    """A table of one ERM cell (seed 1) whose run finished and saved ``saved_as`` of the config it ran."""
    table = make_table(tmp_path, methods=("erm",), ratios=(0.01,), seeds=(1,))
    fake_run(table, "erm", 0.01, 1, 0.40)
    (table.run_dir("erm", 0.01, 1) / "config.yaml").write_text(dump_yaml(saved_as(cell_config(table, "erm", 0.01, 1))))
    return table


def changed_default(monkeypatch, section: str, **values) -> None:
    """Tables now resolve every cell with ``values`` in ``section``, as after a change of that section's defaults."""
    load = diffdebias.bench.load_config

    def patched(*args, **kwargs):
        cfg = load(*args, **kwargs)
        return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})

    monkeypatch.setattr(diffdebias.bench, "load_config", patched)


@pytest.mark.parametrize("saved_as", [method_settings, to_dict], ids=["erm-sections", "every-section (older runs)"])
def test_a_changed_diffinject_default_leaves_finished_erm_cells_valid(tmp_path, monkeypatch, saved_as):
    table = finished_erm(tmp_path, saved_as)
    changed_default(monkeypatch, "diffinject", top_k=99)
    changed_default(monkeypatch, "diffusion", steps=7)
    row = collect(table, log=lambda msg: None)[0]
    assert row["seeds"] == 1 and row["stale"] == 0 and row["unbiased_accuracy"] == pytest.approx(40.0)


def test_a_changed_classifier_default_makes_finished_erm_cells_stale(tmp_path, monkeypatch):
    table = finished_erm(tmp_path)
    changed_default(monkeypatch, "classifier", lr=0.5)
    logged = []
    row = collect(table, log=logged.append)[0]
    assert row["seeds"] == 0 and row["stale"] == 1 and "classifier.lr" in logged[0]


def test_a_retired_key_loads_with_a_warning_naming_it(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("method: ddb\ndiffusion: {prediction_type: epsilon, steps: 5}\n")
    with pytest.warns(FutureWarning, match=r"diffusion\.prediction_type"):
        cfg = load_config(path)
    assert cfg.diffusion.steps == 5
    with pytest.warns(FutureWarning, match=r"diffusion\.prediction_type"):
        load_config(None, ["diffusion.prediction_type=epsilon"])
    with pytest.raises(ConfigError, match=r"unknown config key 'sampling\.prediction_type'"):
        load_config(None, ["sampling.prediction_type=epsilon"])  # retired in one section only


def test_the_diffusion_stage_keeps_its_key_without_prediction_type():
    """Models cached while ``diffusion.prediction_type`` existed keep their stage key (hash taken before it went)."""
    ctx = types.SimpleNamespace(run=types.SimpleNamespace(cached=lambda name, compute, what, **kw: what.settings))
    data = Source("train", "k")
    assert config_hash(diffusion_stage(ctx, "diffusion", DiffusionConfig(), None, None, data)) == "e5294c3847d91402"
    key = diffusion_stage(ctx, "diffusion", DiffusionConfig(preset="tiny", conditional=False), None, None, data)
    assert config_hash(key) == "e8bd28b164bc2edc"


# -------------------------------------------------------------------- merged options (config.MOVED) and retired options

DDB = str(CONFIG_ROOT / "cmnist" / "ddb.yaml")
ALIASES = [  # (old key=value, what the config needs beside it, the new key, the value it reads)
    ("ddb.compare_erm=false", (), "compare.erm", False),
    ("diffinject.compare_erm=false", (), "compare.erm", False),
    ("jtt.valid_groups='true'", (), "selection.valid_groups", "true"),
    ("lff.valid_groups='true'", (), "selection.valid_groups", "true"),
    ("diffinject.content_source=gce", (), "detection.source", "own"),  # its values map: gce is now own
    ("diffinject.content_source=ddb", (f"detection.ddb_config={DDB}",), "detection.source", "ddb"),
    (f"diffinject.ddb_config={DDB}", (), "detection.ddb_config", DDB),
]


def test_every_moved_key_has_an_alias_test():
    assert {old.split("=")[0] for old, *_ in ALIASES} == set(MOVED)


def _dig(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _as_file(path, pairs: list[str]):
    """``key=value`` pairs as a nested YAML config file (the way a config written before a merge names them)."""
    path.write_text(yaml.safe_dump(nested(pairs)))
    return path


@pytest.mark.parametrize("where", ["override", "file"])
@pytest.mark.parametrize("old, needs, new, value", ALIASES, ids=[a[0].split("=")[0] for a in ALIASES])
def test_an_old_key_loads_with_a_warning_and_sets_the_shared_option(tmp_path, where, old, needs, new, value):
    pairs = [old, *needs]
    with pytest.warns(FutureWarning) as warned:
        cfg = (load_config(None, pairs) if where == "override" else load_config(_as_file(tmp_path / "old.yaml", pairs)))
    assert _dig(cfg, new) == value
    old_key = old.split("=")[0]
    assert any(old_key in str(w.message) and new in str(w.message) for w in warned), [str(w.message) for w in warned]
    assert cfg == load_config(None, [f"{new}={value!r}" if isinstance(value, str) else f"{new}={str(value).lower()}",
                                     *needs])  # the same config as the new name gives


@pytest.mark.parametrize("old, new", [("jtt.valid_groups='true'", "selection.valid_groups=errors"),
                                      ("lff.valid_groups='true'", "jtt.valid_groups=errors"),
                                      ("ddb.compare_erm=false", "compare.erm=true"),
                                      ("diffinject.compare_erm=true", "ddb.compare_erm=false"),
                                      ("diffinject.content_source=ddb", "detection.source=own")])
def test_an_old_and_a_new_name_with_two_values_is_an_error_naming_both(tmp_path, old, new):
    for load in (lambda: load_config(None, [old, new]),
                 lambda: load_config(_as_file(tmp_path / "both.yaml", [old, new]))):
        with pytest.warns(FutureWarning), pytest.raises(ConfigError) as e:
            load()
        assert old.split("=")[0] in str(e.value) and new.split("=")[0] in str(e.value)


def test_an_old_and_a_new_name_agreeing_load(tmp_path):
    with pytest.warns(FutureWarning, match="diffinject.content_source"):
        cfg = load_config(None, ["diffinject.content_source=gce", "detection.source=own", "ddb.compare_erm=false",
                                 "diffinject.compare_erm=false"])
    assert cfg.detection.source == "own" and cfg.compare.erm is False


def test_an_old_key_overrides_its_base_and_an_override_overrides_the_file(tmp_path):
    """Each file and the overrides are read on their own: a file's old name overrides its base's new one, as a key
    under its own name would, and the overrides override the file whatever name either uses."""
    (tmp_path / "base.yaml").write_text("selection: {valid_groups: errors}\ncompare: {erm: true}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\njtt: {valid_groups: 'true'}\nddb: {compare_erm: false}\n")
    with pytest.warns(FutureWarning):
        cfg = load_config(tmp_path / "child.yaml")
    assert cfg.selection.valid_groups == "true" and cfg.compare.erm is False
    with pytest.warns(FutureWarning):
        cfg = load_config(tmp_path / "child.yaml", ["selection.valid_groups=errors", "diffinject.compare_erm=true"])
    assert cfg.selection.valid_groups == "errors" and cfg.compare.erm is True


def test_no_shipped_config_or_table_names_an_old_or_retired_key():
    """Every config under configs/ and every cell of every table loads without a FutureWarning."""
    from diffdebias.bench import cell_config, load_table

    paths = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if p.name != "scoreboard.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for path in paths:
            if path.parent.name == "tables":
                table = load_table(path)
                for cell in table.cells():
                    cell_config(table, *cell)
            else:
                load_config(path)


@pytest.mark.parametrize("section", ["classifier", "amplifier"])
def test_label_smoothing_is_retired(tmp_path, section):
    """Measured to hurt (docs/notebook.md, "Label smoothing in the final classifier"): a config that sets it still
    loads, warned, and runs without it."""
    with pytest.warns(FutureWarning, match=rf"{section}\.label_smoothing' is retired"):
        cfg = load_config(None, [f"{section}.label_smoothing=0.1"])
    assert cfg == load_config(None) and not hasattr(cfg.classifier, "label_smoothing")
    with pytest.warns(FutureWarning, match="label_smoothing"):  # the loss check that went with it went too
        load_config(_as_file(tmp_path / "old.yaml", ["amplifier.loss=gce", f"{section}.label_smoothing=0.1"]))


@pytest.mark.parametrize("key, value", [("weight_ramp", "1.0"), ("flagged_share", "0.5")])
def test_retired_recipe2_knobs_load_warned_as_the_papers_recipe(key, value):
    """Measured not to help (docs/notebook.md, "A curriculum for Recipe II's frozen weights" and "Bounding the flagged
    samples' share of Recipe II's weight"): a config that sets one loads, warned, as the paper's Recipe II."""
    base = CONFIG_ROOT / "cmnist" / "ddb_recipe2.yaml"
    with pytest.warns(FutureWarning, match=rf"ddb\.{key}' is retired"):
        cfg = load_config(base, [f"ddb.{key}={value}"])
    assert cfg == load_config(base) and not hasattr(cfg.ddb, key)


@pytest.mark.parametrize("keep, now", [("crossfit", "all"), ("similar_crossfit", "similar"),
                                       ("conflicting_crossfit", "conflicting"),
                                       ("similar_neighbours_conflicting_crossfit", "similar_neighbours_conflicting")])
def test_the_crossfit_filter_is_retired(tmp_path, keep, now):
    """Measured to hurt (docs/notebook.md, "Dropping the synthetic images a classifier trained without them disagrees
    with"): a keep chain naming it loads, warned, with the other filters; its epochs are a retired key."""
    base = CONFIG_ROOT / "cmnist" / "diffinject.yaml"
    with pytest.warns(FutureWarning, match="crossfit") as warned:
        cfg = load_config(base, [f"diffinject.keep={keep}", "diffinject.crossfit_epochs=3"])
    assert cfg.diffinject.keep == now and "crossfit" not in KEEP_FILTERS
    assert any("diffinject.crossfit_epochs' is retired" in str(w.message) for w in warned)
    assert cfg == load_config(base, [f"diffinject.keep={now}"])
    with pytest.warns(FutureWarning, match="crossfit"):  # in a file as well
        assert load_config(_as_file(tmp_path / "old.yaml", [f"diffinject.keep={keep}"])).diffinject.keep == now


def test_a_moved_key_in_a_finished_runs_config_is_compared_under_its_new_name(tmp_path):
    """A JTT run saved before the merge has ``jtt.valid_groups``: the table compares it with
    ``selection.valid_groups``, so the cell stays valid under the same value and goes stale under another."""
    table = make_table(tmp_path, methods=("jtt",), ratios=(0.01,), seeds=(1,))
    fake_run(table, "jtt", 0.01, 1, 0.40)
    saved = method_settings(cell_config(table, "jtt", 0.01, 1))
    saved["jtt"]["valid_groups"] = saved.pop("selection")["valid_groups"]  # as the run saved it
    (table.run_dir("jtt", 0.01, 1) / "config.yaml").write_text(dump_yaml(saved))
    assert collect(table, log=lambda msg: None)[0]["seeds"] == 1
    stale = make_table(tmp_path, methods=("jtt",), ratios=(0.01,), seeds=(1,),
                       overrides=["selection.valid_groups='true'"])
    logged = []
    row = collect(stale, log=logged.append)[0]
    assert row["seeds"] == 0 and row["stale"] == 1 and "selection.valid_groups" in logged[0]

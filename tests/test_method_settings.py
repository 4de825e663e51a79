"""A run saves, and a benchmark table compares, only the config sections its method reads (issue #39): a default
changed in another method's section leaves finished cells valid. Retired keys still load, with a warning."""

from __future__ import annotations

import dataclasses
import types

import pytest
import yaml

import diffdebias.bench
from diffdebias.bench import cell_config, collect
from diffdebias.cli import main
from diffdebias.config import SECTIONS, ConfigError, DiffusionConfig, dump_yaml, load_config, settings_dict, to_dict
from diffdebias.keys import Source
from diffdebias.methods import METHODS, method_settings
from diffdebias.methods.generation import diffusion_stage
from diffdebias.runs import config_hash
from test_bench import fake_run, make_table
from test_method_contract import CONFIGS

TOP_LEVEL = {"name", "method", "seed", "device"}


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

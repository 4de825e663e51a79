"""The benchmark runner: shards, skip/resume of a killed matrix, and tables from run folders written by hand."""

from __future__ import annotations

import statistics

import pytest
import yaml

import diffdebias.pipeline
from diffdebias.bench import collect, load_table, parse_shard, parse_subset, render, run_table, write_tables
from diffdebias.cli import main
from diffdebias.config import ConfigError
from diffdebias.runs import write_json


def make_table(tmp_path, methods=("erm", "lff"), ratios=(0.01, 0.05), seeds=(1, 2, 3), **extra):
    for m in methods:
        (tmp_path / f"{m}.yaml").write_text(yaml.safe_dump({"name": m, "method": m}))
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "dataset": "cmnist", "methods": {m: f"{m}.yaml" for m in methods},
                                    "ratios": list(ratios), "seeds": list(seeds), "out": str(tmp_path / "out"),
                                    "tables_dir": str(tmp_path / "tables"), **extra}))
    return load_table(path)


def fake_run(table, method, ratio, seed, unbiased, aligned=0.9, conflicting=0.2, seconds=(1.0, 2.0), **extra):
    write_json(table.run_dir(method, ratio, seed) / "metrics.json", {
        "test": {"unbiased_accuracy": unbiased, "aligned_accuracy": aligned, "conflicting_accuracy": conflicting},
        "stage_seconds": {f"s{i}": s for i, s in enumerate(seconds)}, **extra,
    })


def test_collect_and_render_mean_std_by_hand(tmp_path):
    table = make_table(tmp_path)
    for seed, acc in zip((1, 2, 3), (0.30, 0.35, 0.40)):
        fake_run(table, "erm", 0.01, seed, acc, aligned=0.9 + seed / 100)
    fake_run(table, "lff", 0.01, 1, 0.70)
    fake_run(table, "lff", 0.01, 2, 0.76)
    fake_run(table, "lff", 0.05, 3, 0.85, seconds=(4.0,))
    (table.run_dir("lff", 0.05, 1)).mkdir(parents=True)  # a started, unfinished cell: no metrics.json
    rows = {(r["method"], r["ratio"]): r for r in collect(table)}

    erm = rows[("erm", 0.01)]
    assert erm["seeds"] == 3
    assert erm["unbiased_accuracy"] == pytest.approx(35.0)
    assert erm["unbiased_accuracy_std"] == pytest.approx(statistics.stdev([30.0, 35.0, 40.0]))  # sample std = 5
    assert erm["aligned_accuracy"] == pytest.approx(92.0)
    assert erm["seconds"] == pytest.approx(3.0)
    assert erm["published"] == 32.59  # DiffInject Table 1, Vanilla at 1 %
    lff = rows[("lff", 0.01)]
    assert lff["seeds"] == 2 and lff["unbiased_accuracy"] == pytest.approx(73.0)
    assert lff["unbiased_accuracy_std"] == pytest.approx(((70 - 73) ** 2 + (76 - 73) ** 2) ** 0.5)
    one = rows[("lff", 0.05)]
    assert one["seeds"] == 1 and one["unbiased_accuracy_std"] == 0.0 and one["published"] == 85.33
    assert rows[("erm", 0.05)]["seeds"] == 0

    text = render(table, collect(table))
    md = text["md"]
    assert "| Vanilla | 35.00 ± 5.00 | 32.59 | — | 82.44 |" in md
    assert "| lff | 73.00 ± 4.24 | 74.23 | 85.00 (1 seed) | 85.33 |" in md
    assert "| Vanilla | 5 % | — | — | 0 | — |" in md  # a cell with no finished seed: dashes, not nan
    assert "35.00 $\\pm$ 5.00" in text["tex"]
    assert text["csv"].splitlines()[0].startswith("method,ratio,seeds,unbiased_accuracy")
    out = write_tables(table)
    assert out.read_text() == md and (tmp_path / "tables" / "t.png").exists()


def test_cells_run_under_another_config_are_left_out(tmp_path):
    from diffdebias.bench import cell_config
    from diffdebias.config import dump_yaml

    table = make_table(tmp_path, methods=("erm",), ratios=(0.01,))
    for seed, acc in zip((1, 2, 3), (0.30, 0.40, 0.90)):
        fake_run(table, "erm", 0.01, seed, acc)
        cfg = cell_config(table, "erm", 0.01, seed)
        if seed == 3:
            cfg.classifier.lr *= 10  # the table's config changed after this cell ran
        saved = yaml.safe_load(dump_yaml(cfg))
        if seed == 2:
            del saved["classifier"]["select"]  # an option added since: not a difference
            saved["sampling"]["batch_size"] += 1  # nor is an execution setting
            saved["ddb"]["references"] = not saved["ddb"]["references"]  # nor a side measurement's switch
            saved["name"] = "the same overrides under another label"  # nor the run's name
        (table.run_dir("erm", 0.01, seed) / "config.yaml").write_text(yaml.safe_dump(saved))
    logged = []
    row = collect(table, log=logged.append)[0]
    assert row["seeds"] == 2 and row["stale"] == 1
    assert row["unbiased_accuracy"] == pytest.approx(35.0)
    assert len(logged) == 1 and "seed3" in logged[0] and "classifier.lr" in logged[0]


def test_methods_that_read_bias_labels_are_marked_supervised(tmp_path):
    table = make_table(tmp_path, methods=("erm", "gdro"), ratios=(0.01,), seeds=(1,))
    fake_run(table, "erm", 0.01, 1, 0.30)
    fake_run(table, "gdro", 0.01, 1, 0.60, supervised=True)
    text = render(table, collect(table))
    assert "| gdro (*supervised*) | 60.00 (1 seed) | — |" in text["md"]
    assert "| Vanilla | 30.00 (1 seed) | 32.59 |" in text["md"]
    assert "gdro (supervised) & 60.00 (1 seed)" in text["tex"]


def test_shard_takes_every_nth_cell(tmp_path, monkeypatch):
    table = make_table(tmp_path)
    calls = []
    monkeypatch.setattr(diffdebias.pipeline, "execute", lambda cfg, out, quiet, stage_cache: calls.append(
        (cfg.method, cfg.data.conflict_ratio, cfg.seed, out)))
    assert parse_shard("1/3") == (1, 3)
    run_table(table, parse_shard("1/3"), log=lambda m: None)
    cells = table.cells()
    assert [(m, r, s) for m, r, s, _ in calls] == cells[1::3] and len(calls) == 4
    assert all(out == table.run_dir(m, r, s) for m, r, s, out in calls)
    calls.clear()
    for i in range(3):  # the shards together cover the matrix once
        run_table(table, (i, 3), log=lambda m: None)
    assert sorted((m, r, s) for m, r, s, _ in calls) == sorted(cells)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_a_subset_of_methods_ratios_and_seeds_runs_only_those_cells(tmp_path, monkeypatch):
    """``--methods/--ratios/--seeds`` pick cells of the table (in matrix order, in the table's run folders); a value
    the table does not have is an error naming what it has; shards split the subset."""
    table = make_table(tmp_path)
    calls = []
    monkeypatch.setattr(diffdebias.pipeline, "execute", lambda cfg, out, quiet, stage_cache: calls.append(
        (cfg.method, cfg.data.conflict_ratio, cfg.seed, out)))
    subset = parse_subset(table, methods="lff", seeds="3, 2")
    run_table(table, log=lambda m: None, subset=subset)
    assert [(m, r, s) for m, r, s, _ in calls] == [("lff", 0.01, 2), ("lff", 0.01, 3), ("lff", 0.05, 2),
                                                   ("lff", 0.05, 3)]
    assert calls[0][3] == table.run_dir("lff", 0.01, 2)
    calls.clear()
    run_table(table, (1, 2), log=lambda m: None, subset=parse_subset(table, ratios="0.05", seeds="1"))
    assert [(m, r, s) for m, r, s, _ in calls] == [("lff", 0.05, 1)]
    assert parse_subset(table) is None
    for kwargs, message in (({"methods": "jtt"}, "--methods jtt: table .* has erm, lff"),
                            ({"ratios": "0.02"}, "--ratios 0.02: table .* has 0.01, 0.05"),
                            ({"seeds": "x"}, "--seeds must be a comma-separated list")):
        with pytest.raises(ConfigError, match=message):
            parse_subset(table, **kwargs)


def test_killed_matrix_restarts_and_skips_finished_cells(tmp_path, fake_mnist, monkeypatch):
    cfg = tmp_path / "erm.yaml"
    cfg.write_text(yaml.safe_dump({"name": "erm", "method": "erm",
                                   "data": {"name": "cmnist", "mnist_path": str(fake_mnist)},
                                   "classifier": {"epochs": 1, "batch_size": 128, "select": "last"}}))
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "methods": {"erm": "erm.yaml"}, "ratios": [0.05], "seeds": [1, 2],
                                    "out": str(tmp_path / "out"), "tables_dir": str(tmp_path / "tables")}))
    table = load_table(path)
    real = diffdebias.pipeline.execute

    class Killed(Exception):
        pass

    def killed_on_second(cfg, out, quiet, stage_cache):
        if cfg.seed == 2:
            raise Killed
        return real(cfg, out, quiet=quiet, stage_cache=stage_cache)

    monkeypatch.setattr(diffdebias.pipeline, "execute", killed_on_second)
    with pytest.raises(Killed):
        run_table(table, log=lambda m: None)
    first = table.run_dir("erm", 0.05, 1) / "classifier" / "model.safetensors"
    stamp = first.stat().st_mtime_ns
    assert not (table.run_dir("erm", 0.05, 2) / "metrics.json").exists()

    monkeypatch.setattr(diffdebias.pipeline, "execute", real)
    assert main(["bench", str(path)]) == 0
    assert first.stat().st_mtime_ns == stamp  # the finished cell's stages were skipped
    assert (table.run_dir("erm", 0.05, 2) / "metrics.json").exists()
    rows = collect(table)
    assert rows[0]["seeds"] == 2 and 0 <= rows[0]["unbiased_accuracy"] <= 100


def test_detection_metrics_get_their_own_table(tmp_path):
    table = make_table(tmp_path, methods=("ddb", "erm"), ratios=(0.01,), seeds=(1, 2, 3))
    for seed, auroc, ref in ((1, 0.98, 0.90), (2, 0.99, 0.95), (3, 0.99, None)):
        refs = {} if ref is None else {"detection_references": {"erm_real": {"auroc": ref}}}
        fake_run(table, "ddb", 0.01, seed, 0.7, detection={"auroc": auroc, "precision": 0.5, "recall": 0.8}, **refs)
        fake_run(table, "erm", 0.01, seed, 0.5)
    rows = {r["method"]: r for r in collect(table)}
    assert rows["ddb"]["detection_auroc"] == pytest.approx((0.98 + 0.99 + 0.99) / 3)
    assert rows["ddb"]["reference_erm_auroc"] == pytest.approx(0.925) and rows["ddb"]["reference_erm_auroc_seeds"] == 2
    assert rows["ddb"]["reference_gce_auroc_std"] != rows["ddb"]["reference_gce_auroc_std"]  # none measured: nan
    md = render(table, list(rows.values()))["md"]
    assert "| ddb | 1 % | 0.9867 ± 0.0058 | 0.500 ± 0.000 | 0.800 ± 0.000 | 0.9250 ± 0.0354 (2 seeds) | — |" in md
    assert "| Vanilla | 1 % | 0.9850" not in md and md.count("| method | ratio | AUROC |") == 1


def test_references_measured_under_other_settings_leave_only_their_columns(tmp_path):
    from diffdebias.bench import cell_config
    from diffdebias.config import dump_yaml

    table = make_table(tmp_path, methods=("ddb",), ratios=(0.01,), seeds=(1, 2, 3))
    for seed, ref in ((1, 0.90), (2, 0.94), (3, 1.0)):
        fake_run(table, "ddb", 0.01, seed, 0.7 + seed / 100, detection={"auroc": 0.99},
                 detection_references={"erm_real": {"auroc": ref}})
        saved = yaml.safe_load(dump_yaml(cell_config(table, "ddb", 0.01, seed)))
        if seed == 3:
            saved["ddb"]["reference_recipe"] = "amplifier"  # a run whose references trained another way
        if seed == 2:
            del saved["ddb"]["reference_recipe"]  # saved before the key existed: the amplifier's recipe then
            saved["ddb"]["reference_epochs"] = 2
        (table.run_dir("ddb", 0.01, seed) / "config.yaml").write_text(yaml.safe_dump(saved))
    row = collect(table)[0]
    assert row["seeds"] == 3 and row["stale"] == 0  # the method's numbers are the same cell's
    assert row["unbiased_accuracy"] == pytest.approx(72.0)
    assert row["reference_erm_auroc"] == pytest.approx(0.90) and row["reference_erm_auroc_seeds"] == 1
    assert row["detection_auroc"] == pytest.approx(0.99)

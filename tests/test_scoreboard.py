"""The scoreboard: docs/results.md's generated block, collected from run folders written by hand."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest
import yaml

from diffdebias.bench import cell_config, load_table
from diffdebias.cli import main
from diffdebias.config import ConfigError, dump_yaml
from diffdebias.runs import write_json
from diffdebias.scoreboard import BEGIN, END, load_spec, update

ROOT = Path(__file__).resolve().parents[1]
HEAD = "# Results\n\nHand-written text, kept byte for byte.\n\n"
TAIL = "\n\n## After the block\n\nAlso kept.\n"


def make_table(tmp_path, name, methods, ratios=(0.01, 0.05), seeds=(1, 2, 3)):
    for m in methods:
        (tmp_path / f"{m}.yaml").write_text(yaml.safe_dump({"name": m, "method": m}))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "dataset": "cmnist", "methods": {m: f"{m}.yaml" for m in methods},
                                    "ratios": list(ratios), "seeds": list(seeds), "out": str(tmp_path / name)}))
    return load_table(path)


def fake_run(table, method, ratio, seed, unbiased, **extra):
    write_json(table.run_dir(method, ratio, seed) / "metrics.json", {
        "test": {"unbiased_accuracy": unbiased, "aligned_accuracy": 0.9, "conflicting_accuracy": 0.2}, **extra})


def write_spec(tmp_path, rows):
    spec = tmp_path / "scoreboard.yaml"
    spec.write_text(yaml.safe_dump({"datasets": {"cmnist": "Colored MNIST"}, "rows": rows}))
    return spec


@pytest.fixture
def board(tmp_path):
    """Two tables: one with finished, unfinished and stale cells; one that never ran here."""
    table = make_table(tmp_path, "main", ("erm", "lff", "gdro"))
    for seed, acc in zip((1, 2, 3), (0.30, 0.35, 0.40)):
        fake_run(table, "erm", 0.01, seed, acc)
    fake_run(table, "lff", 0.01, 1, 0.70)
    fake_run(table, "lff", 0.01, 2, 0.76)
    fake_run(table, "gdro", 0.01, 1, 0.60, supervised=True)
    fake_run(table, "erm", 0.05, 1, 0.80)  # finished under another config: stale, left out
    cfg = cell_config(table, "erm", 0.05, 1)
    cfg.classifier.lr *= 10
    (table.run_dir("erm", 0.05, 1) / "config.yaml").write_text(dump_yaml(cfg))
    make_table(tmp_path, "never", ("lff",), ratios=(0.01,))
    spec = write_spec(tmp_path, [
        {"table": "main.yaml", "method": "erm", "settings": "paper"},
        {"table": "main.yaml", "method": "lff", "name": "LfF", "settings": "variant: a longer schedule"},
        {"table": "main.yaml", "method": "gdro", "settings": "variant: true groups"},
        {"table": "never.yaml", "method": "lff", "name": "LfF", "settings": "paper (not run here)"}])
    out = tmp_path / "results.md"
    out.write_text(f"{HEAD}{BEGIN}\nold block\n{END}{TAIL}")
    return spec, out


def test_block_holds_the_means_of_the_run_folders_and_nothing_else_changes(board, capsys):
    spec, out = board
    assert main(["scoreboard", str(spec), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(f"{HEAD}{BEGIN}\n") and text.endswith(f"{END}{TAIL}") and "old block" not in text
    block = text[len(HEAD):-len(TAIL)]
    erm = statistics.fmean([30.0, 35.0, 40.0])
    lff, lff_std = statistics.fmean([70.0, 76.0]), statistics.stdev([70.0, 76.0])
    assert (erm, round(lff, 2), round(lff_std, 2)) == (35.0, 73.0, 4.24)
    assert "### Colored MNIST" in block
    assert "| method | settings | 1 % ours | pub. | 5 % ours | pub. |" in block
    assert f"| Vanilla (`main`) | paper | {erm:.2f} ± 5.00 (3 seeds) | 32.59 | — | 82.44 |" in block  # stale: —
    assert f"| LfF (`main`) | variant: a longer schedule | {lff:.2f} ± {lff_std:.2f} (2 seeds) | 74.23 | — | 85.33 |" \
        in block
    assert "| gdro (*supervised*) (`main`) | *supervised*; variant: true groups | 60.00 (1 seed) | — | — | — |" in block
    assert "| LfF (`never`) | paper (not run here) | — | 74.23 | — | — |" in block  # no 5 % column in its table
    assert f"Not collected here (no run folders): `{spec.parent / 'never.yaml'}`." in block
    assert f"`{spec.parent / 'main.yaml'}` (1 left out)" in block
    assert "left out" in capsys.readouterr().err  # collect's message on the stale run, on stderr

    update(spec, out)  # regenerating gives the same file
    assert out.read_text() == text


def test_cells_without_run_folders_here_keep_the_earlier_values_marked(board):
    """A fresh machine has no run folders: regenerating must not erase what earlier machines collected."""
    spec, out = board
    update(spec, out)
    first = out.read_text()
    # the block as an earlier machine left it: `never` ran there (supervised), and main's lff had a 5 % value
    earlier = first.replace("| LfF (`never`) | paper (not run here) | — |",
                            "| LfF (*supervised*) (`never`) | *supervised*; paper (not run here) | "
                            "81.00 ± 1.00 (3 seeds) |")
    earlier = earlier.replace("(2 seeds) | 74.23 | — | 85.33 |", "(2 seeds) | 74.23 | 88.00 (1 seed) | 85.33 |")
    earlier = earlier.replace("| Vanilla (`main`) | paper | 35.00 ± 5.00 (3 seeds) | 32.59 | — |",
                              "| Vanilla (`main`) | paper | 35.00 ± 5.00 (3 seeds) | 32.59 | 90.00 (1 seed) |")
    assert earlier.count("81.00") == earlier.count("88.00") == earlier.count("90.00") == 1
    out.write_text(earlier)
    update(spec, out)
    block = out.read_text()
    assert "| LfF (*supervised*) (`never`) | *supervised*; paper (not run here) | 81.00 ± 1.00 (3 seeds) † | 74.23 |" \
        in block
    assert "| 74.23 | 88.00 (1 seed) † | 85.33 |" in block  # no run folder here for main's lff at 5 %
    assert "90.00" not in block  # main's erm at 5 % has a (stale) run here: not replaced by the earlier value
    assert "† Collected on an earlier machine" in block
    update(spec, out)  # idempotent: the mark is not doubled
    assert out.read_text() == block
    assert main(["scoreboard", str(spec), "--out", str(out), "--here-only"]) == 0
    assert out.read_text() == first


def test_missing_markers_are_an_error_and_leave_the_file(board, capsys):
    spec, out = board
    for broken in (f"{HEAD}no block{TAIL}", f"{HEAD}{END}\n{BEGIN}{TAIL}", f"{HEAD}{BEGIN}\n{TAIL}"):
        out.write_text(broken)
        with pytest.raises(ConfigError, match="scoreboard:begin"):
            update(spec, out)
        assert main(["scoreboard", str(spec), "--out", str(out)]) == 2
        assert "scoreboard:end" in capsys.readouterr().err
        assert out.read_text() == broken


def test_spec_errors_name_the_row(tmp_path):
    make_table(tmp_path, "main", ("erm",), ratios=(0.01,))
    (tmp_path / "results.md").write_text(f"{BEGIN}\n{END}\n")
    for row, message in (({"table": "main.yaml", "method": "erm", "settings": "ours"}, r"rows\[0\]: settings must"),
                         ({"table": "main.yaml", "method": "erm"}, r"rows\[0\]: every row needs"),
                         ({"table": "main.yaml", "method": "jtt", "settings": "paper"}, "has no method 'jtt'")):
        with pytest.raises(ConfigError, match=message):
            update(write_spec(tmp_path, [row]), tmp_path / "results.md")


def test_shipped_spec_names_methods_of_its_tables():
    rows, _ = load_spec(ROOT / "configs" / "scoreboard.yaml")
    for row in rows:
        assert row.method in load_table(row.table).methods, (row.table, row.method)
    tables = {Path(row.table).stem for row in rows}
    assert {"recipe2_cmnist", "recipe2_textured_mnist", "recipe2_corrupted_fmnist", "ddb_plugin_cmnist",
            "corrupted_fmnist_1pct", "recipe2_bias_model_cmnist", "recipe2_bias_model_corrupted_fmnist", "cmnist",
            "cmnist_ddb16", "cmnist_diffinject_cpu"} <= tables


def test_results_keep_one_block_and_link_to_notebook_sections_that_exist():
    results = (ROOT / "docs" / "results.md").read_text()
    assert results.count(BEGIN) == 1 and results.count(END) == 1
    notebook = (ROOT / "docs" / "notebook.md").read_text()
    headings = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")  # GitHub's anchors
                for h in re.findall(r"^#+ (.*)$", notebook, re.M)}
    links = re.findall(r"\(notebook\.md#([^)]+)\)", results)
    assert links and set(links) <= headings

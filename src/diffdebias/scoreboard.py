"""The scoreboard: docs/results.md's generated tables, one row per method and settings, collected from run folders.

A spec (``configs/scoreboard.yaml``) names rows of bench tables with their settings label; :func:`update` collects
every table once with :func:`bench.collect` and rewrites only the block between :data:`BEGIN` and :data:`END` of the
output file, so the hand-written text around it stays. A cell with no run folder on this machine keeps the value the
block held before when this machine has neither a finished nor a stale run for it, marked :data:`EARLIER`
(machines come and go; their numbers should not), unless asked for this machine's runs only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .bench import Table, _cell, collect, load_table
from .config import ConfigError
from .evaluation.metrics import METRIC_NAMES, headline_metrics
from .evaluation.published import PUBLISHED_NAMES
from .runs import write_text

BEGIN, END = "<!-- scoreboard:begin -->", "<!-- scoreboard:end -->"
DEFAULT_SPEC, DEFAULT_OUT = "configs/scoreboard.yaml", "docs/results.md"
EARLIER = "†"  # marks a cell kept from the previous block: collected on a machine whose run folders are not here
SUPERVISED_NAME, SUPERVISED_SETTINGS = " (*supervised*)", "*supervised*; "


@dataclass
class Row:
    table: str  # the table file, relative to where the command runs (as bench's run folders are)
    method: str  # a method label of that table
    settings: str  # "paper", "paper (note)" or "variant: what it adds"
    name: str


def load_spec(path: str | Path) -> tuple[list[Row], dict[str, str]]:
    """The spec's rows (table paths resolved against the spec's folder) and its dataset headings."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"scoreboard spec not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    for key in data:
        if key not in ("datasets", "rows"):
            raise ConfigError(f"{path}: unknown scoreboard key '{key}' (known: datasets, rows)")
    if not data.get("rows"):
        raise ConfigError(f"{path}: 'rows' is required")
    rows = []
    for i, entry in enumerate(data["rows"]):
        where = f"{path}: rows[{i}]"
        if not isinstance(entry, dict) or any(not entry.get(k) for k in ("table", "method", "settings")):
            raise ConfigError(f"{where}: every row needs 'table', 'method' and 'settings'")
        if extra := set(entry) - {"table", "method", "settings", "name"}:
            raise ConfigError(f"{where}: unknown row key(s) {', '.join(sorted(extra))} (known: table, method, "
                              "settings, name)")
        settings = str(entry["settings"])
        if not (settings == "paper" or settings.startswith(("paper (", "variant: "))):
            raise ConfigError(f"{where}: settings must be 'paper', 'paper (a note)' or 'variant: what it adds', "
                              f"got '{settings}'")
        method = str(entry["method"])
        rows.append(Row(os.path.normpath(path.parent / entry["table"]), method, settings,
                        str(entry.get("name") or PUBLISHED_NAMES.get(method, method))))
    return rows, {str(k): str(v) for k, v in (data.get("datasets") or {}).items()}


def _ours(row: dict[str, Any], metric: str) -> str:
    """bench's cell (mean ± std, or the one seed it has), with the number of seeds behind every mean."""
    text = _cell(row, metric)
    return f"{text} ({row['seeds']} seeds)" if row["seeds"] > 1 and text != "—" else text


def _has_runs(table: Table) -> bool:
    """Whether any of the table's cells has a folder here: one without is listed apart, not as a row of dashes only."""
    return any(table.run_dir(*cell).exists() for cell in table.cells())


def _ours_label(ratio: float) -> str:
    """The column of our numbers at ``ratio``: the header written and the key earlier values are read back by."""
    return f"{100 * ratio:g} % ours"


def _row_key(name: str, settings: str) -> tuple[str, str]:
    """A row's identity across regenerations: its name column and settings, without the supervised marks."""
    return name.replace(SUPERVISED_NAME, ""), settings.removeprefix(SUPERVISED_SETTINGS)


def earlier_cells(block: str) -> dict[tuple[tuple[str, str], str], tuple[str, bool]]:
    """The "ours" cells of a previous block that hold a number: (row key, column label) -> (text, supervised)."""
    cells: dict[tuple[tuple[str, str], str], tuple[str, bool]] = {}
    labels: list[str] = []
    for line in block.splitlines():
        parts = [p.strip() for p in re.split(r"(?<!\\)\|", line.strip())[1:-1]] if line.startswith("|") else []
        if len(parts) < 2 or parts[0].startswith("---"):
            labels = labels if parts else []
            continue
        if parts[:2] == ["method", "settings"]:
            labels = parts
            continue
        key = _row_key(parts[0], parts[1])
        for label, text in zip(labels[2:], parts[2:]):
            if label.endswith(" ours") and text != "—":
                cells[key, label] = (text, parts[1].startswith(SUPERVISED_SETTINGS))
    return cells


def render_block(spec: str | Path, log=print, earlier: str = "") -> str:
    """One markdown table per dataset: method | settings | ours and published at each ratio of its rows' tables;
    then the tables with no run folder here and those whose finished runs were left out as stale. A cell with neither
    a finished nor a stale run here keeps its value from ``earlier`` (the previous block), marked :data:`EARLIER`."""
    kept = earlier_cells(earlier)
    marked = False
    rows, headings = load_spec(spec)
    tables: dict[str, Table] = {}
    cells: dict[str, dict[tuple[str, float], dict[str, Any]]] = {}
    for row in rows:
        if row.table not in tables:
            tables[row.table] = load_table(row.table)
            cells[row.table] = {(c["method"], c["ratio"]): c for c in collect(tables[row.table], log)}
        if row.method not in tables[row.table].methods:
            raise ConfigError(f"{spec}: {row.table} has no method '{row.method}' (it has: "
                              f"{', '.join(tables[row.table].methods)})")
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(tables[row.table].dataset, []).append(row)
    md = [f"<!-- generated by `diffdebias scoreboard {spec}`: edit that spec and rerun, not this block -->", ""]
    for dataset, group in groups.items():
        main = headline_metrics(dataset)[0]
        ratios = sorted({r for row in group for r in tables[row.table].ratios})
        md += [f"### {headings.get(dataset, dataset)}", "",
               f"Test {METRIC_NAMES.get(main, main)} (%), ours (mean ± std over the finished seeds) beside the "
               "published number:", "",
               "| method | settings | " + " | ".join(f"{_ours_label(r)} | pub." for r in ratios) + " |",
               "|---|---|" + "---|---|" * len(ratios)]
        for row in group:
            found = [cells[row.table].get((row.method, r)) for r in ratios]
            supervised = any(c["supervised"] for c in found if c)
            label, escaped = f"{row.name} (`{tables[row.table].name}`)", row.settings.replace("|", "\\|")
            key = _row_key(label, escaped)
            texts = []
            for r, c in zip(ratios, found):
                pub = c["published"] if c else None
                text = _ours(c, main) if c else "—"
                if c and not c["seeds"] and not c["stale"] and (old := kept.get((key, _ours_label(r)))):
                    text = old[0] if old[0].endswith(EARLIER) else f"{old[0]} {EARLIER}"
                    supervised, marked = supervised or old[1], True
                texts += [text, "—" if pub is None else f"{pub:.2f}"]
            name = f"{row.name}{SUPERVISED_NAME}" if supervised else row.name
            settings = (SUPERVISED_SETTINGS if supervised else "") + escaped
            md.append(f"| {name} (`{tables[row.table].name}`) | {settings} | " + " | ".join(texts) + " |")
        md.append("")
    if marked:
        md += [f"{EARLIER} Collected on an earlier machine: this one has no run folder for the cell (the bench command "
               "of its table reproduces it).", ""]
    absent = [path for path, table in tables.items() if not _has_runs(table)]
    if absent:
        md += ["Not collected here (no run folders): " + ", ".join(f"`{p}`" for p in absent) + ".", ""]
    stale = {p: n for p in tables if (n := sum(c["stale"] for c in cells[p].values()))}
    if stale:
        md += ["Left out as stale (finished under another config; run the table again to refresh them): "
               + ", ".join(f"`{p}` ({n} left out)" for p, n in stale.items()) + ".", ""]
    return "\n".join(md)


def update(spec: str | Path = DEFAULT_SPEC, out: str | Path = DEFAULT_OUT, log=print,
           keep_earlier: bool = True) -> Path:
    """Rewrite the block between the markers of ``out`` (atomically); the rest of the file stays byte for byte.
    ``keep_earlier``: cells with no run folder here keep the block's previous values (marked); off, they are dashes."""
    out = Path(out)
    text = out.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ConfigError(f"{out}: needs one '{BEGIN}' line and, after it, one '{END}' line: the scoreboard "
                          "replaces what lies between them; add them where the scoreboard goes")
    head, rest = text.split(BEGIN)
    old, tail = rest.split(END)
    write_text(out, f"{head}{BEGIN}\n{render_block(spec, log, old if keep_earlier else '')}{END}{tail}")
    return out

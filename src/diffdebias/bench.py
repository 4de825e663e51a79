"""Benchmark matrices: methods x conflict ratios x seeds, run (or skipped) one by one, then collected into tables.

Each cell is an ordinary run directory, so a killed matrix restarts where it stopped (finished stages are skipped)
and ``--shard i/n`` lets several machines split the matrix by taking every n-th cell.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, load_config, moved
from .evaluation.metrics import METRIC_NAMES, headline_metrics
from .evaluation.published import PUBLISHED_NAMES, published
from .fields import execution_keys, marked_keys
from .methods import method_settings
from .runs import read_json, write_text

METRICS = ("unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy")  # collected for every dataset, beside
# the metrics its benchmark reports (evaluation.metrics.HEADLINE_METRICS): the table is drawn for the first of those
# Bias-conflicting detection on the training set (DDB's amplifier; metrics.json "detection" and, for the real-data
# reference amplifiers, "detection_references"): column -> path in metrics.json.
DETECTION = {"detection_auroc": ("detection", "auroc"), "detection_precision": ("detection", "precision"),
             "detection_recall": ("detection", "recall"),
             "reference_erm_auroc": ("detection_references", "erm_real", "auroc"),
             "reference_gce_auroc": ("detection_references", "gce_real", "auroc")}


@dataclass
class Table:
    name: str
    dataset: str
    methods: dict[str, str]  # method label -> config file (relative to the table file)
    ratios: list[float]
    seeds: list[int]
    out: str
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    tables_dir: str = "tables"
    root: Path = Path(".")

    def cells(self) -> list[tuple[str, float, int]]:
        """Ratio, then seed, then method: every (ratio, seed) finishes all its methods (which may share stages)
        before the next one starts, so a partial matrix already compares methods."""
        return [(m, r, s) for r in self.ratios for s in self.seeds for m in self.methods]

    def run_dir(self, method: str, ratio: float, seed: int) -> Path:
        return Path(self.out) / method / f"ratio{ratio:g}-seed{seed}"


def load_table(path: str | Path) -> Table:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"table file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    known = {"name", "dataset", "methods", "ratios", "seeds", "out", "overrides", "method_overrides", "tables_dir"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: unknown table key '{key}' (known: {', '.join(sorted(known))})")
    for key in ("methods", "ratios", "seeds"):
        if not data.get(key):
            raise ConfigError(f"{path}: '{key}' is required")
    name = data.get("name", path.stem)
    return Table(name=name, dataset=data.get("dataset", "cmnist"), methods=dict(data["methods"]),
                 ratios=[float(r) for r in data["ratios"]], seeds=[int(s) for s in data["seeds"]],
                 out=data.get("out", f"runs/bench/{name}"), overrides=list(data.get("overrides", [])),
                 method_overrides={k: list(v) for k, v in (data.get("method_overrides") or {}).items()},
                 tables_dir=data.get("tables_dir", "tables"), root=path.parent)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``i/n``, or ``auto``: this process's shard from the environment (:func:`auto_shard`); no shard is ``0/1``."""
    if not text:
        return 0, 1
    if text == "auto":
        return auto_shard(os.environ)[0]
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as e:
        raise ConfigError(f"--shard must look like i/n (0 <= i < n), got '{text}'") from e
    if not 0 <= i < n:
        raise ConfigError(f"--shard must look like i/n (0 <= i < n), got '{text}'")
    return i, n


def auto_shard(env: Mapping[str, str]) -> tuple[tuple[int, int], bool]:
    """The shard of a Slurm array task (``SLURM_ARRAY_TASK_ID`` among ``SLURM_ARRAY_TASK_COUNT`` tasks, or from
    ``SLURM_ARRAY_TASK_MIN``/``MAX``), else of a launcher's process (``RANK`` among ``WORLD_SIZE``), and whether it is
    the latter: the launcher's processes then run their own cells, each alone."""
    try:
        if "SLURM_ARRAY_TASK_ID" in env:
            low = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            count = env.get("SLURM_ARRAY_TASK_COUNT") or int(env["SLURM_ARRAY_TASK_MAX"]) - low + 1
            shard, source = (int(env["SLURM_ARRAY_TASK_ID"]) - low, int(count)), "SLURM_ARRAY_TASK_*"
        elif "RANK" in env and "WORLD_SIZE" in env:
            shard, source = (int(env["RANK"]), int(env["WORLD_SIZE"])), "RANK/WORLD_SIZE"
        else:
            raise ConfigError("--shard auto reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (a Slurm job array) "
                              "or RANK and WORLD_SIZE (torchrun or another launcher), and neither is set; give "
                              "--shard i/n instead")
    except (KeyError, ValueError) as e:
        raise ConfigError(f"--shard auto: cannot read the shard from the environment ({type(e).__name__}: {e})") from e
    if not 0 <= shard[0] < shard[1]:
        raise ConfigError(f"--shard auto: {source} gives shard {shard[0]} of {shard[1]}; a Slurm array must be a "
                          f"range with step 1 (--array=0-N)")
    return shard, source == "RANK/WORLD_SIZE"


def cell_config(table: Table, method: str, ratio: float, seed: int) -> Config:
    overrides = [*table.overrides, *table.method_overrides.get(method, []), f"data.conflict_ratio={ratio}"]
    return load_config(table.root / table.methods[method], overrides, seed=seed)


def parse_subset(table: Table, methods: str | None = None, ratios: str | None = None,
                 seeds: str | None = None) -> set[tuple[str, float, int]] | None:
    """The cells a ``--methods a,b --ratios 0.01 --seeds 2,3`` subset names (None: the whole matrix). Each value must
    be one of the table's, so a partial run is always a part of the table, in its run folders and its stage cache."""
    if methods is None and ratios is None and seeds is None:
        return None

    def pick(flag: str, text: str | None, known: list, parse) -> list:
        if text is None:
            return known
        try:
            wanted = [parse(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as e:
            raise ConfigError(f"{flag} must be a comma-separated list, got '{text}'") from e
        unknown = [v for v in wanted if v not in known]
        if unknown or not wanted:
            has = ", ".join(f"{k:g}" if isinstance(k, float) else str(k) for k in known)
            raise ConfigError(f"{flag} {text}: table {table.name} has {has}")
        return wanted

    keep = (pick("--methods", methods, list(table.methods), str), pick("--ratios", ratios, table.ratios, float),
            pick("--seeds", seeds, table.seeds, int))
    return {(m, r, s) for m in keep[0] for r in keep[1] for s in keep[2]}


def run_table(table: Table, shard: tuple[int, int] = (0, 1), log=print,
              subset: set[tuple[str, float, int]] | None = None) -> None:
    """Run this shard's cells in matrix order, only those of ``subset`` where given (:func:`parse_subset`); every
    cell's finished stages are skipped."""
    from .pipeline import execute

    i, n = shard
    cells = [c for c in table.cells() if subset is None or c in subset][i::n]
    for k, (method, ratio, seed) in enumerate(cells):
        cfg = cell_config(table, method, ratio, seed)
        out = table.run_dir(method, ratio, seed)
        log(f"[bench {table.name}] cell {k + 1}/{len(cells)}: {method} ratio={ratio:g} seed={seed} -> {out}")
        execute(cfg, out, quiet=True, stage_cache=Path(table.out) / "_stages")


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# Settings that change where and how fast a run goes, not its protocol (the config's execution fields), switches
# for side measurements that change none of the method's numbers (its side fields), and the run's label (a config
# file that only names a set of overrides runs the same protocol).
EXECUTION_KEYS = frozenset(execution_keys(Config()))
IGNORED_KEYS = EXECUTION_KEYS | marked_keys(Config(), "side") | {"name"}


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose value differs between a run's saved config and the one its table resolves now. A key on one
    side only is an option added or retired since, not a difference; nor is an execution setting."""
    out = []
    for key in saved.keys() & current.keys():
        a, b, name = saved[key], current[key], prefix + key
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{name}.")
        elif a != b and name not in IGNORED_KEYS:
            out.append(name)
    return sorted(out)


def finished_runs(table: Table, method: str, ratio: float, log=print) -> tuple[list[dict[str, Any]], int]:
    """The metrics of the cell's finished seeds whose saved config is the one the table runs now, and how many
    finished seeds were left out as stale (run under another config: run the table again to refresh them). Only the
    sections the method reads are compared, so a default changed in another method's section keeps the cell; a key
    that moved since the run (config.MOVED) is compared under its new name."""
    found, stale = [], 0
    for seed in table.seeds:
        run = table.run_dir(method, ratio, seed)
        if not (run / "metrics.json").exists():
            continue
        saved = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
        saved = moved(saved or {}, warn=False, saved=True)
        current = method_settings(cell_config(table, method, ratio, seed))
        diff = config_differences(saved, current)
        if diff:
            stale += 1
            log(f"[bench {table.name}] left out {run}: run under another config ({', '.join(diff[:5])})")
            continue
        metrics = read_json(run / "metrics.json")
        for key, settings in SIDE_SETTINGS.items():  # a side measurement taken under other settings is not this one
            if saved and key in metrics and any(_dig(saved, path, legacy) != _dig(current, path, legacy)
                                                for path, legacy in settings.items()):
                del metrics[key]
        found.append(metrics)
    return found, stale


# The settings a side measurement's metrics depend on, each with the value a config saved before it existed ran
# under. A cell's run made under other values keeps its place in the table (side settings change none of the
# method's numbers) but not in that measurement's columns.
SIDE_SETTINGS = {"detection_references": {("ddb", "reference_epochs"): 2, ("ddb", "reference_gce_epochs"): None,
                                          ("ddb", "reference_recipe"): "amplifier"}}


def table_metrics(table: Table) -> tuple[str, ...]:
    """The test metrics a table collects: :data:`METRICS`, then those its dataset's benchmark reports."""
    return METRICS + tuple(m for m in headline_metrics(table.dataset) if m not in METRICS)


def collect(table: Table, log=print) -> list[dict[str, Any]]:
    """One row per (method, ratio): mean and std over the finished seeds of each metric, in %."""
    rows = []
    for method in table.methods:
        for ratio in table.ratios:
            found, stale = finished_runs(table, method, ratio, log)
            row: dict[str, Any] = {"method": method, "ratio": ratio, "seeds": len(found)}
            for metric in table_metrics(table):  # null (undefined) values are left out
                m, s = mean_std([100 * v for f in found if (v := f["test"].get(metric)) is not None])
                row[metric], row[metric + "_std"] = m, s
            for column, path in DETECTION.items():  # references may have run for some seeds only (a side switch)
                values = [float(v) for f in found if (v := _dig(f, path)) is not None]
                row[column], row[column + "_std"] = mean_std(values)
                row[column + "_seeds"] = len(values)
            # a run whose stages all came from the cache computed nothing: it says nothing of the time
            row["seconds"] = mean_std([t for f in found if (t := sum(f.get("stage_seconds", {}).values())) > 0])[0]
            row["supervised"] = any(f.get("supervised") for f in found)
            cfg_method = method.split("@")[0]
            row["published"] = published(table.dataset, cfg_method, ratio)
            row["stale"] = stale
            rows.append(row)
    return rows


def _dig(tree: dict[str, Any], path: Sequence[str], missing: Any = None) -> Any:
    """The value at ``path`` in nested dicts (a run's metrics or saved config), or ``missing`` where it has none."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return missing
        tree = tree[key]
    return tree


def _label(method: str, rows: list[dict[str, Any]], supervised_mark: str = " (supervised)") -> str:
    """The method's name in tables and plots; runs that read bias labels (true groups) are marked as supervised."""
    name = PUBLISHED_NAMES.get(method, method)
    return name + supervised_mark if any(r["supervised"] for r in rows if r["method"] == method) else name


def _cell(row: dict[str, Any], metric: str, digits: int = 2) -> str:
    """``mean ± std``; a cell with one finished seed has no spread to show, so it says so instead of ``± 0.00``,
    and a metric measured on fewer seeds than the row's says on how many."""
    m, s, n = row[metric], row[metric + "_std"], row.get(metric + "_seeds", row["seeds"])
    if math.isnan(m):
        return "—"
    if n == 1:
        return f"{m:.{digits}f} (1 seed)"
    return f"{m:.{digits}f} ± {s:.{digits}f}" + (f" ({n} seeds)" if n != row["seeds"] else "")


def render(table: Table, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Markdown, CSV and LaTeX of the table of the dataset's main headline metric (Colored MNIST: unbiased accuracy)
    with published numbers beside ours, and its other headline metrics (UrbanCars' gaps) in a table of their own."""
    by = {(r["method"], r["ratio"]): r for r in rows}
    main, *others = headline_metrics(table.dataset)
    ratios = table.ratios
    head = " | ".join(f"{100 * r:g} % ours | pub." for r in ratios)
    md = [f"| method | {head} |", "|---|" + "---|---|" * len(ratios)]
    tex = ["\\begin{tabular}{l" + "cc" * len(ratios) + "}", "method & " +
           " & ".join(f"{100 * r:g}\\% & pub." for r in ratios) + " \\\\", "\\hline"]
    for method in table.methods:
        cells = []
        for r in ratios:
            row = by[(method, r)]
            pub = row["published"]
            cells += [_cell(row, main), "—" if pub is None else f"{pub:.2f}"]
        md.append(f"| {_label(method, rows, ' (*supervised*)')} | " + " | ".join(cells) + " |")
        tex_cells = (c.replace("±", "$\\pm$").replace("—", "--") for c in cells)
        tex.append(f"{_label(method, rows)} & " + " & ".join(tex_cells) + " \\\\")
    tex.append("\\end{tabular}")
    if main != "unbiased_accuracy":
        md = [f"Test {METRIC_NAMES.get(main, main)} (%), mean ± std (the metric {table.dataset} reports):", "", *md]
    if others:
        md += ["", "The other metrics the benchmark reports (test, %, mean ± std):", "",
               "| method | ratio | " + " | ".join(METRIC_NAMES.get(m, m) for m in others) + " |",
               "|---|---|" + "---|" * len(others)]
        for row in rows:
            md.append(f"| {_label(row['method'], rows, ' (*supervised*)')} | {100 * row['ratio']:g} % | "
                      + " | ".join(_cell(row, m) for m in others) + " |")
    md += ["", "Aligned / conflicting test accuracy (%), mean ± std; seeds per cell; mean run time (s):", "",
           "| method | ratio | aligned | conflicting | seeds | seconds |", "|---|---|---|---|---|---|"]
    for row in rows:
        md.append(f"| {_label(row['method'], rows, ' (*supervised*)')} | {100 * row['ratio']:g} % | "
                  f"{_cell(row, 'aligned_accuracy')} | {_cell(row, 'conflicting_accuracy')} | {row['seeds']} | "
                  f"{'—' if math.isnan(row['seconds']) else format(row['seconds'], '.0f')} |")
    detected = [row for row in rows if not math.isnan(row["detection_auroc"])]
    if detected:
        md += ["", "Bias-conflicting detection on the training set (the method's amplifier and rule: AUROC of its "
               "loss, precision and recall of the flagged set), with the real-data reference amplifiers' AUROC:", "",
               "| method | ratio | AUROC | precision | recall | ERM reference AUROC | GCE reference AUROC |",
               "|---|---|---|---|---|---|---|"]
        for row in detected:
            cells = [_cell(row, c, 4 if "auroc" in c else 3) for c in DETECTION]
            md.append(f"| {_label(row['method'], rows, ' (*supervised*)')} | {100 * row['ratio']:g} % | "
                      + " | ".join(cells) + " |")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    return {"md": "\n".join(md) + "\n", "csv": buf.getvalue(), "tex": "\n".join(tex) + "\n"}


def plot(table: Table, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluation.report import save_figure

    main = headline_metrics(table.dataset)[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in table.methods:
        pts = [(100 * r["ratio"], r[main], r[main + "_std"]) for r in rows
               if r["method"] == method and not math.isnan(r[main])]
        if pts:
            x, y, e = zip(*pts)
            line = ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=_label(method, rows))
            pub = [(100 * r["ratio"], r["published"]) for r in rows if r["method"] == method and r["published"]]
            if pub:
                ax.plot(*zip(*pub), linestyle="none", marker="x", markersize=8, color=line[0].get_color())
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks([100 * r for r in table.ratios], [f"{100 * r:g}" for r in table.ratios])
    ax.set_xlabel("bias-conflicting samples in training (%)")
    what = "unbiased test accuracy" if main == "unbiased_accuracy" else f"test {METRIC_NAMES.get(main, main)}"
    ax.set_ylabel(f"{what} (%); x: published")
    ax.set_title(table.name)
    ax.legend()
    save_figure(fig, path)


def write_tables(table: Table, log=print) -> Path:
    rows = collect(table, log)
    out = Path(table.tables_dir)
    for ext, text in render(table, rows).items():
        write_text(out / f"{table.name}.{ext}", text)
    plot(table, rows, out / f"{table.name}.png")
    return out / f"{table.name}.md"

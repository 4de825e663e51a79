"""The run report: a Markdown page with the accuracy table, published numbers beside ours, and figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from ..runs import atomic_path, read_json, write_text
from .metrics import METRIC_NAMES, headline_metrics
from .published import PUBLISHED_NAMES, published

METRIC_COLUMNS = [
    ("accuracy", "accuracy"),
    ("unbiased_accuracy", "unbiased"),
    ("aligned_accuracy", "aligned"),
    ("conflicting_accuracy", "conflicting"),
    ("worst_group_accuracy", "worst group"),
]


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def pct(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def metrics_table(metrics: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
    """The accuracy table of the valid and test splits: :data:`METRIC_COLUMNS`, then the ``extra`` metrics (those the
    dataset's benchmark reports, where not among them)."""
    known = {k for k, _ in METRIC_COLUMNS}
    columns = METRIC_COLUMNS + [(k, METRIC_NAMES.get(k, k)) for k in extra if k not in known]
    lines = ["| split | " + " | ".join(name for _, name in columns) + " |", "|---|" + "---|" * len(columns)]
    for split in ("valid", "test"):
        if split in metrics:
            lines.append(f"| {split} | " + " | ".join(pct(metrics[split].get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def headline_line(metrics: dict[str, Any]) -> str:
    """The test metrics the dataset's benchmark reports (``HEADLINE_METRICS``), in bold."""
    names = headline_metrics(metrics["dataset"], metrics.get("test"))
    values = ", ".join(f"{METRIC_NAMES.get(k, k)} **{pct(metrics.get('test', {}).get(k))}**" for k in names)
    return f"What the {metrics['dataset']} benchmark reports (test, %): {values}."


def curves_figure(history: list[dict[str, Any]], path: Path, title: str) -> bool:
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    a.set_xlabel("epoch")
    a.set_yscale("log")
    a.legend()
    b.plot(epochs, [h["train_accuracy"] for h in history], label="train accuracy")
    ev = [h for h in history if "valid" in h]
    for key, name in (("accuracy", "valid accuracy"), ("unbiased_accuracy", "valid unbiased")):
        if ev and key in ev[0]["valid"]:
            b.plot([h["epoch"] + 1 for h in ev], [h["valid"][key] for h in ev], label=name)
    b.set_xlabel("epoch")
    b.set_ylim(0, 1.01)
    b.legend()
    fig.suptitle(title)
    save_figure(fig, path)
    return True


def sample_weights_section(history: list[dict[str, Any]], path: Path,
                           detectors: dict[str, float] | None = None) -> list[str]:
    """Report lines and figure for an LfF-style weighting's per-epoch ``sample_weights`` record (training history):
    mean W of the bias-aligned and bias-conflicting training samples, their 10-90th percentile band, and the ratio
    of the means; nothing when the history has no such record (another method, or no bias labels).

    Where the record ranks the conflicting samples (``auroc``), a third panel draws that AUROC per epoch, for W and
    for the biased model's loss, beside ``detectors`` (name: AUROC of a fixed detector, e.g. DDB's amplifier), so a
    reader sees whether the biased model that trains beside the target already detects as well as they do."""
    rows = [h for h in history if "ratio" in h.get("sample_weights", {})]
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    epochs = [h["epoch"] + 1 for h in rows]
    sw = [h["sample_weights"] for h in rows]
    ranked = [(e, s) for e, s in zip(epochs, sw) if "auroc" in s]
    detectors = detectors or {}
    fig, axes = plt.subplots(1, 3 if ranked else 2, figsize=(15 if ranked else 10, 3.6))
    a, b = axes[0], axes[1]
    for group in ("aligned", "conflicting"):
        line = a.plot(epochs, [s[f"{group}_mean"] for s in sw], marker=".", label=f"{group} (mean)")[0]
        a.fill_between(epochs, [s[f"{group}_p10"] for s in sw], [s[f"{group}_p90"] for s in sw],
                       color=line.get_color(), alpha=0.2, label=f"{group} (10-90th pct)")
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_ylabel("per-sample weight W")
    a.legend(fontsize=8)
    b.plot(epochs, [s["ratio"] for s in sw], marker=".", color="black", label="mean W conflicting / aligned")
    b.axhline(1.0, color="grey", linestyle=":", label="no upweighting")
    b.set_yscale("log")
    b.set_xlabel("epoch")
    b.set_ylabel("effective upweighting")
    b.legend(fontsize=8)
    for ax in (a, b):  # plain numbers; minor ticks labelled only when the axis spans less than a decade
        low, high = ax.get_ylim()
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _, narrow=high < 10 * low: f"{v:.2g}" if narrow else ""))
    if ranked:
        _detection_panel(axes[2], ranked, detectors)
    fig.suptitle("LfF-style sample weights on the training set (true bias groups)")
    fig.tight_layout()
    save_figure(fig, path)
    s = sw[-1]
    return ["## Sample weights W per true bias group", "",
            f"Last epoch ({epochs[-1]}): mean W conflicting {s['conflicting_mean']:.4g} / aligned "
            f"{s['aligned_mean']:.4g} = **{s['ratio']:.3g}x** effective upweighting. Class-max normalised losses "
            f"that form W: L_b (biased model or amplifier) conflicting {s['conflicting_loss_b']:.3g}, aligned "
            f"{s['aligned_loss_b']:.3g}; L_d (target) conflicting {s['conflicting_loss_d']:.3g}, aligned "
            f"{s['aligned_loss_d']:.3g}.{_ranking(sw)}{_against(ranked, detectors)} The training never reads the bias "
            "labels: they only split this record.", "",
            f"![sample weights](figures/{path.name})", ""]


def _ranking(sw: list[dict[str, Any]]) -> str:
    """How well W and the biased model's loss rank the conflicting samples first, at the first and last epoch that
    recorded it (a run resumed across the version that added the record has it from some epoch on; older: nothing)."""
    ranked = [s for s in sw if "auroc" in s]
    if not ranked:
        return ""
    first, last = ranked[0], ranked[-1]
    return (f" AUROC of W for the conflicting samples {first['auroc']:.4f} (first epoch recorded) -> "
            f"{last['auroc']:.4f} (last); of the biased model's loss {first['auroc_loss_b']:.4f} -> "
            f"{last['auroc_loss_b']:.4f}.")


def _detection_panel(ax, ranked: list[tuple[int, dict[str, Any]]], detectors: dict[str, float]) -> None:
    epochs = [e for e, _ in ranked]
    ax.plot(epochs, [s["auroc_loss_b"] for _, s in ranked], marker=".", label="biased model's loss")
    ax.plot(epochs, [s["auroc"] for _, s in ranked], marker=".", label="W")
    for (name, value), style in zip(detectors.items(), (":", "--", "-.", (0, (1, 3)))):
        ax.axhline(value, color="grey", linestyle=style, label=f"{name} ({value:.3f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("AUROC for the conflicting samples")
    ax.legend(fontsize=8)


def _against(ranked: list[tuple[int, dict[str, Any]]], detectors: dict[str, float]) -> str:
    """Per fixed detector: the first epoch from which the biased model's loss ranks the conflicting samples at least as
    well, or that it never does."""
    if not ranked or not detectors:
        return ""
    said = []
    for name, value in detectors.items():
        first = next((epoch for epoch, s in ranked if s["auroc_loss_b"] >= value), None)
        said.append(f"{name} ({value:.4f}): " + (f"reached from epoch {first}" if first else "never reached"))
    return " The biased model's loss against fixed detectors: " + "; ".join(said) + "."


def groups_figure(metrics: dict[str, Any], path: Path) -> bool:
    test = metrics.get("test", {})
    if "group_accuracy" not in test:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    acc = np.array(test["group_accuracy"])
    count = np.array(test["group_count"])
    acc = np.where(count > 0, acc, np.nan)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * acc.shape[1], 0.8 + 0.45 * acc.shape[0]))
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis")
    ax.set_xlabel("bias value")
    ax.set_ylabel("label")
    ax.set_title("test accuracy per (label, bias) cell")
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)
    return True


FIXED_DETECTORS = {"detection": "amplifier", "ddb_detection": "amplifier", "be_pseudo_conflicting": "committee"}


def fixed_detectors(metrics: dict[str, Any]) -> dict[str, float]:
    """AUROC of the detectors a run scored before its classifier trained: DDB's amplifier (its own run's, or the one
    plugged into another method), LfF+BE's committee, and DDB's real-data references (metrics.json)."""
    found = {}
    for key, name in FIXED_DETECTORS.items():
        if isinstance(metrics.get(key), dict) and "auroc" in metrics[key]:
            found[name] = metrics[key]["auroc"]
    for name, det in metrics.get("detection_references", {}).items():
        if "auroc" in det:
            found[f"{name} reference"] = det["auroc"]
    return found


def write_report(run_dir: str | Path, sections: list[str] = ()) -> Path:
    """Write ``report.md`` and ``figures/`` from the files a run left; cheap, so it is rewritten on every call."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    figures = run_dir / "figures"
    method = metrics["method"]
    out = [f"# {cfg['name']}: {method} on {metrics['dataset']}", ""]
    facts = [f"seed {metrics['seed']}"]
    if metrics.get("conflict_ratio") is not None:
        facts.append(f"conflict ratio {100 * metrics['conflict_ratio']:g} %")
    sel = metrics.get("selection", {})
    rule = (f"best valid {sel.get('metric')} (epoch {sel.get('epoch', 0) + 1})" if sel.get("select") == "valid"
            else f"last epoch ({sel.get('epoch', 0) + 1})")
    facts.append(f"model selection: {rule}; the test split is never used for selection")
    headline = headline_metrics(metrics["dataset"], metrics.get("test"))
    out += ["- " + "\n- ".join(facts), "", "## Accuracy (%)", "", metrics_table(metrics, headline), "",
            headline_line(metrics), ""]
    members = metrics.get("members", [])
    if members:
        alone = [m["test"].get("unbiased_accuracy", math.nan) for m in members]
        mean = sum(alone) / len(alone)
        out += [f"The final model averages the softmax of {len(members)} classifiers trained alike "
                f"(`ensemble`); alone they score {', '.join(pct(a) for a in alone)} test unbiased "
                f"(mean {pct(mean)}).", ""]

    ref = published(metrics["dataset"], method, metrics.get("conflict_ratio") or -1)
    if ref is not None:
        main = headline[0]
        ours = metrics["test"].get(main)
        what = "unbiased test accuracy" if main == "unbiased_accuracy" else f"test {METRIC_NAMES.get(main, main)}"
        out += [f"Published {PUBLISHED_NAMES.get(method, method)} {what} at this ratio: **{ref:.2f}** "
                f"(DiffInject Table 1); ours: **{pct(ours)}**.", ""]
    out += list(sections)
    final = metrics.get("final_stage")
    history_file = run_dir / str(final) / "history.json"
    history = read_json(history_file) if final and history_file.exists() else []
    if curves_figure(history, figures / "curves.png", f"{final} training"):
        out += ["## Training curves", "", "![training curves](figures/curves.png)", ""]
    out += sample_weights_section(history, figures / "sample_weights.png", fixed_detectors(metrics))
    if groups_figure(metrics, figures / "groups.png"):
        out += ["## Accuracy per (label, bias) cell", "", "![group accuracy](figures/groups.png)", ""]
    seconds = metrics.get("stage_seconds", {})
    if seconds:
        out += ["## Stage times (s, last computed)", "", "| stage | seconds |", "|---|---|"]
        out += [f"| {k} | {v:.1f} |" for k, v in seconds.items()] + [""]
    out += ["Files: `config.yaml` (resolved config), `metrics.json`, one folder per stage.", ""]
    path = run_dir / "report.md"
    write_text(path, "\n".join(out))
    return path

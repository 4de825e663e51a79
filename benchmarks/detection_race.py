"""Which biased model detects the bias-conflicting samples better, and from which epoch: the per-epoch AUROC of the
biased model's loss (the ``sample_weights`` record of LfF-style runs) for several finished runs, beside the AUROC of
DDB's amplifier where a run has one. Reads bias labels only through the runs' records (evaluation, not training).

    python benchmarks/detection_race.py runs/fm/lff_cosine/ratio0.05-seed* \
        runs/fm/recipe2_trained_cosine/ratio0.05-seed* --out docs/figures/detection_race_corrupted_fmnist_5pct.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffdebias.evaluation.report import fixed_detectors, save_figure
from diffdebias.runs import read_json


def race(run: Path) -> tuple[list[int], list[float], dict[str, float]]:
    """Epochs and the biased model's loss AUROC at each, and the run's fixed detectors (amplifier, references)."""
    metrics = read_json(run / "metrics.json")
    history = read_json(run / str(metrics["final_stage"]) / "history.json")
    rows = [h for h in history if "auroc_loss_b" in h.get("sample_weights", {})]
    if not rows:
        raise SystemExit(f"{run}: its {metrics['final_stage']}/history.json has no per-epoch detection record "
                         "(not an LfF-style run, or a dataset without bias labels)")
    return [h["epoch"] + 1 for h in rows], [h["sample_weights"]["auroc_loss_b"] for h in rows], fixed_detectors(metrics)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="figure to write (PNG)")
    args = ap.parse_args(argv)
    races = {run: race(run) for run in args.runs}
    print("| run | AUROC epoch 1 | epoch 5 | best (epoch) | last | amplifier |")
    print("|---|---|---|---|---|---|")
    for run, (epochs, auc, fixed) in races.items():
        best = max(range(len(auc)), key=auc.__getitem__)
        at5 = f"{auc[4]:.4f}" if len(auc) > 4 else "-"
        amp = f"{fixed['amplifier']:.4f}" if "amplifier" in fixed else "-"
        print(f"| {run.parent.name}/{run.name} | {auc[0]:.4f} | {at5} | {auc[best]:.4f} ({epochs[best]}) | "
              f"{auc[-1]:.4f} | {amp} |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        colours = {}
        for run, (epochs, auc, fixed) in races.items():
            method = run.parent.name
            first = method not in colours  # one legend entry per method
            colour = colours.setdefault(method, f"C{len(colours)}")
            ax.plot(epochs, auc, color=colour, marker=".", label=f"{method}: biased model's loss" if first else None)
            if "amplifier" in fixed:
                ax.axhline(fixed["amplifier"], color=colour, linestyle=":", linewidth=1,
                           label=f"{method}: its amplifier, frozen" if first else None)
        ax.set_xlabel("epoch of the target's training")
        ax.set_ylabel("AUROC for the bias-conflicting samples")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, args.out)


if __name__ == "__main__":
    main()

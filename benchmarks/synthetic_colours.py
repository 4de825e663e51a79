"""Which colours does a DiffInject run on Colored MNIST put on which digits, and how close are they to the real ones?

For each finished run: the share of useful synthetic images (the label's digit, read by the run's grey shape
classifier, in another class's colour); how far their stroke colour lies from the nearest palette colour, next to
the same distance for the real training images (a synthetic shade that no real image has teaches the classifier
little about the real conflicting images); and how the useful images cover the 90 (digit, other colour) cells of
the unbiased test set, with the run's final classifier's test accuracy on the conflicting cells the useful images
fill least and most (bottom and top third by count). ``--figure`` draws each run's coverage as a heat map. It reads
the colour, the bias: a diagnostic, not a filter.

    python benchmarks/synthetic_colours.py runs/di/mean-ts400-r10-s1 runs/di/cpu-s1 --figure docs/diffinject_colours.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def coverage(labels: torch.Tensor, colours: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """(classes, classes) counts of images per (label, colour)."""
    return torch.bincount(labels * classes + colours, minlength=classes * classes).view(classes, classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished DiffInject run directories on Colored MNIST")
    parser.add_argument("--figure", type=Path, help="write the (digit, colour) coverage heat maps here")
    args = parser.parse_args()

    from diffdebias.classifiers.train import load_classifier, predict_logits
    from diffdebias.data.cmnist import COLORS
    from diffdebias.evaluation.amplification import nearest_color, stroke_colors
    from diffdebias.runs import Stage, load_tensors
    from injection_probe import load_probe

    def offsets(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = stroke_colors(images)
        nearest = nearest_color(rgb)
        return nearest, (rgb - COLORS[nearest]).norm(dim=1)

    print("run  useful  offset real (median / p90)  offset useful synthetic (median / p90)  "
          "empty cells of 90  least / most filled cell  test accuracy in the least / most filled third")
    maps = []
    for run in args.runs:
        p = load_probe(run)
        t, _ = load_tensors(run / "injection" / "injected.safetensors")
        images = t["images"]
        labels = p.train.labels[t[p.cfg.diffinject.label_source]]
        colour, offset = offsets(images)
        useful = (p.digits(images) == labels) & (colour != labels)
        _, real_offset = offsets(p.train.images)
        cells = coverage(labels[useful], colour[useful])
        off = cells[~torch.eye(10, dtype=torch.bool)]
        test = p.test
        final = load_classifier(Stage("classifier", run / "classifier", "", seed=0, log=print), p.cfg.classifier)
        hit = (predict_logits(final, test.images).argmax(1) == test.labels).double()
        cell = test.labels * 10 + test.bias
        accuracy = torch.zeros(100, dtype=torch.double).index_add_(0, cell, hit) / torch.bincount(cell, minlength=100)
        accuracy = accuracy.view(10, 10)[~torch.eye(10, dtype=torch.bool)]
        order = off.argsort()
        third = len(order) // 3
        maps.append((run.name, cells))
        print(f"{run.name}  {float(useful.double().mean()):.3f}  "
              f"{float(real_offset.median()):.3f} / {float(real_offset.quantile(0.9)):.3f}  "
              f"{float(offset[useful].median()):.3f} / {float(offset[useful].quantile(0.9)):.3f}  "
              f"{int((off == 0).sum())}  {int(off.min())} / {int(off.max())}  "
              f"{100 * float(accuracy[order[:third]].mean()):.1f} / {100 * float(accuracy[order[-third:]].mean()):.1f}",
              flush=True)
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from diffdebias.evaluation.report import save_figure

        fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.2), squeeze=False)
        for ax, (name, cells) in zip(axes[0], maps):
            ax.imshow(cells.numpy(), cmap="viridis")
            ax.set(title=name, xlabel="stroke colour (palette index)", ylabel="label", xticks=range(10),
                   yticks=range(10))
        fig.tight_layout()
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()

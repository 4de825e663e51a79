"""Figures and files that show what a bias amplifier found: loss histograms and a ranked gallery."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..data.base import ImageSet
from ..runs import atomic_path
from .report import save_figure

NAMES = {"synthetic": "DDB amplifier (synthetic data)", "erm_real": "ERM on real data", "gce_real": "GCE on real data"}


def loss_histograms(losses: dict[str, torch.Tensor], conflicting: torch.Tensor, path: Path) -> bool:
    """One panel per amplifier: log-loss histogram of aligned vs conflicting real training samples."""
    if not losses or not conflicting.any():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.2), squeeze=False)
    c = conflicting.numpy().astype(bool)
    for ax, (name, loss) in zip(axes[0], losses.items()):
        v = np.log10(np.clip(loss.numpy(), 1e-8, None))
        bins = np.linspace(v.min(), v.max(), 60)
        ax.hist(v[~c], bins=bins, alpha=0.6, density=True, label=f"aligned ({(~c).sum()})")
        ax.hist(v[c], bins=bins, alpha=0.6, density=True, label=f"conflicting ({c.sum()})")
        ax.set_title(NAMES.get(name, name), fontsize=10)
        ax.set_xlabel("log10 cross-entropy")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)
    return True


def ranked_gallery(train: ImageSet, score: torch.Tensor, class_names: list[str], out_dir: Path,
                   top: int = 64) -> Path:
    """``ranked.csv`` (every training sample, most likely bias-conflicting first) and ``top.png`` (the first ones)."""
    from PIL import Image
    from torchvision.utils import make_grid

    order = torch.argsort(score, descending=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "ranked.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "index", "path", "label", "class", "score", "bias"])
        for rank, i in enumerate(order.tolist()):
            y = int(train.labels[i])
            w.writerow([rank + 1, i, train.paths[i] if train.paths else "", y,
                        class_names[y] if y < len(class_names) else y, f"{float(score[i]):.6g}",
                        int(train.bias[i]) if train.bias is not None else ""])
    grid = make_grid(train.images[order[:top]], nrow=16, padding=2, pad_value=128)
    with atomic_path(out_dir / "top.png") as tmp:
        Image.fromarray(grid.permute(1, 2, 0).squeeze(-1).numpy()).save(tmp, format="PNG")
    return path

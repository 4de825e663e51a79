"""DiffInject's pictures: (style, content, result) triples, as in the paper's Figure 2, and the synthetic images a
``diffinject.keep`` filter kept beside those it dropped."""

from __future__ import annotations

from pathlib import Path

import torch


def rows_figure(rows: list[torch.Tensor], path: Path) -> Path:
    """One row per batch of uint8 images, cut to the shortest batch."""
    from ..diffusion.images import make_grid_image, save_png

    n = min(len(r) for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, make_grid_image(torch.cat([r[:n] for r in rows]), max(n, 1)))
    return path


def triples_figure(styles: torch.Tensor, contents: torch.Tensor, results: torch.Tensor, path: Path) -> Path:
    """Three rows of uint8 images -- style images, content images, injected results -- one column per pair."""
    return rows_figure([styles, contents, results], path)


def kept_figure(images: torch.Tensor, keep: torch.Tensor, path: Path, n: int = 16) -> Path:
    """Two rows: the first ``n`` synthetic images a filter kept, then the first ``n`` it dropped."""
    return rows_figure([images[keep][:n], images[~keep][:n]], path)

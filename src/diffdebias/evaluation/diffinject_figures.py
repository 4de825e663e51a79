"""DiffInject's picture: (style, content, result) triples, as in the paper's Figure 2."""

from __future__ import annotations

from pathlib import Path

import torch


def triples_figure(styles: torch.Tensor, contents: torch.Tensor, results: torch.Tensor, path: Path) -> Path:
    """Three rows of uint8 images -- style images, content images, injected results -- one column per pair."""
    from ..diffusion.sampling import make_grid_image, save_png

    n = min(len(styles), len(contents), len(results))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, make_grid_image(torch.cat([styles[:n], contents[:n], results[:n]]), max(n, 1)))
    return path

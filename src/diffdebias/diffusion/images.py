"""Images in and out of the diffusion engine: value ranges, resizing, PNG grids and a synthetic dataset's files.

Kept apart from the sampling loop so that writing or converting images needs neither diffusers nor a model.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from PIL import Image

from ..runs import atomic_path

# ------------------------------------------------------------------------------------------------ value ranges


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[0, 255] uint8 -> [-1, 1] floats (the diffusion models' data range)."""
    return images.float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> [0, 255] uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> uint8 (N, C, size, size): antialiased bilinear down, bilinear up. For
    ``diffusion.image_size``: the U-Net trains and samples at ``size``, the methods see the data's size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    down = size < images.shape[-1]
    parts = [torch.nn.functional.interpolate(images[i : i + chunk].float(), size=(size, size), mode="bilinear",
                                             align_corners=False, antialias=down)
             for i in range(0, len(images), chunk)]
    return torch.cat(parts).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------------------- output


def make_grid_image(images: torch.Tensor, nrow: int) -> Image.Image:
    """uint8 (N, C, H, W) -> one PIL image, ``nrow`` images per row (torchvision's make_grid)."""
    from torchvision.utils import make_grid

    grid = make_grid(images.float() / 255.0, nrow=max(1, nrow), padding=2, pad_value=1.0)
    return to_pil((grid * 255).round().to(torch.uint8))


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) with C in {1, 3} -> PIL image."""
    array = image.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array, "RGB")


def save_png(path: str | os.PathLike, image: Image.Image) -> None:
    """Write ``image`` atomically: an interrupted run leaves no half-written PNG."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def class_grid(images: torch.Tensor, labels: torch.Tensor, per_row: int = 8) -> Image.Image:
    """A grid with one row per class (the first ``per_row`` images of each; blank where a class has fewer)."""
    classes = torch.unique(labels).tolist()
    rows = []
    for c in classes:
        chosen = images[labels == c][:per_row]
        if len(chosen) < per_row:
            blank = torch.full((per_row - len(chosen), *images.shape[1:]), 255, dtype=torch.uint8)
            chosen = torch.cat([chosen, blank])
        rows.append(chosen)
    return make_grid_image(torch.cat(rows), per_row)


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    images: torch.Tensor,
    labels: torch.Tensor,
    seeds: torch.Tensor,
    grid_per_class: int = 8,
    extra_columns: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``<label>/<index>.png`` files, ``grid.png`` (one row per class) and ``synthetic.csv``.

    The CSV has columns ``path,label,seed`` (then ``extra_columns``, e.g. the provenance of each image) with paths
    relative to ``out_dir``; it is written last, so its presence means the folder is complete. Returns the CSV path.
    """
    out_dir = Path(out_dir)
    images = images.cpu()
    labels = torch.as_tensor(labels).cpu().reshape(-1)
    seeds = torch.as_tensor(seeds).cpu().reshape(-1)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
    if not len(images) == len(labels) == len(seeds):
        raise ValueError(f"{len(images)} images, {len(labels)} labels and {len(seeds)} seeds: lengths differ")
    extra = {k: torch.as_tensor(v).cpu().reshape(-1).tolist() for k, v in (extra_columns or {}).items()}
    for k, v in extra.items():
        if len(v) != len(images):
            raise ValueError(f"extra column {k!r} has {len(v)} values for {len(images)} images")
    rows = []
    for i, (image, label, seed) in enumerate(zip(images, labels.tolist(), seeds.tolist())):
        rel = f"{label}/{i:06d}.png"
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        to_pil(image).save(path, format="PNG")
        rows.append((rel, label, seed, *(v[i] for v in extra.values())))
    if len(images):
        save_png(out_dir / "grid.png", class_grid(images, labels, grid_per_class))
    csv_path = out_dir / "synthetic.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "seed", *extra])
        writer.writerows(rows)
    return csv_path

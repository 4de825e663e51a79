"""Sample grids of the LfF-protocol datasets whose bias is drawn onto the image (Corrupted Fashion-MNIST, Corrupted
CIFAR-10, Textured MNIST): one row per class, a few bias-aligned training images (the class's own corruption or
texture) then a few bias-conflicting ones (other values, each named), one PNG per conflict ratio. Builds (or reads
from the cache) the dataset the config describes at each ratio.

    OMP_NUM_THREADS=1 python benchmarks/corrupted_grid.py configs/corrupted_fmnist/erm.yaml --out docs/figures
    OMP_NUM_THREADS=1 python benchmarks/corrupted_grid.py configs/textured_mnist/erm.yaml --ratios 0.01
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

PAD = 2  # make_grid_image's padding


def bias_names(dataset: str) -> tuple[str, tuple[str, ...]]:
    """What the bias of ``dataset`` is called, and the name of each of its values."""
    if dataset == "textured_mnist":
        from diffdebias.data.textured import NAMES

        return "texture", NAMES
    if dataset in ("corrupted_cifar10", "corrupted_fmnist"):
        from diffdebias.data.corruptions import NAMES

        return "corruption", NAMES
    raise SystemExit(f"{dataset}: not a dataset with a drawn-on bias (corrupted_cifar10, corrupted_fmnist, "
                     f"textured_mnist)")


def pick(labels: torch.Tensor, bias: torch.Tensor, per: int, c: int) -> tuple[list[int], list[int]]:
    """The first ``per`` aligned training images of class ``c``, and the first image of each of ``per`` other
    bias values, spread over the nine (starting after ``c``, so the rows together show all of them)."""
    idx = (labels == c).nonzero().squeeze(1).tolist()
    aligned = [i for i in idx if int(bias[i]) == c][:per]
    first: dict[int, int] = {}
    for i in idx:
        first.setdefault(int(bias[i]), i)
    others = [b for b in ((c + 1 + k) % 10 for k in range(9)) if b in first]
    spread = sorted({others[j * len(others) // per] for j in range(per)} if len(others) >= per else set(others),
                    key=others.index)
    return aligned, [first[b] for b in spread]


def labelled_grid(split, class_names: list[str], bias: tuple[str, tuple[str, ...]], per: int, scale: int,
                  title: str) -> Image.Image:
    """``bias``: what the bias is called and its values' names (:func:`bias_names`)."""
    from diffdebias.diffusion.images import make_grid_image

    noun, values = bias
    blank = torch.full(split.images.shape[1:], 255, dtype=torch.uint8)
    tiles, names = [], []
    for c in range(len(class_names)):
        aligned, conflicting = pick(split.labels, split.bias, per, c)
        row = [split.images[i] for i in aligned] + [blank] * (per - len(aligned))
        row += [split.images[i] for i in conflicting] + [blank] * (per - len(conflicting))
        tiles += row
        names.append([values[int(split.bias[i])] for i in conflicting])
    grid = make_grid_image(torch.stack(tiles), 2 * per)
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    cell = (split.images.shape[-1] + PAD) * scale
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
    left, top = 230, 56
    canvas = Image.new("RGB", (left + grid.width, top + grid.height), "white")
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill="black", font=font)
    draw.text((left + PAD * scale, 32), f"aligned (the class's own {noun}) x{per}", fill="black", font=small)
    draw.text((left + per * cell + PAD * scale, 32), f"conflicting (other {noun}s) x{per}", fill="black",
              font=small)
    for c, name in enumerate(class_names):
        y = top + c * cell + cell // 2 - 16
        draw.text((8, y), name if name == str(c) else f"{c} {name}", fill="black", font=font)  # digits: once
        draw.text((8, y + 18), f"aligned: {values[c]}", fill=(90, 90, 90), font=small)
        for j, value in enumerate(names[c]):
            x0, y0 = left + (per + j) * cell + PAD * scale, top + (c + 1) * cell - 16
            draw.rectangle((x0, y0, x0 + cell - PAD * scale - 1, y0 + 14), fill="black")
            draw.text((x0 + 3, y0), value, fill="white", font=small)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="a corrupted_fmnist, corrupted_cifar10 or textured_mnist config")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05])
    parser.add_argument("--per", type=int, default=4, help="aligned and conflicting images per row, each")
    parser.add_argument("--scale", type=int, default=4, help="pixel magnification")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()

    from diffdebias.config import load_config
    from diffdebias.data import load_dataset
    from diffdebias.diffusion.images import save_png

    args.out.mkdir(parents=True, exist_ok=True)
    for ratio in args.ratios:
        cfg = load_config(args.config, [*args.set, f"data.conflict_ratio={ratio}"])
        splits = load_dataset(cfg.data)
        train = splits.train
        conflicting = int((train.labels != train.bias).sum())
        pct = f"{ratio * 100:g}"
        title = (f"{cfg.data.name}, {pct} % conflicting ({conflicting} of {len(train)} training images), "
                 f"seed {cfg.data.seed}")
        path = args.out / f"{cfg.data.name}_{pct}pct.png"
        save_png(path, labelled_grid(train, splits.class_names, bias_names(cfg.data.name), args.per, args.scale,
                                     title))
        print(path)


if __name__ == "__main__":
    main()

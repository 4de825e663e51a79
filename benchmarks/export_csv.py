"""Write a built benchmark dataset as a user's folder of PNGs and a ``path,label,bias,split`` CSV.

What a new user brings is a folder and a CSV, not one of our loaders; this turns a benchmark (e.g. Textured MNIST at
1 %) into exactly that, optionally subsampled, so that the generic presets (``configs/generic/*.yaml``) can be run and
timed the way a user would run them, with the bias column kept for evaluation only.

    python benchmarks/export_csv.py configs/textured_mnist/erm.yaml --train 12000 --out runs/mine/textured12k
    diffdebias run configs/generic/ddb_cpu.yaml --set data.csv=runs/mine/textured12k/data.csv --out runs/mine/ddb
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from PIL import Image


def subsample(n: int, keep: int, seed: int) -> torch.Tensor:
    """``keep`` of ``n`` indices (all when keep is 0 or >= n), drawn with a fixed seed, in order."""
    if not keep or keep >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a config whose data section names the dataset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--train", type=int, default=0, help="training images kept (0: all)")
    parser.add_argument("--valid", type=int, default=0, help="valid images kept (0: all)")
    parser.add_argument("--test", type=int, default=0, help="test images kept (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsample")
    parser.add_argument("--out", type=Path, required=True, help="a new folder: images/ and data.csv")
    args = parser.parse_args()

    from diffdebias.config import load_config
    from diffdebias.data import load_dataset

    cfg = load_config(args.config, args.set)
    splits = load_dataset(cfg.data)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty: choose a new folder")
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, keep in (("train", args.train), ("valid", args.valid), ("test", args.test)):
        data = splits.split(split)
        for i in subsample(len(data), keep, args.seed).tolist():
            name = f"images/{split}_{i:06d}.png"
            image = data.images[i].permute(1, 2, 0).numpy()
            Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(args.out / name)
            rows.append((name, int(data.labels[i]), int(data.bias[i]) if data.bias is not None else "", split))
    with open(args.out / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "bias", "split"))
        writer.writerows(rows)
    counts = {s: sum(r[3] == s for r in rows) for s in ("train", "valid", "test")}
    print(f"wrote {len(rows)} images to {args.out} ({counts})")


if __name__ == "__main__":
    main()

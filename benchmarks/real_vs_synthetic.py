"""Can a classifier tell a run's synthetic images from real training images? If it can, the final classifier can keep
the shortcut for real-looking images and learn the shape only for synthetic-looking ones.

A small MLP (the final classifier's family: 100 hidden units, 3 epochs, Adam 1e-3) is trained to separate a random
sample of real training images from the same number of the run's synthetic images, and scored on a held-out fifth
(0.5: indistinguishable). Each variant of the synthetic images is scored: ``raw`` (as generated), ``black`` (the black
level matched, as ``diffinject.match_black``). Also prints the background statistics that set the two apart.

    python benchmarks/real_vs_synthetic.py runs/mb/r20-s1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn


def separability(real: torch.Tensor, synthetic: torch.Tensor, seed: int = 0, epochs: int = 3) -> float:
    """Held-out accuracy of an MLP trained to tell ``synthetic`` (uint8 N, C, H, W) from as many ``real`` images."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(synthetic)
    r = real[torch.randperm(len(real), generator=g)[:n]]
    x = torch.cat([r, synthetic]).float().div(255).flatten(1)
    y = torch.cat([torch.zeros(len(r)), torch.ones(n)]).long()
    order = torch.randperm(len(x), generator=g)
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    model = nn.Sequential(nn.Linear(x.shape[1], 100), nn.ReLU(), nn.Linear(100, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        for i in range(0, split, 256):
            loss = nn.functional.cross_entropy(model(x[i:min(i + 256, split)]), y[i:min(i + 256, split)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((model(x[split:]).argmax(1) == y[split:]).double().mean())


def background(images: torch.Tensor) -> str:
    """Share of values that are exactly 0, and of dark pixels (max channel < 30) that are not black."""
    m = images.max(1).values
    dark = m < 30
    return (f"zero values {float((images == 0).double().mean()):.3f}, dark pixels not black "
            f"{float(((m > 0) & dark).double().sum() / dark.double().sum()):.3f}, mean dark level "
            f"{float(m[dark].double().mean()):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished DiffInject run directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from diffdebias.config import load_config
    from diffdebias.data import load_dataset
    from diffdebias.methods.synthetic_filters import black_level, match_black_level
    from diffdebias.runs import load_tensors

    cfg = load_config(args.run / "config.yaml")
    real = load_dataset(cfg.data).train.images
    raw = load_tensors(args.run / "injection" / "injected.safetensors")[0]["images"]
    print(f"real        {background(real)}")
    print(f"synthetic   {background(raw)}  (black level {black_level(raw, real)})")
    print("variant  real-vs-synthetic held-out accuracy (0.5: indistinguishable)")
    for name, images in (("raw", raw), ("black", match_black_level(raw, real))):
        print(f"{name}  {separability(real, images, args.seed):.3f}", flush=True)


if __name__ == "__main__":
    main()

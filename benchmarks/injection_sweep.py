"""Which injection settings turn (style, content) pairs into bias-conflicting images of the style's class?

Takes the first ``--pairs`` (style, content) pairs of a finished DiffInject run on Colored MNIST, inverts the styles
and the contents once on a ``--steps`` grid, then generates every (gamma, t_edit) setting and reads each image's
digit (the run's grey shape classifier) and stroke colour. Columns: the style's digit kept; the content's colour
transferred; *useful*, the share that is the style's digit in a colour other than its class's (a bias-conflicting
sample with the right label, what the final classifier needs). Probe settings here before a 20-minute full run.

    python benchmarks/injection_sweep.py runs/di/s50-r03-s1 --gamma 0.1 0.3 0.5 --t-edit 200 400 600
    python benchmarks/injection_sweep.py runs/di/s50-r03-s1 --blend mean --gamma 0.5 1 --t-edit 200 400
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished DiffInject run directory on Colored MNIST")
    parser.add_argument("--gamma", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--t-edit", type=int, nargs="+", default=[200, 400, 600])
    parser.add_argument("--steps", type=int, default=50, help="inversion / generation grid size")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--blend", default="slerp", choices=["slerp", "mean", "adain"], help="injection.blend")
    parser.add_argument("--t-boost", type=int, help="injection.t_boost (default: the run's)")
    parser.add_argument("--t-start", type=int, nargs="+", default=[None],
                        help="injection.t_start: invert only up to this timestep and generate from there")
    args = parser.parse_args()

    from dataclasses import replace

    from diffdebias.diffusion.injection import inject, injection_grid, invert, truncated_grid
    from diffdebias.runs import load_tensors
    from injection_probe import load_probe

    p = load_probe(args.run)
    pairs, _ = load_tensors(args.run / "injection" / "injected.safetensors")
    style, content = pairs["style"][: args.pairs], pairs["content"][: args.pairs]
    label = p.train.labels[style]
    content_colour = p.colours(p.train.images[content])
    full = injection_grid(p.cfg.diffusion.num_train_timesteps, args.steps)
    t0 = time.time()
    _, h = invert(p.model, p.to_model(p.train.images[content]), full, p.alphas_cumprod, record_from=min(args.t_edit))
    print(f"{len(style)} pairs, {args.steps}-point grid, content inversion {time.time() - t0:.0f} s", flush=True)
    print("t_start  gamma  t_edit  style digit kept  content colour  useful  seconds (style inversion included)")
    best = (-1.0, None)
    t_boost = p.cfg.injection.t_boost if args.t_boost is None else args.t_boost
    for t_start in args.t_start:
        grid = truncated_grid(full, t_start)
        t0 = time.time()
        x_T = invert(p.model, p.to_model(p.train.images[style]), grid, p.alphas_cumprod)[0]
        for t_edit in args.t_edit:
            for gamma in args.gamma:
                gens = [torch.Generator().manual_seed(i) for i in range(len(style))]
                icfg = replace(p.cfg.injection, gamma=gamma, t_edit=t_edit, t_boost=t_boost, blend=args.blend,
                               mask=None, precision="fp32", compile=False)
                u8 = p.from_model(inject(p.model, x_T, h, grid, p.alphas_cumprod, icfg, gens))
                digit, colour = p.digits(u8), p.colours(u8)
                kept = float((digit == label).double().mean())
                moved = float((colour == content_colour).double().mean())
                useful = float(((digit == label) & (colour != label)).double().mean())
                if useful > best[0]:
                    best = (useful, (grid[-1], gamma, t_edit))
                print(f"{grid[-1]:7d}  {gamma:5.2f}  {t_edit:6d}  {kept:16.3f}  {moved:14.3f}  {useful:6.3f}  "
                      f"{time.time() - t0:7.0f}", flush=True)
                t0 = time.time()
    print(f"best useful={best[0]:.3f} t_start={best[1][0]} gamma={best[1][1]} t_edit={best[1][2]}")


if __name__ == "__main__":
    main()

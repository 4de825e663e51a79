"""How faithfully does a DiffInject run's diffusion model invert and regenerate Colored MNIST images (gamma = 0)?

For ``--images`` training images (evenly spaced), DDIM-invert on each grid size, regenerate with nothing injected
(with and without quality boosting below t = 200), and print the mean absolute error on [-1, 1], the share of digits
the run's shape classifier still reads as their label, and the share whose stroke colour is still the same palette
colour. Injection can only be as good as this reconstruction. ``--precision`` repeats it under each U-Net autocast
(``injection.precision``), timing each, so fp32 and bf16 are compared on the same images in one process.

    python benchmarks/injection_fidelity.py runs/di/base-s1 --steps 10 20 50
    python benchmarks/injection_fidelity.py runs/di/cpu-s1 --steps 50 --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished DiffInject run directory on Colored MNIST")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="U-Net autocast of inversion and generation (injection.precision)")
    args = parser.parse_args()

    from dataclasses import replace

    from diffdebias.diffusion.injection import inject, injection_grid, invert
    from injection_probe import load_probe

    p = load_probe(args.run)
    cfg, train, model, abar = p.cfg, p.train, p.model, p.alphas_cumprod
    idx = torch.linspace(0, len(train) - 1, args.images).long()
    images, labels = train.images[idx], train.labels[idx]
    x0 = p.to_model(images)
    colour = p.colours(images)
    for steps, precision in ((s, q) for s in args.steps for q in args.precision):
        grid = injection_grid(cfg.diffusion.num_train_timesteps, steps)
        start = time.perf_counter()
        x_T, h = invert(model, x0, grid, abar, record_from=cfg.injection.t_edit, precision=precision)
        inverted = time.perf_counter() - start
        for t_boost in (-1, cfg.injection.t_boost):
            gens = [torch.Generator().manual_seed(i) for i in range(len(idx))]
            start = time.perf_counter()
            back = inject(model, x_T, h, grid, abar, replace(cfg.injection, gamma=0.0, t_boost=t_boost, boost_eta=1.0,
                                                             precision=precision, compile=False), gens)
            seconds = inverted + time.perf_counter() - start
            u8 = p.from_model(back)
            digit = float((p.digits(u8) == labels).double().mean())
            kept = float((p.colours(u8) == colour).double().mean())
            print(f"grid {steps:4d}  {precision}  boosting {'on ' if t_boost >= 0 else 'off'}  mean abs error "
                  f"{float((back - x0).abs().mean()):.3f}  digit kept {digit:.3f}  colour kept {kept:.3f}  "
                  f"{seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()

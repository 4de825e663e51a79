"""Does ``injection.compile`` pay on this machine? Inversion + injected generation of a DiffInject run's pairs, eager
(batches side by side in threads, as the stage runs them) against the torch.compile'd U-Net halves (one batch at a
time), timed in interleaved rounds of the same process, and how far the compiled images are from the eager ones.

The run's own injection settings (grid, ``t_start``, ``gamma``, blend) and U-Net; styles and contents are training
images. The first compiled batch (the one-off compile) is timed apart.

    python benchmarks/injection_speed.py runs/m30/r30-s1 --batches 4 --rounds 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished DiffInject run directory")
    parser.add_argument("--batches", type=int, default=4, help="batches of injection.batch_size per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from dataclasses import replace

    from diffdebias.devices import cpu_workers, map_batches
    from diffdebias.diffusion.images import to_uint8
    from diffdebias.diffusion.injection import inject, injection_grid, invert, truncated_grid
    from injection_probe import load_probe

    p = load_probe(args.run)
    icfg, model, abar = p.cfg.injection, p.model, p.alphas_cumprod
    grid = truncated_grid(injection_grid(p.cfg.diffusion.num_train_timesteps, icfg.steps), icfg.t_start)
    bs, n = icfg.batch_size, icfg.batch_size * args.batches
    g = torch.Generator().manual_seed(0)
    style = p.to_model(p.train.images[torch.randint(len(p.train), (n,), generator=g)])
    content = p.to_model(p.train.images[torch.randint(len(p.train), (n,), generator=g)])

    def one_batch(s: int, compiled: bool) -> torch.Tensor:
        _, h = invert(model, content[s:s + bs], grid, abar, icfg.t_edit, compiled=compiled)
        x_T, _ = invert(model, style[s:s + bs], grid, abar, compiled=compiled)
        gens = [torch.Generator().manual_seed(s + i) for i in range(bs)]
        x = inject(model, x_T, h, grid, abar, replace(icfg, precision="fp32", compile=compiled), gens)
        return to_uint8(x)

    workers = {False: cpu_workers(torch.device("cpu"), icfg.workers), True: 1}
    start = time.perf_counter()
    one_batch(0, True)
    print(f"compile (first batch): {time.perf_counter() - start:.1f} s", flush=True)
    seconds: dict[bool, float] = {False: 0.0, True: 0.0}
    images: dict[bool, torch.Tensor] = {}
    for _ in range(args.rounds):
        for compiled in (False, True):
            start = time.perf_counter()
            images[compiled] = torch.cat(map_batches(lambda s, c=compiled: one_batch(s, c), range(0, n, bs),
                                                     workers[compiled]))
            seconds[compiled] += time.perf_counter() - start
    rate = {c: args.rounds * n / s for c, s in seconds.items()}  # images per second
    diff = (images[True].int() - images[False].int()).abs()
    same_digit = float((p.digits(images[True]) == p.digits(images[False])).double().mean())
    print(f"eager, {workers[False]} workers: {rate[False]:.2f} images/s; compiled, 1 worker: {rate[True]:.2f} "
          f"images/s; speedup x{rate[True] / rate[False]:.2f}", flush=True)
    print(f"compiled - eager: max {int(diff.max())} levels, {float((diff > 0).double().mean()):.4f} of the values "
          f"differ, {float((diff > 2).double().mean()):.5f} by more than 2; same digit read {same_digit:.3f}")


if __name__ == "__main__":
    main()

"""Diffusion training speed on a shared CPU: idle, and beside one busy process, per threading variant (issue #40).

Each cell is a fresh Python process that trains the demo's diffusion model (``configs/demo.yaml``: the ``cpu`` U-Net at
16 px, batch 64, its precision) on random images of the demo's shape for ``--steps`` steps (or ``--max-seconds`` of
timed steps, whichever ends first; the first step is warm-up) and reports steps/s. Backgrounds: none (idle), one
pure-Python ``while True: pass`` loop at ``nice 19``, and one at normal priority (``nice0``). Variants (``--variants``):

  unset    torch's defaults (as many threads as cores, libgomp's wait policy): diffdebias before issue #40
  ACTIVE   ``OMP_WAIT_POLICY=ACTIVE``: idle threads spin (almost) for good, the worst case of spinning
  PASSIVE  ``OMP_WAIT_POLICY=PASSIVE``: idle threads sleep at once
  new      ``diffdebias.threads.fair_threads()`` before training, as the CLI calls it: fewer threads than cores when
           other processes keep cores busy
  K=V[+K=V...]  these variables in the cell's environment, e.g. ``GOMP_SPINCOUNT=10000`` or ``OMP_NUM_THREADS=1``

``OMP_*`` variables are removed from the cells' environment unless a variant sets them (torch's defaults are the
point). The figure of merit is busy/idle steps/s of each variant (issue #40's acceptance: >= 0.40 with the new
default). Cells run interleaved (per repeat: each background, each variant); the libgomp settings each cell ran with
are read back through ``OMP_DISPLAY_ENV`` (libgomp shows an unset policy as PASSIVE; the spin count tells them
apart), and "other" is the CPU (in cores) that processes outside the benchmark used during a cell, e.g. someone
else's job on a shared machine: cells with other > 0.2 are not clean.

    python benchmarks/fairness.py --out runs/fairness.json     # ~12 min on 2 cores
    python benchmarks/fairness.py --variants unset,new,GOMP_SPINCOUNT=10000 --backgrounds idle,nice0 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_DISPLAY_ENV")
BACKGROUNDS = {"idle": None, "nice19": 19, "nice0": 0}
BUSY = "import os\nos.nice({nice})\nwhile True:\n    pass\n"


def variant_env(name: str) -> tuple[dict[str, str], bool]:
    """(variables to set, whether the cell calls ``diffdebias.threads.fair_threads``) for a ``--variants`` entry."""
    if name == "unset":
        return {}, False
    if name in ("ACTIVE", "PASSIVE"):
        return {"OMP_WAIT_POLICY": name}, False
    if name == "new":
        return {}, True
    pairs = [item.split("=", 1) for item in name.split("+")]
    if not all(len(p) == 2 and p[0] for p in pairs):
        raise SystemExit(f"unknown variant {name!r}: unset, ACTIVE, PASSIVE, new or K=V[+K=V...]")
    return dict(pairs), False


# ------------------------------------------------------------------------------------------------------ one cell


def worker(steps: int, max_seconds: float, fair: bool) -> dict:
    """Train the demo's U-Net in this process; steps/s over the timed steps."""
    import dataclasses
    import tempfile
    import warnings

    import torch

    from diffdebias.config import load_config
    from diffdebias.diffusion import build_unet, resolve_precision, train_diffusion
    from diffdebias.runs import Stage
    from diffdebias.threads import fair_threads

    if fair:
        fair_threads()  # as the CLI does before a run
    warnings.filterwarnings("ignore")
    cfg = load_config(ROOT / "configs" / "demo.yaml").diffusion
    cfg = dataclasses.replace(cfg, steps=steps + 1, checkpoint_every=10**9, sample_every=0, log_every=10**9)
    g = torch.Generator().manual_seed(0)
    n, size = 2048, cfg.image_size
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    model = build_unet(cfg.preset, size, 3, 10, seed=0)
    times: list[float] = []

    class Enough(Exception):
        pass

    def tick(step: int, loss: float) -> None:
        times.append(time.perf_counter())
        if times[-1] - times[0] > max_seconds:
            raise Enough

    with tempfile.TemporaryDirectory() as tmp:
        stage = Stage("diffusion", Path(tmp), "fairness", seed=0, log=lambda msg: None)
        try:
            train_diffusion(stage, model, images, labels, cfg, progress=False, callback=tick)
        except Enough:
            pass
    return {"steps_per_s": (len(times) - 1) / (times[-1] - times[0]), "timed_steps": len(times) - 1,
            "threads": torch.get_num_threads(), "precision": resolve_precision(cfg.precision, "cpu")}


def busy_jiffies() -> int:
    """CPU time used by everything on the machine so far (all but idle and iowait), in clock ticks."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4] - sum(fields[8:])  # guest time is already counted in user


def proc_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cell(variant: str, background: subprocess.Popen | None, args) -> dict:
    """One worker process; its result, the libgomp settings it ran with and the CPU used by other processes."""
    updates, fair = variant_env(variant)
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    env.update(updates, OMP_DISPLAY_ENV="VERBOSE")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps),
           "--max-seconds", str(args.max_seconds)] + (["--fair"] if fair else [])
    tick = os.sysconf("SC_CLK_TCK")
    bg0 = proc_seconds(background.pid) if background else 0.0
    c0, j0, t0 = children_seconds(), busy_jiffies(), time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    own = children_seconds() - c0  # the worker's CPU time (communicate() reaped it)
    wall, jiffies = time.perf_counter() - t0, busy_jiffies() - j0
    bg = proc_seconds(background.pid) - bg0 if background else 0.0
    if proc.returncode:
        raise SystemExit(f"cell {variant} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    display = dict(re.findall(r"^\s+(OMP_WAIT_POLICY|GOMP_SPINCOUNT|OMP_NUM_THREADS) = '([^']*)'", err, re.M))
    result.update(libgomp=display, wall_s=round(wall, 1), other=round(max(0.0, jiffies / tick - own - bg) / wall, 2))
    return result


def children_seconds() -> float:
    """User + system CPU seconds of this process' children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_background(nice: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUSY.format(nice=nice)])


def stop_background(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------------------- main


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.processor()


def summarise(cells: list[dict], variants: list[str], backgrounds: list[str]) -> dict:
    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    summary = {}
    for v in variants:
        row = {}
        for b in backgrounds:
            mine = [c for c in cells if c["variant"] == v and c["background"] == b]
            row[b] = {"steps_per_s": mean([c["steps_per_s"] for c in mine]),
                      "each": [round(c["steps_per_s"], 2) for c in mine], "other": mean([c["other"] for c in mine])}
        for b in backgrounds:
            if b != "idle" and "idle" in row:
                row[f"{b}/idle"] = row[b]["steps_per_s"] / row["idle"]["steps_per_s"]
        summary[v] = row
    return summary


def print_table(summary: dict, backgrounds: list[str]) -> None:
    head = f"{'variant':<28}" + "".join(f"{b + ' steps/s':>16}" for b in backgrounds)
    head += "".join(f"{b + '/idle':>13}" for b in backgrounds if b != "idle")
    print("\n" + head + f"{'other (cores)':>15}")
    for v, row in summary.items():
        line = f"{v:<28}" + "".join(f"{row[b]['steps_per_s']:>16.2f}" for b in backgrounds)
        line += "".join(f"{row.get(f'{b}/idle', float('nan')):>13.2f}" for b in backgrounds if b != "idle")
        line += f"{max(row[b]['other'] for b in backgrounds):>15.2f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="unset,ACTIVE,PASSIVE,new", help="comma-separated (see above)")
    parser.add_argument("--backgrounds", default="idle,nice19,nice0", help=f"comma-separated of {list(BACKGROUNDS)}")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per cell (~20-25 s idle on 2 cores)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop a cell's timing after this long")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the cells and the summary here (JSON)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fair", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps, args.max_seconds, args.fair)))
        return

    variants, backgrounds = args.variants.split(","), args.backgrounds.split(",")
    for v in variants:
        variant_env(v)
    for b in backgrounds:
        if b not in BACKGROUNDS:
            raise SystemExit(f"unknown background {b!r}: {list(BACKGROUNDS)}")
    print(f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu_model()}; load average "
          f"{os.getloadavg()[0]:.2f}; {args.steps} steps or {args.max_seconds:g} s per cell, {args.repeats} repeats",
          flush=True)
    cells = []
    for r in range(args.repeats):
        for b in backgrounds:
            bg = start_background(BACKGROUNDS[b]) if BACKGROUNDS[b] is not None else None
            try:
                for v in variants:
                    cell = run_cell(v, bg, args)
                    cell.update(variant=v, background=b, repeat=r)
                    cells.append(cell)
                    gomp = cell["libgomp"]
                    print(f"  repeat {r + 1} {b:<7} {v:<28} {cell['steps_per_s']:6.2f} steps/s "
                          f"({cell['timed_steps']} steps, {cell['threads']} threads, {cell['precision']}, "
                          f"libgomp {gomp.get('OMP_WAIT_POLICY')}/spin {gomp.get('GOMP_SPINCOUNT')}; "
                          f"other {cell['other']:.2f})", flush=True)
            finally:
                stop_background(bg)
    summary = summarise(cells, variants, backgrounds)
    print_table(summary, backgrounds)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "steps": args.steps,
                "max_seconds": args.max_seconds, "repeats": args.repeats, "python": sys.version.split()[0]}
        args.out.write_text(json.dumps({"meta": meta, "summary": summary, "cells": cells}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

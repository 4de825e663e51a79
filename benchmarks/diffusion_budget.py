"""How good are a DDB diffusion model's samples after how much CPU time? Quality against training budget.

Trains the class-conditional U-Net of a config on its Colored MNIST training split (optionally at a reduced
``--image-size``, i.e. ``diffusion.image_size``) and, at each ``--at`` step count, samples ``--per-class`` images per
class with the config's sampler, resizes them to the data's size, and prints: training seconds so far, sampling
seconds, bias-aligned fraction and shape fidelity (the `amplification` diagnostic of a DDB run), and the time a full
``sampling.per_class`` synthetic set would take at that sampling speed. Training resumes from ``OUT/checkpoint``, so
the table can be extended with larger ``--at`` values.

    python benchmarks/diffusion_budget.py configs/cmnist/ddb.yaml --image-size 16 --at 250,500,1000 --out runs/budget16
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no bars: diffdebias.progress reads it at each bar

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoint, grids and shape model")
    parser.add_argument("--image-size", type=int, default=0, help="diffusion.image_size (0: the data's size)")
    parser.add_argument("--at", default="250,500,1000", help="step counts at which to sample, comma-separated")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1, help="run seed (weight init, noise, batches)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for diffdebias run (e.g. sampling.steps=10)")
    args = parser.parse_args()

    from diffdebias.classifiers.train import WEIGHTS, load_classifier, predict_logits, train_classifier
    from diffdebias.config import load_config
    from diffdebias.data import load_dataset
    from diffdebias.devices import accelerator
    from diffdebias.diffusion import build_unet, sample, train_diffusion
    from diffdebias.diffusion.images import class_grid, resize, save_png
    from diffdebias.diffusion.sampling import class_labels
    from diffdebias.evaluation.amplification import aligned_fraction, to_grey
    from diffdebias.methods.diagnostics import SHAPE_CLASSIFIER
    from diffdebias.runs import Stage

    cfg = load_config(args.config, args.overrides)
    steps = sorted(int(s) for s in args.at.split(","))
    dcfg = replace(cfg.diffusion, image_size=args.image_size, steps=steps[-1], sample_every=0,
                   checkpoint_every=min(cfg.diffusion.checkpoint_every, steps[0])).validate()
    data = load_dataset(cfg.data, log=lambda m: None)
    train, size = data.train, data.train.images.shape[-1]
    side = dcfg.image_size or size
    images = resize(train.images, side)
    args.out.mkdir(parents=True, exist_ok=True)
    acc = accelerator(cfg.device)
    quiet = dict(log=lambda m: None)

    shape_stage = Stage("shape", args.out / "shape", "", seed=0, **quiet)
    shape_stage.dir.mkdir(parents=True, exist_ok=True)
    if shape_stage.path(WEIGHTS).exists():  # a rerun extending --at reuses it
        shape = load_classifier(shape_stage, SHAPE_CLASSIFIER)
    else:
        grey = replace(train, images=to_grey(train.images))
        shape = train_classifier(shape_stage, grey, SHAPE_CLASSIFIER, data.num_classes)

    stage = Stage("diffusion", args.out / "diffusion", "", seed=args.seed, **quiet)
    stage.dir.mkdir(parents=True, exist_ok=True)
    with stage.seeded("init"):
        model = build_unet(dcfg.preset, side, images.shape[1], data.num_classes)
    labels = class_labels(data.num_classes, args.per_class)
    full = data.num_classes * cfg.sampling.per_class
    print(f"{size} px data, U-Net at {side} px ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), "
          f"batch {dcfg.batch_size}, {torch.get_num_threads()} threads; sampler {cfg.sampling.sampler} "
          f"{cfg.sampling.steps} steps, eta {cfg.sampling.eta}, guidance {cfg.sampling.guidance_scale}")
    print(f"{'steps':>6} {'train s':>8} {'sample s':>8} {'aligned':>8} {'fidelity':>8} {f'{full} imgs s':>12}")
    trained_s = 0.0
    for n in steps:
        t0 = time.perf_counter()
        ema = train_diffusion(stage, model, images, train.labels, dcfg, accelerator=acc, progress=False,
                              stop_after=n)
        trained_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        x = sample(ema, cfg.sampling, dcfg, labels, torch.Generator().manual_seed(0), acc.device, progress=False)
        sampled_s = time.perf_counter() - t0
        x = resize(x, size)
        fidelity = float((predict_logits(shape, to_grey(x)).argmax(1) == labels).double().mean())
        print(f"{n:>6} {trained_s:8.1f} {sampled_s:8.1f} {aligned_fraction(x, labels):8.3f} {fidelity:8.3f} "
              f"{sampled_s * full / len(labels):12.1f}", flush=True)
        save_png(args.out / f"grid_{n}.png", class_grid(x, labels))


if __name__ == "__main__":
    main()

"""Which sampler settings give the cleanest Colored MNIST images from a trained DDB diffusion model?

Loads a finished DDB run's diffusion model (``RUN/diffusion/unet.safetensors``) and shape classifier
(``RUN/shape_classifier``), samples ``--per-class`` images per class under each variant of the sampling config, and
prints per variant: time, bias-aligned fraction, shape fidelity, and the background level (mean of the darker half of
each image's pixels, in 0-255 grey levels; real Colored MNIST is ~0). A class grid per variant goes to ``--out``.

    python benchmarks/sampler_quality.py runs/ddb-1pct \\
        --variant base: --variant linspace:timestep_spacing=linspace --variant ddpm250:sampler=ddpm,steps=250
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    changes = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition("=")
        changes[key.strip()] = yaml.safe_load(raw)
    return name, changes


def background_level(images: torch.Tensor) -> float:
    """Mean of the darker half of each image's pixels (channel maximum), in grey levels."""
    g = images.float().amax(1).flatten(1)
    dark = g.sort(dim=1).values[:, : g.shape[1] // 2]
    return float(dark.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--variant", action="append", default=[],
                        help="name:key=value,... (sampling.* keys, or diffusion.clip_sample)")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from diffdebias.classifiers.train import load_classifier, predict_logits
    from diffdebias.config import load_config
    from diffdebias.devices import accelerator
    from diffdebias.diffusion import load_unet, sample
    from diffdebias.diffusion.images import class_grid, save_png
    from diffdebias.diffusion.sampling import class_labels
    from diffdebias.evaluation.amplification import aligned_fraction, to_grey
    from diffdebias.methods.diagnostics import SHAPE_CLASSIFIER
    from diffdebias.runs import Stage

    cfg = load_config(args.run / "config.yaml")
    device = accelerator(cfg.device).device
    model = load_unet(args.run / "diffusion" / "unet.safetensors")
    shape_stage = Stage("shape_classifier", args.run / "shape_classifier", "", seed=0, log=lambda m: None)
    shape = load_classifier(shape_stage, SHAPE_CLASSIFIER)
    labels = class_labels(model.config.num_class_embeds - 1, args.per_class)
    out = args.out or args.run / "sampler_quality"
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'variant':<14} {'seconds':>8} {'aligned':>8} {'fidelity':>8} {'background':>10}")
    for name, changes in map(parse_variant, args.variant or ["base:"]):
        dchanges = {k.removeprefix("diffusion."): v for k, v in changes.items() if k.startswith("diffusion.")}
        scfg = replace(cfg.sampling, **{k: v for k, v in changes.items() if not k.startswith("diffusion.")})
        t0 = time.perf_counter()
        dcfg = replace(cfg.diffusion, **dchanges)
        images = sample(model, scfg, dcfg, labels, torch.Generator().manual_seed(args.seed), device, progress=False)
        seconds = time.perf_counter() - t0
        fidelity = float((predict_logits(shape, to_grey(images)).argmax(1) == labels).double().mean())
        print(f"{name:<14} {seconds:8.1f} {aligned_fraction(images, labels):8.4f} {fidelity:8.4f} "
              f"{background_level(images):10.2f}", flush=True)
        save_png(out / f"grid_{name}.png", class_grid(images, labels))


if __name__ == "__main__":
    main()

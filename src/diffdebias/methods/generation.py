"""Diffusion stages shared by the methods: train a U-Net on a dataset, sample a synthetic set from it."""

from __future__ import annotations

import torch

from ..data.base import ImageSet
from ..devices import accelerator
from ..diffusion import DiffusionConfig, SamplingConfig
from ..keys import Source, reads
from ..runs import Stage, chunked, load_tensors, save_tensors
from .common import Context

UNET = "unet.safetensors"
SYNTHETIC = "synthetic.safetensors"


def diffusion_stage(ctx: Context, name: str, cfg: DiffusionConfig, data: ImageSet, num_classes: int | None,
                    source: Source) -> Stage:
    """Train a U-Net on ``data`` (class-conditional when ``num_classes`` is given); resumes from its checkpoint. Of
    several processes, each trains on its share of every batch (accelerate's data parallelism)."""
    cfg.validate()

    def compute(stage: Stage) -> None:
        from ..diffusion import build_unet, train_diffusion
        from ..diffusion.images import resize

        acc = accelerator(ctx.cfg.device)
        acc.gradient_accumulation_steps = cfg.gradient_accumulation
        s = cfg.image_size or data.images.shape[-1]
        images = resize(data.images, s)
        if s != data.images.shape[-1]:
            stage.log(f"{stage.name}: training at {s} px (diffusion.image_size), data at {data.images.shape[-1]} px")
        with stage.seeded("init"):
            model = build_unet(cfg.preset, s, images.shape[1], num_classes)
        train_diffusion(stage, model, images, data.labels, cfg, accelerator=acc)

    # ``source``: what ``data`` is; prediction_type: a retired setting's one value, so cached models keep their keys
    return ctx.run.cached(name, compute, reads(cfg, source, prediction_type="epsilon"), distributed=True)


def synthetic_stage(ctx: Context, name: str, diffusion: Stage, cfg: SamplingConfig, dcfg: DiffusionConfig,
                    num_classes: int, image_size: int, chunk: int = 1000) -> Stage:
    """``cfg.per_class`` images per class at ``image_size`` px (the data's; a model trained smaller is sampled at its
    own size and resized), sampled in chunks that are saved as they finish (a killed run loses at most one chunk).
    Images depend only on their per-image seeds (in fp32; bf16 rounds a little differently in other batches), so
    neither chunking nor sharing a chunk between several processes (each samples its part, the main one writes)
    changes them."""
    cfg.validate()

    def compute(stage: Stage) -> None:
        from ..diffusion import load_unet, write_synthetic_dataset
        from ..diffusion.images import resize
        from ..diffusion.sampling import class_labels, draw_seeds, sample_sharded

        acc = accelerator(ctx.cfg.device)
        model = load_unet(diffusion.path(UNET))
        labels = class_labels(num_classes, cfg.per_class)
        seeds = draw_seeds(stage.generator("seeds"), len(labels))

        def sample(start: int, stop: int) -> torch.Tensor:  # every process samples its share; the main one keeps
            images = sample_sharded(model, cfg, dcfg, labels[start:stop], seeds[start:stop], acc)
            return resize(images, image_size) if ctx.run.main else images

        with chunked(stage, len(labels), chunk, sample) as images:
            if images is None:  # the other processes sampled their parts; the main one writes
                return
            save_tensors(stage.path(SYNTHETIC), {"images": images, "labels": labels, "seeds": seeds})
            write_synthetic_dataset(stage.path("images"), images, labels, seeds)

    return ctx.run.cached(name, compute, reads(cfg, diffusion), distributed=True)


def load_synthetic(stage: Stage) -> ImageSet:
    t, _ = load_tensors(stage.path(SYNTHETIC))
    return ImageSet(t["images"], t["labels"], reads=reads(stage))

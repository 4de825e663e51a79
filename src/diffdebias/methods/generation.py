"""Diffusion stages shared by the methods: train a U-Net on a dataset, sample a synthetic set from it."""

from __future__ import annotations

import torch

from ..config import key_dict
from ..data.base import ImageSet
from ..devices import accelerator
from ..diffusion import DiffusionConfig, SamplingConfig
from ..runs import Stage, load_resumable, load_tensors, save_tensors
from .common import Context

UNET = "unet.safetensors"
SYNTHETIC = "synthetic.safetensors"


def diffusion_stage(ctx: Context, name: str, cfg: DiffusionConfig, data: ImageSet, num_classes: int | None,
                    inputs: tuple[str, ...]) -> Stage:
    """Train a U-Net on ``data`` (class-conditional when ``num_classes`` is given); resumes from its checkpoint."""
    cfg.validate()

    def compute(stage: Stage) -> None:
        from ..diffusion import build_unet, train_diffusion
        from ..diffusion.sampling import resize

        acc = accelerator(ctx.cfg.device)
        acc.gradient_accumulation_steps = cfg.gradient_accumulation
        s = cfg.image_size or data.images.shape[-1]
        images = resize(data.images, s)
        if s != data.images.shape[-1]:
            stage.log(f"{stage.name}: training at {s} px (diffusion.image_size), data at {data.images.shape[-1]} px")
        with stage.seeded("init"):
            model = build_unet(cfg.preset, s, images.shape[1], num_classes)
        train_diffusion(stage, model, images, data.labels, cfg, accelerator=acc)

    return ctx.run.cached(name, key_dict(cfg), compute, inputs)


def synthetic_stage(ctx: Context, name: str, diffusion: Stage, cfg: SamplingConfig, dcfg: DiffusionConfig,
                    num_classes: int, image_size: int, chunk: int = 1000) -> Stage:
    """``cfg.per_class`` images per class at ``image_size`` px (the data's; a model trained smaller is sampled at its
    own size and resized), sampled in chunks that are saved as they finish (a killed run loses at most one chunk).
    Images depend only on their per-image seeds, so chunking does not change them."""
    cfg.validate()

    def compute(stage: Stage) -> None:
        from ..diffusion import load_unet, sample, write_synthetic_dataset
        from ..diffusion.sampling import class_labels, draw_seeds, resize

        acc = accelerator(ctx.cfg.device)
        model = load_unet(diffusion.path(UNET))
        labels = class_labels(num_classes, cfg.per_class)
        seeds = draw_seeds(stage.generator("seeds"), len(labels))
        parts = []
        for k, start in enumerate(range(0, len(labels), chunk)):
            path = stage.path(f"chunk_{k:04d}.safetensors")
            done = load_resumable(path, lambda p: load_tensors(p)[0]["images"], stage.log)
            if done is not None:
                parts.append(done)
                continue
            stage.log(f"{stage.name}: images {start}-{min(start + chunk, len(labels))} of {len(labels)}")
            images = resize(sample(model, cfg, dcfg, labels[start : start + chunk], None, acc.device,
                                   seeds=seeds[start : start + chunk]), image_size)
            save_tensors(path, {"images": images})
            stage.checkpointed()
            parts.append(images)
        images = torch.cat(parts)
        save_tensors(stage.path(SYNTHETIC), {"images": images, "labels": labels, "seeds": seeds})
        write_synthetic_dataset(stage.path("images"), images, labels, seeds)
        for k in range(len(parts)):
            stage.path(f"chunk_{k:04d}.safetensors").unlink(missing_ok=True)

    return ctx.run.cached(name, key_dict(cfg), compute, (diffusion.key,))


def load_synthetic(stage: Stage) -> ImageSet:
    t, _ = load_tensors(stage.path(SYNTHETIC))
    return ImageSet(t["images"], t["labels"])

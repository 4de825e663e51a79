"""Training a (class-conditional) DDPM: epsilon loss with P2 weights, label dropout for guidance, EMA, resume.

One explicit loop. The data are in-memory uint8 tensors indexed directly on the device (no DataLoader, no per-sample
Python work). All randomness of optimizer step ``s`` -- timesteps, noise, label dropout, flips -- comes from a
generator seeded with (run seed, stage, s), and the data order from one permutation per epoch seeded likewise, so a
run resumed from a checkpoint ends with exactly the weights of an uninterrupted one. The random draws are made for the
whole global batch and then sliced per process and micro-batch, so they do not depend on the process count either.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import torch

from ..progress import progress_bar
from ..runs import Stage, check_finite, load_resumable_shared, load_state, save_state, write_json
from .config import DiffusionConfig, DiffusionConfigError, SamplingConfig
from .images import class_grid, make_grid_image, save_png, to_unit
from .models import autocast, load_unet, model_num_classes, null_label, resolve_precision, save_unet
from .sampling import sample
from .schedule import alphas_cumprod, p2_weights

__all__ = ["train_diffusion", "load_unet", "ema_decay_at", "lr_at"]


def ema_decay_at(cfg: DiffusionConfig, step: int) -> float:
    """EMA decay for the update after optimizer step ``step`` (0-based): warm-up (1+s)/(10+s), capped at ema_decay."""
    if cfg.ema_warmup:
        return min(cfg.ema_decay, (1 + step) / (10 + step))
    return cfg.ema_decay


def lr_at(cfg: DiffusionConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


class _EpochOrder:
    """Indices of an endless stream of per-epoch permutations, each seeded from (stage, epoch)."""

    def __init__(self, stage: Stage, n: int):
        self.stage, self.n, self.cache = stage, n, {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self.cache:
            self.cache = {e: p for e, p in self.cache.items() if e >= epoch - 1}
            self.cache[epoch] = torch.randperm(self.n, generator=self.stage.generator("diffusion-epoch", epoch))
        return self.cache[epoch]

    def batch(self, step: int, size: int) -> torch.Tensor:
        start = step * size
        parts, pos = [], start
        while pos < start + size:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, start + size - pos)
            parts.append(self.perm(epoch)[offset : offset + take])
            pos += take
        return torch.cat(parts)


def _check_inputs(model, images: torch.Tensor, labels: torch.Tensor, cfg: DiffusionConfig) -> int | None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W) in [0, 255], got {images.dtype} {images.shape}")
    conf = dict(getattr(model, "config", {}))
    if conf and (images.shape[1] != conf["in_channels"] or images.shape[2:] != (conf["sample_size"],) * 2):
        raise ValueError(
            f"images are {tuple(images.shape[1:])} but the model expects "
            f"({conf['in_channels']}, {conf['sample_size']}, {conf['sample_size']})"
        )
    num_classes = model_num_classes(model)
    if cfg.conditional and num_classes is None:
        raise DiffusionConfigError("diffusion.conditional is true but the model has no class embedding")
    if not cfg.conditional and num_classes is not None:
        raise DiffusionConfigError("diffusion.conditional is false but the model is class-conditional")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got {int(labels.min())}..{int(labels.max())}")
    return num_classes


def train_diffusion(
    stage: Stage,
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: DiffusionConfig,
    accelerator=None,
    progress: bool = True,
    stop_after: int | None = None,
    callback: Callable[[int, float], None] | None = None,
):
    """Train ``model`` on ``images``/``labels``; returns the EMA model (eval mode, on the accelerator's device).

    Files in ``stage.dir``: ``checkpoint.safetensors`` (model, EMA, optimizer, step; resumed from when present),
    ``unet.safetensors`` (final EMA weights + model config, for :func:`load_unet`), ``samples/step_*.png`` previews,
    ``tb/`` TensorBoard scalars, ``train.json`` (summary).

    Args:
        stage: the run stage (directory, seeded generators, logger).
        model: a U-Net from :func:`~diffdebias.diffusion.models.build_unet`.
        images: uint8 (N, C, H, W) in [0, 255]; scaled to [-1, 1] here.
        labels: int64 (N,) class labels (ignored by an unconditional model).
        cfg: the training config.
        accelerator: an ``accelerate.Accelerator`` (only one may exist per process); one is made if None. Its
            ``gradient_accumulation_steps`` must equal ``cfg.gradient_accumulation``; precision is handled here
            (``cfg.precision``), so give it ``mixed_precision="no"``.
        progress: show a tqdm bar on the main process.
        stop_after: stop (with a checkpoint) once this many steps are done, e.g. for time-boxed runs; the final
            ``unet.safetensors`` is written only when ``cfg.steps`` are done.
        callback: called as ``callback(step, loss)`` after every optimizer step (``step`` counts from 1).
    """
    from accelerate import Accelerator

    cfg.validate()
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    num_classes = _check_inputs(model, images, labels, cfg)
    if accelerator is None:
        accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation)
    elif accelerator.gradient_accumulation_steps != cfg.gradient_accumulation:
        raise DiffusionConfigError(
            f"diffusion.gradient_accumulation is {cfg.gradient_accumulation} but the accelerator accumulates "
            f"{accelerator.gradient_accumulation_steps} steps"
        )
    procs, accum = accelerator.num_processes, cfg.gradient_accumulation
    if cfg.batch_size % (procs * accum):
        raise DiffusionConfigError(
            f"diffusion.batch_size ({cfg.batch_size}) must be a multiple of processes x gradient_accumulation "
            f"({procs} x {accum})"
        )
    micro = cfg.batch_size // (procs * accum)
    device = accelerator.device
    precision = resolve_precision(cfg.precision, device)
    main = accelerator.is_main_process

    # Model, EMA copy and optimizer, then the checkpoint if there is one.
    model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay,
        **_fast_adam(device),
    )
    ckpt_path = stage.path("checkpoint.safetensors")
    step = 0
    state = load_resumable_shared(ckpt_path, load_state, stage.log, everywhere=procs > 1)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        stage.log(f"diffusion: resumed from step {step} ({ckpt_path.name})")
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    params = [p for p in raw.parameters()]
    ema_params = [p for p in ema.parameters()]

    # Tables on the device; the data once, as uint8.
    abar = alphas_cumprod(cfg).to(device)
    sqrt_abar, sqrt_1m_abar = abar.sqrt(), (1 - abar).sqrt()
    weights = p2_weights(abar, cfg.p2_k, cfg.p2_gamma).float()
    data = images.to(device)
    targets = labels.to(device)
    order = _EpochOrder(stage, len(images))
    null = null_label(num_classes) if num_classes is not None else None
    shape = tuple(images.shape[1:])
    rank = accelerator.process_index

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    writer = _writer(stage, step) if main else None
    bar = progress_bar(show=progress and main, total=cfg.steps, initial=step, desc="diffusion", unit="step")
    window_loss = torch.zeros((), device=device)
    window_n, window_t0, t_start, start_step = 0, time.perf_counter(), time.perf_counter(), step
    while step < end:
        g = stage.generator("diffusion-step", step)
        idx = order.batch(step, cfg.batch_size)
        t_all = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=g)
        noise_all = torch.randn((cfg.batch_size, *shape), generator=g)
        drop_all = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
        flip_all = torch.rand(cfg.batch_size, generator=g) < 0.5
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for m in range(accum):
            sl = slice((m * procs + rank) * micro, (m * procs + rank + 1) * micro)  # layout (accum, procs, micro)
            i = idx[sl].to(device)
            t = t_all[sl].to(device)
            noise = noise_all[sl].to(device)
            x0 = to_unit(data[i])
            if cfg.random_flip:
                x0 = torch.where(flip_all[sl].to(device)[:, None, None, None], x0.flip(-1), x0)
            x_t = sqrt_abar[t][:, None, None, None] * x0 + sqrt_1m_abar[t][:, None, None, None] * noise
            y = None
            if null is not None:
                y = torch.where(drop_all[sl].to(device), torch.full_like(targets[i], null), targets[i])
            with accelerator.accumulate(model):
                with autocast(precision, device):
                    pred = model(x_t, t, class_labels=y, return_dict=False)[0]
                # P2: lambda_t * ||eps - eps_theta||^2 per sample (mean over pixels); gamma = 0 is plain MSE.
                per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3)) * weights[t]
                loss = per_sample.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach() / accum
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay_at(cfg, step))
        step += 1
        window_n += 1
        bar.update(1)
        if callback is not None:
            callback(step, float(loss.detach()))
        if step % cfg.log_every == 0 or step == end or step % cfg.checkpoint_every == 0:
            mean_loss = float(window_loss) / window_n
            check_finite(mean_loss, stage, f"steps {step - window_n + 1}-{step}",
                         f"lower diffusion.lr ({cfg.lr:g}) or keep diffusion.grad_clip on ({cfg.grad_clip:g})")
            rate = window_n * cfg.batch_size / max(time.perf_counter() - window_t0, 1e-9)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
            if writer is not None:
                writer.add_scalar("diffusion/loss", mean_loss, step)
                writer.add_scalar("diffusion/lr", lr, step)
                writer.add_scalar("diffusion/ema_decay", ema_decay_at(cfg, step - 1), step)
                writer.add_scalar("diffusion/images_per_s", rate, step)
            window_loss.zero_()
            window_n, window_t0 = 0, time.perf_counter()
        if cfg.sample_every and step % cfg.sample_every == 0 and main:
            _preview(stage, ema, cfg, num_classes, step, device, writer)
        if step % cfg.checkpoint_every == 0 or step == end:
            _checkpoint(accelerator, ckpt_path, raw, ema, optimizer, step)
            if main:
                stage.checkpointed()
    bar.close()

    if step >= cfg.steps and main:
        meta = {"diffusion": dataclasses.asdict(cfg), "num_classes": num_classes, "steps": step}
        save_unet(stage.path("unet.safetensors"), ema, meta)
        seconds = time.perf_counter() - t_start
        write_json(
            stage.path("train.json"),
            {"steps": step, "resumed_from": start_step, "seconds": round(seconds, 2), "precision": precision,
             "images_per_s": round((step - start_step) * cfg.batch_size / max(seconds, 1e-9), 2),
             "processes": procs},
        )
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    return ema


def _fast_adam(device: torch.device) -> dict:
    """Fused AdamW where torch has it for this device (CPU and CUDA), else the multi-tensor one."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


def _checkpoint(accelerator, path, raw, ema, optimizer, step: int) -> None:
    if accelerator.is_main_process:
        save_state(
            path,
            {"model": raw.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
        )
    accelerator.wait_for_everyone()


def _writer(stage: Stage, step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard missing: train without scalars
        return None
    return SummaryWriter(str(stage.path("tb")), purge_step=step or None)


def _preview(stage: Stage, ema, cfg: DiffusionConfig, num_classes: int | None, step: int, device, writer) -> None:
    """A fixed-seed grid from the EMA weights: one row per class (conditional, no guidance) or 8x8."""
    if num_classes is not None:
        per_row = max(1, min(8, 64 // num_classes))
        labels = torch.arange(min(num_classes, 64)).repeat_interleave(per_row)
    else:
        per_row, labels = 8, torch.zeros(64, dtype=torch.long)
    scfg = SamplingConfig(
        sampler="ddim", steps=min(25, cfg.num_train_timesteps), eta=0.0, guidance_scale=1.0,
        batch_size=len(labels), timestep_spacing="trailing", precision=cfg.precision,
    )
    images = sample(ema, scfg, cfg, labels, stage.generator("diffusion-preview"), device, progress=False)
    grid = class_grid(images, labels, per_row) if num_classes is not None else make_grid_image(images, per_row)
    save_png(stage.path(f"samples/step_{step:07d}.png"), grid)
    if writer is not None:
        import numpy as np

        writer.add_image("diffusion/samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")

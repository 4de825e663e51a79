"""The sampling loop: guided noise prediction, the walk down a timestep grid, batched and sharded generation.

The per-step maths is :mod:`.updates`, the timestep grid and alpha-bars :mod:`.schedule`, the image conversions and
files :mod:`.images`; this module only puts them in order.

Determinism. Every image has its own integer seed; its initial noise and, for stochastic samplers, its per-step noise
come from a generator seeded with it. An image therefore does not depend on the batch size, the batch it falls in or
the process that draws it (up to floating-point differences between batch shapes), and the seed is stored with it in
the synthetic dataset's CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..devices import cpu_workers, map_batches
from ..progress import progress_bar
from .config import DiffusionConfig, DiffusionConfigError, SamplingConfig
from .images import to_uint8
from .models import autocast, model_config, model_num_classes, null_label, pad_rows, resolve_precision
from .schedule import alphas_cumprod, timestep_grid
from .updates import ddim_step, ddpm_step, per_image_noise

# ----------------------------------------------------------------------------------------------------- guidance


def combine_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps = eps_uncond + s * (eps_cond - eps_uncond); s = 1 is the conditional prediction.

    Computed as eps_cond + (s - 1) * (eps_cond - eps_uncond), the same value, which is exactly eps_cond at s = 1.
    """
    return eps_cond + (guidance_scale - 1) * (eps_cond - eps_uncond)


def predict_eps(
    model: torch.nn.Module,
    x: torch.Tensor,
    t: int | torch.Tensor,
    labels: torch.Tensor | None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """The (guided) noise prediction at timestep ``t``; float32.

    Conditional and unconditional passes run as ONE batch of twice the size. ``labels=None`` (unconditional model),
    ``guidance_scale == 1`` (conditional) and ``guidance_scale == 0`` (null class only) each take a single pass.
    """
    b = x.shape[0]
    t = torch.as_tensor(t, device=x.device, dtype=torch.long).expand(b)
    if labels is None:
        if guidance_scale != 1:
            raise DiffusionConfigError("sampling.guidance_scale must be 1 for an unconditional model")
        return model(x, t, return_dict=False)[0].float()
    if guidance_scale == 1:
        return model(x, t, class_labels=labels, return_dict=False)[0].float()
    null = torch.full_like(labels, null_label(model_num_classes(model)))
    if guidance_scale == 0:
        return model(x, t, class_labels=null, return_dict=False)[0].float()
    both = model(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([labels, null]), return_dict=False)[0]
    eps_cond, eps_uncond = both.float().chunk(2)
    return combine_guidance(eps_cond, eps_uncond, guidance_scale)


# ------------------------------------------------------------------------------------------------ the loop


def denoise(
    x: torch.Tensor,
    predict: Callable[[torch.Tensor, int], torch.Tensor],
    ts: Sequence[int],
    prev: Sequence[float],
    alphas_cumprod: torch.Tensor,
    sampler: str = "ddim",
    eta: float = 0.0,
    clip: bool = False,
    draw_noise: Callable[[], torch.Tensor] | None = None,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Walk ``x`` from ``ts[0]`` down the grid to the clean image; a plain function of the noise model, so any
    callable ``predict(x, t) -> eps`` runs it (a U-Net with guidance in :func:`sample`, a test's dummy model).

    Args:
        ts, prev: the descending timesteps and the alpha-bar each step lands on (:func:`.schedule.timestep_grid`).
        sampler: ``ddim`` (with ``eta``) or ``ddpm`` (ancestral).
        clip: clamp the predicted x0 to [-1, 1] at each step.
        draw_noise: the noise of one stochastic step; called after that step's prediction, never on the last step.
        on_step: called after every step (a progress bar).
    """
    stochastic = sampler == "ddpm" or eta > 0
    for i, t in enumerate(ts):
        eps = predict(x, t)
        abar_t, abar_prev = float(alphas_cumprod[t]), prev[i]
        noise = None
        if stochastic and i < len(ts) - 1:
            if draw_noise is None:
                raise ValueError(f"denoise: a {sampler} run with eta {eta} needs draw_noise")
            noise = draw_noise()
        if sampler == "ddim":
            x = ddim_step(x, eps, abar_t, abar_prev, eta, noise, clip=clip)
        else:
            x = ddpm_step(x, eps, abar_t, abar_prev, noise, clip=clip)
        if on_step is not None:
            on_step()
    return x


def draw_seeds(generator: torch.Generator, n: int) -> torch.Tensor:
    """``n`` per-image seeds (int64, below 2**62) from ``generator``."""
    return torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)


def _prepare(model: torch.nn.Module, device, compile_model: bool) -> torch.nn.Module:
    model.eval().requires_grad_(False).to(device)
    if compile_model:
        return torch.compile(model, dynamic=False)
    return model


@torch.inference_mode()
def sample(
    model: torch.nn.Module,
    cfg: SamplingConfig,
    diffusion_cfg: DiffusionConfig,
    labels: torch.Tensor,
    generator: torch.Generator | None,
    device: torch.device | str,
    progress: bool = True,
    seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate one image per entry of ``labels``; returns uint8 images (N, C, H, W) on the CPU.

    Args:
        model: a U-Net from :func:`build_unet` (EMA weights); put in eval mode and moved to ``device``.
        cfg: sampler, steps, eta, guidance, batch size, spacing, precision.
        diffusion_cfg: the training schedule (T, betas, clip_sample).
        labels: (N,) int64 class labels; for an unconditional model only their number matters.
        generator: draws the per-image seeds (unless ``seeds`` is given).
        device: where the U-Net runs.
        progress: show a tqdm bar (image-steps).
        seeds: (N,) per-image seeds, e.g. to regenerate one image of a synthetic dataset.
    """
    cfg.validate()
    labels = torch.as_tensor(labels, dtype=torch.long).cpu().reshape(-1)
    n = labels.numel()
    num_classes = model_num_classes(model)
    if num_classes is None:
        if cfg.guidance_scale != 1:
            raise DiffusionConfigError(
                f"sampling.guidance_scale is {cfg.guidance_scale}, but the model is unconditional: "
                "classifier-free guidance needs a conditional model (use 1)"
            )
    elif n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got {int(labels.min())}..{int(labels.max())}")
    if seeds is None:
        if generator is None:
            raise ValueError("sample: give a generator or per-image seeds")
        seeds = draw_seeds(generator, n)
    seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
    if seeds.numel() != n:
        raise ValueError(f"sample: {seeds.numel()} seeds for {n} labels")

    device = torch.device(device)
    conf = model_config(model)
    shape = (conf["in_channels"], conf["sample_size"], conf["sample_size"])
    ts, prev = timestep_grid(diffusion_cfg, cfg.sampler, cfg.steps, cfg.timestep_spacing)
    abar = alphas_cumprod(diffusion_cfg).double()
    precision = resolve_precision(cfg.precision, device)
    net = _prepare(model, device, cfg.compile)
    out = torch.empty((n, *shape), dtype=torch.uint8)
    bar = progress_bar(show=progress, total=n * len(ts), unit="img-step", desc="sampling", leave=False)

    def padded(rows: torch.Tensor) -> torch.Tensor:  # compiled: fixed shapes avoid recompiling
        return pad_rows(rows, cfg.batch_size) if cfg.compile else rows

    @torch.inference_mode()  # grad mode is per thread: the workers need their own
    def one_batch(start: int) -> None:  # rows start.. of ``out``; the same batches for any number of workers
        stop = min(start + cfg.batch_size, n)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start:stop]]
        x = padded(per_image_noise(gens, shape, device))
        y = padded(labels[start:stop].to(device)) if num_classes is not None else None

        def predict(x: torch.Tensor, t: int) -> torch.Tensor:
            with autocast(precision, device):
                return predict_eps(net, x, t, y, cfg.guidance_scale)

        x = denoise(x, predict, ts, prev, abar, cfg.sampler, cfg.eta, diffusion_cfg.clip_sample,
                    lambda: padded(per_image_noise(gens, shape, device)), lambda: bar.update(stop - start))
        out[start:stop] = to_uint8(x[: stop - start]).cpu()

    # torch.compile'd modules are not called from several threads at once
    map_batches(one_batch, range(0, n, cfg.batch_size), 1 if cfg.compile else cpu_workers(device, cfg.workers))
    bar.close()
    return out


def class_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """0,0,...,1,1,...: ``per_class`` labels of each class."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def sample_sharded(
    model: torch.nn.Module,
    cfg: SamplingConfig,
    diffusion_cfg: DiffusionConfig,
    labels: torch.Tensor,
    seeds: torch.Tensor,
    accelerator=None,
    progress: bool = True,
) -> torch.Tensor:
    """:func:`sample` with the images split across the processes of ``accelerator`` (``accelerate launch``).

    Every process gets the full result, in the order of ``labels``. Images depend only on their seeds, so the result
    is the same for any number of processes.
    """
    if accelerator is None or accelerator.num_processes == 1:
        device = accelerator.device if accelerator is not None else _default_device()
        return sample(model, cfg, diffusion_cfg, labels, None, device, progress, seeds=seeds)
    n = len(labels)
    with accelerator.split_between_processes(list(range(n)), apply_padding=True) as mine:
        idx = torch.tensor(mine, dtype=torch.long)
    images = sample(
        model, cfg, diffusion_cfg, labels[idx], None, accelerator.device,
        progress and accelerator.is_local_main_process, seeds=seeds[idx],
    )
    all_images = accelerator.gather(images.to(accelerator.device)).cpu()
    all_idx = accelerator.gather(idx.to(accelerator.device)).cpu()
    out = torch.empty((n, *images.shape[1:]), dtype=torch.uint8)
    out[all_idx] = all_images  # padding repeats the last index with the same image
    return out


def sample_per_class(
    model: torch.nn.Module,
    cfg: SamplingConfig,
    diffusion_cfg: DiffusionConfig,
    num_classes: int,
    generator: torch.Generator,
    accelerator=None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``cfg.per_class`` images of every class; returns (uint8 images, labels, per-image seeds)."""
    labels = class_labels(num_classes, cfg.per_class)
    seeds = draw_seeds(generator, len(labels))
    images = sample_sharded(model, cfg, diffusion_cfg, labels, seeds, accelerator, progress)
    return images, labels, seeds


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

"""Sampling: DDIM and DDPM update rules, classifier-free guidance, batched and sharded generation, synthetic datasets.

The update rules are written out here (not taken from diffusers' ``step``) because DDIM inversion and h-space
injection reuse them with a modified x0 prediction; diffusers' schedulers only provide the alpha-bar table and the
timestep grid (:func:`diffdebias.diffusion.schedule.timestep_grid`).

Determinism. Every image has its own integer seed; its initial noise and, for stochastic samplers, its per-step noise
come from a generator seeded with it. An image therefore does not depend on the batch size, the batch it falls in or
the process that draws it (up to floating-point differences between batch shapes), and the seed is stored with it in
the synthetic dataset's CSV.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..devices import cpu_workers, map_batches
from ..runs import atomic_path
from .config import DiffusionConfig, DiffusionConfigError, SamplingConfig
from .models import autocast, model_num_classes, null_label, resolve_precision, unwrap
from .schedule import alphas_cumprod, timestep_grid

# ------------------------------------------------------------------------------------------------- update rules


def _sqrt(v):
    return v.sqrt() if isinstance(v, torch.Tensor) else math.sqrt(v)


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    """P_t(eps) = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)  (DDIM eq. 12, first term)."""
    return (x_t - _sqrt(1 - alpha_bar_t) * eps) / _sqrt(alpha_bar_t)


def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta: float):
    """sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)  (DDIM eq. 16).

    eta = 0 gives 0 for any pair of alpha-bars, also for an inversion step (abar_prev < abar_t).
    """
    if isinstance(eta, (int, float)) and eta == 0:
        return 0.0
    return eta * _sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t,
    alpha_bar_prev,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    clip: bool = False,
) -> torch.Tensor:
    """One DDIM update  x_prev = sqrt(abar_prev) * x0 + sqrt(1 - abar_prev - sigma^2) * eps + sigma * noise.

    Args:
        x_t: current sample.
        eps: predicted noise; it forms the "direction pointing to x_t" term D_t(eps).
        alpha_bar_t, alpha_bar_prev: alpha-bar at this and at the target timestep (1.0 past the last step).
        eta: 0 deterministic DDIM, 1 DDPM-like variance.
        noise: standard normal noise, needed when sigma > 0.
        x0: predicted clean image; defaults to :func:`predicted_x0` of ``eps``. Passing the prediction of a modified
            eps gives Asyrp's asymmetric step (x0 from the injected eps, direction from the original one).
        clip: clamp x0 to [-1, 1] (the direction term keeps the unclipped eps, as diffusers' DDIM does).
    """
    if x0 is None:
        x0 = predicted_x0(x_t, eps, alpha_bar_t)
    if clip:
        x0 = x0.clamp(-1, 1)
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    direction = 1 - alpha_bar_prev - sigma**2
    direction = direction.clamp(min=0) if isinstance(direction, torch.Tensor) else max(direction, 0.0)
    x_prev = _sqrt(alpha_bar_prev) * x0 + _sqrt(direction) * eps
    if float(sigma) > 0:
        if noise is None:
            raise ValueError("ddim_step: eta > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddpm_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    noise: torch.Tensor | None = None,
    clip: bool = False,
) -> torch.Tensor:
    """One ancestral DDPM step from the posterior q(x_prev | x_t, x0) (DDPM eq. 6-7, "fixed_small" variance).

    On a sub-grid, alpha_t is abar_t / abar_prev (as in diffusers' ``DDPMScheduler`` with fewer inference steps).
    """
    x0 = predicted_x0(x_t, eps, alpha_bar_t)
    if clip:
        x0 = x0.clamp(-1, 1)
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    mean = (math.sqrt(alpha_bar_prev) * beta_t / (1 - alpha_bar_t)) * x0 + (
        math.sqrt(alpha_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    ) * x_t
    variance = max((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t, 0.0)
    if variance > 0:
        if noise is None:
            raise ValueError("ddpm_step: a step with variance > 0 needs noise")
        mean = mean + math.sqrt(variance) * noise
    return mean


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


# ----------------------------------------------------------------------------------------------------- sampling


def draw_seeds(generator: torch.Generator, n: int) -> torch.Tensor:
    """``n`` per-image seeds (int64, below 2**62) from ``generator``."""
    return torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[0, 255] uint8 -> [-1, 1] floats (the diffusion models' data range)."""
    return images.float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> [0, 255] uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> uint8 (N, C, size, size): antialiased bilinear down, bilinear up. For
    ``diffusion.image_size``: the U-Net trains and samples at ``size``, the methods see the data's size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    down = size < images.shape[-1]
    parts = [torch.nn.functional.interpolate(images[i : i + chunk].float(), size=(size, size), mode="bilinear",
                                             align_corners=False, antialias=down)
             for i in range(0, len(images), chunk)]
    return torch.cat(parts).round().clamp(0, 255).to(torch.uint8)


def _noise(gens: Sequence[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


def pad_rows(rows: torch.Tensor, size: int) -> torch.Tensor:
    """``rows`` with its first row repeated up to ``size`` rows: a compiled model sees one batch shape only."""
    pad = size - len(rows)
    return torch.cat([rows, rows[:1].expand(pad, *rows.shape[1:])]) if pad > 0 else rows


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
    stochastic = cfg.sampler == "ddpm" or cfg.eta > 0
    out = torch.empty((n, *shape), dtype=torch.uint8)
    bar = tqdm(total=n * len(ts), unit="img-step", desc="sampling", disable=not progress, leave=False)

    @torch.inference_mode()  # grad mode is per thread: the workers need their own
    def one_batch(start: int) -> None:  # rows start.. of ``out``; the same batches for any number of workers
        stop = min(start + cfg.batch_size, n)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start:stop]]
        x = _noise(gens, shape, device)
        y = labels[start:stop].to(device) if num_classes is not None else None
        if cfg.compile:  # fixed shapes avoid recompiling
            x = pad_rows(x, cfg.batch_size)
            y = None if y is None else pad_rows(y, cfg.batch_size)
        for i, t in enumerate(ts):
            with autocast(precision, device):
                eps = predict_eps(net, x, t, y, cfg.guidance_scale)
            abar_t, abar_prev = float(abar[t]), prev[i]
            noise = None
            if stochastic and i < len(ts) - 1:
                noise = _noise(gens, shape, device)
                if cfg.compile:
                    noise = pad_rows(noise, cfg.batch_size)
            if cfg.sampler == "ddim":
                x = ddim_step(x, eps, abar_t, abar_prev, cfg.eta, noise, clip=diffusion_cfg.clip_sample)
            else:
                x = ddpm_step(x, eps, abar_t, abar_prev, noise, clip=diffusion_cfg.clip_sample)
            bar.update(stop - start)
        out[start:stop] = to_uint8(x[: stop - start]).cpu()

    # torch.compile'd modules are not called from several threads at once
    map_batches(one_batch, range(0, n, cfg.batch_size), 1 if cfg.compile else cpu_workers(device, cfg.workers))
    bar.close()
    return out


def model_config(model: torch.nn.Module) -> dict:
    return dict(unwrap(model).config)


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


# ------------------------------------------------------------------------------------------------------- output


def make_grid_image(images: torch.Tensor, nrow: int) -> Image.Image:
    """uint8 (N, C, H, W) -> one PIL image, ``nrow`` images per row (torchvision's make_grid)."""
    from torchvision.utils import make_grid

    grid = make_grid(images.float() / 255.0, nrow=max(1, nrow), padding=2, pad_value=1.0)
    return to_pil((grid * 255).round().to(torch.uint8))


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) with C in {1, 3} -> PIL image."""
    array = image.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array, "RGB")


def save_png(path: str | os.PathLike, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def class_grid(images: torch.Tensor, labels: torch.Tensor, per_row: int = 8) -> Image.Image:
    """A grid with one row per class (the first ``per_row`` images of each; blank where a class has fewer)."""
    classes = torch.unique(labels).tolist()
    rows = []
    for c in classes:
        chosen = images[labels == c][:per_row]
        if len(chosen) < per_row:
            blank = torch.full((per_row - len(chosen), *images.shape[1:]), 255, dtype=torch.uint8)
            chosen = torch.cat([chosen, blank])
        rows.append(chosen)
    return make_grid_image(torch.cat(rows), per_row)


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    images: torch.Tensor,
    labels: torch.Tensor,
    seeds: torch.Tensor,
    grid_per_class: int = 8,
    extra_columns: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``<label>/<index>.png`` files, ``grid.png`` (one row per class) and ``synthetic.csv``.

    The CSV has columns ``path,label,seed`` (then ``extra_columns``, e.g. the provenance of each image) with paths
    relative to ``out_dir``; it is written last, so its presence means the folder is complete. Returns the CSV path.
    """
    out_dir = Path(out_dir)
    images = images.cpu()
    labels = torch.as_tensor(labels).cpu().reshape(-1)
    seeds = torch.as_tensor(seeds).cpu().reshape(-1)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
    if not len(images) == len(labels) == len(seeds):
        raise ValueError(f"{len(images)} images, {len(labels)} labels and {len(seeds)} seeds: lengths differ")
    extra = {k: torch.as_tensor(v).cpu().reshape(-1).tolist() for k, v in (extra_columns or {}).items()}
    for k, v in extra.items():
        if len(v) != len(images):
            raise ValueError(f"extra column {k!r} has {len(v)} values for {len(images)} images")
    rows = []
    for i, (image, label, seed) in enumerate(zip(images, labels.tolist(), seeds.tolist())):
        rel = f"{label}/{i:06d}.png"
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        to_pil(image).save(path, format="PNG")
        rows.append((rel, label, seed, *(v[i] for v in extra.values())))
    if len(images):
        save_png(out_dir / "grid.png", class_grid(images, labels, grid_per_class))
    csv_path = out_dir / "synthetic.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "seed", *extra])
        writer.writerows(rows)
    return csv_path

"""h-space content injection (InjectFusion, the generator DiffInject uses).

A content image and a style image are DDIM-inverted (eta = 0). Generation starts from the style image's inverted
noise; at the steps with ``t >= t_edit`` the U-Net bottleneck ``h`` (the ``mid_block`` output) is blended towards the
content image's recorded ``h_c`` by normalised slerp, while the skip connections stay those of the style trajectory.
The step is Asyrp's asymmetric one: the predicted x0 comes from the injected noise estimate, the direction term from
the original one. Steps with ``t <= t_boost`` add DDPM-like noise (eta = ``boost_eta``, "quality boosting").

One grid serves inversion and generation: ``round(linspace(0, T - 1, steps))``, as the released code builds it. With
``steps = 50`` this is the released code's injection grid; its 1,000-step runs add plain DDIM steps between these
points, which are not reproduced (``docs/results.md`` records the step count of every run).

The U-Net is split at the bottleneck (:func:`encode` / :func:`decode`, the two halves of ``UNet2DModel.forward``), so
an injection step runs the encoder once and the decoder twice (original and injected ``h``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from ..progress import progress_bar
from .config import BLENDS, InjectionConfig
from .models import autocast, resolve_precision, unwrap
from .updates import ddim_step, per_image_noise, predicted_x0

# ---------------------------------------------------------------------------------------------- the U-Net split


def check_splittable(model: torch.nn.Module) -> None:
    """Raise if ``model`` uses a ``UNet2DModel`` feature that :func:`encode`/:func:`decode` do not reproduce."""
    m = unwrap(model)
    c = m.config
    if c.get("center_input_sample") or c.get("time_embedding_type", "positional") != "positional" or any(
        hasattr(b, "skip_conv") for b in [*m.down_blocks, *m.up_blocks]
    ) or m.mid_block is None:
        raise ValueError("h-space injection supports UNet2DModel with positional time embeddings, a mid block and "
                         "no skip-sample blocks (the presets of diffdebias.diffusion.models)")


def encode(model: torch.nn.Module, x: torch.Tensor, t: int, class_labels: torch.Tensor | None = None):
    """The U-Net up to and including ``mid_block``: returns ``(h, skips, emb)``."""
    return _encode(unwrap(model), x, _timesteps(x, t), class_labels)


def decode(model: torch.nn.Module, h: torch.Tensor, skips: tuple[torch.Tensor, ...], emb: torch.Tensor):
    """The U-Net after ``mid_block``: the noise prediction from bottleneck ``h`` and the encoder's ``skips``."""
    return _decode(unwrap(model), h, skips, emb)


def _timesteps(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


def _encode(m, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None):
    # the timestep is a tensor here, so one compiled graph serves every step of the grid
    emb = m.time_embedding(m.time_proj(timesteps).to(dtype=m.dtype))
    if m.class_embedding is not None:
        if class_labels is None:
            raise ValueError("this U-Net is class-conditional: give class_labels")
        emb = emb + m.class_embedding(class_labels).to(dtype=m.dtype)
    sample = m.conv_in(x)
    skips = (sample,)
    for block in m.down_blocks:
        sample, res = block(hidden_states=sample, temb=emb)
        skips += res
    return m.mid_block(sample, emb), skips, emb


def _decode(m, h: torch.Tensor, skips: tuple[torch.Tensor, ...], emb: torch.Tensor):
    sample = h
    for block in m.up_blocks:
        n = len(block.resnets)
        res, skips = skips[-n:], skips[:-n]
        sample = block(sample, res, emb)
    return m.conv_out(m.conv_act(m.conv_norm_out(sample))).float()


@functools.cache
def _compiled_halves():
    enc, dec = torch.compile(_encode, dynamic=False), torch.compile(_decode, dynamic=False)

    def encode_compiled(model, x, t, class_labels=None):
        return enc(unwrap(model), x, _timesteps(x, t), class_labels)

    def decode_compiled(model, h, skips, emb):
        return dec(unwrap(model), h, skips, emb)

    return encode_compiled, decode_compiled


def unet_halves(compiled: bool = False):
    """``(encode, decode)``, or their torch.compile'd versions: one graph per batch shape (keep batches one size),
    x1.3 on a 2-core AVX-512 CPU in fp32 after a one-off compile of ~20 s (docs/results.md); not thread-safe."""
    return _compiled_halves() if compiled else (encode, decode)


# ------------------------------------------------------------------------------------------------------- blends


def slerp(a: torch.Tensor, b: torch.Tensor, gamma: float, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation per sample (over all of C, H, W): gamma = 0 gives ``a``, gamma = 1 gives ``b``.

    For equal norms the result keeps that norm. The angle's cosine is clamped, so (anti)parallel inputs are safe.
    """
    af, bf = a.flatten(1), b.flatten(1)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp(min=1e-12)
    theta = cos.clamp(-1 + eps, 1 - eps).acos()
    s = theta.sin()
    wa = torch.sin((1 - gamma) * theta) / s
    wb = torch.sin(gamma * theta) / s
    shape = (-1,) + (1,) * (a.ndim - 1)
    return wa.view(shape) * a + wb.view(shape) * b


def normalized_slerp(h: torch.Tensor, h_content: torch.Tensor, gamma: float) -> torch.Tensor:
    """slerp(h, h_c * |h| / |h_c|, gamma): the content's direction at the style's norm, so |result| = |h|."""
    norm = h.flatten(1).norm(dim=1) / h_content.flatten(1).norm(dim=1).clamp(min=1e-12)
    return slerp(h, h_content * norm.view(-1, *([1] * (h.ndim - 1))), gamma)


def box_mask(box: Sequence[float], height: int, width: int, device=None) -> torch.Tensor:
    """A (1, 1, H, W) 0/1 mask of the rows [top, bottom) and columns [left, right) given as fractions of h's size."""
    top, bottom, left, right = box
    mask = torch.zeros(1, 1, height, width, device=device)
    rows = slice(math.floor(top * height), math.ceil(bottom * height))
    cols = slice(math.floor(left * width), math.ceil(right * width))
    mask[..., rows, cols] = 1
    return mask


def channel_statistics(h: torch.Tensor, h_content: torch.Tensor, gamma: float, std: bool = False) -> torch.Tensor:
    """Move each channel's spatial mean (and, with ``std``, its spatial spread: AdaIN) of ``h`` towards the content's,
    keeping the style's spatial pattern: global attributes (a colour) travel, the layout (a digit's shape) stays.
    ``gamma`` 1 lands on the content's statistics; above 1 it goes past them along the same line (extrapolation)."""
    mu, mu_c = h.mean((2, 3), keepdim=True), h_content.mean((2, 3), keepdim=True)
    scale = 1.0
    if std:
        scale = (h_content.std((2, 3), keepdim=True) + 1e-5) / (h.std((2, 3), keepdim=True) + 1e-5)
    target = (h - mu) * scale + mu_c
    return h + gamma * (target - h)


def blend(h: torch.Tensor, h_content: torch.Tensor, gamma: float, mask: Sequence[float] | None = None,
          mode: str = "slerp"):
    """The injected bottleneck. ``slerp`` (the paper): normalised slerp everywhere, or (with ``mask``) a plain slerp
    inside the box only, as the released code's local injection does. ``mean`` / ``adain``: only the per-channel
    statistics of h move towards the content's (:func:`channel_statistics`; ``mask`` does not apply)."""
    if mode not in BLENDS:
        raise ValueError(f"injection.blend must be one of {', '.join(BLENDS)}; got {mode!r}")
    if mode != "slerp":
        return channel_statistics(h, h_content, gamma, std=mode == "adain")
    if mask is None:
        return normalized_slerp(h, h_content, gamma)
    m = box_mask(mask, h.shape[-2], h.shape[-1], h.device)
    return slerp(m * h, m * h_content, gamma) + (1 - m) * h


# ------------------------------------------------------------------------------------------ inversion, injection


def injection_grid(num_train_timesteps: int, steps: int) -> list[int]:
    """Ascending timesteps round(linspace(0, T - 1, steps)), shared by inversion and generation."""
    if not 2 <= steps <= num_train_timesteps:
        raise ValueError(f"injection steps must be in [2, {num_train_timesteps}], got {steps}")
    return [int(v) for v in torch.linspace(0, num_train_timesteps - 1, steps).round().long()]


def truncated_grid(grid: Sequence[int], t_start: int | None) -> list[int]:
    """The grid points up to ``t_start`` (None: all): inversion then stops at the last of them, and generation
    starts there, from a partly noised style instead of pure noise (fewer U-Net passes, more of the style kept)."""
    if t_start is None:
        return list(grid)
    kept = [t for t in grid if t <= t_start]
    if len(kept) < 2:
        raise ValueError(f"injection t_start {t_start} leaves fewer than 2 grid points (grid starts {grid[:2]})")
    return kept


def _abar(alphas_cumprod: torch.Tensor, t: int) -> float:
    return 1.0 if t < 0 else float(alphas_cumprod[t])


@torch.inference_mode()
def invert(
    model: torch.nn.Module,
    x0: torch.Tensor,
    grid: Sequence[int],
    alphas_cumprod: torch.Tensor,
    record_from: int | None = None,
    progress: bool = False,
    precision: str = "fp32",
    compiled: bool = False,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Deterministic DDIM inversion of ``x0`` (floats in [-1, 1]) along ``grid``; returns ``(x_T, h)``.

    ``h`` maps each timestep ``t >= record_from`` of the grid (all but the last) to the bottleneck of the U-Net
    evaluated at ``(x_t, t)``; None records nothing. ``precision`` (fp32 | bf16, resolved) is the U-Net's autocast;
    the trajectory itself stays fp32, and h is recorded as fp32. ``compiled``: run the torch.compile'd U-Net halves.
    """
    enc, dec = unet_halves(compiled)
    x = x0.float()
    recorded: dict[int, torch.Tensor] = {}
    for i, j in progress_bar(list(zip(grid[:-1], grid[1:])), show=progress, desc="inversion", leave=False):
        with autocast(precision, x.device):
            h, skips, emb = enc(model, x, i)
            eps = dec(model, h, skips, emb)
        if record_from is not None and i >= record_from:
            recorded[i] = h.float()
        x = ddim_step(x, eps, _abar(alphas_cumprod, i), _abar(alphas_cumprod, j))
    return x, recorded


def nearest_recorded(t: int, recorded: Sequence[int]) -> int:
    return min(recorded, key=lambda r: (abs(r - t), -r))


@torch.inference_mode()
def inject(
    model: torch.nn.Module,
    x_T: torch.Tensor,
    content_h: dict[int, torch.Tensor],
    grid: Sequence[int],
    alphas_cumprod: torch.Tensor,
    cfg: InjectionConfig,
    generators: Sequence[torch.Generator] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Generate from the style's inverted noise ``x_T`` with the content bottleneck blended in; floats in [-1, 1].

    The settings come from ``cfg`` as :func:`.sampling.sample` takes its ``SamplingConfig``: ``gamma``, ``t_edit``,
    ``t_boost``, ``boost_eta``, ``mask``, ``blend``, ``precision`` (resolved on ``x_T``'s device; the blend and the DDIM
    update run in fp32) and ``compile`` (:func:`unet_halves`). ``steps`` and ``t_start`` shape ``grid``, which the
    caller builds once for inversion and generation. ``cfg`` is not validated here, so a sweep may step outside the
    config's ranges (a ``t_boost`` at or above ``t_edit``).

    Args:
        content_h: timestep -> (B, C, h, w) content bottleneck (row i belongs to x_T's row i), recorded by
            :func:`invert` for at least every grid step >= ``t_edit``; the nearest recorded timestep is used.
        grid: ascending timesteps (:func:`injection_grid`, :func:`truncated_grid`); generation walks it downwards,
            ending at alpha-bar 1.
        generators: one per row, for the noise of the steps with t <= ``t_boost`` ("quality boosting").
    """
    enc, dec = unet_halves(cfg.compile)
    precision = resolve_precision(cfg.precision, x_T.device)
    x = x_T.float()
    steps = list(reversed(grid))
    keys = sorted(content_h)
    for k, i in enumerate(progress_bar(steps, show=progress, desc="injection", leave=False)):
        j = steps[k + 1] if k + 1 < len(steps) else -1
        abar_t, abar_prev = _abar(alphas_cumprod, i), _abar(alphas_cumprod, j)
        with autocast(precision, x.device):
            h, skips, emb = enc(model, x, i)
            eps = dec(model, h, skips, emb)
        x0 = None
        if i >= cfg.t_edit and cfg.gamma > 0:
            if not keys:
                raise ValueError(f"inject: no content h recorded for t >= t_edit ({cfg.t_edit})")
            h_c = content_h[nearest_recorded(i, keys)].to(h.device, torch.float32)
            h_injected = blend(h.float(), h_c, cfg.gamma, cfg.mask, cfg.blend)
            with autocast(precision, x.device):
                x0 = predicted_x0(x, dec(model, h_injected, skips, emb), abar_t)
        eta = cfg.boost_eta if i <= cfg.t_boost else 0.0
        noise = None
        if eta > 0 and j >= 0:
            if generators is None:
                raise ValueError("inject: quality boosting (eta > 0) needs one generator per image")
            noise = per_image_noise(generators, x.shape[1:], x.device)
        x = ddim_step(x, eps, abar_t, abar_prev, eta, noise, x0=x0)
    return x

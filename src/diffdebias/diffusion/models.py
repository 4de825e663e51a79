"""U-Net presets on diffusers' ``UNet2DModel``, how it runs (precision, fixed batch shapes for compiled models), and
saving/loading trained weights.

Class conditioning uses ``num_class_embeds = num_classes + 1``: the label embedding is added to the timestep
embedding, and the LAST index (:func:`null_label`) is a learned "no label" class for classifier-free guidance.

Resolutions. A preset is a list of levels; each level but the last halves the resolution with a stride-2 conv and the
decoder doubles it again with nearest upsampling, so the image size must be divisible by ``2**(levels-1)``. 28 px
(MNIST) is not a power of two: 28 -> 14 -> 7 works with three levels, 28 -> 14 -> 7 -> 4 -> 8 does not. So
``cpu`` (three levels) takes 28 and 32 px as they are, and ``paper`` (four levels) drops its deepest level for sizes
divisible by 4 but not by 8 (28 px: levels 28/14/7). We never pad: h-space (the ``mid_block`` output) then has the
natural size (7x7 at 28 px), and an image's pixels map one-to-one to what the network sees.

Attention. ``cpu`` and ``tiny`` use one attention head per block (``attention_head_dim=None`` means head dim =
channels): diffusers' default 8-dim heads make attention's backward pass dominate a CPU step. ``paper`` uses 64-dim
heads as ADM/P2 do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DModel

from .. import devices
from ..runs import load_tensors, save_tensors
from .config import DiffusionConfigError


@dataclass(frozen=True)
class Preset:
    block_out_channels: tuple[int, ...]  # channels per level, finest first
    attention: tuple[bool, ...]  # self-attention in that level's blocks (the mid block always has one)
    layers_per_block: int
    norm_num_groups: int
    attention_head_dim: int | None  # None: one head per block (head dim = channels)
    min_levels: int  # levels that may remain after dropping the deepest ones to fit the image size
    min_bottleneck: int = 4  # smallest allowed bottleneck side (h-space resolution)


PRESETS: dict[str, Preset] = {
    # For tests and smoke runs: ~0.1 M params, 2 levels (8 px and up, even sizes).
    "tiny": Preset((16, 32), (False, True), 1, 8, None, 2),
    # ~1 M params; 28 px -> 14 -> 7 bottleneck, 32 px -> 8. Attention only at the bottleneck level and mid block.
    "cpu": Preset((32, 64, 64), (False, False, True), 1, 8, None, 3),
    # ~27 M params (16 M at 28 px), channel multipliers (1, 2, 4, 4) on 64 channels; attention at 16 px and below;
    # 32 px -> 4 bottleneck, 64 px -> 8; 28 px uses the first three levels (bottleneck 7).
    "paper": Preset((64, 128, 256, 256), (False, True, True, True), 2, 32, 64, 3),
}


def null_label(num_classes: int) -> int:
    """Index of the learned null class used for classifier-free guidance (the last embedding)."""
    return int(num_classes)


def model_num_classes(model: torch.nn.Module) -> int | None:
    """Number of real classes of a model built by :func:`build_unet` (None for an unconditional one)."""
    n = model_config(model).get("num_class_embeds")
    return None if n is None else int(n) - 1


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The ``UNet2DModel`` inside a torch.compile and/or DDP wrapper."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return getattr(model, "module", model)  # DDP wrapper


def model_config(model: torch.nn.Module) -> dict[str, Any]:
    """The diffusers config of a (possibly wrapped) U-Net, as a plain dict."""
    return dict(unwrap(model).config)


def preset_levels(preset: str, image_size: int) -> int:
    """How many resolution levels ``preset`` uses at ``image_size``, or a :class:`DiffusionConfigError`."""
    if preset not in PRESETS:
        raise DiffusionConfigError(f"diffusion.preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    p = PRESETS[preset]
    levels = len(p.block_out_channels)
    while levels > p.min_levels and image_size % 2 ** (levels - 1):
        levels -= 1
    factor = 2 ** (levels - 1)
    if image_size % factor or image_size // factor < p.min_bottleneck:
        raise DiffusionConfigError(
            f"diffusion.preset {preset!r} cannot handle {image_size} px images: it needs a multiple of {factor} "
            f"of at least {factor * p.min_bottleneck} px (e.g. resize the data to "
            f"{max(factor * p.min_bottleneck, -(-image_size // factor) * factor)} px)"
        )
    return levels


def build_unet(
    preset: str, image_size: int, in_channels: int, num_classes: int | None, seed: int | None = None
) -> UNet2DModel:
    """A fresh ``UNet2DModel`` for ``image_size`` px images with ``in_channels`` channels.

    Args:
        preset: ``tiny`` | ``cpu`` | ``paper`` (see :data:`PRESETS`).
        image_size: side of the square images.
        in_channels: 1 (grey) or 3 (RGB); the output has as many (the predicted noise).
        num_classes: number of classes for a class-conditional model with a null class, None for unconditional.
        seed: seed of the weight initialisation (drawn inside ``torch.random.fork_rng``, so the global generator is
            left as it was); None uses the global generator.
    """
    levels = preset_levels(preset, image_size)
    if in_channels < 1:
        raise DiffusionConfigError(f"in_channels must be >= 1, got {in_channels}")
    if num_classes is not None and num_classes < 1:
        raise DiffusionConfigError(f"num_classes must be >= 1 or None, got {num_classes}")
    p = PRESETS[preset]
    channels = p.block_out_channels[:levels]
    attention = p.attention[:levels]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_unet(preset, image_size, in_channels, num_classes)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=channels,
        layers_per_block=p.layers_per_block,
        norm_num_groups=p.norm_num_groups,
        attention_head_dim=p.attention_head_dim,
        num_class_embeds=None if num_classes is None else num_classes + 1,
    )


# -------------------------------------------------------------------------------------- precision, batch shapes


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """:func:`diffdebias.devices.resolve_precision`, with a bad value reported as a diffusion config error."""
    if precision not in ("fp32", "bf16", "auto"):
        raise DiffusionConfigError(f"precision must be fp32, bf16 or auto; got {precision!r}")
    return devices.resolve_precision(precision, device)


def autocast(precision: str, device: torch.device | str):
    """The autocast context for a resolved precision (a no-op context for fp32)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def pad_rows(rows: torch.Tensor, size: int) -> torch.Tensor:
    """``rows`` with its first row repeated up to ``size`` rows: a compiled model sees one batch shape only."""
    pad = size - len(rows)
    return torch.cat([rows, rows[:1].expand(pad, *rows.shape[1:])]) if pad > 0 else rows


# ------------------------------------------------------------------------------------------------- save / load


def save_unet(path: str | os.PathLike, model: torch.nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Save weights as safetensors with the diffusers model config (and ``meta``) in the header."""
    inner = unwrap(model)
    header = {"unet_config": _jsonable(dict(inner.config)), **(meta or {})}
    save_tensors(path, inner.state_dict(), header)


def load_unet(path: str | os.PathLike, with_meta: bool = False):
    """Rebuild a ``UNet2DModel`` saved by :func:`save_unet` (no pickle involved); eval mode, on the CPU.

    Returns the model, or ``(model, meta)`` if ``with_meta``.
    """
    tensors, meta = load_tensors(path)
    if "unet_config" not in meta:
        raise ValueError(f"{path}: not a diffdebias U-Net file (no 'unet_config' in its metadata)")
    model = UNet2DModel.from_config(meta["unet_config"])
    model.load_state_dict(tensors, strict=True)
    model.eval().requires_grad_(False)
    return (model, meta) if with_meta else model


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

"""The diffusion engine, one concept per module: settings (:mod:`.config`), U-Net presets and how they run
(:mod:`.models`), noise schedules (:mod:`.schedule`), training with guidance dropout, P2 and EMA (:mod:`.train`), the
per-step DDIM/DDPM maths (:mod:`.updates`), the sampling loop (:mod:`.sampling`), h-space injection
(:mod:`.injection`) and image conversion and files (:mod:`.images`).

Names are imported on first use, so reading a config (which needs only :mod:`.config`) does not import diffusers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    ".config": ("DiffusionConfig", "DiffusionConfigError", "InjectionConfig", "SamplingConfig"),
    ".images": ("write_synthetic_dataset",),
    ".injection": ("decode", "encode", "inject", "injection_grid", "invert", "normalized_slerp", "slerp"),
    ".models": ("build_unet", "load_unet", "model_num_classes", "null_label", "resolve_precision", "save_unet"),
    ".sampling": ("combine_guidance", "denoise", "predict_eps", "sample", "sample_per_class", "sample_sharded"),
    ".schedule": ("make_scheduler", "p2_weights", "timestep_grid"),
    ".train": ("train_diffusion",),
    ".updates": ("ddim_step", "ddpm_step", "predicted_x0"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)

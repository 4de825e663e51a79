"""The diffusion engine: U-Net presets, noise schedules, training (guidance dropout, P2, EMA) and sampling.

Names are imported on first use, so reading a config (which needs only :mod:`.config`) does not import diffusers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    ".config": ("DiffusionConfig", "DiffusionConfigError", "InjectionConfig", "SamplingConfig"),
    ".injection": ("decode", "encode", "inject", "injection_grid", "invert", "normalized_slerp", "slerp"),
    ".models": ("build_unet", "load_unet", "model_num_classes", "null_label", "resolve_precision", "save_unet"),
    ".sampling": ("combine_guidance", "ddim_step", "ddpm_step", "predict_eps", "predicted_x0", "sample",
                "sample_per_class", "sample_sharded", "write_synthetic_dataset"),
    ".schedule": ("make_scheduler", "p2_weights", "timestep_grid"),
    ".train": ("train_diffusion",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)

"""The diffusion engine: U-Net presets, noise schedules, training (guidance dropout, P2, EMA) and sampling."""

from .config import DiffusionConfig, DiffusionConfigError, SamplingConfig
from .models import build_unet, load_unet, model_num_classes, null_label, resolve_precision, save_unet
from .sample import (
    combine_guidance,
    ddim_step,
    ddpm_step,
    predict_eps,
    predicted_x0,
    sample,
    sample_per_class,
    sample_sharded,
    write_synthetic_dataset,
)
from .schedule import make_scheduler, p2_weights, timestep_grid
from .train import train_diffusion

__all__ = [
    "DiffusionConfig",
    "DiffusionConfigError",
    "SamplingConfig",
    "build_unet",
    "combine_guidance",
    "ddim_step",
    "ddpm_step",
    "load_unet",
    "make_scheduler",
    "model_num_classes",
    "null_label",
    "p2_weights",
    "predict_eps",
    "predicted_x0",
    "resolve_precision",
    "sample",
    "sample_per_class",
    "sample_sharded",
    "save_unet",
    "timestep_grid",
    "train_diffusion",
    "write_synthetic_dataset",
]

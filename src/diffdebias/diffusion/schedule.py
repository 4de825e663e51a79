"""Noise schedules (diffusers schedulers with every setting explicit) and P2 loss weights.

We use diffusers' schedulers for two things only: the beta/alpha-bar tables and the inference timestep grid. The
update rules themselves are ours (:mod:`diffdebias.diffusion.updates`), since DDIM inversion and h-space injection need
them in the open. Every scheduler argument is passed explicitly so a change of library default cannot change results.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from .config import DiffusionConfig, DiffusionConfigError


def make_scheduler(cfg: DiffusionConfig, kind: str = "ddpm", timestep_spacing: str = "leading"):
    """A ``DDPMScheduler`` or ``DDIMScheduler`` matching the training schedule of ``cfg``.

    ``set_alpha_to_one=True`` (DDIM) makes the last step land on the clean image (alpha-bar 1);
    ``steps_offset=0`` keeps the grid on the raw ``timestep_spacing`` rule; no thresholding, no zero-SNR rescaling.
    """
    common = dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        trained_betas=None,
        clip_sample=cfg.clip_sample,
        clip_sample_range=1.0,
        prediction_type="epsilon",  # the U-Net predicts the noise (both papers)
        thresholding=False,
        timestep_spacing=timestep_spacing,
        steps_offset=0,
        rescale_betas_zero_snr=False,
    )
    if kind == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    if kind == "ddim":
        return DDIMScheduler(set_alpha_to_one=True, **common)
    raise DiffusionConfigError(f"sampling.sampler must be ddim or ddpm; got {kind!r}")


def alphas_cumprod(cfg: DiffusionConfig) -> torch.Tensor:
    """alpha-bar_t for t = 0..T-1 (float32, as diffusers computes it)."""
    return make_scheduler(cfg).alphas_cumprod.clone()


def timestep_grid(cfg: DiffusionConfig, sampler: str, steps: int, spacing: str) -> tuple[list[int], list[float]]:
    """The descending timesteps of a sampling run and, for each, the alpha-bar of the step it lands on.

    The previous alpha-bar is read from the NEXT grid point (1.0 after the last one), which is exact for every
    spacing; diffusers' DDIM ``step`` uses ``t - T // steps`` instead, which agrees for leading/trailing grids only.
    """
    if steps > cfg.num_train_timesteps:
        raise DiffusionConfigError(
            f"sampling.steps ({steps}) cannot exceed diffusion.num_train_timesteps ({cfg.num_train_timesteps})"
        )
    sched = make_scheduler(cfg, sampler, spacing)
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    abar = sched.alphas_cumprod.double()
    prev = [float(abar[t]) for t in ts[1:]] + [1.0]
    return ts, prev


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio abar / (1 - abar)."""
    return alphas_cumprod / (1 - alphas_cumprod)


def p2_weights(alphas_cumprod: torch.Tensor, k: float = 1.0, gamma: float = 0.0) -> torch.Tensor:
    """P2 loss weights lambda_t = 1 / (k + SNR(t))^gamma (Choi et al. 2022); gamma = 0 gives all ones."""
    if gamma == 0:
        return torch.ones_like(alphas_cumprod)
    return 1.0 / (k + snr(alphas_cumprod)) ** gamma

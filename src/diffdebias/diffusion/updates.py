"""The per-step update maths: DDIM and DDPM steps from a noise estimate, the x0 prediction they share, and the
per-image noise a stochastic step adds.

Written out here rather than taken from diffusers' ``step``, because DDIM inversion and h-space injection
(:mod:`.injection`) reuse them with a modified x0 prediction; diffusers' schedulers provide only the alpha-bar table and
the timestep grid (:mod:`.schedule`). The sampling loop that applies them is :mod:`.sampling`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


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


def per_image_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """One standard normal draw of ``shape`` per generator, stacked: row i comes from image i's own generator, so an
    image's starting and per-step noise do not depend on the batch it falls in."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)

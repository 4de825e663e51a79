"""Per-sample losses. GCE makes a model latch onto the easy (bias-aligned) samples, which is what biased models need."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, reduction="none")


def gce(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Generalised cross-entropy as LfF's code writes it: ``CE · p_y.detach()^q · q``.

    Its gradient equals that of ``(1 - p_y^q) / q`` times q: confident samples dominate the update.
    """
    logits = logits.float()
    p_y = torch.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1).detach()
    return F.cross_entropy(logits, labels, reduction="none") * p_y.pow(q) * q


def per_sample_loss(name: str, q: float = 0.7):
    if name == "ce":
        return cross_entropy
    if name == "gce":
        return lambda logits, labels: gce(logits, labels, q)
    raise ValueError(f"unknown loss '{name}' (known: ce, gce)")

"""How the shared training loop samples and weighs: the one thing that differs between most debiasing methods.

A weighting object decides (1) the index order of each epoch and (2) how per-sample losses of a batch become the
scalar to minimise. Methods differ by the weighting they pass to :func:`train_classifier`, not by their own loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Batch:
    index: torch.Tensor  # positions in the training set (CPU)
    x: torch.Tensor  # float inputs on the device
    labels: torch.Tensor  # on the device
    logits: torch.Tensor
    epoch: int
    step: int


class Weighting:
    """Uniform: a fresh random permutation per epoch and the plain mean of the per-sample losses."""

    def order(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(n, generator=generator)

    def loss(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        return losses.mean()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

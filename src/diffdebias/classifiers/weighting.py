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
    """Uniform: a fresh random permutation per epoch and the plain mean of the per-sample losses.

    Subclasses that own extra models (LfF's biased model) get the target model through :meth:`bind` before
    training starts, and keep their models and optimizers in :meth:`state_dict` so a resumed run continues exactly.
    """

    def bind(self, model: torch.nn.Module, generator: torch.Generator) -> None:
        """Called once with the target model (on its device) and the stage's generator, before any resume."""

    def order(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(n, generator=generator)

    def loss(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        return losses.mean()

    def lr_factor(self, step: int) -> float:
        """Multiplier of the configured learning rate at this step (a schedule a method needs, e.g. DisEnt's)."""
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def balanced_order(groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N indices drawn with replacement, each group equally likely (weights N / n_g), as Group-DRO's sampler."""
    counts = torch.bincount(groups).double()
    weights = (1.0 / counts)[groups]
    return torch.multinomial(weights, len(groups), replacement=True, generator=generator)


class GroupDRO(Weighting):
    """Group-DRO (Sagawa et al.): exponentiated-gradient weights ``q_g`` over groups, loss ``sum_g q_g L_g``.

    Each step: ``q_g <- q_g exp(eta (L_g + C / sqrt(n_g)))``, renormalised; ``L_g`` is the batch mean loss of group
    g (0 when absent). ``balanced`` draws each epoch with group-balanced replacement sampling.
    """

    def __init__(self, groups: torch.Tensor, eta: float = 0.01, adjustment: float = 0.0, balanced: bool = True):
        self.groups = groups.long()
        self.num_groups = int(groups.max()) + 1
        self.counts = torch.bincount(self.groups, minlength=self.num_groups).double()
        self.eta = eta
        self.adjustment = adjustment
        self.balanced = balanced
        self.q = torch.full((self.num_groups,), 1.0 / self.num_groups, dtype=torch.double)

    def order(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return balanced_order(self.groups, generator) if self.balanced else super().order(n, epoch, generator)

    def group_losses(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(self.num_groups, dtype=losses.dtype, device=losses.device).index_add(0, groups, losses)
        counts = torch.bincount(groups, minlength=self.num_groups).to(losses.dtype)
        return sums / counts.clamp(min=1)

    def update(self, group_loss: torch.Tensor) -> None:
        adjusted = group_loss.detach().double().cpu()
        if self.adjustment > 0:
            adjusted = adjusted + self.adjustment / self.counts.clamp(min=1).sqrt()
        self.q = self.q * torch.exp(self.eta * adjusted)
        self.q = self.q / self.q.sum()

    def loss(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        g = self.groups[batch.index].to(losses.device)
        per_group = self.group_losses(losses, g)
        self.update(per_group)
        return (self.q.to(losses.device, losses.dtype) * per_group).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "q" in state:
            self.q = state["q"].double()


class PerSampleEMA:
    """LfF's per-sample loss EMA: the first visit stores the loss, later ones ``alpha * old + (1 - alpha) * new``."""

    def __init__(self, n: int, alpha: float = 0.7):
        self.alpha = alpha
        self.value = torch.zeros(n)
        self.seen = torch.zeros(n, dtype=torch.bool)

    def update(self, index: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        loss = loss.detach().float().cpu()
        old = self.value[index]
        self.value[index] = torch.where(self.seen[index], self.alpha * old + (1 - self.alpha) * loss, loss)
        self.seen[index] = True
        return self.value[index]


def class_max_normalize(values: torch.Tensor, index: torch.Tensor, all_values: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
    """Divide each sample's value by the maximum of its class over the whole training set (LfF's code)."""
    num_classes = int(labels.max()) + 1
    class_max = torch.zeros(num_classes).scatter_reduce(0, labels, all_values, reduce="amax", include_self=True)
    return values / class_max[labels[index]].clamp(min=1e-8)


def relative_difficulty(loss_b: torch.Tensor, loss_d: torch.Tensor) -> torch.Tensor:
    """LfF's weight ``L_B / (L_B + L_D)``: near 1 where the biased model fails and the target does not."""
    return loss_b / (loss_b + loss_d + 1e-8)


class FixedBiasLossWeights(Weighting):
    """LfF-style weights against a frozen biased model's per-sample losses (DDB Recipe II).

    ``W = L_BA / (L_BA + L_D)``: ``L_D`` is the target's own per-sample loss, optionally an EMA (alpha) over
    visits; with ``normalize`` both are divided by their class-wise maximum over the training set.
    """

    def __init__(self, bias_loss: torch.Tensor, labels: torch.Tensor, alpha: float = 0.7, ema: bool = True,
                 normalize: bool = True):
        self.bias_loss = bias_loss.float()
        self.labels = labels.long()
        self.ema = PerSampleEMA(len(labels), alpha if ema else 0.0)
        self.normalize = normalize
        self.last_weights: torch.Tensor | None = None

    def weights(self, index: torch.Tensor, loss_d: torch.Tensor) -> torch.Tensor:
        ld = self.ema.update(index, loss_d)
        lb = self.bias_loss[index]
        if self.normalize:
            lb = class_max_normalize(lb, index, self.bias_loss, self.labels)
            ld = class_max_normalize(ld, index, self.ema.value, self.labels)
        return relative_difficulty(lb, ld)

    def loss(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        w = self.weights(batch.index, losses).to(losses.device)
        self.last_weights = w
        return (w * losses).mean()

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.value, "seen": self.ema.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ema" in state:
            self.ema.value, self.ema.seen = state["ema"].float(), state["seen"].bool()

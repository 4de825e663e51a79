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

    ``distributable``: the loss reaches the target model only through the per-sample losses and logits it is given,
    so several processes can each compute a part of the batch (see ``train_classifier(parallel=True)``); a weighting
    that reads the model's insides (DisEnt's features) trains on one process.
    """

    distributable = True

    def bind(self, model: torch.nn.Module, generator: torch.Generator) -> None:
        """Called once with the target model (on its device) and the stage's generator, before any resume."""

    def order(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(n, generator=generator)

    def loss(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        return losses.mean()

    def lr_factor(self, step: int) -> float:
        """Multiplier of the configured learning rate at this step (a schedule a method needs, e.g. DisEnt's)."""
        return 1.0

    def sample_weights(self) -> dict[str, torch.Tensor] | None:
        """Per-sample weights of the whole training set, for the epoch's diagnostic record (see
        :meth:`RelativeDifficulty.sample_weights`); None for a weighting without any."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def balanced_order(groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N indices drawn with replacement, each group equally likely (weights N / n_g), as Group-DRO's sampler."""
    counts = torch.bincount(groups).double()
    weights = (1.0 / counts)[groups]
    return torch.multinomial(weights, len(groups), replacement=True, generator=generator)


class SyntheticShare(Weighting):
    """Draws each epoch's N samples with replacement so that a fixed ``share`` of them is synthetic on average.

    Concatenating a few thousand synthetic images to tens of thousands of real ones lets the real majority set the
    pace; this fixes how much of every epoch the synthetic part gets, without looking at any bias label.
    """

    def __init__(self, synthetic: torch.Tensor, share: float):
        if not 0 < share < 1:
            raise ValueError(f"the synthetic share must lie in (0, 1), got {share}")
        synthetic = synthetic.bool()
        if not synthetic.any() or synthetic.all():
            raise ValueError("a synthetic share needs both real and synthetic samples")
        n_syn = synthetic.sum().double()
        self.weights = torch.where(synthetic, share / n_syn, (1 - share) / (len(synthetic) - n_syn))

    def order(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, n, replacement=True, generator=generator)


class GroupDRO(Weighting):
    """Group-DRO (Sagawa et al.): exponentiated-gradient weights ``q_g`` over groups, loss ``sum_g q_g L_g``.

    Each step: ``q_g <- q_g exp(eta (L_g + C / sqrt(n_g)))``, renormalised; ``L_g`` is the batch mean loss of group
    g (0 when absent). ``balanced`` draws each epoch with group-balanced replacement sampling. ``reweight`` keeps
    uniform sampling and weighs each sample's loss by ``q_g / (n_g / N)``, normalised over the batch: the same
    objective in expectation, but each epoch visits every sample once instead of re-drawing the small groups ~G/N x
    their share, which the MLP memorises (docs/results.md).
    """

    def __init__(self, groups: torch.Tensor, eta: float = 0.01, adjustment: float = 0.0, balanced: bool = True,
                 reweight: bool = False):
        if balanced and reweight:
            raise ValueError("groupdro.reweight weighs a uniformly sampled batch: set groupdro.balanced=false with it")
        self.groups = groups.long()
        self.num_groups = int(groups.max()) + 1
        self.counts = torch.bincount(self.groups, minlength=self.num_groups).double()
        self.eta = eta
        self.adjustment = adjustment
        self.balanced = balanced
        self.reweight = reweight
        self.q = torch.full((self.num_groups,), 1.0 / self.num_groups, dtype=torch.double)

    @classmethod
    def from_config(cls, groups: torch.Tensor, cfg: Any) -> GroupDRO:
        """From a ``groupdro`` config section (eta, adjustment, balanced, reweight)."""
        return cls(groups, eta=cfg.eta, adjustment=cfg.adjustment, balanced=cfg.balanced, reweight=cfg.reweight)

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
        if self.reweight:
            w = (self.q / (self.counts / self.counts.sum()).clamp(min=1e-12)).to(losses.device, losses.dtype)[g]
            return (w * losses).sum() / w.sum()
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


class RelativeDifficulty:
    """LfF's W(x) from two per-sample loss EMAs (biased, target), as LfF's ``train.py`` computes it.

    Each call pushes the batch's detached losses into both EMAs, reads the batch's EMA values back, divides each by
    its class's maximum over the whole training set's EMA buffer (``normalize``), and returns
    ``L_B / (L_B + L_D + 1e-8)``. ``ema=False`` keeps only the latest loss (alpha 0).
    """

    def __init__(self, labels: torch.Tensor, alpha: float = 0.7, ema: bool = True, normalize: bool = True):
        self.labels = labels.long().cpu()
        a = alpha if ema else 0.0
        self.ema_b = PerSampleEMA(len(labels), a)
        self.ema_d = PerSampleEMA(len(labels), a)
        self.normalize = normalize
        n = len(labels)  # diagnostics only, see keep()
        self.weight, self.norm_b, self.norm_d = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        self.kept = torch.zeros(n, dtype=torch.bool)

    def __call__(self, index: torch.Tensor, loss_b: torch.Tensor, loss_d: torch.Tensor) -> torch.Tensor:
        index = index.cpu()
        lb = self.ema_b.update(index, loss_b)
        ld = self.ema_d.update(index, loss_d)
        if self.normalize:
            lb = class_max_normalize(lb, index, self.ema_b.value, self.labels)
            ld = class_max_normalize(ld, index, self.ema_d.value, self.labels)
        w = relative_difficulty(lb, ld)
        self.keep(index, lb, ld, w)
        return w

    def keep(self, index: torch.Tensor, loss_b: torch.Tensor, loss_d: torch.Tensor, weight: torch.Tensor) -> None:
        """Copies, per sample, of the last W and the two normalised losses that formed it, for the diagnostic record
        alone: nothing in training reads them, and they draw no random number."""
        self.weight[index], self.norm_b[index], self.norm_d[index] = weight, loss_b, loss_d
        self.kept[index] = True

    def sample_weights(self) -> dict[str, torch.Tensor]:
        """Every training sample's W as it last multiplied the sample's loss (after the EMA and the class-wise max
        normalisation of that batch), the normalised ``loss_b`` / ``loss_d`` that formed it, the EMAs before
        normalisation (``loss_b_ema`` / ``loss_d_ema``: a sample's EMA changes only when it is visited, so these are
        the values of its last visit), and ``kept`` (visited at least once)."""
        return {"weight": self.weight, "loss_b": self.norm_b, "loss_d": self.norm_d, "loss_b_ema": self.ema_b.value,
                "loss_d_ema": self.ema_d.value, "kept": self.kept}

    def state_dict(self) -> dict[str, Any]:
        return {"ema_b": self.ema_b.value, "seen_b": self.ema_b.seen, "ema_d": self.ema_d.value,
                "seen_d": self.ema_d.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ema_b" in state:
            self.ema_b.value, self.ema_b.seen = state["ema_b"].float(), state["seen_b"].bool()
            self.ema_d.value, self.ema_d.seen = state["ema_d"].float(), state["seen_d"].bool()


SAMPLE_WEIGHT_LOSSES = ("loss_b", "loss_d", "loss_b_ema", "loss_d_ema")


def sample_weight_record(values: dict[str, torch.Tensor], aligned: torch.Tensor) -> dict[str, float | int]:
    """Summary of per-sample weights (:meth:`RelativeDifficulty.sample_weights`) over the bias-aligned and the
    bias-conflicting samples (``aligned``, over the whole training set): for each group its count, mean, median,
    10th and 90th percentile of W (linear interpolation), and the mean of each loss of :data:`SAMPLE_WEIGHT_LOSSES`;
    ``ratio`` = mean W conflicting / mean W aligned, the effective upweighting; and how well W and the biased model's
    loss (``loss_b_ema``) rank the conflicting samples above the aligned ones, ``auroc`` and ``auroc_loss_b`` (the
    detection a recipe's weights amount to). The last three where both groups are present. Samples never visited yet
    are left out."""
    kept = values["kept"]
    out: dict[str, float | int] = {}
    means = {}
    for group, mask in (("aligned", aligned & kept), ("conflicting", ~aligned & kept)):
        out[f"{group}_count"] = int(mask.sum())
        if not mask.any():
            continue
        w = values["weight"][mask].double()
        p10, p50, p90 = torch.quantile(w, torch.tensor([0.1, 0.5, 0.9], dtype=torch.double)).tolist()
        means[group] = float(w.mean())
        out.update({f"{group}_mean": means[group], f"{group}_median": p50, f"{group}_p10": p10, f"{group}_p90": p90})
        out.update({f"{group}_{k}": float(values[k][mask].double().mean()) for k in SAMPLE_WEIGHT_LOSSES})
    if len(means) == 2:
        from sklearn.metrics import roc_auc_score

        conflicting = (~aligned[kept]).numpy()
        if means["aligned"] > 0:
            out["ratio"] = means["conflicting"] / means["aligned"]
        out["auroc"] = float(roc_auc_score(conflicting, values["weight"][kept].double().numpy()))
        out["auroc_loss_b"] = float(roc_auc_score(conflicting, values["loss_b_ema"][kept].double().numpy()))
    return out


class DifficultyWeighting(Weighting):
    """A weighting whose per-sample W comes from a :class:`RelativeDifficulty` (LfF, DDB Recipe II, DisEnt)."""

    difficulty: RelativeDifficulty

    def sample_weights(self) -> dict[str, torch.Tensor]:
        return self.difficulty.sample_weights()


class FixedBiasLossWeights(DifficultyWeighting):
    """LfF-style weights against a frozen biased model's per-sample losses (DDB Recipe II).

    LfF's :class:`RelativeDifficulty` with the biased loss fixed: its EMA buffer starts full (an EMA of a constant is
    the constant), so the class-wise maximum of ``L_BA`` is taken over the whole training set from the first batch.
    """

    def __init__(self, bias_loss: torch.Tensor, labels: torch.Tensor, alpha: float = 0.7, ema: bool = True,
                 normalize: bool = True):
        self.bias_loss = bias_loss.float().cpu()
        self.difficulty = RelativeDifficulty(labels, alpha, ema, normalize)
        self.difficulty.ema_b.value = self.bias_loss.clone()
        self.difficulty.ema_b.seen[:] = True
        self.last_weights: torch.Tensor | None = None

    def loss(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        index = batch.index.cpu()
        w = self.difficulty(index, self.bias_loss[index], losses.detach()).to(losses.device)
        self.last_weights = w
        return (w * losses).mean()

    def state_dict(self) -> dict[str, Any]:
        return self.difficulty.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.difficulty.load_state_dict(state)

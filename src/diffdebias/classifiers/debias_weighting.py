"""Weighting objects (and DisEnt's model) of the debiasing baselines: LfF, LfF+BE, DisEnt, JTT, BiasEnsemble.

All of them plug into the one loop of :mod:`.train`. Objects that own extra models (LfF's f_B) train them inside
:meth:`loss` on the batch the loop drew, and keep models, optimizers and EMAs in their state dict, so a resumed run
continues exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..devices import autocast
from ..runs import derive_seed
from .losses import cross_entropy, gce
from .models import build_classifier
from .train import ModelFactory, default_factory, make_optimizer
from .weighting import Batch, DifficultyWeighting, RelativeDifficulty, Weighting

# ------------------------------------------------------------------------------------------------- LfF's weights


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask``; a zero that keeps the graph when no sample is selected (the authors' code gives NaN)."""
    return values[mask].mean() if bool(mask.any()) else values.sum() * 0.0


class LfFJoint(DifficultyWeighting):
    """Learning from Failure: the target f_D is weighted by ``W = L_B / (L_B + L_D)`` while f_B trains beside it.

    f_B is a fresh copy of the target architecture with its own optimizer (same settings as the target's, LfF's two
    Adams). Every batch: f_B's and f_D's per-sample CE go into the EMAs (``RelativeDifficulty``); f_B takes one step on
    ``mean(GCE_q(f_B(x), y))``; the loop minimises ``mean(W · CE(f_D(x), y))``. LfF backpropagates ``loss_B + loss_D``
    once; since W is detached and the two models share no parameters, f_B's separate backward here gives the same
    gradients.

    BiasEnsemble variant (``aligned_mask``): f_B is trained with plain CE on the pseudo bias-aligned samples of the
    batch only; its EMA is still updated on every sample. ``init_b``: f_B starts from these weights instead of a fresh
    initialisation (DDB's Recipe II with the amplifier as the biased model's start, ``ddb.bias_model=trained``).
    """

    def __init__(self, labels: torch.Tensor, cfg: TrainConfig, num_classes: int, image_shape: tuple[int, int, int],
                 build_model: ModelFactory = default_factory, alpha: float = 0.7, q: float = 0.7, ema: bool = True,
                 normalize: bool = True, aligned_mask: torch.Tensor | None = None,
                 init_b: dict[str, torch.Tensor] | None = None):
        self.cfg = cfg
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.build_model = build_model
        self.q = q
        self.difficulty = RelativeDifficulty(labels, alpha, ema, normalize)
        self.aligned = None if aligned_mask is None else aligned_mask.bool().cpu()
        self.init_b = init_b
        self.model_b: nn.Module | None = None
        self.optimizer_b: torch.optim.Optimizer | None = None
        self.last_weights: torch.Tensor | None = None

    def bind(self, model: nn.Module, generator: torch.Generator) -> None:
        device = next(model.parameters()).device
        self.model_b = self.build_model(self.cfg, self.num_classes, self.image_shape)
        if self.init_b is not None:
            self.model_b.load_state_dict(self.init_b)
        self.model_b = self.model_b.to(device)
        self.optimizer_b = make_optimizer(self.model_b, self.cfg)

    def bias_loss(self, logits_b: torch.Tensor, ce_b: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.aligned is None:
            return gce(logits_b, batch.labels, self.q).mean()
        return _masked_mean(ce_b, self.aligned[batch.index.cpu()].to(ce_b.device))

    def loss(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        assert self.model_b is not None and self.optimizer_b is not None, "LfFJoint used before bind()"
        self.model_b.train()
        with autocast(batch.x.device, self.cfg.precision):
            logits_b = self.model_b(batch.x)
        ce_b = cross_entropy(logits_b, batch.labels)
        w = self.difficulty(batch.index, ce_b.detach(), losses.detach()).to(losses.device)
        loss_b = self.bias_loss(logits_b, ce_b, batch)
        self.optimizer_b.zero_grad(set_to_none=True)
        loss_b.backward()
        self.optimizer_b.step()
        self.last_weights = w
        return (w * losses).mean()

    def state_dict(self) -> dict[str, Any]:
        return {"model_b": self.model_b.state_dict(), "optimizer_b": self.optimizer_b.state_dict(),
                **self.difficulty.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "model_b" in state:
            self.model_b.load_state_dict(state["model_b"])
            self.optimizer_b.load_state_dict(state["optimizer_b"])
        self.difficulty.load_state_dict(state)


# --------------------------------------------------------------------------------------------------------- JTT


class Upsample(Weighting):
    """JTT's stage 2: ``ConcatDataset([train, Subset(train, E × copies)])``, shuffled each epoch.

    Every index in ``index`` appears ``1 + copies`` times in an epoch's order, every other index once; the loss is the
    plain mean.
    """

    def __init__(self, index: torch.Tensor, copies: int):
        if copies < 0:
            raise ValueError(f"upsampling copies must be >= 0, got {copies}")
        self.index = index.long().cpu()
        self.copies = copies

    def order(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        full = torch.cat([torch.arange(n), self.index.repeat(self.copies)])
        return full[torch.randperm(len(full), generator=generator)]


# ------------------------------------------------------------------------------------------------ BiasEnsemble


class FixedSteps(Weighting):
    """A fixed number of steps per loop epoch, drawn from back-to-back reshuffled passes over the data.

    BiasEnsemble trains each bias model for a number of iterations, not epochs: with ``steps_per_epoch`` = its
    ``valid_freq``, the loop's per-epoch valid evaluation falls every ``valid_freq`` steps. The last epoch holds the
    remaining ``total_steps``. Unlike a DataLoader, a batch may straddle two passes (no short last batch).
    """

    def __init__(self, total_steps: int, steps_per_epoch: int, batch_size: int):
        if total_steps < 1 or steps_per_epoch < 1:
            raise ValueError("total_steps and steps_per_epoch must be >= 1")
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def order(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        steps = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
        k = max(steps, 0) * self.batch_size
        passes = [torch.randperm(n, generator=generator) for _ in range(math.ceil(k / n))]
        return torch.cat(passes)[:k] if passes else torch.empty(0, dtype=torch.long)


def committee_aligned(p_y: torch.Tensor, tau: float, agreement: int) -> torch.Tensor:
    """BiasEnsemble's vote: ``p_y`` is (N, M), each model's p(y|x) of the true label; a model flags a sample when
    ``p_y > tau``; the sample is pseudo bias-aligned when at least ``agreement`` models flag it."""
    if not 1 <= agreement <= p_y.shape[1]:
        raise ValueError(f"bias_ensemble.agreement must be in [1, num_models={p_y.shape[1]}], got {agreement}")
    return (p_y > tau).sum(1) >= agreement


# ------------------------------------------------------------------------------------------------------ DisEnt


class DisEntModel(nn.Module):
    """DisEnt's two encoder/classifier pairs: (E_i, C_i) intrinsic and (E_b, C_b) bias, each head reading the
    concatenation ``[z_i, z_b]`` (2d inputs).

    ``forward`` returns ``C_i([z_i, z_b.detach()])``: the test-time prediction ``C_i([z_i, z_b])`` in value, and in
    training the intrinsic logits with DisEnt's detach pattern. In training mode it keeps ``(z_i, z_b)`` of the last
    forward in ``last_features`` for the :class:`DisEnt` weighting (DisEnt's code grabs them with a forward hook).
    """

    def __init__(self, arch: str, num_classes: int, image_shape: tuple[int, int, int], pretrained: bool = False,
                 input_scale: float = 1.0):
        super().__init__()
        self.model_i = build_classifier(arch, num_classes, image_shape, pretrained, input_scale)
        self.model_b = build_classifier(arch, num_classes, image_shape, pretrained, input_scale)
        d = self.model_i.feature_dim
        self.model_i.head = nn.Linear(2 * d, num_classes)
        self.model_b.head = nn.Linear(2 * d, num_classes)
        self.feature_dim = d
        self.last_features: tuple[torch.Tensor, torch.Tensor] | None = None

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model_i.features(x), self.model_b.features(x)

    def head_i(self, z: torch.Tensor) -> torch.Tensor:
        return self.model_i.head(z)

    def head_b(self, z: torch.Tensor) -> torch.Tensor:
        return self.model_b.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z_i, z_b = self.features(x)
        self.last_features = (z_i, z_b) if self.training else None
        return self.head_i(torch.cat([z_i, z_b.detach()], 1))


def disent_factory(cfg: TrainConfig, num_classes: int, image_shape: tuple[int, int, int]) -> DisEntModel:
    """Model factory for ``train_classifier(build_model=...)``: DisEnt's pair of ``cfg.arch`` networks."""
    return DisEntModel(cfg.arch, num_classes, tuple(image_shape), cfg.pretrained, cfg.input_scale)


class DisEnt(DifficultyWeighting):
    """DisEnt (Lee et al. 2021, ``learner.py::train_ours``) on the loop's intrinsic logits.

    With W from LfF's EMAs of CE(C_i([z_i, z_b.detach()])) and CE(C_b([z_i.detach(), z_b])):
    ``L_dis = mean(W·CE_i) + λ_dis_align·mean(GCE(C_b))``; once ``step > curr_step``, z_b is permuted within the
    batch and ``L_swap = mean(W·CE(C_i([z_i, z_b[p].detach()]), y)) + λ_swap_align·mean(GCE(C_b([z_i.detach(),
    z_b[p]]), y[p]))``; the loss is ``L_dis + λ_swap·L_swap``. ``lr_factor`` is DisEnt's StepLR, stepped only from
    curr_step on. One Adam over both networks equals DisEnt's two Adams with equal settings (Adam is per-parameter).

    BiasEnsemble variant (``aligned_mask``): the two align terms are plain CE over the pseudo-aligned samples only
    (after the permutation for the swap term), as in BiasEnsemble's ``train_disent_be``.
    """

    distributable = False  # it reads the target model's features of the whole batch

    def __init__(self, labels: torch.Tensor, lambda_dis_align: float = 10.0, lambda_swap_align: float = 10.0,
                 lambda_swap: float = 1.0, curr_step: int = 10000, lr_decay: bool = True, lr_decay_step: int = 10000,
                 lr_gamma: float = 0.5, alpha: float = 0.7, q: float = 0.7, ema: bool = True, normalize: bool = True,
                 precision: str = "fp32", aligned_mask: torch.Tensor | None = None):
        self.lambda_dis_align = lambda_dis_align
        self.lambda_swap_align = lambda_swap_align
        self.lambda_swap = lambda_swap
        self.curr_step = curr_step
        self.lr_decay = lr_decay
        self.lr_decay_step = lr_decay_step
        self.lr_gamma = lr_gamma
        self.q = q
        self.precision = precision
        self.difficulty = RelativeDifficulty(labels, alpha, ema, normalize)
        self.aligned = None if aligned_mask is None else aligned_mask.bool().cpu()
        self.model: DisEntModel | None = None
        self.seed = 0
        self.last_weights: torch.Tensor | None = None

    @classmethod
    def from_config(cls, labels: torch.Tensor, disent: Any, lff: Any, precision: str = "fp32",
                    aligned_mask: torch.Tensor | None = None) -> DisEnt:
        return cls(labels, disent.lambda_dis_align, disent.lambda_swap_align, disent.lambda_swap, disent.curr_step,
                   disent.lr_decay, disent.lr_decay_step, disent.lr_gamma, lff.alpha, lff.q, lff.ema, lff.normalize,
                   precision, aligned_mask)

    def bind(self, model: nn.Module, generator: torch.Generator) -> None:
        if not isinstance(model, DisEntModel):
            raise TypeError("the DisEnt weighting needs a DisEntModel (train with build_model=disent_factory)")
        self.model = model
        self.seed = int(torch.randint(0, 2**62, (1,), generator=generator))

    def lr_factor(self, step: int) -> float:
        if not self.lr_decay:
            return 1.0
        return self.lr_gamma ** (max(0, step - self.curr_step) // self.lr_decay_step)

    def swap_active(self, step: int) -> bool:
        return step > self.curr_step

    def permutation(self, size: int, step: int) -> torch.Tensor:
        """The swap permutation of a step: a function of (stage seed, step), so a resumed run draws the same one."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, "swap", step))
        return torch.randperm(size, generator=g)

    def swap(self, z_i: torch.Tensor, z_b: torch.Tensor, labels: torch.Tensor, step: int):
        """``None`` until ``step > curr_step``; then (input of C_i, input of C_b, swapped labels, permutation)."""
        if not self.swap_active(step):
            return None
        perm = self.permutation(len(z_b), step).to(z_b.device)
        z_b_swap = z_b[perm]
        return (torch.cat([z_i, z_b_swap.detach()], 1), torch.cat([z_i.detach(), z_b_swap], 1), labels[perm], perm)

    def align_loss(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.aligned is None:
            return gce(logits, labels, self.q).mean()
        return _masked_mean(cross_entropy(logits, labels), self.aligned[index.cpu()].to(logits.device))

    def loss(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        assert self.model is not None, "DisEnt used before bind()"
        feats = self.model.last_features
        if feats is None or len(feats[0]) != len(batch.index):
            raise RuntimeError("DisEnt: the model's last training forward is not this batch")
        z_i, z_b = feats
        y = batch.labels
        with autocast(y.device, self.precision):
            logits_b = self.model.head_b(torch.cat([z_i.detach(), z_b], 1))
        ce_b = cross_entropy(logits_b, y)
        w = self.difficulty(batch.index, ce_b.detach(), losses.detach()).to(losses.device)
        self.last_weights = w
        loss = (w * losses).mean() + self.lambda_dis_align * self.align_loss(logits_b, y, batch.index)
        swapped = self.swap(z_i, z_b, y, batch.step)
        if swapped is not None:
            zi_mix, zb_mix, y_swap, perm = swapped
            with autocast(y.device, self.precision):
                logits_i_mix = self.model.head_i(zi_mix)
                logits_b_mix = self.model.head_b(zb_mix)
            loss_swap = (w * cross_entropy(logits_i_mix, y)).mean() + self.lambda_swap_align * self.align_loss(
                logits_b_mix, y_swap, batch.index[perm.cpu()])
            loss = loss + self.lambda_swap * loss_swap
        self.model.last_features = None
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.difficulty.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.difficulty.load_state_dict(state)

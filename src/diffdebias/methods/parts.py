"""Parts of the baselines that other methods reuse (DiffInject's LfF-weighted final classifier, its repeated errors):
LfF's weighting and model selection, JTT's copy count and valid pseudo-groups. Methods import these, not each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from ..classifiers.debias_weighting import LfFJoint
from ..classifiers.train import predict_logits
from ..config import TrainConfig
from ..data.base import ImageSet
from ..keys import reads
from .common import Context, Trained, train_stage
from .detection import GROUP_METRICS, with_pseudo_groups

VALID_GROUPS = ("errors", "true")


def require_ce(cfg: TrainConfig, method: str) -> None:
    if cfg.loss != "ce":
        raise ValueError(f"{method}: classifier.loss must be 'ce' (the target's loss is CE weighted by W), "
                         f"got '{cfg.loss}'")


def lff_weighting(ctx: Context, train: ImageSet, aligned_mask: torch.Tensor | None = None,
                  init_b: dict[str, torch.Tensor] | None = None) -> LfFJoint:
    """LfF's weights for a target trained on ``train`` with the ``classifier`` and ``lff`` sections (the biased model
    from ``init_b`` where given)."""
    c = ctx.cfg
    return LfFJoint(train.labels, c.classifier, ctx.data.num_classes, tuple(train.images.shape[1:]), alpha=c.lff.alpha,
                    q=c.lff.q, ema=c.lff.ema, normalize=c.lff.normalize, aligned_mask=aligned_mask, init_b=init_b)


def lff_selection(ctx: Context) -> ImageSet | str:
    """LfF's valid split for model selection: groups from the errors of an ERM model after ``lff.error_epochs``."""
    c = ctx.cfg
    return selection_valid(ctx, lambda: train_stage(
        ctx, "early_erm", replace(c.classifier, epochs=c.lff.error_epochs, select="last", ensemble=1)))


def jtt_copies(lambda_up: int, n: int, errors: int) -> int:
    """Extra copies of each error point; ``-1`` is JTT's automatic ``int((N - |E|) / |E|) - 1``."""
    if lambda_up >= 0:
        return lambda_up
    if lambda_up != -1:
        raise ValueError(f"jtt.lambda_up must be >= 0 or -1 (auto), got {lambda_up}")
    return max(int((n - errors) / errors) - 1, 0) if errors else 0


def selection_valid(ctx: Context, early: Callable[[], Trained]) -> ImageSet | str:
    """The valid split that selects a model when ``classifier.select=valid`` uses a group metric (carrying what it
    was made from), by ``selection.valid_groups``. ``errors``: groups are label x misclassified by an ``early`` ERM
    model (JTT's stage 1: the rule that builds its error set), so no bias label is read; ``true``: the valid split's
    bias labels (recorded as supervised). The stage that selects on it is keyed by what the split was made from, so
    the setting itself need not enter its key."""
    c, groups = ctx.cfg.classifier, ctx.cfg.selection.valid_groups
    if groups not in VALID_GROUPS:
        raise ValueError(f"selection.valid_groups must be one of {', '.join(VALID_GROUPS)}, got '{groups}'")
    if c.select != "valid" or c.select_metric not in GROUP_METRICS:
        return "real"
    if groups == "true":
        return "real"  # the true groups: train_stage marks the run supervised
    model, v = early(), ctx.data.valid
    wrong = predict_logits(model.model, v.images, precision=c.precision).argmax(1) != v.labels
    return with_pseudo_groups(v, wrong, ctx.data.num_classes, reads(model))

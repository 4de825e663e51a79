"""Where DiffInject's content images come from, as registries keyed by the config value: who ranks the real training
samples (``detection.source``: ``own``, the GCE-biased classifier of the paper, or ``ddb``, a DDB amplifier plugged in
as the detector, as for JTT and LfF+BE) and which of them become the content pool (``diffinject.content_pool``:
``top_k``, the paper's K highest-loss samples per class, or ``errors``, every sample the ranking model gets wrong)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..config import DiffInjectConfig
from ..data.base import ImageSet
from .amplifier import ddb_amplifier
from .common import Context, Scores, Trained, score_stage, train_stage

# ---------------------------------------------------------------------------------------------------- rankings


def biased_classifier(ctx: Context) -> Trained:
    """The GCE-biased classifier (the ``amplifier`` section): DiffInject's first stage."""
    return train_stage(ctx, "biased_classifier", ctx.cfg.amplifier)


def gce_ranking(ctx: Context) -> Scores:
    """The GCE classifier's per-sample losses (the paper)."""
    return score_stage(ctx, "biased_scores", biased_classifier(ctx))


def ddb_ranking(ctx: Context) -> Scores:
    """The losses of the synthetic-trained amplifier of the DDB config ``detection.ddb_config``."""
    _, amp = ddb_amplifier(ctx, ctx.cfg.detection.ddb_config)
    return score_stage(ctx, "amplifier_scores", amp)


@dataclass(frozen=True)
class Ranking:
    """One ``detection.source``: the per-sample scores that rank the training samples, and the report's words."""

    scores: Callable[[Context], Scores]
    words: str  # who ranks, for the report's "top K per class by ..."


RANKINGS: dict[str, Ranking] = {
    "own": Ranking(gce_ranking, "the GCE classifier (`detection.source=own`)"),
    "ddb": Ranking(ddb_ranking, "the DDB amplifier (`detection.source=ddb`)"),
}

# ------------------------------------------------------------------------------------------------------- pools


def top_k_per_class(loss: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest-loss samples of every class (fewer where a class is smaller), sorted."""
    chosen = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        chosen.append(idx[loss[idx].argsort(descending=True)[:k]])
    return torch.cat(chosen).sort().values


def misclassified(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Indices of the samples whose predicted class is not their label (JTT's error set), sorted."""
    return (pred != labels).nonzero().flatten()


@dataclass(frozen=True)
class Pool:
    """One ``diffinject.content_pool``: the training indices it takes from the ranking, and the report's words."""

    choose: Callable[[Context, Scores], torch.Tensor]
    words: Callable[[DiffInjectConfig, int], str]  # (config, pool size) -> what the pool is


def top_k_pool(ctx: Context, scores: Scores) -> torch.Tensor:
    """The top K per class by loss (the paper). The highest losses come from the few bias attributes the biased model
    trusts most (on Colored MNIST, up to a third of a top-10 pool shares one colour)."""
    return top_k_per_class(scores.loss, ctx.data.train.labels, ctx.cfg.diffinject.top_k)


def error_pool(ctx: Context, scores: Scores) -> torch.Tensor:
    """Every sample the ranking model gets wrong: whatever it gets wrong, as many as it finds."""
    index = misclassified(scores.pred, ctx.data.train.labels)
    if not len(index):
        raise ValueError("diffinject.content_pool=errors: the ranking model gets every training sample right, so "
                         "the pool would be empty; use content_pool=top_k")
    return index


POOLS: dict[str, Pool] = {
    "top_k": Pool(top_k_pool, lambda di, n: f"top {di.top_k} per class"),
    "errors": Pool(error_pool, lambda di, n: f"the {n} training samples misclassified"),
}


def purity(data: ImageSet, index: torch.Tensor) -> dict[str, Any]:
    """How many of the chosen samples are truly bias-conflicting (needs bias labels)."""
    if not data.has_bias:
        return {"pool": len(index)}
    conflicting = int((data.labels[index] != data.bias[index]).sum())
    return {"pool": len(index), "truly_conflicting": conflicting, "purity": conflicting / max(len(index), 1)}

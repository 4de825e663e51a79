"""Rules that turn a biased model's per-sample signal into a predicted bias-conflicting set.

The papers leave the rule open (DDB published the error set and an unspecified loss threshold), so every rule is a
value of ``detection.rule``. Scores are losses: higher means more likely conflicting.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import DetectionConfig
from ..data.base import ImageSet
from ..keys import Reads

RULES = ("error_set", "quantile", "threshold", "mixture", "otsu", "oracle")
SUPERVISED_RULES = ("oracle",)  # use true bias labels: a ceiling to measure, never a method


def _log(loss: np.ndarray) -> np.ndarray:
    return np.log(np.clip(loss, 1e-8, None))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The cut that maximises the between-class variance of a 1-D histogram."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:][np.argmax(between)])


def mixture_split(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """Two-component Gaussian mixture, read as one cut: True from the lowest value above the low component's mean
    where the high-mean component is more likely. (The raw posterior is not monotone: when the high component is the
    narrower one, the far tail - the most conflicting samples - falls back to the broad low component.)"""
    from sklearn.mixture import GaussianMixture

    if len(values) < 4 or np.ptp(values) == 0:
        return np.zeros(len(values), dtype=bool)
    gm = GaussianMixture(2, random_state=seed, n_init=2).fit(values[:, None])
    high = int(np.argmax(gm.means_[:, 0]))
    above = (gm.predict_proba(values[:, None])[:, high] > 0.5) & (values >= gm.means_[1 - high, 0])
    if not above.any():
        return above
    return values >= values[above].min()


def detect(cfg: DetectionConfig, loss: np.ndarray, pred: np.ndarray, labels: np.ndarray,
           bias: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of predicted bias-conflicting samples."""
    loss, pred, labels = np.asarray(loss, dtype=np.float64), np.asarray(pred), np.asarray(labels)
    rule = cfg.rule
    if rule not in RULES:
        raise ValueError(f"unknown detection.rule '{rule}' (known: {', '.join(RULES)})")
    if rule == "oracle":
        if bias is None or (np.asarray(bias) < 0).any():
            raise ValueError("detection.rule=oracle needs true bias labels for every training sample")
        return labels != np.asarray(bias)
    if rule == "error_set":
        return pred != labels
    if rule == "threshold":
        return loss > cfg.threshold

    def split(values: np.ndarray) -> np.ndarray:
        if rule == "quantile":
            if not 0 < cfg.quantile < 1:
                raise ValueError(f"detection.quantile must be in (0, 1), got {cfg.quantile}")
            return values > np.quantile(values, cfg.quantile)
        logs = _log(values)
        if rule == "otsu":
            return logs > otsu_threshold(logs)
        return mixture_split(logs)

    if not cfg.per_class:
        return split(loss)
    out = np.zeros(len(loss), dtype=bool)
    for c in np.unique(labels):
        idx = labels == c
        out[idx] = split(loss[idx])
    return out


GROUP_METRICS = ("unbiased_accuracy", "worst_group_accuracy", "aligned_accuracy", "conflicting_accuracy")


def pseudo_group_bias(labels: torch.Tensor, conflicting: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Bias labels that encode the groups (label x aligned/conflicting): the label itself where aligned, the next class
    where conflicting. With them the group metrics (``unbiased_accuracy``, ``worst_group_accuracy``) of a split
    average over these 2C groups, so a valid split can select a model without true bias labels."""
    conflicting = torch.as_tensor(conflicting, dtype=torch.bool)
    return torch.where(conflicting, (labels + 1) % num_classes, labels)


def with_pseudo_groups(split: ImageSet, conflicting: torch.Tensor, num_classes: int, made_from: Reads) -> ImageSet:
    """The split with its bias labels replaced by :func:`pseudo_group_bias`: a valid split that selects on groups
    some rule found, not on true bias labels; ``made_from``: the rule and the stages it read (a stage that selects
    with the split is keyed by them)."""
    return ImageSet(split.images, split.labels, pseudo_group_bias(split.labels, conflicting, num_classes), split.paths,
                    reads=made_from)


def identification(train, score: np.ndarray, predicted: np.ndarray) -> dict:
    """Size of a predicted conflicting set and, when the training split has bias labels, how well it (and the
    per-sample ``score``, higher = more likely conflicting) matches the true conflicting set."""
    from ..evaluation.metrics import detection_metrics

    predicted = np.asarray(predicted, dtype=bool)
    out = {"size": int(predicted.sum()), "fraction": float(predicted.mean()) if len(predicted) else 0.0}
    if train.has_bias:
        out.update(detection_metrics(score, predicted, (train.labels != train.bias).numpy()))
    return out

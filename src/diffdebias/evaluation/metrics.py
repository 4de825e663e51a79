"""Accuracy metrics from one (label x bias) table, the metrics of datasets with more than one bias attribute
(UrbanCars), the metric each benchmark reports (:data:`HEADLINE_METRICS`), and bias-conflicting detection metrics."""

from __future__ import annotations

import numpy as np
import torch


def group_table(preds: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor, num_classes: int, num_bias: int):
    """(count, correct) matrices indexed by [label, bias]."""
    count = torch.zeros(num_classes, num_bias, dtype=torch.long)
    correct = torch.zeros(num_classes, num_bias, dtype=torch.long)
    flat = labels * num_bias + bias
    count.view(-1).index_add_(0, flat, torch.ones_like(flat))
    correct.view(-1).index_add_(0, flat, (preds == labels).long())
    return count, correct


def accuracy_metrics(
    preds: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    num_classes: int | None = None,
    num_bias: int | None = None,
    group_weights: torch.Tensor | None = None,
) -> dict[str, float]:
    """Plain accuracy; with bias labels also the LfF unbiased accuracy (mean over present cells), aligned and
    conflicting accuracy (cells with label == bias / label != bias), worst-group accuracy, and, given the training
    split's (label x bias) counts or shares ``group_weights``, ``adjusted_accuracy``: the accuracies of the cells
    present here weighted by their training shares (Waterbirds' "average accuracy"; a cell absent here drops out and
    the other weights are renormalised; a cell outside ``group_weights``' shape weighs 0)."""
    out = {"accuracy": float((preds == labels).double().mean()) if len(labels) else float("nan"), "size": len(labels)}
    if bias is None or not (bias >= 0).all():
        return out
    num_classes = num_classes or int(labels.max()) + 1
    num_bias = max(num_bias or 0, int(bias.max()) + 1)  # pseudo-group bias labels may exceed the true range
    count, correct = group_table(preds, labels, bias, num_classes, num_bias)
    present = count > 0
    acc = torch.where(present, correct.double() / count.clamp(min=1), torch.zeros((), dtype=torch.double))
    diag = torch.zeros_like(present)
    k = min(num_classes, num_bias)
    diag[torch.arange(k), torch.arange(k)] = True

    def mean(mask: torch.Tensor) -> float:
        return float(acc[mask].mean()) if mask.any() else float("nan")

    out.update(
        unbiased_accuracy=mean(present),
        aligned_accuracy=mean(present & diag),
        conflicting_accuracy=mean(present & ~diag),
        worst_group_accuracy=float(acc[present].min()),
        group_accuracy=acc.tolist(),
        group_count=count.tolist(),
    )
    if group_weights is not None:
        w = torch.zeros_like(acc)
        rows, cols = min(num_classes, group_weights.shape[0]), min(num_bias, group_weights.shape[1])
        w[:rows, :cols] = group_weights[:rows, :cols].double()
        w = w * present
        out["adjusted_accuracy"] = float((acc * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
    return out


# UrbanCars (Li et al., "A Whac-A-Mole Dilemma", CVPR 2023; DDB Table 3): the share of each (background, co-occurring
# object) condition in the training split, aligned meaning the attribute equals the car class.
URBANCARS_CONDITIONS = {  # key -> (background aligned, co-occurring object aligned, training share)
    "both_aligned": (True, True, 0.95 * 0.95),
    "bg_conflicting": (False, True, 0.05 * 0.95),
    "coobj_conflicting": (True, False, 0.95 * 0.05),
    "both_conflicting": (False, False, 0.05 * 0.05),
}
URBANCARS_GAPS = {"bg_gap": "bg_conflicting", "coobj_gap": "coobj_conflicting", "bg_coobj_gap": "both_conflicting"}


def urbancars_metrics(preds: torch.Tensor, labels: torch.Tensor, background: torch.Tensor,
                      co_occur_obj: torch.Tensor) -> dict[str, float]:
    """UrbanCars' metrics from its two bias attributes (both encoded like the label: aligned where equal to it).

    Each condition's accuracy (``<condition>_accuracy``: background aligned or conflicting x co-occurring object
    aligned or conflicting) is the mean over the car classes of the accuracy of the (class, condition) cell, cells
    with no sample left out; ``id_accuracy`` weighs the four by their training shares 0.9025 / 0.0475 / 0.0475 /
    0.0025; ``bg_gap``, ``coobj_gap`` and ``bg_coobj_gap`` are the background-conflicting, co-occurring-object-
    conflicting and both-conflicting accuracies minus ``id_accuracy`` (negative where the shortcut costs accuracy;
    DDB's Table 3 prints their magnitudes). A condition with no sample is NaN, and so is what it enters."""
    correct = (preds == labels).double()
    bg_aligned, co_aligned = background == labels, co_occur_obj == labels
    out: dict[str, float] = {}
    for key, (bg, co, _) in URBANCARS_CONDITIONS.items():
        cell = (bg_aligned == bg) & (co_aligned == co)
        accs = [float(correct[cell & (labels == c)].mean()) for c in labels.unique().tolist()
                if (cell & (labels == c)).any()]
        out[f"{key}_accuracy"] = sum(accs) / len(accs) if accs else float("nan")
    out["id_accuracy"] = sum(share * out[f"{key}_accuracy"] for key, (_, _, share) in URBANCARS_CONDITIONS.items())
    for gap, key in URBANCARS_GAPS.items():
        out[gap] = out[f"{key}_accuracy"] - out["id_accuracy"]
    return out


def extra_bias_metrics(preds: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None,
                       extra_bias: dict[str, torch.Tensor] | None) -> dict[str, float]:
    """The metrics a split's further bias attributes define: UrbanCars' (:func:`urbancars_metrics`) where it has the
    ``co_occur_obj`` attribute beside its primary (background) bias; nothing otherwise."""
    extra = extra_bias or {}
    if "co_occur_obj" in extra and bias is not None and (bias >= 0).all() and (extra["co_occur_obj"] >= 0).all():
        return urbancars_metrics(preds, labels, bias, extra["co_occur_obj"])
    return {}


# The test metrics each benchmark's published tables report (METHODS.md, BENCHMARKS.md), by data.name; the first is
# the one bench tables and plots are drawn for. A dataset not listed (a user's CSV) reports unbiased accuracy where it
# has bias labels, plain accuracy where it has none (:func:`headline_metrics`).
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "cmnist": ("unbiased_accuracy",),
    "waterbirds": ("worst_group_accuracy", "adjusted_accuracy"),
    "celeba": ("worst_group_accuracy", "adjusted_accuracy"),
    "bffhq": ("conflicting_accuracy",),
    "bar": ("accuracy",),
    "dogs_cats": ("unbiased_accuracy",),
    "imagenet9": ("accuracy",),
    "urbancars": ("id_accuracy", "bg_gap", "coobj_gap", "bg_coobj_gap"),
    "corrupted_cifar10": ("unbiased_accuracy",),
    "corrupted_fmnist": ("unbiased_accuracy",),
    "textured_mnist": ("unbiased_accuracy",),
}
METRIC_NAMES = {
    "accuracy": "accuracy",
    "unbiased_accuracy": "unbiased accuracy",
    "aligned_accuracy": "aligned accuracy",
    "conflicting_accuracy": "conflicting accuracy",
    "worst_group_accuracy": "worst-group accuracy",
    "adjusted_accuracy": "adjusted accuracy (training-share weighted)",
    "id_accuracy": "I.D. accuracy",
    "bg_gap": "BG gap",
    "coobj_gap": "CoObj gap",
    "bg_coobj_gap": "BG+CoObj gap",
}


def headline_metrics(dataset: str, split_metrics: dict | None = None) -> tuple[str, ...]:
    """The metrics the benchmark ``dataset`` (a ``data.name``) reports, first the main one. An unlisted dataset:
    unbiased accuracy, or plain accuracy where ``split_metrics`` (one split's metrics) shows no bias labels."""
    if dataset in HEADLINE_METRICS:
        return HEADLINE_METRICS[dataset]
    if split_metrics is not None and "unbiased_accuracy" not in split_metrics:
        return ("accuracy",)
    return ("unbiased_accuracy",)


def detection_metrics(score: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How well a per-sample score (higher = more likely conflicting) and a predicted set find the true conflicting
    samples: precision, recall, F1 of the set; AUROC and average precision of the score."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = np.asarray(truth).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    tp = float((predicted & truth).sum())
    precision = tp / max(predicted.sum(), 1)
    recall = tp / max(truth.sum(), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    both = 0 < truth.sum() < len(truth)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": float(roc_auc_score(truth, score)) if both else float("nan"),
        "average_precision": float(average_precision_score(truth, score)) if both else float("nan"),
        "predicted": int(predicted.sum()),
        "true": int(truth.sum()),
    }

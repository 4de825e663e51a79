"""Accuracy metrics from one (label x bias) table, and bias-conflicting detection metrics."""

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
    conflicting accuracy (cells with label == bias / label != bias), worst-group accuracy, and, given training-set
    group proportions ``group_weights`` (label x bias), the weighted average accuracy (Waterbirds convention)."""
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
        w = group_weights.double() * present
        out["average_accuracy"] = float((acc * w).sum() / w.sum())
    return out


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

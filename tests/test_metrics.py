import math

import numpy as np
import torch

from diffdebias.evaluation.metrics import accuracy_metrics, detection_metrics, group_table


def test_metrics_against_hand_computed_table():
    # 2 classes x 2 bias values. Cells (label, bias): (0,0): 4 samples, 3 right; (0,1): 2 samples, 1 right;
    # (1,0): 1 sample, 0 right; (1,1): 3 samples, 3 right.
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    bias = torch.tensor([0, 0, 0, 0, 1, 1, 0, 1, 1, 1])
    preds = torch.tensor([0, 0, 0, 1, 0, 1, 0, 1, 1, 1])
    count, correct = group_table(preds, labels, bias, 2, 2)
    assert count.tolist() == [[4, 2], [1, 3]]
    assert correct.tolist() == [[3, 1], [0, 3]]
    m = accuracy_metrics(preds, labels, bias, 2, 2)
    assert math.isclose(m["accuracy"], 7 / 10)
    assert math.isclose(m["unbiased_accuracy"], (0.75 + 0.5 + 0.0 + 1.0) / 4)
    assert math.isclose(m["aligned_accuracy"], (0.75 + 1.0) / 2)
    assert math.isclose(m["conflicting_accuracy"], (0.5 + 0.0) / 2)
    assert m["worst_group_accuracy"] == 0.0
    for key in ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy"):
        assert 0.0 <= m[key] <= 1.0


def test_missing_cells_are_left_out_and_weighted_average():
    labels = torch.tensor([0, 0, 1, 1])
    bias = torch.tensor([0, 0, 1, 1])  # no conflicting cell present
    preds = torch.tensor([0, 1, 1, 1])
    m = accuracy_metrics(preds, labels, bias, 2, 2, group_weights=torch.tensor([[3.0, 1.0], [1.0, 1.0]]))
    assert math.isclose(m["unbiased_accuracy"], (0.5 + 1.0) / 2)
    assert math.isnan(m["conflicting_accuracy"])
    # weights of absent cells are dropped: (3 * 0.5 + 1 * 1.0) / 4
    assert math.isclose(m["adjusted_accuracy"], 2.5 / 4)


def test_without_bias_only_accuracy():
    m = accuracy_metrics(torch.tensor([1, 0]), torch.tensor([1, 1]))
    assert m["accuracy"] == 0.5 and "unbiased_accuracy" not in m


def test_detection_metrics():
    truth = np.array([1, 1, 0, 0, 0, 0])
    score = np.array([0.9, 0.4, 0.5, 0.1, 0.2, 0.3])
    predicted = score > 0.35
    m = detection_metrics(score, predicted, truth)
    assert math.isclose(m["precision"], 2 / 3)
    assert math.isclose(m["recall"], 1.0)
    assert math.isclose(m["f1"], 0.8)
    # pairs (pos, neg) ranked correctly: 0.9 beats all 4; 0.4 beats 0.1, 0.2, 0.3 -> 7 / 8
    assert math.isclose(m["auroc"], 7 / 8)

import numpy as np
import pytest
import torch

from diffdebias.methods.detection import DetectionConfig, detect, otsu_threshold


def two_populations(seed=0, n_aligned=5000, n_conflicting=100):
    """Aligned losses around 0.01, conflicting around 3 (log-normal): the answer is known."""
    rng = np.random.default_rng(seed)
    aligned = np.exp(rng.normal(np.log(0.01), 0.5, n_aligned))
    conflicting = np.exp(rng.normal(np.log(3.0), 0.3, n_conflicting))
    loss = np.concatenate([aligned, conflicting])
    truth = np.r_[np.zeros(n_aligned, bool), np.ones(n_conflicting, bool)]
    labels = np.arange(len(loss)) % 5
    return loss, truth, labels


@pytest.mark.parametrize("rule", ["mixture", "otsu"])
@pytest.mark.parametrize("per_class", [False, True])
def test_automatic_splits_find_the_high_loss_mode(rule, per_class):
    loss, truth, labels = two_populations()
    found = detect(DetectionConfig(rule=rule, per_class=per_class), loss, labels, labels)
    assert (found == truth).mean() > 0.995
    assert found[truth].mean() > 0.98


def test_quantile_flags_exactly_the_top_share():
    loss, truth, labels = two_populations()
    found = detect(DetectionConfig(rule="quantile", quantile=0.98), loss, labels, labels)
    assert found.sum() == int(round(0.02 * len(loss)))
    assert found[truth].all()  # the top 2 % (102) contain all 100 conflicting samples
    per_class = detect(DetectionConfig(rule="quantile", quantile=0.9, per_class=True), loss, labels, labels)
    for c in range(5):
        assert per_class[labels == c].sum() == int(np.ceil(0.1 * (labels == c).sum())) or \
            per_class[labels == c].sum() == int(np.floor(0.1 * (labels == c).sum()))


def test_threshold_error_set_and_oracle():
    loss = np.array([0.1, 2.0, 0.5, 5.0])
    labels = np.array([0, 1, 1, 0])
    pred = np.array([0, 0, 1, 1])
    bias = np.array([0, 0, 1, 1])
    assert detect(DetectionConfig(rule="threshold", threshold=1.0), loss, pred, labels).tolist() == [0, 1, 0, 1]
    assert detect(DetectionConfig(rule="error_set"), loss, pred, labels).tolist() == [0, 1, 0, 1]
    assert detect(DetectionConfig(rule="oracle"), loss, pred, labels, bias).tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="oracle needs true bias"):
        detect(DetectionConfig(rule="oracle"), loss, pred, labels, None)
    with pytest.raises(ValueError, match="unknown detection.rule"):
        detect(DetectionConfig(rule="magic"), loss, pred, labels)


def test_otsu_threshold_between_modes():
    values = np.r_[np.full(100, 1.0), np.full(30, 5.0)]
    t = otsu_threshold(values)
    assert 1.0 <= t < 5.0


def test_pseudo_group_bias_makes_group_metrics_average_the_2c_groups():
    from diffdebias.evaluation.metrics import accuracy_metrics
    from diffdebias.methods.detection import pseudo_group_bias

    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    flagged = torch.tensor([False, False, True, False, True, False, True, True])
    bias = pseudo_group_bias(labels, flagged, 3)
    assert bias.tolist() == [0, 0, 1, 1, 2, 2, 0, 0]
    preds = torch.tensor([0, 1, 0, 1, 0, 2, 2, 1])  # group accuracies: (0,a) 1/2, (0,c) 1, (1,a) 1, (1,c) 0,
    m = accuracy_metrics(preds, labels, bias, 3, 3)  # (2,a) 1, (2,c) 1/2
    assert m["unbiased_accuracy"] == pytest.approx((0.5 + 1 + 1 + 0 + 1 + 0.5) / 6)
    assert m["conflicting_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["worst_group_accuracy"] == 0.0
    # a dataset whose true bias has fewer values than classes still evaluates its pseudo-groups
    assert accuracy_metrics(preds, labels, bias, 3, 2)["unbiased_accuracy"] == m["unbiased_accuracy"]


def test_mixture_split_is_one_cut_even_when_the_high_mode_is_narrow():
    from diffdebias.methods.detection import mixture_split

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 2, 5000), rng.normal(8, 0.2, 500), np.full(10, 14.0)])
    flagged = mixture_split(values)
    assert flagged[-10:].all()  # the far tail is the most conflicting, not aligned
    assert flagged[5000:5500].mean() > 0.99 and flagged[:5000].mean() < 0.02
    assert values[flagged].min() > values[~flagged].max()

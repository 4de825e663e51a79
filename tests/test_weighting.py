import math

import pytest
import torch

from diffdebias.classifiers.weighting import (
    Batch,
    FixedBiasLossWeights,
    GroupDRO,
    PerSampleEMA,
    SyntheticShare,
    balanced_order,
    class_max_normalize,
)


def batch(index, y):
    return Batch(index=torch.tensor(index), x=torch.zeros(len(index)), labels=torch.tensor(y), logits=None,
                 epoch=0, step=0)


def test_group_dro_follows_exponentiated_update():
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    w = GroupDRO(groups, eta=0.5, adjustment=0.0, balanced=False)
    losses = torch.tensor([1.0, 3.0, 0.5, 0.5, 4.0, 0.0], requires_grad=True)
    out = w.loss(losses, batch([0, 1, 2, 3, 4, 5], [0] * 6))
    group_loss = torch.tensor([2.0, 0.5, 2.0], dtype=torch.double)
    q = torch.full((3,), 1 / 3, dtype=torch.double) * torch.exp(0.5 * group_loss)
    q = q / q.sum()
    assert torch.allclose(w.q, q)
    assert math.isclose(float(out.detach()), float((q * group_loss).sum()), rel_tol=1e-6)
    # a second step compounds; absent groups count as zero loss
    w.loss(torch.tensor([1.0]), batch([2], [0]))
    q2 = q * torch.exp(0.5 * torch.tensor([0.0, 1.0, 0.0], dtype=torch.double))
    assert torch.allclose(w.q, q2 / q2.sum())


def test_group_dro_adjustment_uses_group_sizes():
    groups = torch.tensor([0, 0, 0, 0, 1])
    w = GroupDRO(groups, eta=1.0, adjustment=2.0, balanced=False)
    w.loss(torch.zeros(5), batch([0, 1, 2, 3, 4], [0] * 5))
    q = torch.exp(torch.tensor([2 / 2.0, 2 / 1.0], dtype=torch.double))
    assert torch.allclose(w.q, q / q.sum())


def test_balanced_order_equalises_groups():
    groups = torch.tensor([0] * 900 + [1] * 100)
    order = balanced_order(groups, torch.Generator().manual_seed(0))
    share = (groups[order] == 1).double().mean()
    assert len(order) == 1000 and abs(share - 0.5) < 0.06


def test_synthetic_share_sets_each_epochs_synthetic_fraction():
    synthetic = torch.tensor([False] * 950 + [True] * 50)
    g = torch.Generator().manual_seed(0)
    for share in (0.2, 0.5):
        order = SyntheticShare(synthetic, share).order(1000, 0, g)
        assert len(order) == 1000 and abs(float(synthetic[order].double().mean()) - share) < 0.05
        assert synthetic[order].sum() > len(set(order[synthetic[order]].tolist()))  # drawn with replacement
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="share"):
            SyntheticShare(synthetic, bad)
    with pytest.raises(ValueError, match="both real and synthetic"):
        SyntheticShare(torch.zeros(10, dtype=torch.bool), 0.5)


def test_per_sample_ema_and_class_max():
    ema = PerSampleEMA(3, alpha=0.7)
    ema.update(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))
    ema.update(torch.tensor([0]), torch.tensor([3.0]))
    assert torch.allclose(ema.value, torch.tensor([0.7 * 1 + 0.3 * 3, 2.0, 0.0]))
    labels = torch.tensor([0, 0, 1])
    out = class_max_normalize(torch.tensor([1.0, 3.0]), torch.tensor([0, 2]), torch.tensor([1.0, 4.0, 3.0]), labels)
    assert torch.allclose(out, torch.tensor([0.25, 1.0]))


def test_lff_weights_against_hand_computation():
    bias_loss = torch.tensor([0.1, 2.0, 0.4, 1.0])
    labels = torch.tensor([0, 0, 1, 1])
    w = FixedBiasLossWeights(bias_loss, labels, alpha=0.7, ema=True, normalize=True)
    ld = torch.tensor([0.5, 1.0, 0.2, 0.8])
    loss = w.loss(ld, batch([0, 1, 2, 3], [0, 0, 1, 1]))
    # first visit: EMA = loss. Class maxima: bias (2.0, 1.0); target (1.0, 0.8)
    lb_n = torch.tensor([0.05, 1.0, 0.4, 1.0])
    ld_n = torch.tensor([0.5, 1.0, 0.25, 1.0])
    expected_w = lb_n / (lb_n + ld_n + 1e-8)
    assert torch.allclose(w.last_weights, expected_w)
    assert math.isclose(float(loss), float((expected_w * ld).mean()), rel_tol=1e-6)
    # second visit of sample 0 with loss 0.1: EMA 0.7 * 0.5 + 0.3 * 0.1 = 0.38, class max still 1.0
    w.loss(torch.tensor([0.1]), batch([0], [0]))
    assert math.isclose(float(w.last_weights[0]), 0.05 / (0.05 + 0.38 + 1e-8), rel_tol=1e-5)
    plain = FixedBiasLossWeights(bias_loss, labels, ema=False, normalize=False)
    plain.loss(ld, batch([0, 1, 2, 3], [0, 0, 1, 1]))
    assert torch.allclose(plain.last_weights, bias_loss / (bias_loss + ld + 1e-8))


def test_group_dro_reweight_is_importance_weighting():
    groups = torch.tensor([0] * 6 + [1] * 2)  # frequencies 3/4 and 1/4
    w = GroupDRO(groups, eta=0.0, balanced=False, reweight=True)
    losses = torch.tensor([1.0, 2.0, 4.0])
    out = w.loss(losses, batch([0, 1, 6], [0] * 3))
    weights = torch.tensor([4 / 3, 4 / 3, 4.0]) * 0.5  # q_g / (n_g / N) with q = 1/2
    assert math.isclose(float(out), float((weights * losses).sum() / weights.sum()), rel_tol=1e-6)
    assert torch.equal(w.order(8, 0, torch.Generator().manual_seed(0)).sort().values, torch.arange(8))
    try:
        GroupDRO(groups, balanced=True, reweight=True)
    except ValueError as e:
        assert "groupdro.balanced=false" in str(e)
    else:
        raise AssertionError("balanced sampling with reweighting must be refused")

"""The LfF protocol of the synthetic-bias benchmarks (Colored MNIST, Corrupted CIFAR-10, Corrupted Fashion-MNIST).

Bias value k goes with class k. In each class a fraction (1 - ratio) takes the aligned value and the rest is spread
evenly over the other values, in dataset order (LfF ``make_attr_labels``). A valid split is held out of the training
images before the bias is applied and takes the same ratio; the unbiased test split takes bias values uniform over
all of them. What a bias value does to an image (a colour, a corruption) is the dataset's ``render``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .base import ImageSet, Splits

VALID_BIAS_ORDERS = ("shuffled", "dataset")

# render(source, index, bias, generator) -> (N, C, H, W) uint8: the images ``index`` of the ``source`` ("train" or
# "test") set of the dataset's files, with bias values ``bias`` applied. ``generator`` is the split's torch generator
# (Colored MNIST draws its colour jitter from it, in split order: train, valid, test).
Render = Callable[[str, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def assign_bias(labels: torch.Tensor, conflict_ratio: float, num_classes: int = 10) -> torch.Tensor:
    """Deterministic bias assignment in dataset order (LfF ``make_attr_labels``).

    Within class c, in dataset order, bias value k takes the samples ranked between the milestones
    round(n_c * cumsum(r)[k-1]) and round(n_c * cumsum(r)[k]), where r[c] = 1 - ratio and the other values share
    the ratio equally.
    """
    eye = np.eye(num_classes)
    ratios = (1 - conflict_ratio) * eye + conflict_ratio / (num_classes - 1) * (1 - eye)
    counts = np.bincount(labels.numpy(), minlength=num_classes)
    milestones = np.round(counts[:, None] * np.cumsum(ratios, axis=1))
    bias = torch.empty_like(labels)
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        rank = np.arange(len(idx))
        value = np.searchsorted(milestones[c], rank, side="right")
        bias[idx] = torch.from_numpy(value).long().clamp(max=num_classes - 1)
    return bias


def build_biased_splits(train_labels: torch.Tensor, test_labels: torch.Tensor, render: Render,
                        conflict_ratio: float, valid_fraction: float, seed: int, valid_bias_order: str,
                        class_names: list[str], name: str) -> Splits:
    """Hold out ``valid_fraction`` of the training images (seeded), assign bias values by ratio to train and valid,
    uniformly to test, and let ``render`` draw the images.

    The training split takes its bias values in dataset order, as LfF's generator does, so its conflicting images are
    the first and last of each class. A file in a non-random order (MNIST's) would then give a valid split whose
    conflicting images resemble the training ones, which a model that memorised those gets right far more often than
    new ones (docs/results.md). ``valid_bias_order="shuffled"`` assigns the valid split's values in a random order;
    the training and test splits are the same either way.
    """
    if not 0 <= conflict_ratio < 1:
        raise ValueError(f"data.conflict_ratio must be in [0, 1), got {conflict_ratio}")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"data.valid_fraction must be in (0, 1), got {valid_fraction}")
    if valid_bias_order not in VALID_BIAS_ORDERS:
        raise ValueError(f"data.valid_bias_order must be one of {', '.join(VALID_BIAS_ORDERS)}, "
                         f"got '{valid_bias_order}'")
    num_classes = len(class_names)
    g = torch.Generator().manual_seed(seed)
    n = len(train_labels)
    perm = torch.randperm(n, generator=g)
    n_valid = int(round(n * valid_fraction))
    valid_idx, train_idx = perm[:n_valid].sort().values, perm[n_valid:].sort().values  # keep dataset order

    def make(source: str, index: torch.Tensor, labels: torch.Tensor, ratio: float,
             order: torch.Tensor | None = None) -> ImageSet:
        if order is None:
            bias = assign_bias(labels, ratio, num_classes)
        else:  # assign in the given order; a generator of its own leaves the split generator's draws as they were
            bias = torch.empty_like(labels)
            bias[order] = assign_bias(labels[order], ratio, num_classes)
        return ImageSet(render(source, index, bias, g), labels.clone(), bias)

    valid_order = None
    if valid_bias_order == "shuffled":
        valid_order = torch.randperm(n_valid, generator=torch.Generator().manual_seed(seed + 1))
    uniform = (num_classes - 1) / num_classes  # 1 / num_classes aligned: values uniform over all of them
    return Splits(
        train=make("train", train_idx, train_labels[train_idx], conflict_ratio),
        valid=make("train", valid_idx, train_labels[valid_idx], conflict_ratio, valid_order),
        test=make("test", torch.arange(len(test_labels)), test_labels, uniform),
        num_classes=num_classes,
        num_bias=num_classes,
        class_names=list(class_names),
        name=name,
    )

"""Colored MNIST, LfF protocol: the digit stroke takes a per-image jittered colour, the background stays black."""

from __future__ import annotations

import numpy as np
import torch

from .base import ImageSet, Splits
from .mnist import GreyMNIST

# Mean colours of LfF's colors.th (RGB in [0, 1]); bias value k uses colour k and is aligned with digit k.
COLORS = torch.tensor(
    [
        [0.983682, 0.312519, 0.168575],
        [0.990530, 0.915605, 0.351512],
        [0.672964, 0.461070, 0.579808],
        [0.783252, 0.831556, 0.601329],
        [0.088016, 0.777963, 0.981808],
        [0.321393, 0.961055, 0.446450],
        [0.024616, 0.235650, 0.758666],
        [0.555247, 0.101580, 0.761763],
        [0.207723, 0.392949, 0.018702],
        [0.833658, 0.202409, 0.266943],
    ]
)


def assign_bias(labels: torch.Tensor, conflict_ratio: float, num_classes: int = 10) -> torch.Tensor:
    """Deterministic colour assignment in dataset order (LfF ``make_attr_labels``).

    Within class c, in dataset order, colour k takes the samples ranked between the milestones
    round(n_c * cumsum(r)[k-1]) and round(n_c * cumsum(r)[k]), where r[c] = 1 - ratio and the nine other colours share
    the ratio equally. Only the colour jitter is random.
    """
    eye = np.eye(num_classes)
    ratios = (1 - conflict_ratio) * eye + conflict_ratio / (num_classes - 1) * (1 - eye)
    counts = np.bincount(labels.numpy(), minlength=num_classes)
    milestones = np.round(counts[:, None] * np.cumsum(ratios, axis=1))
    bias = torch.empty_like(labels)
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        rank = np.arange(len(idx))
        colour = np.searchsorted(milestones[c], rank, side="right")
        bias[idx] = torch.from_numpy(colour).long().clamp(max=num_classes - 1)
    return bias


def colorize(grey: torch.Tensor, bias: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """(N, 28, 28) uint8 grey -> (N, 3, 28, 28) uint8: ``clamp(mean[b] + N(0, std²), 0, 1) * grey``, truncated."""
    color = (COLORS[bias] + torch.randn(len(bias), 3, generator=generator) * std).clamp(0, 1)
    out = color[:, :, None, None] * grey[:, None].float()
    return out.to(torch.uint8)  # truncation, as the LfF generator does with np.uint8


VALID_BIAS_ORDERS = ("shuffled", "dataset")


def build_cmnist(mnist: GreyMNIST, conflict_ratio: float, valid_fraction: float, std: float, seed: int,
                 valid_bias_order: str = "shuffled") -> Splits:
    """Hold out ``valid_fraction`` of the training images before colouring; test colours are uniform over the 10.

    The training split takes its colours in dataset order, as LfF's generator does, so its conflicting images are the
    first and last of each class. MNIST's file is not in random order, so a valid split coloured the same way
    would hold conflicting images that resemble the training ones, which a model that memorised those gets right
    far more often than new ones (docs/results.md). ``valid_bias_order="shuffled"`` colours the valid split in a
    random order; the training and test splits are the same either way.
    """
    if not 0 <= conflict_ratio < 1:
        raise ValueError(f"data.conflict_ratio must be in [0, 1), got {conflict_ratio}")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"data.valid_fraction must be in (0, 1), got {valid_fraction}")
    if valid_bias_order not in VALID_BIAS_ORDERS:
        raise ValueError(f"data.valid_bias_order must be one of {', '.join(VALID_BIAS_ORDERS)}, "
                         f"got '{valid_bias_order}'")
    g = torch.Generator().manual_seed(seed)
    n = len(mnist.train_labels)
    perm = torch.randperm(n, generator=g)
    n_valid = int(round(n * valid_fraction))
    valid_idx, train_idx = perm[:n_valid].sort().values, perm[n_valid:].sort().values  # keep dataset order

    def make(images: torch.Tensor, labels: torch.Tensor, ratio: float, order: torch.Tensor | None = None) -> ImageSet:
        if order is None:
            bias = assign_bias(labels, ratio)
        else:  # assign in the given order; a generator of its own leaves the jitter draws as they were
            bias = torch.empty_like(labels)
            bias[order] = assign_bias(labels[order], ratio)
        return ImageSet(colorize(images, bias, std, g), labels.clone(), bias)

    valid_order = None
    if valid_bias_order == "shuffled":
        valid_order = torch.randperm(n_valid, generator=torch.Generator().manual_seed(seed + 1))
    return Splits(
        train=make(mnist.train_images[train_idx], mnist.train_labels[train_idx], conflict_ratio),
        valid=make(mnist.train_images[valid_idx], mnist.train_labels[valid_idx], conflict_ratio, valid_order),
        test=make(mnist.test_images, mnist.test_labels, 0.9),  # 10 % aligned: colours uniform over the ten
        num_classes=10,
        num_bias=10,
        class_names=[str(i) for i in range(10)],
        name="cmnist",
    )

"""Colored MNIST, LfF protocol: the digit stroke takes a per-image jittered colour, the background stays black."""

from __future__ import annotations

import torch

from .base import Splits
from .mnist import GreyMNIST
from .protocol import VALID_BIAS_ORDERS, assign_bias, build_biased_splits

__all__ = ["COLORS", "VALID_BIAS_ORDERS", "assign_bias", "build_cmnist", "colorize"]

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


def colorize(grey: torch.Tensor, bias: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """(N, 28, 28) uint8 grey -> (N, 3, 28, 28) uint8: ``clamp(mean[b] + N(0, std²), 0, 1) * grey``, truncated."""
    color = (COLORS[bias] + torch.randn(len(bias), 3, generator=generator) * std).clamp(0, 1)
    out = color[:, :, None, None] * grey[:, None].float()
    return out.to(torch.uint8)  # truncation, as the LfF generator does with np.uint8


def build_cmnist(mnist: GreyMNIST, conflict_ratio: float, valid_fraction: float, std: float, seed: int,
                 valid_bias_order: str = "shuffled") -> Splits:
    """Hold out ``valid_fraction`` of the training images before colouring; test colours are uniform over the 10
    (:func:`~.protocol.build_biased_splits`). MNIST's file is not in random order, so the valid split's colours are
    assigned in a random order by default (``valid_bias_order="shuffled"``; ``"dataset"``: LfF's order)."""

    def render(source: str, index: torch.Tensor, bias: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return colorize((mnist.train_images if source == "train" else mnist.test_images)[index], bias, std, g)

    return build_biased_splits(mnist.train_labels, mnist.test_labels, render, conflict_ratio, valid_fraction, seed,
                               valid_bias_order, [str(i) for i in range(10)], "cmnist")

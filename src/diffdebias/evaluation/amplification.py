"""Does a diffusion model amplify the bias? Measurable on Colored MNIST, where the bias is the stroke colour.

- bias-aligned fraction: share of images whose stroke colour is nearest in hue to their class's majority colour;
- shape fidelity: accuracy of a grey-scale digit classifier (trained on the real training images made grey) on the
  images made grey, against their labels: are the digits still digits once the colour cue is gone?

The grey image first loses each image's background (the per-channel median, 0 for real Colored MNIST, where ~80 % of
the pixels are black): a generated digit on a faintly grey background would otherwise read as a different shape to a
classifier trained on black backgrounds. The colour is read from the brightest pixels, which a dim background does
not reach, as the palette colour nearest in hue (angle), whatever the stroke's brightness. The amplifier itself still
sees the images as they are.
"""

from __future__ import annotations

import torch

from ..data.cmnist import COLORS


def remove_background(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float: each channel minus its median over the image, clamped at 0."""
    x = images.float()
    median = x.flatten(2).median(dim=2).values[:, :, None, None]
    return (x - median).clamp(min=0)


def stroke_colors(images: torch.Tensor, brightest: int = 20) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3) colour in [0, 1]: the mean of each image's brightest pixels.

    The stroke is ``colour * grey`` and MNIST strokes saturate (grey ~ 255) at their centre, so the brightest pixels
    carry the colour itself.
    """
    x = images.float() / 255
    flat = x.flatten(2)  # (N, 3, HW)
    k = min(brightest, flat.shape[-1])
    top = flat.sum(1).topk(k, dim=1).indices  # (N, k)
    return flat.gather(2, top[:, None, :].expand(-1, 3, -1)).mean(2)


def nearest_color(colors: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> (N,) index of the palette colour at the smallest angle: a stroke that does not saturate has the
    palette colour's hue at a lower brightness, which the Euclidean distance would read as a darker palette colour
    (real strokes dimmed to 80 %: 80 % read right by distance, 100 % by angle)."""
    unit = torch.nn.functional.normalize(colors, dim=1)
    return (unit @ torch.nn.functional.normalize(COLORS.to(colors.dtype), dim=1).T).argmax(1)


def aligned_fraction(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose stroke colour is nearest to the mean colour of their own class."""
    if len(images) == 0:
        return float("nan")
    return float((nearest_color(stroke_colors(images)) == labels).double().mean())


def usable_conflicting_fraction(images: torch.Tensor, labels: torch.Tensor, digits: torch.Tensor) -> float:
    """Share of images that show their label's digit (``digits``: what a shape classifier reads) in a colour other
    than their label's: bias-conflicting samples with the right label, what a debiasing set needs."""
    if len(images) == 0:
        return float("nan")
    return float(((digits == labels) & (nearest_color(stroke_colors(images)) != labels)).double().mean())


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, 1, H, W) uint8: channel maximum, stretched so each image's brightest pixel is 255.

    The stretch removes brightness differences between colours, so only the shape is left.
    """
    g = remove_background(images).amax(1, keepdim=True)
    peak = g.flatten(1).amax(1).clamp(min=1)[:, None, None, None]
    return (g * (255 / peak)).round().clamp(0, 255).to(torch.uint8)

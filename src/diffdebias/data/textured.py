"""Textured MNIST, LfF protocol: grey MNIST digits over one of ten background textures, texture k going with digit k.

A *background* bias, as Waterbirds' place is: the digit keeps its own grey stroke and only what lies behind it
carries the bias. Each texture is a fixed pattern family (:data:`NAMES`) whose phase (offset, centre, noise) is drawn
per image from ``np.random.default_rng([data.seed, source, index])`` (source 0 for MNIST's training file, 1 for its
test file, the index in that file), so an image with a given texture is the same at every conflict ratio and in
either split. The texture lies in [0, :data:`LEVEL`] of full scale and the stroke is composited over it as a white
layer whose alpha is the stroke's grey value (``s + (1 - s) t``), so the digit stays brighter than anything behind
it. All three channels hold the same value: colour carries no information, only the texture does.

Train, valid and the unbiased test split follow the protocol of Colored MNIST (:func:`~.protocol.build_biased_splits`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .base import Splits
from .mnist import GreyMNIST
from .protocol import build_biased_splits

VERSION = 1  # bump when the textures or the build change what a config's images are
SIZE = 28
LEVEL = 0.5  # the brightest texture pixel, as a share of full scale

NAMES = ("h-stripes", "v-stripes", "diagonal /", "diagonal \\", "checkerboard", "dots", "rings", "gradient",
         "blobs", "grid")  # texture k goes with digit k

_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)


def _square(t: np.ndarray, period: int, duty: float = 0.5) -> np.ndarray:
    """1 on the first ``duty`` of each ``period`` of ``t``, else 0."""
    return (np.mod(t, period) < duty * period).astype(np.float64)


def _offset(rng: np.random.Generator, period: int) -> int:
    return int(rng.integers(period))


def _h_stripes(rng):  # horizontal bars 2 px thick, period 4
    return _square(_Y + _offset(rng, 4), 4)


def _v_stripes(rng):  # vertical bars 3-4 px thick, period 7
    return _square(_X + _offset(rng, 7), 7)


def _diagonal_up(rng):  # '/' stripes along x + y, period 7
    return _square(_X + _Y + _offset(rng, 7), 7)


def _diagonal_down(rng):  # '\' stripes along x - y, period 14: wider than '/'
    return _square(_X - _Y + _offset(rng, 14), 14)


def _checkerboard(rng):  # 7 px squares
    a, b = _offset(rng, 14), _offset(rng, 14)
    return np.logical_xor(_square(_X + a, 14), _square(_Y + b, 14)).astype(np.float64)


def _dots(rng):  # 2 x 2 px dots on a 4 px lattice
    return _square(_X + _offset(rng, 4), 4) * _square(_Y + _offset(rng, 4), 4)


def _rings(rng):  # smooth concentric rings, period 5 px, about a centre in the middle half
    cy, cx = rng.uniform(SIZE / 4, 3 * SIZE / 4, 2)
    return 0.5 + 0.5 * np.cos(2 * np.pi * np.hypot(_Y - cy, _X - cx) / 5)


def _gradient(rng):  # a smooth left-right ramp, dark to bright and back over 28 px
    return np.abs(np.mod(_X + _offset(rng, SIZE), SIZE) - SIZE / 2) / (SIZE / 2)


def _blobs(rng):  # coarse value noise: a 5 x 5 grid of uniform values, bilinear over the image
    grid = rng.uniform(0, 1, (5, 5))
    t = np.linspace(0, 4, SIZE)
    rows = np.stack([np.interp(t, np.arange(5), g) for g in grid])  # (5, SIZE): each grid row along x
    return np.stack([np.interp(t, np.arange(5), col) for col in rows.T], axis=1)  # then along y


def _grid(rng):  # 1 px lines every 7 px, both ways
    return np.maximum(_square(_X + _offset(rng, 7), 7, 1 / 7), _square(_Y + _offset(rng, 7), 7, 1 / 7))


TEXTURES: tuple[Callable[[np.random.Generator], np.ndarray], ...] = (
    _h_stripes, _v_stripes, _diagonal_up, _diagonal_down, _checkerboard, _dots, _rings, _gradient, _blobs, _grid)


def texture(kind: int, rng: np.random.Generator) -> np.ndarray:
    """(28, 28) float64 in [0, 1]: texture ``kind`` at the phase ``rng`` draws."""
    return TEXTURES[kind](rng)


def render_textured(grey: np.ndarray, bias: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 digits, (N,) textures, (N, 3) generator seeds -> (N, 3, 28, 28) uint8, every channel the
    stroke over its texture: ``s + (1 - s) * LEVEL * t`` with the stroke ``s`` and texture ``t`` in [0, 1]."""
    background = np.stack([texture(int(k), np.random.default_rng(s.tolist())) for k, s in zip(bias, seeds)]) \
        if len(bias) else np.zeros((0, SIZE, SIZE))
    s = grey.astype(np.float64) / 255
    out = np.rint(255 * (s + (1 - s) * LEVEL * background)).astype(np.uint8)
    return np.repeat(out[:, None], 3, axis=1)


def build_textured(mnist: GreyMNIST, conflict_ratio: float, valid_fraction: float, seed: int,
                   valid_bias_order: str = "shuffled") -> Splits:
    """Hold out ``valid_fraction`` of the training images before texturing; test textures are uniform over the ten
    (:func:`~.protocol.build_biased_splits`)."""
    images = {"train": (0, mnist.train_images.numpy()), "test": (1, mnist.test_images.numpy())}

    def render(source: str, index: torch.Tensor, bias: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        source_id, pool = images[source]
        idx = index.numpy()
        seeds = np.stack([np.full(len(idx), seed), np.full(len(idx), source_id), idx], axis=1)
        return torch.from_numpy(render_textured(pool[idx], bias.numpy(), seeds))

    return build_biased_splits(mnist.train_labels, mnist.test_labels, render, conflict_ratio, valid_fraction, seed,
                               valid_bias_order, [str(i) for i in range(10)], "textured_mnist")

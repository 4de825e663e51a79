"""The in-memory dataset every method sees: uint8 image tensors, labels, and bias labels kept for evaluation only."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..keys import NOTHING, Reads


class DatasetError(ValueError):
    """Bad dataset input; the message names the file and row (or the config field)."""


@dataclass
class ImageSet:
    """One split. ``bias`` is -1 where unknown; methods never read it, evaluation and oracles do.

    ``bias`` is the primary bias attribute (every method's oracle and every metric read it). A dataset whose images
    carry more than one bias attribute (UrbanCars: background, and co-occurring object) keeps the others in
    ``extra_bias``, by name, each an (N,) int64 tensor of the same encoding (aligned where it equals the label); only
    evaluation reads them (:func:`~diffdebias.evaluation.metrics.extra_bias_metrics`).
    """

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    bias: torch.Tensor | None = None  # (N,) int64, or None when the dataset has no bias labels
    paths: list[str] | None = None  # source file of each image, when there is one
    extra_bias: dict[str, torch.Tensor] | None = None  # further bias attributes by name, each (N,) int64
    # what a set that stages made was made from (empty for a dataset's own splits, keyed by the dataset): a stage
    # that trains on it or selects with it is keyed by that too
    reads: Reads = field(default=NOTHING, repr=False)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            shape = tuple(self.images.shape)
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} {shape}")
        n = len(self.images)
        if len(self.labels) != n or (self.bias is not None and len(self.bias) != n):
            raise ValueError("images, labels and bias must have the same length")
        for name, values in (self.extra_bias or {}).items():
            if values.ndim != 1 or len(values) != n or values.dtype != torch.int64:
                raise ValueError(f"extra bias attribute '{name}' must be an ({n},) int64 tensor, got "
                                 f"{values.dtype} {tuple(values.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_bias(self) -> bool:
        return self.bias is not None and bool((self.bias >= 0).all())

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(
            self.images[index],
            self.labels[index],
            None if self.bias is None else self.bias[index],
            None if self.paths is None else [self.paths[i] for i in index.tolist()],
            None if self.extra_bias is None else {k: v[index] for k, v in self.extra_bias.items()},
            self.reads,
        )

    def aligned_mask(self) -> torch.Tensor:
        """True where label == bias (datasets whose bias attribute indexes the classes, like CMNIST)."""
        if self.bias is None:
            raise ValueError("this split has no bias labels")
        return self.labels == self.bias


@dataclass
class Splits:
    train: ImageSet
    valid: ImageSet
    test: ImageSet
    num_classes: int
    num_bias: int  # number of bias values (0 when unknown)
    class_names: list[str] = field(default_factory=list)
    fingerprint: str = ""  # checksum of the cached tensors: the input key of every downstream stage
    name: str = ""

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "valid", "test"):
            raise KeyError(f"unknown split '{name}'")
        return getattr(self, name)

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

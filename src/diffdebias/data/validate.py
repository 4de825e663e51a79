"""Checks every dataset passes before any stage sees it, whether just built or read from the cache.

They are cheap (label counts and path lists), so a cache written before a check existed is checked too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import DatasetError, Splits

SPLITS = ("train", "valid", "test")


def split_fix(name: str, has_split_column: bool | None) -> str:
    """How to give the ``name`` split images, for a CSV with (True), without (False) or of unknown split column."""
    column = (f"add rows with split={name}, or drop the split column so that data.valid_fraction/data.test_fraction "
              f"split the data")
    seeded = (f"too few images per class for the seeded split: add images, raise data.{name}_fraction, or add a "
              f"split column with rows split={name}") if name != "train" else (
        "data.valid_fraction/data.test_fraction leave no image for training: lower them")
    if has_split_column is None:
        return f"with a split column, {column}; without one, {seeded}"
    return column if has_split_column else seeded


def validate_splits(splits: Splits, where: str, fix: Callable[[str], str] | None = None) -> None:
    """Raise a :class:`DatasetError` naming ``where`` unless every split is non-empty, there are at least two classes,
    every class has a training sample, labels index the classes, and (where paths are known) no image is listed twice
    or in two splits. ``fix(split)`` says how to fill an empty split."""
    for name in SPLITS:
        if len(splits.split(name)) == 0:
            how = fix(name) if fix is not None else f"give the {name} split images" + (
                " (where it is held out of the training images, raise data.valid_fraction)" if name == "valid" else "")
            raise DatasetError(f"{where}: the {name} split is empty; {how}")
    k = splits.num_classes
    if k < 2:
        names = f" ({', '.join(repr(n) for n in splits.class_names)})" if splits.class_names else ""
        raise DatasetError(f"{where}: only {k} class{names} in the labels: a classifier needs at least two classes")
    for name in SPLITS:
        labels = splits.split(name).labels
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise DatasetError(f"{where}: the {name} split has label {bad}, outside the {k} classes 0..{k - 1}")
    counts = torch.bincount(splits.train.labels, minlength=k)
    for c, n in enumerate(counts.tolist()):
        if n == 0:
            cname = splits.class_names[c] if c < len(splits.class_names) else str(c)
            raise DatasetError(f"{where}: class '{cname}' (label {c}) has no training sample")
    seen: dict[str, str] = {}
    for name in SPLITS:
        for p in splits.split(name).paths or ():
            if p in seen:
                other = seen[p]
                where_in = f"twice in the {name} split" if other == name else f"in both the {other} and {name} splits"
                raise DatasetError(f"{where}: image {p} is listed {where_in}; an image may appear once only")
            seen[p] = name

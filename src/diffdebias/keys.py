"""What a stage reads, as the stage machinery keys it.

A stage declares what it reads as objects, not as a hand-built key: config sections and settings (dataclasses are
keyed by :func:`~diffdebias.config.key_dict`, tensors by their values) and the things it reads that other stages made
(a :class:`~diffdebias.runs.Stage`, a trained model, scores, a dataset handle: anything with a ``key``). Values that
stages made carry what they were made from (:attr:`ImageSet.reads <diffdebias.data.base.ImageSet.reads>`), so a
stage that reads a derived training set is keyed by everything behind it without its caller listing it.
:meth:`Run.cached <diffdebias.runs.Run.cached>` hashes the settings, the input keys, the stage's name, its code
version and the run's seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Source:
    """Something a stage reads that is keyed outside the stage machinery: the dataset (its cache key), a general
    dataset named by its checksum."""

    name: str
    key: str


@dataclass(frozen=True)
class Reads:
    """Settings (JSON-able, canonical) and the keys of the stages (or sources) a value or a stage was made from."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    inputs: frozenset[str] = frozenset()

    def __or__(self, other: Reads) -> Reads:
        """Both together; a setting read twice must have one value (two values under one name would hide one)."""
        for k in self.settings.keys() & other.settings.keys():
            if self.settings[k] != other.settings[k]:
                raise ValueError(f"stage key: setting '{k}' read with two values ({self.settings[k]!r} and "
                                 f"{other.settings[k]!r})")
        return Reads({**self.settings, **other.settings}, self.inputs | other.inputs)

    def __bool__(self) -> bool:
        return bool(self.settings) or bool(self.inputs)


NOTHING = Reads()


def canonical(value: Any) -> Any:
    """A setting as it enters a key: a config section as :func:`~diffdebias.config.key_dict`, a tensor as its values,
    containers element-wise. A stage output is an input, not a setting: it is refused here."""
    from .config import key_dict

    if isinstance(getattr(value, "key", None), str) or isinstance(value, Reads):
        raise TypeError(f"stage key: {type(value).__name__} is an input, pass it positionally to reads()")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return key_dict(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"stage key: a {type(value).__name__} cannot be a setting (config sections, tensors, JSON values)")


def reads(*sources: Any, **settings: Any) -> Reads:
    """What a stage reads. Positional: stages and models (their ``key``), values carrying :class:`Reads` (an
    :class:`~diffdebias.data.base.ImageSet` made from stages), :class:`Reads` themselves, and config sections read
    whole (their fields become settings); None is skipped. Keyword: named settings."""
    out = Reads({k: canonical(v) for k, v in settings.items()})
    for s in sources:
        if s is None:
            continue
        if isinstance(s, Reads):
            out = out | s
        elif isinstance(getattr(s, "reads", None), Reads):
            out = out | s.reads
        elif isinstance(getattr(s, "key", None), str):
            out = out | Reads(inputs=frozenset({s.key}))
        elif dataclasses.is_dataclass(s) and not isinstance(s, type):
            out = out | Reads(canonical(s))
        else:
            raise TypeError(f"stage key: cannot read a {type(s).__name__} (stages, models, image sets, Reads, "
                            f"config sections)")
    return out

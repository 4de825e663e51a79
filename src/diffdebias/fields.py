"""Markers on config fields that tell stage keys and table comparisons how to treat them."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def added(default: Any) -> Any:
    """A config field added after stages were cached: it enters stage keys only when set to something else."""
    return field(default=default, metadata={"added": True})


def execution(default: Any) -> Any:
    """A field that changes how a stage runs (rows per forward pass, logging, checkpoints, where files go), not the
    numbers it computes: it never enters a stage key, and benchmark tables ignore it when comparing configs."""
    return field(default=default, metadata={"execution": True})


def execution_keys(cfg: Any, prefix: str = "") -> set[str]:
    """Dotted names of every :func:`execution` field of a config (a dataclass instance) and its nested sections."""
    out = set()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("execution"):
            out.add(prefix + f.name)
        elif dataclasses.is_dataclass(value):
            out |= execution_keys(value, f"{prefix}{f.name}.")
    return out

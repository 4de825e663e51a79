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


def side(default: Any) -> Any:
    """A switch for a side measurement of the report (real-data reference amplifiers, an ERM comparison): it adds
    stages and metrics of its own but changes no number the method computes, so benchmark tables ignore it when
    comparing configs (a cell run with or without it is the same cell)."""
    return field(default=default, metadata={"side": True})


def marked_keys(cfg: Any, marker: str, prefix: str = "") -> set[str]:
    """Dotted names of every field of a config (a dataclass instance) and its nested sections carrying ``marker``."""
    out = set()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get(marker):
            out.add(prefix + f.name)
        elif dataclasses.is_dataclass(value):
            out |= marked_keys(value, marker, f"{prefix}{f.name}.")
    return out


def execution_keys(cfg: Any) -> set[str]:
    """Dotted names of every :func:`execution` field of a config and its nested sections."""
    return marked_keys(cfg, "execution")

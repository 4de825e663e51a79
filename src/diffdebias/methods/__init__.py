"""Methods: each a composition of cached stages that ends in one trained classifier."""

from __future__ import annotations

from typing import Any

from ..config import Config, settings_dict
from .baselines import BASELINES
from .common import Context, Method, Result, Trained
from .ddb import run_ddb
from .diffinject import run_diffinject
from .erm import run_erm

METHODS: dict[str, Method] = {
    "erm": Method(run_erm, ("data", "classifier")),
    "ddb": Method(run_ddb, ("data", "classifier", "amplifier", "detection", "groupdro", "lff", "ddb", "diffusion",
                            "sampling", "compare")),
    # detection: who ranks the content (its source, and ddb_config); lff and selection: final_method=lff
    "diffinject": Method(run_diffinject, ("data", "classifier", "amplifier", "detection", "diffinject", "diffusion",
                                          "injection", "lff", "selection", "compare")),
    **BASELINES,
}

__all__ = ["METHODS", "Context", "Method", "Result", "Trained", "get_method", "method_settings"]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def method_settings(cfg: Config) -> dict[str, Any]:
    """``cfg`` as its runs save it and benchmark tables compare it: the top-level fields and its method's sections."""
    return settings_dict(cfg, get_method(cfg.method).sections)

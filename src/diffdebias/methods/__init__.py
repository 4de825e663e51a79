"""Methods: each a composition of cached stages that ends in one trained classifier."""

from __future__ import annotations

from collections.abc import Callable

from .baselines import BASELINES
from .common import Context, Trained
from .ddb import run_ddb
from .diffinject import run_diffinject
from .erm import run_erm

METHODS: dict[str, Callable[[Context], Trained]] = {
    "erm": run_erm,
    "ddb": run_ddb,
    "diffinject": run_diffinject,
    **BASELINES,
}


def get_method(name: str) -> Callable[[Context], Trained]:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]

"""Range checks shared by every config section, so a bad value fails at load, not after hours of training.

Each helper raises ``error`` (a :class:`ConfigError` subclass; the diffusion sections pass their own) with a message
of the form ``<section>.<field> must be ..., got <value>``. This module imports nothing from the package, so both
``diffdebias.config`` and ``diffdebias.diffusion.config`` can import it without a cycle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A real number, not NaN (NaN passes no comparison, so it would slip past ``value < low``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def choice(name: str, value: Any, choices: Iterable[str], error: type[ConfigError] = ConfigError) -> None:
    """One of a fixed set of names."""
    choices = tuple(choices)
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def count(name: str, value: Any, low: int = 1, error: type[ConfigError] = ConfigError) -> None:
    """An integer count of at least ``low`` (1 unless said otherwise): epochs, steps, batch sizes."""
    if not _is_int(value) or value < low:
        raise error(f"{name} must be at least {low} (an integer), got {value!r}")


def at_least(name: str, value: Any, low: float, error: type[ConfigError] = ConfigError) -> None:
    """A number >= ``low`` (weights, decays, rates where 0 switches the term off)."""
    if not _is_number(value) or value < low:
        raise error(f"{name} must be >= {low}, got {value!r}")


def positive(name: str, value: Any, error: type[ConfigError] = ConfigError) -> None:
    """A number > 0 (learning rates, scales: 0 would silently do nothing)."""
    if not _is_number(value) or value <= 0:
        raise error(f"{name} must be > 0, got {value!r}")


def interval(name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
             error: type[ConfigError] = ConfigError) -> None:
    """A number in an interval; ``low_open``/``high_open`` exclude that end. The message writes it as (a, b]."""
    inside = _is_number(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not inside:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise error(f"{name} must be in {span}, got {value!r}")


def fraction(name: str, value: Any, *, low_open: bool = False, high_open: bool = False,
             error: type[ConfigError] = ConfigError) -> None:
    """A share or probability: a number in [0, 1], either end excludable."""
    interval(name, value, 0, 1, low_open=low_open, high_open=high_open, error=error)

"""The tiny problem the end-to-end tests run: every stage of every method in seconds on one CPU core. A test file
takes :data:`TINY` with its own changes on top (:func:`overrides`), as ``key=value`` overrides or as CLI ``--set``
pairs (:func:`cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY: dict[str, Any] = {
    "classifier.epochs": 1, "classifier.batch_size": 128, "amplifier.epochs": 1,
    "diffusion.preset": "tiny", "diffusion.steps": 4, "diffusion.batch_size": 16, "diffusion.checkpoint_every": 2,
    "sampling.per_class": 4, "sampling.steps": 2, "injection.steps": 3, "injection.batch_size": 64,
    "ddb.reference_gce_epochs": 1, "jtt.epochs_first": 1,
    "bias_ensemble.num_models": 2, "bias_ensemble.iterations": 4, "bias_ensemble.valid_freq": 2,
    "bias_ensemble.agreement": 1, "disent.curr_step": 2,
}


def overrides(changes: dict[str, Any] | None = None) -> list[str]:
    """``key=value`` overrides of the tiny problem, ``changes`` replacing or adding keys."""
    return [f"{k}={v}" for k, v in {**TINY, **(changes or {})}.items()]


def cli(pairs: list[str]) -> list[str]:
    """``key=value`` overrides as the CLI's ``--set`` arguments."""
    return [arg for pair in pairs for arg in ("--set", pair)]


def nested(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` overrides as the nested mapping a config file holds."""
    from diffdebias.config import parse_override

    data: dict[str, Any] = {}
    for pair in pairs:
        keys, value = parse_override(pair)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return data


def write_config(path: Path, base: str | Path, pairs: list[str]) -> Path:
    """A YAML config at ``path``: ``base`` with the ``key=value`` overrides ``pairs`` written in (a config file that
    another one names, e.g. ``detection.ddb_config``, takes no ``--set``)."""
    path.write_text(yaml.safe_dump({"base": str(Path(base).resolve()), **nested(pairs)}, sort_keys=False))
    return path

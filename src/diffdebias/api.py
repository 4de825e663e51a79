"""The Python entry points for notebooks and scripts: load a config, run it, read what it made."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import Config
from .config import load_config as _load_config


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), **top: Any) -> Config:
    """A config from a YAML file (its ``base:`` chain resolved), then ``key=value`` overrides as on the command line
    (``["classifier.epochs=5"]``), then top-level values (``seed=2``); validated, so a bad value fails here."""
    return _load_config(path, list(overrides), **top)


@dataclass
class RunResult:
    """What a run made: its directory, its resolved config and ``metrics.json``; the model loads on request."""

    run_dir: Path
    config: Config
    metrics: dict[str, Any]

    @property
    def report(self) -> Path:
        return self.run_dir / "report.md"

    def model(self):
        """The method's final classifier (eval mode, on the run's device): the selected weights of its last stage,
        or the softmax average of an ensemble's members."""
        from .classifiers.debias_weighting import disent_factory
        from .classifiers.train import default_factory
        from .methods.common import Trained
        from .runs import Stage

        cfg = self.config.classifier
        name = self.metrics["final_stage"]
        build = disent_factory if self.config.method in ("disent", "disent_be") else default_factory
        members = tuple(Stage(n, self.run_dir / n, "", self.config.seed)
                        for n in [name, *(f"{name}_m{k}" for k in range(1, cfg.ensemble))])
        return Trained(members[0], cfg, None, build, members if cfg.ensemble > 1 else ()).model


def run(config: Config | str | Path, out: str | Path | None = None, quiet: bool = False,
        stage_cache: str | Path | None = None) -> RunResult:
    """Run (or resume, or skip the finished stages of) a config, as ``diffdebias run`` does; ``config`` is a
    :class:`~diffdebias.config.Config` or the path of a YAML file. ``out`` defaults to ``runs/<name>-s<seed>``."""
    from .pipeline import execute
    from .runs import read_json

    cfg = load_config(config) if isinstance(config, (str, Path)) else replace(config)
    run_dir = execute(cfg, out, quiet=quiet, stage_cache=stage_cache)
    return RunResult(Path(run_dir), cfg, read_json(Path(run_dir) / "metrics.json"))

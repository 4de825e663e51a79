"""Run one experiment from a resolved config: data summary, the method's stages, evaluation, report."""

from __future__ import annotations

import time
from pathlib import Path

from .config import Config, dump_yaml
from .data import describe, split_table
from .devices import process_group
from .evaluation.report import write_report
from .keys import reads
from .methods import Context, get_method, method_settings
from .methods.common import evaluate_stage, record
from .runs import Run, Stage, finite_json, read_json, write_json, write_text

SPLITS = ("valid", "test")
UNDEFINED = "no value: the metric averages over no sample here (e.g. a split without bias-conflicting samples)"


def default_out(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-s{cfg.seed}"


def execute(cfg: Config, out: str | Path | None = None, quiet: bool = False,
            stage_cache: str | Path | None = None) -> Path:
    """Run (or resume, or skip) every stage of ``cfg`` in ``out``; return the run directory. With ``stage_cache``,
    stages live in that shared folder, so runs that share a stage (same config and inputs) compute it once.

    Launched as several processes (torchrun, accelerate launch), they run the stages together (see
    :meth:`~diffdebias.runs.Run.cached`) and the main process alone writes the run's files."""
    t0 = time.time()
    process_group(cfg.device)  # joins the launcher's processes before the first stage; nothing in a single process
    run = Run(out or default_out(cfg), cfg.seed, quiet=quiet, stage_cache=stage_cache)
    method = get_method(cfg.method)
    if run.main:  # what the method reads (the top-level fields and its sections), as benchmark tables compare it
        write_text(run.root / "config.yaml", dump_yaml(method_settings(cfg)))
    ctx = Context(cfg, run)

    def summarise(stage: Stage) -> None:
        write_json(stage.path("summary.json"), describe(ctx.data))
        if ctx.data.train.paths is not None:  # datasets read from files (a seeded split, e.g. BAR's valid, is kept)
            write_text(stage.path("split.csv"), split_table(ctx.data))

    run.cached("data", summarise, reads(cfg.data, ctx.dataset))
    result = method(ctx)
    final = result.model

    metrics = evaluate_stage(ctx, "evaluation", final, SPLITS)
    if len(final.members) > 1:  # the ensemble's members one by one, beside the ensemble
        record(ctx, "members", [evaluate_stage(ctx, f"evaluation_m{k}", part, SPLITS)
                                for k, part in enumerate(final.parts)])
    if not run.main:
        return run.root
    summary = {
        "method": cfg.method,
        "name": cfg.name,
        "seed": cfg.seed,
        "dataset": cfg.data.name,
        "conflict_ratio": cfg.data.conflict_ratio if cfg.data.name == "cmnist" else None,
        "final_stage": final.stage.name,
        "selection": read_json(final.stage.path("selection.json")),
        **metrics,
        **result.metrics,
        "stage_seconds": read_json(run.root / "timings.json") if (run.root / "timings.json").exists() else {},
        "wall_seconds_this_call": round(time.time() - t0, 3),
    }
    undefined: dict[str, str] = {}
    summary = finite_json(summary, undefined)  # strict JSON: null, and why
    undefined.update({f"{split}.{k}": "" for split in SPLITS for k, v in summary[split].items() if v is None})
    if undefined:
        summary["undefined"] = {k: UNDEFINED for k in sorted(undefined)}
    write_json(run.root / "metrics.json", summary)
    report = write_report(run.root, result.report)
    run.log(f"report: {report}")
    return run.root

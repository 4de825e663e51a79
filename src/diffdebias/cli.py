"""The ``diffdebias`` command: parse, load the config, call the pipeline. Nothing else lives here."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback
from pathlib import Path

from .config import ConfigError, load_config
from .devices import end_processes, is_main, leave_launch
from .runs import NonFiniteLossError
from .threads import fair_threads

EPILOG = """examples:
  diffdebias run configs/cmnist/erm.yaml --seed 1 --set data.conflict_ratio=0.01 --out runs/erm-1pct
  diffdebias data check --csv my_images.csv --root my_images/
  diffdebias report runs/erm-1pct
  diffdebias bench configs/tables/cmnist.yaml --shard 0/2
  diffdebias scoreboard   (configs/scoreboard.yaml's rows, from the run folders, into docs/results.md)
  torchrun --nproc_per_node 2 -m diffdebias run configs/cmnist/ddb.yaml   (one run, two processes)
"""


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set classifier.epochs=10 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffdebias", description="Debias image classifiers with diffusion models.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not only its message")
    sub = parser.add_subparsers(dest="command", required=True)
    debug = argparse.ArgumentParser(add_help=False)  # --debug after the command as well as before it
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    run = sub.add_parser("run", parents=[debug],
                         help="run an experiment from a YAML config (finished stages are skipped)")
    _config_args(run)
    run.add_argument("--seed", type=int, help="run seed (overrides the config's seed)")
    run.add_argument("--out", help="run directory (default: runs/<name>-s<seed>)")
    run.add_argument("--quiet", action="store_true", help="print only the report path")
    run.add_argument("--stage-cache", help="shared folder of stages: runs that need the same stage (same config and "
                     "inputs, e.g. DDB's diffusion model for two recipes) compute it once")

    data = sub.add_parser("data", parents=[debug], help="build or check a dataset")
    dsub = data.add_subparsers(dest="data_command", required=True)
    build = dsub.add_parser("build", parents=[debug], help="build and cache the dataset a config describes")
    _config_args(build)
    build.add_argument("--rebuild", action="store_true", help="rebuild even if a valid cache exists")
    check = dsub.add_parser("check", parents=[debug],
                           help="validate a dataset and print its counts per split, class and bias")
    _config_args(check, required=False)
    check.add_argument("--csv", help="a generic dataset CSV (path,label[,bias][,split]) instead of a config")
    check.add_argument("--root", help="image root of --csv (default: the CSV's folder)")
    check.add_argument("--image-size", type=int, help="resize images to this size")

    bench = sub.add_parser("bench", parents=[debug],
                           help="run a methods x ratios x seeds matrix and write tables/<name>.{md,csv,tex}")
    bench.add_argument("table", help="table YAML (methods, ratios, seeds)")
    bench.add_argument("--shard", help="run only cells i, i+n, i+2n, ... of the matrix, given as i/n, or auto: from "
                       "a Slurm job array (SLURM_ARRAY_TASK_ID/COUNT) or a launcher (RANK/WORLD_SIZE)")
    bench.add_argument("--collect-only", action="store_true", help="only collect finished runs into tables")
    for flag, what in (("methods", "method labels"), ("ratios", "conflict ratios"), ("seeds", "seeds")):
        bench.add_argument(f"--{flag}", help=f"run only these {what} of the table, comma-separated (the tables "
                           "written still collect every finished cell)")

    board = sub.add_parser("scoreboard", parents=[debug],
                           help="collect the rows of a scoreboard spec from their tables' run folders into the "
                           "marked block of a markdown file (trains nothing)")
    board.add_argument("spec", nargs="?", default="configs/scoreboard.yaml",
                       help="scoreboard YAML (default: configs/scoreboard.yaml)")
    board.add_argument("--out", default="docs/results.md", help="markdown file whose block between "
                       "<!-- scoreboard:begin --> and <!-- scoreboard:end --> is rewritten (default: docs/results.md)")
    board.add_argument("--here-only", action="store_true", help="cells with no run folder on this machine become "
                       "dashes instead of keeping the values the block held (marked †)")

    report = sub.add_parser("report", parents=[debug], help="(re)write report.md of a run directory")
    report.add_argument("run_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success; 2 with one line naming the file, row or field for every ordinary failure (bad config or
    data, a folder the toolkit does not own, a diverged loss, a full disk); ``--debug`` adds the traceback."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, NonFiniteLossError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"diffdebias: error: {_message(e)}", file=sys.stderr)
        return 2


def _message(e: BaseException) -> str:
    """The error's text; an operating-system error names what went wrong and the file."""
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        hint = "; free some space or point --out / DIFFDEBIAS_CACHE elsewhere" if e.errno == errno.ENOSPC else ""
        return f"{e.strerror}{where}{hint}"
    return str(e) or type(e).__name__


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from .pipeline import execute

        cfg = load_config(args.config, args.overrides, seed=args.seed)
        fair_threads(log=None if args.quiet or not is_main() else lambda msg: print(msg, file=sys.stderr))
        run_dir = execute(cfg, args.out, quiet=args.quiet, stage_cache=args.stage_cache)
        end_processes()
        if is_main():  # of several processes (torchrun), the main one
            print(run_dir / "report.md")
        return 0
    if args.command == "bench":
        from .bench import auto_shard, load_table, parse_shard, parse_subset, run_table, write_tables

        table = load_table(args.table)
        shard = parse_shard(args.shard)
        subset = parse_subset(table, args.methods, args.ratios, args.seeds)
        if args.shard == "auto" and auto_shard(os.environ)[1]:  # a launcher's processes: each runs its own cells
            leave_launch()
        if not args.collect_only:
            fair_threads(log=print if is_main() else None)
            run_table(table, shard, log=print if is_main() else lambda msg: None, subset=subset)
        if is_main():
            print(write_tables(table))
        return 0
    if args.command == "scoreboard":
        from .scoreboard import update

        print(update(args.spec, args.out, log=lambda msg: print(msg, file=sys.stderr), keep_earlier=not args.here_only))
        return 0
    if args.command == "report":
        from .evaluation.report import write_report

        run_dir = Path(args.run_dir)
        if not (run_dir / "metrics.json").exists():
            raise FileNotFoundError(f"{run_dir} has no metrics.json: not a finished run directory")
        print(write_report(run_dir))
        return 0
    from .data import describe, load_dataset

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    if args.data_command == "build":
        cfg = load_config(args.config, args.overrides)
        splits = load_dataset(cfg.data, log=log, rebuild=args.rebuild)
        print(json.dumps(describe(splits), indent=2))
        return 0
    overrides = list(args.overrides)
    if args.csv:
        overrides += ["data.name=csv", f"data.csv={args.csv}"]
        if args.root:
            overrides.append(f"data.root={args.root}")
        if args.image_size:
            overrides.append(f"data.image_size={args.image_size}")
    elif not args.config:
        raise ConfigError("data check needs a CONFIG or --csv")
    cfg = load_config(args.config, overrides)
    print(json.dumps(describe(load_dataset(cfg.data, log=log)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

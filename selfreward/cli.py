"""Command line.

selfreward run PARAMS [--out DIR] [--set key=value ...] [--force STAGE] [--from STAGE] [--reuse RUN_DIR] [--verify]
               [--no-book]
    the pipeline into DIR/<name> (default runs/<name>), then the run's book in DIR/<name>/book
selfreward book PARAMS [--out DIR] [--set ...] [--publish]
    the book of a run; --publish makes a complete run the checkout's reference book (book/run/)
selfreward compare RUN_DIR_A RUN_DIR_B [--book DIR]
    a chapter with the params that differ and every headline metric side by side
selfreward plan PARAMS [--set ...] [--tokens-per-second N] [--train-tflops N]
    memory per GPU of each training stage, tokens to generate and judge, times; refuses what cannot fit
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from selfreward.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfreward", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the self-rewarding pipeline of a params file")
    book = commands.add_parser("book", help="build the Jupyter Book of a run")
    plan = commands.add_parser("plan", help="memory per GPU, tokens and time of a run, from the model config")
    for command in (run, book, plan):
        command.add_argument("params", help="a params/*.yaml file")
        command.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="override a value, e.g. --set sft.learning_rate=1e-5 (repeatable)")
    run.add_argument("--force", action="append", default=[], metavar="STAGE",
                     help="re-run STAGE and every stage that depends on it (repeatable)")
    run.add_argument("--from", dest="start", metavar="STAGE", help="re-run STAGE and every later stage")
    run.add_argument("--only", action="append", default=[], metavar="STAGE",
                     help="run only STAGE and the stages it needs, e.g. --only ablation (repeatable; no book)")
    run.add_argument("--reuse", metavar="RUN_DIR",
                     help="first take from another run's folder every stage it finished with the same fingerprint")
    run.add_argument("--verify", action="store_true",
                     help="before skipping a stage, also check the hashes of its model weights")
    run.add_argument("--no-book", action="store_true", help="do not build the book at the end")
    book.add_argument("--publish", action="store_true",
                      help="make this (complete) run the checkout's reference book, book/run/")
    plan.add_argument("--tokens-per-second", type=float, default=2000.0,
                      help="generated tokens per second of one engine, for the times (default 2000)")
    plan.add_argument("--train-tflops", type=float, default=200.0,
                      help="sustained TFLOP/s per GPU in training, for the times (default 200)")
    compare = commands.add_parser("compare", help="compare two runs: differing params, headline metrics")
    compare.add_argument("run_a", help="a run folder (runs/<name>)")
    compare.add_argument("run_b", help="another run folder")
    compare.add_argument("--book", help="where to build the comparison (default: beside RUN_DIR_B)")
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops a run the way Ctrl-C does: the stage is marked interrupted


def _compare(args) -> int:
    from selfreward.run import compare
    from selfreward.run.book import BookError

    try:
        print(f"comparison: {compare.build(args.run_a, args.run_b, args.book)}")
    except BookError as err:
        print(f"selfreward: error: {err}", file=sys.stderr)
        return 1
    return 0


def _plan(cfg, args) -> int:
    from selfreward.run import sizing

    try:
        plan = sizing.make_plan(cfg, args.tokens_per_second, args.train_tflops)
        print(sizing.format_plan(plan))
        sizing.check_fits(plan)
    except ConfigError as err:
        print(f"selfreward: error: {err}", file=sys.stderr)
        return 2
    return 0


def _check_fixes(cfg, params: str):
    """The small-model fixes' options of `aift` and their rules (`method.fixes.check`), named by the params file
    as every other params error is."""
    from selfreward.method import fixes

    try:
        fixes.check(cfg)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith("SELFREWARD_") else f"{params}: {message}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.command == "compare":
        return _compare(args)
    try:
        cfg = load_config(args.params, args.overrides)
        _check_fixes(cfg, args.params)
    except ConfigError as err:
        print(f"selfreward: error: {err}", file=sys.stderr)
        return 2
    if args.command == "plan":
        return _plan(cfg, args)
    # imported only now: the pipeline pulls in torch, which a bad params file should not wait for
    from selfreward.run.book import BookError, build, publish
    from selfreward.method.data import DataError
    from selfreward.models import ModelError
    from selfreward.run.pipeline import PipelineError, PipelineInterrupted
    from selfreward.run.records import RunFolderBusy

    try:
        run_dir = Path(args.out) / cfg.name
        if args.command == "run":
            from selfreward.run import pipeline

            manifest = pipeline.run(cfg, args.out, params_file=args.params, overrides=args.overrides,
                                    force=args.force, start=args.start, verify=args.verify, reuse=args.reuse,
                                    only=args.only)
            print(f"run finished: {run_dir}/manifest.json")
            for name, entry in manifest["stages"].items():
                print(f"  {name:<14} {entry['status']:<8} {entry.get('duration_s', 0):>8.1f} s")
            if args.no_book or args.only:  # a partial run has no complete book
                return 0
        print(f"book: {publish(run_dir) if getattr(args, 'publish', False) else build(run_dir)}")
    except PipelineInterrupted as err:
        print(f"selfreward: error: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("selfreward: error: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, ModelError) as err:
        print(f"selfreward: error: {err}", file=sys.stderr)
        return 2
    except (DataError, PipelineError, BookError, RunFolderBusy) as err:
        print(f"selfreward: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

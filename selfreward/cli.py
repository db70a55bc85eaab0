"""Command line.

selfreward run PARAMS [--out DIR] [--set key=value ...] [--force STAGE] [--from STAGE] [--only STAGE]
               [--reuse RUN_DIR] [--verify] [--no-book] [--dry-run]
    the pipeline into DIR/<name> (default runs/<name>), then the run's book in DIR/<name>/book; --dry-run says
    what would run and why, and runs nothing
selfreward book PARAMS [--out DIR] [--set ...] [--publish]
    the book of a run; --publish makes a complete, fresh run the checkout's reference book (book/run/)
selfreward lab RUN_DIR [--port N] [--no-browser]
    JupyterLab on a run's executed stage notebooks, with the selfreward kernel
selfreward compare RUN_DIR_A RUN_DIR_B [--book DIR]
    a chapter with the params that differ and every headline metric side by side
selfreward findings RUN_OR_BOOK
    the findings table recomputed from the per-item rows of a run folder or a book (book/ holds the reference
    run's): every interval and verdict, and whether each matches what the run recorded (exit 1 if not)
selfreward plan PARAMS [--set ...] [--tokens-per-second N] [--train-tflops N]
    memory per GPU of each training stage, tokens to generate and judge, times; refuses what cannot fit

Errors are one line (`selfreward: error: ...`): exit code 2 for bad input (params, overrides, arguments, models,
device, plugins), 1 for a stage that stopped or bad data, 130 when interrupted.
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
    run.add_argument("--dry-run", action="store_true", help="say which stages would run and why; run nothing")
    book.add_argument("--publish", action="store_true",
                      help="make this (complete, fresh) run the checkout's reference book, book/run/")
    plan.add_argument("--tokens-per-second", type=float, default=2000.0,
                      help="generated tokens per second of one engine, for the times (default 2000)")
    plan.add_argument("--train-tflops", type=float, default=200.0,
                      help="sustained TFLOP/s per GPU in training, for the times (default 200)")
    lab = commands.add_parser("lab", help="open a run's stage notebooks in JupyterLab (the selfreward kernel)")
    lab.add_argument("run_dir", help="a run folder (runs/<name>)")
    lab.add_argument("--port", type=int, default=8888, help="the port to serve on (default 8888)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser")
    compare = commands.add_parser("compare", help="compare two runs: differing params, headline metrics")
    compare.add_argument("run_a", help="a run folder (runs/<name>)")
    compare.add_argument("run_b", help="another run folder")
    compare.add_argument("--book", help="where to build the comparison (default: beside RUN_DIR_B)")
    findings = commands.add_parser("findings", help="recompute the findings table from a run's or a book's rows")
    findings.add_argument("path", help="a run folder (runs/<name>) or a book folder (book/)")
    return parser


def _findings(args) -> int:
    from selfreward.run import rederive

    try:
        table, wrong, root = rederive.recompute(args.path)
    except rederive.FindingsError as err:
        return _error(err, 2)
    for row in table.to_dict(orient="records"):
        print(f"- {row['claim']} (paper: {row['paper']})\n    ours: {row['ours']}\n    verdict: {row['verdict']}")
    if wrong:
        print(f"\n{len(wrong)} recomputed differences do not match the record:\n" + "\n".join(wrong))
        return 1
    print(f"\nEvery interval and verdict recomputed from the rows in {root} matches the record.")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops a run the way Ctrl-C does: the stage is marked interrupted


def _error(message, code: int) -> int:
    print(f"selfreward: error: {message}", file=sys.stderr)
    return code


def _compare(args) -> int:
    from selfreward.run import compare
    from selfreward.run.book import BookError

    try:
        print(f"comparison: {compare.build(args.run_a, args.run_b, args.book)}")
    except BookError as err:
        return _error(err, 1)
    return 0


def _lab(args) -> int:
    from selfreward.run import lab

    try:
        return lab.serve(args.run_dir, port=args.port, browser=not args.no_browser)
    except ConfigError as err:
        return _error(err, 2)
    except KeyboardInterrupt:
        return 0


def _plan(cfg, args) -> int:
    from selfreward.run import sizing

    try:
        plan = sizing.make_plan(cfg, args.tokens_per_second, args.train_tflops)
        print(sizing.format_plan(plan))
        sizing.check_fits(plan)
    except ConfigError as err:
        return _error(err, 2)
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


def shown_path(path: str) -> str:
    """A path as a run records it: relative to where selfreward runs when it lies below, else its name (no other
    machine path reaches a notebook or a book)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return Path(path).name


def _dry_run(cfg, args) -> int:
    from selfreward.run import pipeline

    decisions = pipeline.dry_run(cfg, args.out, force=args.force, start=args.start, verify=args.verify,
                                 only=args.only)
    width = max(len(name) for name, _ in decisions)
    print(f"dry run of {Path(args.out) / cfg.name} (nothing is executed):")
    for name, reason in decisions:
        print(f"  {name:<{width}}  {'skip' if reason is None else 'run ' if not reason.startswith('not asked') else '—   '}"
              f"  {reason or 'unchanged'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.command == "compare":
        return _compare(args)
    if args.command == "lab":
        return _lab(args)
    if args.command == "findings":
        return _findings(args)
    try:
        cfg = load_config(args.params, args.overrides)
        _check_fixes(cfg, args.params)
    except ConfigError as err:
        return _error(err, 2)
    if args.command == "plan":
        return _plan(cfg, args)
    # imported only now: the pipeline pulls in torch, which a bad params file should not wait for
    from selfreward.run.book import BookError, build, incomplete, publish
    from selfreward.method.data import DataError
    from selfreward.models import ModelError
    from selfreward.run.pipeline import PipelineError, PipelineInterrupted
    from selfreward.run.records import RunFolderBusy

    try:
        run_dir = Path(args.out) / cfg.name
        if args.command == "run":
            from selfreward.run import pipeline

            cfg, params, overrides, tweaks = pipeline.with_tweaks(args.params, args.overrides, args.out)
            _check_fixes(cfg, args.params)
            if args.dry_run:
                return _dry_run(cfg, args)
            manifest = pipeline.run(cfg, args.out, params_file=shown_path(args.params), overrides=overrides,
                                    force=args.force, start=args.start, verify=args.verify, reuse=args.reuse,
                                    only=args.only, params=params, tweaks=tweaks)
            print(f"run finished: {run_dir}/manifest.json")
            for name, entry in manifest["stages"].items():
                stale = " (stale)" if entry.get("stale") else ""
                print(f"  {name:<16} {entry['status'] + stale:<16} {entry.get('duration_s', 0):>8.1f} s")
            if args.no_book or args.only:  # a partial run has no complete book
                return 0
        print(f"book: {publish(run_dir) if getattr(args, 'publish', False) else build(run_dir)}")
        lacking = incomplete(run_dir)
        if lacking:
            print(f"selfreward: note: the run is not complete and fresh ({lacking}); its book shows what it holds",
                  file=sys.stderr)
    except PipelineInterrupted as err:
        return _error(err, 130)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except (ConfigError, ModelError) as err:
        return _error(err, 2)
    except (DataError, PipelineError, BookError, RunFolderBusy) as err:
        return _error(err, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

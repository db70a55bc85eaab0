"""Command line.

selfreward run PARAMS [--out DIR] [--set key=value ...]   the pipeline, then the book
selfreward book PARAMS [--out DIR]                         the book of a finished run
"""
from __future__ import annotations

import argparse
import sys

from pathlib import Path

from selfreward.book import BOOK, BookError
from selfreward.book import build as book_build
from selfreward.config import ConfigError, load_config

# errors that mean bad input or a stage that cannot go on: one line, no traceback
from selfreward.data import DataError
from selfreward.models import ModelError
from selfreward.pipeline import PipelineError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfreward", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the self-rewarding pipeline of a params file")
    run.add_argument("params", help="a params/*.yaml file")
    run.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a value, e.g. --set sft.learning_rate=1e-5 (repeatable)")
    run.add_argument("--book", default=str(BOOK), help="the book folder to build (default: book/)")
    run.add_argument("--no-book", action="store_true", help="do not build the book at the end")
    book = commands.add_parser("book", help="build the Jupyter Book from a finished run")
    book.add_argument("params", help="the params file of the run")
    book.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    book.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    book.add_argument("--book", default=str(BOOK), help="the book folder to build (default: book/)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.params, args.overrides)
        run_dir = Path(args.out) / cfg.name
        if args.command == "run":
            from selfreward import pipeline

            manifest = pipeline.run(cfg, args.out, params_file=args.params, overrides=args.overrides)
            print(f"run finished: {run_dir}/manifest.json")
            for name, entry in manifest["stages"].items():
                print(f"  {name:<14} {entry['status']:<8} {entry.get('duration_s', 0):>8.1f} s")
            if args.no_book:
                return 0
        print(f"book: {book_build(run_dir, args.book)}")
    except (ConfigError, DataError, ModelError, PipelineError, BookError) as err:
        print(f"selfreward: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

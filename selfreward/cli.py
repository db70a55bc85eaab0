"""Command line: `selfreward run PARAMS [--out DIR] [--set key=value ...]`."""
from __future__ import annotations

import argparse
import sys

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
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.params, args.overrides)
        from selfreward import pipeline

        manifest = pipeline.run(cfg, args.out, params_file=args.params, overrides=args.overrides)
    except (ConfigError, DataError, ModelError, PipelineError) as err:
        print(f"selfreward: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    print(f"run finished: {args.out}/{cfg.name}/manifest.json")
    for name, entry in manifest["stages"].items():
        print(f"  {name:<14} {entry['status']:<8} {entry.get('duration_s', 0):>8.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

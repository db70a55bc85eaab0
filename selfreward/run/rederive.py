"""A book that can be re-derived: the per-item rows behind every interval travel with the book, and
`selfreward findings RUN_OR_BOOK` recomputes each instrument's paired differences from them
(`Instrument.derive`), pools them over the seeds, and prints the findings table with its verdicts, saying
whether every interval and verdict matches what the run recorded.

The rows are a compact copy of each chain's evaluation folder (`export_rows`): the run's manifest, every
instrument's result file, and its per-item rows gzipped, without the long texts (answers, judge reasoning,
prompts) that no interval reads; a seed's chain under seeds/seed_<s>/ as in the run folder.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd

from selfreward.evaluation import findings, pooling
from selfreward.io import read_jsonl
from selfreward.rundir import RunDir

ROWS = "rows"  # the folder of a book's chapters (book/run/) that holds the rows
LONG_TEXTS = {"response", "answers", "judgments", "results", "text", "turns", "instruction", "prompt"}
TOLERANCE = 1e-9


class FindingsError(RuntimeError):
    """The rows cannot be read; the message is one line."""


def compact(value):
    """A row without the long texts no interval reads (recursively)."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items() if k not in LONG_TEXTS}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def export_rows(run_dir, target: Path) -> Path:
    """Each chain's manifest, result files and compact per-item rows (gzipped), into `target`."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    for seed, folder in pooling.seed_folders(run_dir).items():
        if not folder.manifest.is_file():
            continue
        here = target if folder.root == RunDir(run_dir).root else target / "seeds" / f"seed_{seed}"
        here.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder.manifest, here / "manifest.json")
        for path in sorted(folder.eval.rglob("*")):
            relative = path.relative_to(folder.root)
            if path.suffix == ".json":
                (here / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, here / relative)
            elif path.suffix == ".jsonl":
                (here / relative).parent.mkdir(parents=True, exist_ok=True)
                # mtime 0: the same rows give the same bytes, so a re-published book changes only where they do
                with open(here / relative.with_name(relative.name + ".gz"), "wb") as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
                    out.write("".join(json.dumps(compact(row), ensure_ascii=False) + "\n"
                                      for row in read_jsonl(path)).encode())
    return target


def rows_root(path) -> Path:
    """The folder holding a run's manifest and evaluation rows: a run folder, a book (its run/rows/), or the
    rows folder itself."""
    path = Path(path)
    for candidate in (path, path / ROWS, path / "run" / ROWS):
        if (candidate / "manifest.json").is_file() and (candidate / "eval").is_dir():
            return candidate
    raise FindingsError(f"{path}: neither a run folder nor a book with its rows (no manifest.json and eval/ in it, "
                        f"in {ROWS}/ or in run/{ROWS}/)")


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= TOLERANCE)


def _shown(d) -> str:
    if d is None:
        return "nothing"
    return d.estimate.format(d.scale, 3, mde=True) + (f" (judge uninformative: {d.blind})" if d.blind else "")


def mismatches(root, derived: dict) -> list[str]:
    """Every difference recomputed from the rows (`derived`: `pooling.by_seed(root, derived=True)`) whose estimate
    differs from the recorded one (value, interval or MDE) or whose judge health reads otherwise."""
    recorded = pooling.by_seed(root)
    found = []
    for title in sorted(set(recorded) | set(derived)):
        for key in sorted(set(recorded.get(title, {})) | set(derived.get(title, {}))):
            ours, theirs = recorded.get(title, {}).get(key, {}), derived.get(title, {}).get(key, {})
            for seed in sorted(set(ours) | set(theirs)):
                a, b = ours.get(seed), theirs.get(seed)
                if a is None or b is None or not all(_same(getattr(a.estimate, f), getattr(b.estimate, f))
                                                     for f in ("value", "low", "high", "mde")) or a.blind != b.blind:
                    found.append(f"{title}: {key[0]} {key[1]} → {key[2]} (seed {seed}): recorded "
                                 f"{_shown(a)}, recomputed {_shown(b)}")
    return found


def recompute(path) -> tuple[pd.DataFrame, list[str], Path]:
    """The findings table recomputed from the rows at `path`, what does not match the record, and the rows' folder."""
    root = rows_root(path)
    try:
        derived = pooling.by_seed(root, derived=True)  # each instrument derived once, for the table and the check
        return findings.table(pooling.pool(derived, list(pooling.seed_folders(root)), pooling.measuring_seeds(root))), \
            mismatches(root, derived), root
    except KeyError as err:
        raise FindingsError(f"{root}: rows without the field {err} (written by an older selfreward: re-run the "
                            "run's evaluation stages)") from None

"""Compare two runs: the params that differ and every headline metric side by side with its interval.

`selfreward compare RUN_DIR_A RUN_DIR_B [--book DIR]` executes notebooks/compare.ipynb with papermill and
builds it into a small Jupyter Book: "tweak a param, re-run, read the difference" in one command.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from selfreward import evaluation
from selfreward.evaluation.estimates import Estimate
from selfreward.io import read_json
from selfreward.run.report import MEMORY_COLUMNS
from selfreward.rundir import RunDir


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def config_diff(run_a, run_b) -> pd.DataFrame:
    """Every resolved param whose value differs between the two runs (dotted keys)."""
    a = _flatten(read_json(RunDir(run_a).manifest)["config"])
    b = _flatten(read_json(RunDir(run_b).manifest)["config"])
    rows = [{"param": key, "A": a.get(key, "—"), "B": b.get(key, "—")} for key in sorted(set(a) | set(b))
            if a.get(key) != b.get(key)]
    return pd.DataFrame(rows, columns=["param", "A", "B"]).set_index("param")


def _text(value, name: str) -> str:
    """A headline as text: an Estimate with its interval (percentages where the name says %), or as given."""
    if isinstance(value, Estimate):
        return value.format(100, 1) if name.endswith("%") else value.format(1, 2)
    return "—" if value is None else str(value)


def headline_metrics(run_dir) -> dict[str, str]:
    """A run's headline numbers as text, each with its 95% interval where it has one: the method's counts,
    then every instrument's headlines."""
    run = RunDir(run_dir)
    manifest = read_json(run.manifest)
    found: dict[str, str] = {}
    for key in ("ift", "eft"):
        found[f"{key.upper()} examples"] = _text(manifest.get("counts", {}).get(key), key)
    for name, entry in manifest["stages"].items():
        if entry.get("kind") == "iteration":
            found[f"{name}: preference pairs"] = _text(entry.get("counts", {}).get("pairs"), name)
    for name, entry in manifest["stages"].items():  # what each stage needed of the machine
        for key, label in MEMORY_COLUMNS.items():
            if entry.get("peak_memory", {}).get(key) is not None:
                found[f"{name}: {label}"] = f"{entry['peak_memory'][key]:.2f}"
    for instrument in evaluation.registered():
        if instrument.done(run):
            found.update({key: _text(value, key) for key, value in instrument.headlines(run).items()})
    return found


def metrics_side_by_side(run_a, run_b) -> pd.DataFrame:
    a, b = headline_metrics(run_a), headline_metrics(run_b)
    rows = [{"metric": key, "A": a.get(key, "—"), "B": b.get(key, "—"),
             "differs": "" if a.get(key) == b.get(key) else "yes"} for key in dict.fromkeys([*a, *b])]
    return pd.DataFrame(rows).set_index("metric")


def describe(run_a, run_b) -> str:
    return "\n".join(f"- **{label}**: `{RunDir(run).root.name}` (params `{read_json(RunDir(run).manifest)['params_file']}`)"
                     for label, run in (("A", run_a), ("B", run_b)))


def build(run_a, run_b, book_dir=None) -> Path:
    """Execute the comparison notebook for two runs and build it as a book; returns its index.html."""
    import papermill as pm

    from selfreward.io import write_text
    from selfreward.run.book import BOOK, BookError, jupyter_book
    from selfreward.run.notebooks import NOTEBOOKS
    from selfreward.run.pipeline import KERNEL, ensure_kernel

    a, b = RunDir(run_a), RunDir(run_b)
    for run in (a, b):
        if not run.manifest.is_file():
            raise BookError(f"no run at {run.root} (no manifest.json)")
    book_dir = Path(book_dir) if book_dir else b.root.parent / f"compare-{a.root.name}-vs-{b.root.name}"
    book_dir.mkdir(parents=True, exist_ok=True)
    ensure_kernel()
    # the runs relative to the comparison (its kernel runs there): no machine path in its book
    pm.execute_notebook(str(NOTEBOOKS / "compare.ipynb"), str(book_dir / "comparison.ipynb"), kernel_name=KERNEL,
                        parameters={"run_a": os.path.relpath(a.root.resolve(), book_dir.resolve()),
                                    "run_b": os.path.relpath(b.root.resolve(), book_dir.resolve())},
                        cwd=str(book_dir), progress_bar=False)
    write_text(book_dir / "_config.yml", (BOOK / "_config.yml").read_text())
    write_text(book_dir / "intro.md", f"# Comparing two runs\n\n{describe(a, b)}\n")
    write_text(book_dir / "_toc.yml", "format: jb-book\nroot: intro\nchapters:\n- file: comparison\n")
    return jupyter_book(book_dir)

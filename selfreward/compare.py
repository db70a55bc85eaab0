"""Compare two runs: the params that differ and every headline metric side by side with its interval.

`selfreward compare RUN_DIR_A RUN_DIR_B [--book DIR]` executes notebooks/compare.ipynb with papermill and
builds it into a small Jupyter Book: "tweak a param, re-run, read the difference" in one command.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from selfreward.io import read_json
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


def _interval(entry, scale: float = 100, digits: int = 1) -> str | None:
    """'value [low, high]' from {value, low, high} or (value, low, high); None when absent."""
    if not entry:
        return None
    value, low, high = (entry["value"], entry["low"], entry["high"]) if isinstance(entry, dict) else entry
    if value is None:
        return None
    text = f"{value * scale:.{digits}f}"
    return text if low is None else f"{text} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def headline_metrics(run_dir) -> dict[str, str]:
    """A run's headline numbers as text, each with its 95% interval where it has one."""
    run = RunDir(run_dir)
    manifest = read_json(run.manifest)
    found: dict[str, str | None] = {}
    for key in ("ift", "eft"):
        found[f"{key.upper()} examples"] = manifest.get("counts", {}).get(key)
    for name, entry in manifest["stages"].items():
        if name.startswith("iteration_"):
            found[f"{name}: preference pairs"] = entry.get("counts", {}).get("pairs")
    if run.head_to_head.is_file():
        for name, c in read_json(run.head_to_head)["comparisons"].items():
            found[f"{name}: win/tie/loss %"] = f"{c['win_pct']:.1f}/{c['tie_pct']:.1f}/{c['loss_pct']:.1f}"
            found[f"{name}: soft win rate %"] = _interval(c.get("soft_win_rate"))
            found[f"{name}: judge"] = "informative" if c["judge_health"]["informative"] else "uninformative"
    if run.reward_model.is_file():
        for label, entry in read_json(run.reward_model)["models"].items():
            found[f"reward model {label}: pairwise accuracy %"] = _interval(entry["metrics"]["pairwise_accuracy"])
    if run.human_preference.is_file():
        for name, entry in read_json(run.human_preference)["models"].items():
            found[f"human preference {name}: likelihood %"] = _interval(entry["length_normalised"])
            found[f"human preference {name}: implicit reward %"] = _interval(entry["implicit_reward"])
    if run.mt_bench.is_file():
        for name, entry in read_json(run.mt_bench)["models"].items():
            found[f"MT-Bench {name}: overall"] = _interval(entry["overall"], scale=1, digits=2)
    return {key: "—" if value is None else str(value) for key, value in found.items()}


def metrics_side_by_side(run_a, run_b) -> pd.DataFrame:
    a, b = headline_metrics(run_a), headline_metrics(run_b)
    rows = [{"metric": key, "A": a.get(key, "—"), "B": b.get(key, "—"),
             "differs": "" if a.get(key) == b.get(key) else "yes"} for key in dict.fromkeys([*a, *b])]
    return pd.DataFrame(rows).set_index("metric")


def describe(run_a, run_b) -> str:
    return "\n".join(f"- **{label}**: `{RunDir(run).root}` (params `{read_json(RunDir(run).manifest)['params_file']}`)"
                     for label, run in (("A", run_a), ("B", run_b)))


def build(run_a, run_b, book_dir=None) -> Path:
    """Execute the comparison notebook for two runs and build it as a book; returns its index.html."""
    import papermill as pm

    from selfreward.book import BOOK, BookError, jupyter_book
    from selfreward.io import write_text
    from selfreward.pipeline import KERNEL, NOTEBOOKS, ensure_kernel

    a, b = RunDir(run_a), RunDir(run_b)
    for run in (a, b):
        if not run.manifest.is_file():
            raise BookError(f"no run at {run.root} (no manifest.json)")
    book_dir = Path(book_dir) if book_dir else b.root.parent / f"compare-{a.root.name}-vs-{b.root.name}"
    book_dir.mkdir(parents=True, exist_ok=True)
    ensure_kernel()
    pm.execute_notebook(str(NOTEBOOKS / "compare.ipynb"), str(book_dir / "comparison.ipynb"), kernel_name=KERNEL,
                        parameters={"run_a": str(a.root.resolve()), "run_b": str(b.root.resolve())},
                        progress_bar=False)
    write_text(book_dir / "_config.yml", (BOOK / "_config.yml").read_text())
    write_text(book_dir / "intro.md", f"# Comparing two runs\n\n{describe(a, b)}\n")
    write_text(book_dir / "_toc.yml", "format: jb-book\nroot: intro\nchapters:\n- file: comparison\n")
    return jupyter_book(book_dir)

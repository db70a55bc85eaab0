"""Build the Jupyter Book (1.x) of a run: its executed notebooks become the chapters.

A run's book is built inside the run folder (`runs/<name>/book/`) from the checkout's `book/` as a
template (`_config.yml`, `intro.md`, `images/`). The checkout's own `book/run/` holds the committed
reference run and changes only through `publish` (`selfreward book PARAMS --publish`).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from selfreward.io import read_json, write_text
from selfreward.rundir import RunDir

BOOK = Path(__file__).resolve().parent.parent / "book"  # the template and the published reference book
TEMPLATE_FILES = ["_config.yml", "intro.md", "images"]


class BookError(RuntimeError):
    """The book could not be built; the message is one line."""


def chapters(run_dir) -> list[Path]:
    """The executed notebooks of the stages the manifest lists as done, in stage order."""
    run = RunDir(run_dir)
    if not run.manifest.is_file():
        return []
    stages = read_json(run.manifest)["stages"].values()
    return [run.root / s["notebook"] for s in stages if s.get("status") == "done"]


def _copy_for_book(source: Path, target: Path):
    """Drop the empty parameters cell; fold the injected parameters (they record what ran) away."""
    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "parameters" in tags:
            tags.append("remove-cell")
        elif "injected-parameters" in tags:
            tags.append("hide-input")
    nbformat.write(notebook, target)


def prepare(run_dir, book_dir=None) -> Path:
    """Copy the book template and the run's notebooks into `book_dir` (default: the run's `book/`) and
    write the table of contents."""
    run = RunDir(run_dir)
    book_dir = Path(book_dir) if book_dir else run.book
    if not all((BOOK / name).exists() for name in TEMPLATE_FILES):
        raise BookError(f"{BOOK} is not a book template (needs {', '.join(TEMPLATE_FILES)})")
    found = chapters(run)
    if not found:
        raise BookError(f"no executed notebooks in {run.notebooks}")
    if book_dir.resolve() != BOOK.resolve():
        book_dir.mkdir(parents=True, exist_ok=True)
        for name in TEMPLATE_FILES:
            source, target = BOOK / name, book_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)
    target = book_dir / "run"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for path in found:
        _copy_for_book(path, target / path.name)
    shutil.copy2(run.manifest, target / "manifest.json")
    results = [p for p in found if p.stem == "results"]
    stages = [p for p in found if p not in results]
    parts = []
    if results:
        parts.append({"caption": "Results", "chapters": [{"file": f"run/{p.stem}"} for p in results]})
    parts.append({"caption": "The stages of the run", "chapters": [{"file": f"run/{p.stem}"} for p in stages]})
    write_text(book_dir / "_toc.yml", yaml.safe_dump({"format": "jb-book", "root": "intro", "parts": parts},
                                                      sort_keys=False))
    return book_dir


def publish(run_dir) -> Path:
    """Make a complete run the checkout's reference book (`book/run/`, `book/_toc.yml`) and build it."""
    run = RunDir(run_dir)
    if not run.manifest.is_file():
        raise BookError(f"no run at {run.root} (no manifest.json)")
    manifest = read_json(run.manifest)
    unfinished = [name for name, entry in manifest["stages"].items() if entry.get("status") != "done"]
    if unfinished or not manifest["config"]["evaluation"]["enabled"]:
        what = f"stages not done: {', '.join(unfinished)}" if unfinished else "its evaluation is disabled"
        raise BookError(f"refusing to publish {run.root}: the reference book needs a complete run ({what})")
    return build(run, BOOK)


def build(run_dir, book_dir=None, strict: bool = True) -> Path:
    """Build HTML into `book_dir/_build/html` (default: the run's `book/`); with `strict`, warnings are errors."""
    book_dir = prepare(run_dir, book_dir)
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(book_dir), "--quiet"]
    if not Path(command[0]).exists():
        command[0] = shutil.which("jupyter-book") or ""
    if not command[0]:
        raise BookError("jupyter-book is not installed: pip install -e '.[docs]'")
    if strict:
        command += ["-W", "--keep-going"]
    result = subprocess.run(command, capture_output=True, text=True)
    log = book_dir / "_build" / "build.log"
    write_text(log, result.stdout + result.stderr)
    if result.returncode != 0:
        warnings = [line for line in (result.stdout + result.stderr).splitlines() if "WARNING" in line or "ERROR" in line]
        first = warnings[0] if warnings else "see the log"
        raise BookError(f"jupyter-book build failed ({first.strip()}); full log: {log}")
    return book_dir / "_build" / "html" / "index.html"

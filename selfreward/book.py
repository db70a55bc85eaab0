"""Build the Jupyter Book (1.x) from a run: its executed notebooks become the chapters."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from selfreward.io import read_json, write_text

BOOK = Path(__file__).resolve().parent.parent / "book"


class BookError(RuntimeError):
    """The book could not be built; the message is one line."""


def chapters(run_dir) -> list[Path]:
    """The executed notebooks of the stages the manifest lists as done, in stage order."""
    manifest = Path(run_dir) / "manifest.json"
    if not manifest.is_file():
        return []
    stages = read_json(manifest)["stages"].values()
    return [Path(run_dir) / s["notebook"] for s in stages if s.get("status") == "done"]


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


def prepare(run_dir, book_dir=BOOK) -> Path:
    """Copy the run's notebooks into `book_dir/run/` and write the table of contents."""
    book_dir = Path(book_dir)
    if not (book_dir / "_config.yml").is_file() or not (book_dir / "intro.md").is_file():
        raise BookError(f"{book_dir} is not a book folder (needs _config.yml and intro.md)")
    found = chapters(run_dir)
    if not found:
        raise BookError(f"no executed notebooks in {Path(run_dir) / 'notebooks'}")
    target = book_dir / "run"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for path in found:
        _copy_for_book(path, target / path.name)
    shutil.copy2(Path(run_dir) / "manifest.json", target / "manifest.json")
    results = [p for p in found if p.stem == "results"]
    stages = [p for p in found if p not in results]
    parts = []
    if results:
        parts.append({"caption": "Results", "chapters": [{"file": f"run/{p.stem}"} for p in results]})
    parts.append({"caption": "The stages of the run", "chapters": [{"file": f"run/{p.stem}"} for p in stages]})
    write_text(book_dir / "_toc.yml", yaml.safe_dump({"format": "jb-book", "root": "intro", "parts": parts},
                                                      sort_keys=False))
    return book_dir


def build(run_dir, book_dir=BOOK, strict: bool = True) -> Path:
    """Build HTML into `book_dir/_build/html`; with `strict`, warnings are errors."""
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

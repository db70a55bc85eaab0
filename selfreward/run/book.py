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

from selfreward import CHECKOUT
from selfreward.io import read_json, write_text
from selfreward.run import rederive
from selfreward.run.manifest import problems
from selfreward.run.notebooks import machine_paths, scrub, scrub_output
from selfreward.rundir import RunDir

BOOK = CHECKOUT / "book"  # the template and the published reference book
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


def incomplete(run_dir) -> str:
    """What a book of this run lacks or must not be trusted for (failed, not run, stale stages), or ''."""
    run = RunDir(run_dir)
    found = problems(read_json(run.manifest)) if run.manifest.is_file() else {}
    return "; ".join(f"{what}: {', '.join(names)}" for what, names in found.items())


def _copy_for_book(source: Path, target: Path, paths: dict[str, str], stale: str | None = None):
    """A stage notebook as a chapter: the empty parameters cell dropped, the injected parameters (they record
    what ran) folded away, and everything the stage printed (progress bars, warnings) gathered into one
    collapsed log block at the end, after the chapter's tables and figures; a stale stage says so at the top.
    Machine paths become placeholders (`paths`: text to replace, in order)."""
    notebook = nbformat.read(source, as_version=4)
    if stale:
        notebook.cells.insert(1 if notebook.cells and notebook.cells[0].cell_type == "markdown" else 0,
                              nbformat.v4.new_markdown_cell(f":::{{warning}}\n**Stale:** {stale}; this chapter "
                                                            "describes what the run held before. Re-run "
                                                            "`selfreward run` to bring it up to date.\n:::"))
    log = []
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "parameters" in tags:
            tags.append("remove-cell")
        elif "injected-parameters" in tags:
            tags.append("hide-input")
            cell.source = scrub(cell.source, paths)
        if cell.cell_type != "code":
            continue
        log += [output.text for output in cell.outputs if output.output_type == "stream"]
        cell.outputs = [scrub_output(output, paths) for output in cell.outputs if output.output_type != "stream"]
    text = scrub(_final_lines("".join(log)), paths)
    if text.strip():
        notebook.cells.append(nbformat.v4.new_markdown_cell("The stage's log (progress and warnings):"))
        cell = nbformat.v4.new_code_cell("", metadata={"tags": ["remove-input", "hide-output"]})
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        notebook.cells.append(cell)
    nbformat.write(notebook, target)


def _final_lines(text: str) -> str:
    """What a terminal would show: a progress bar redraws its line with \\r; keep each line's last state."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(line for i, line in enumerate(lines) if line.strip() or (i and lines[i - 1].strip()))


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
    paths = machine_paths(run)
    records = {entry.get("notebook"): entry for entry in read_json(run.manifest)["stages"].values()}
    for path in found:
        _copy_for_book(path, target / path.name, paths, records.get(run.relative(path), {}).get("stale"))
    shutil.copy2(run.manifest, target / "manifest.json")
    rederive.export_rows(run, target / rederive.ROWS)  # the per-item rows: `selfreward findings` re-derives the book
    write_text(target / "about.md", about(run))
    results = [p for p in found if p.stem == "results"]
    stages = [p for p in found if p not in results]
    parts = []
    if results:
        parts.append({"caption": "Results", "chapters": [{"file": f"run/{p.stem}"} for p in results]})
    parts.append({"caption": "The stages of the run", "chapters": [{"file": f"run/{p.stem}"} for p in stages]})
    write_text(book_dir / "_toc.yml", yaml.safe_dump({"format": "jb-book", "root": "intro", "parts": parts},
                                                      sort_keys=False))
    return book_dir


def about(run: RunDir) -> str:
    """Which run, profile, model and machine the chapters of this book come from (shown in the intro)."""
    from selfreward.run.report import hardware_line

    manifest = read_json(run.manifest)
    cfg = manifest["config"]
    overrides = manifest.get("overrides") or {}
    if isinstance(overrides, list):  # a manifest from before overrides were kept as a mapping
        overrides = dict(item.split("=", 1) for item in overrides)
    shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
    lacking = incomplete(run)
    return (f"*The figures and chapters of this book come from the run **`{manifest['name']}`** (params "
            f"`{manifest['params_file']}`{', overrides ' + shown if shown else ''}"
            f"): M0 = `{cfg['model']['spec']}`, {cfg['iterations']} self-rewarding iterations, on "
            f"{hardware_line(manifest['hardware'])}.*\n"
            + (f"\n**This run is incomplete or stale** ({lacking}): its book shows only what the run holds.\n"
               if lacking else ""))


def publish(run_dir) -> Path:
    """Make a complete run the checkout's reference book (`book/run/`, `book/_toc.yml`) and build it."""
    run = RunDir(run_dir)
    if not run.manifest.is_file():
        raise BookError(f"no run at {run.root} (no manifest.json)")
    manifest = read_json(run.manifest)
    lacking = incomplete(run)
    if lacking or not manifest["config"]["evaluation"]["enabled"]:
        raise BookError(f"refusing to publish {run.root}: the reference book needs a complete, fresh run "
                        f"({lacking or 'its evaluation is disabled'})")
    return build(run, BOOK)


def build(run_dir, book_dir=None, strict: bool = True) -> Path:
    """Build HTML into `book_dir/_build/html` (default: the run's `book/`); with `strict`, warnings are errors."""
    return jupyter_book(prepare(run_dir, book_dir), strict)


def jupyter_book(book_dir: Path, strict: bool = True) -> Path:
    """`jupyter-book build` of a prepared book folder; one-line BookError with the first warning on failure."""
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
        warnings = [line for line in (result.stdout + result.stderr).splitlines()
                    if any(word in line for word in ("WARNING", "ERROR", "CRITICAL"))]
        first = warnings[0] if warnings else "see the log"
        raise BookError(f"jupyter-book build failed ({first.strip()}); full log: {log}")
    return book_dir / "_build" / "html" / "index.html"

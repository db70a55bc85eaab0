"""The stage notebooks as papermill executes them, from the templates in `notebooks/`.

Most stages execute their notebook as it is. Some are templates, so that a new instrument (or ablation
variant) needs no notebook of its own:
- a stage with `fields` (every instrument's chapter, `instrument.ipynb`; every variant's, `05_variant.ipynb`;
  every iteration's, `05_iteration.ipynb`): `{title}`, `{description}`, `{name}`, `{t}`... in its cells are the
  stage's;
- `10_results.ipynb`, the results chapter: the cells tagged `per-instrument` are repeated for each
  instrument of the run, in order, with the instrument's fields filled in.
The source notebooks are never written to; papermill executes the filled-in copy, with the parameters of
`parameters` (the params file, the overrides, the run folder relative to the notebook, the stage).
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import nbformat

from selfreward import CHECKOUT, evaluation

NOTEBOOKS = Path(os.environ.get("SELFREWARD_NOTEBOOKS", CHECKOUT / "notebooks"))
PER_INSTRUMENT = "per-instrument"
PIPELINE = "SELFREWARD_PIPELINE"  # set in the pipeline's kernel (its PID): the pipeline records the stage
NOTEBOOK_DIR = "SELFREWARD_NOTEBOOK_DIR"  # set there too: the folder the stage notebooks' run_dir is relative to


def parameters(params_file: str, overrides: dict, stage) -> dict:
    """What papermill injects into a stage notebook: short, readable, and free of this machine's paths."""
    return {"params_file": params_file, "overrides": overrides, "run_dir": "..", "stage": stage.name}


def fields(instrument) -> dict[str, str]:
    return {"title": instrument.title, "description": instrument.description, "name": instrument.name}


def _fill(cell, values: dict[str, str], repeated: bool = False) -> dict:
    cell = copy.deepcopy(cell)
    if repeated and "id" in cell:  # cell ids stay unique when a cell is repeated per instrument
        cell["id"] = f"{cell['id']}-{values['name']}"[:64]
    for key, value in values.items():
        cell.source = cell.source.replace(f"{{{key}}}", value)
    tags = cell.metadata.get("tags", [])
    if PER_INSTRUMENT in tags:
        cell.metadata["tags"] = [t for t in tags if t != PER_INSTRUMENT]
    return cell


def source(stage, stages) -> nbformat.NotebookNode:
    """The notebook papermill executes for `stage` (a `run.stages.Stage`) among the run's `stages`."""
    notebook = nbformat.read(NOTEBOOKS / stage.notebook, as_version=4)
    if stage.fields:
        notebook.cells = [_fill(cell, dict(stage.fields)) for cell in notebook.cells]
        return notebook
    instruments = [fields(evaluation.get(s.instrument)) for s in stages if s.instrument]
    expanded, block = [], []
    for cell in notebook.cells + [None]:  # consecutive per-instrument cells form one block, repeated per instrument
        if cell is not None and PER_INSTRUMENT in cell.metadata.get("tags", []):
            block.append(cell)
            continue
        expanded += [_fill(c, i, repeated=True) for i in instruments for c in block]
        block = []
        if cell is not None:
            expanded.append(cell)
    notebook.cells = expanded
    return notebook


# ---------------------------------------------------------------- no machine path in a notebook or a book

def machine_paths(run) -> dict[str, str]:
    """This machine's paths that an executed notebook or a chapter would otherwise show, and what to show
    instead (the run folder, the runs it reused stages from, the Python installation, the home folder, the
    checkout)."""
    from selfreward.io import read_json

    root = Path(run.root).resolve()
    reused = {(root / e["reused_from"]).resolve() for e in read_json(run.manifest)["stages"].values()
              if e.get("reused_from")} if run.manifest.is_file() else set()
    return {str(root): f"runs/{root.name}", **{str(other): f"runs/{other.name}" for other in reused},
            sys.prefix: "<python>", str(Path.home()): "~", str(CHECKOUT): "<checkout>"}


def scrub(text: str, paths: dict[str, str]) -> str:
    for path, placeholder in paths.items():
        text = text.replace(path, placeholder)
    return text


def scrub_output(output, paths: dict[str, str]):
    for mime, value in output.get("data", {}).items():
        if isinstance(value, str) and mime.startswith("text"):
            output["data"][mime] = scrub(value, paths)
    if "text" in output:
        output["text"] = scrub(output["text"], paths)
    if "traceback" in output:
        output["traceback"] = [scrub(line, paths) for line in output["traceback"]]
    return output


def scrub_executed(path: Path, run, stage):
    """An executed stage notebook without this machine's paths: papermill's record of where it read and wrote
    (the source template and notebooks/<stage>.ipynb instead), and every path its outputs printed."""
    notebook = nbformat.read(path, as_version=4)
    paths = machine_paths(run)
    record = notebook.metadata.get("papermill", {})
    if record:
        record["input_path"] = f"notebooks/{stage.notebook}"
        record["output_path"] = f"notebooks/{stage.name}.ipynb"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [scrub_output(output, paths) for output in cell.outputs]
    nbformat.write(notebook, path)

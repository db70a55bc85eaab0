"""The stage notebooks as papermill executes them, from the templates in `notebooks/`.

Most stages execute their notebook as it is. Some are templates, so that a new instrument (or ablation
variant) needs no notebook of its own:
- a stage with `fields` (every instrument's chapter, `instrument.ipynb`; every variant's, `05_variant.ipynb`;
  every iteration's, `05_iteration.ipynb`): `{title}`, `{description}`, `{name}`, `{t}`... in its cells are the
  stage's;
- `10_results.ipynb`, the results chapter: the cells tagged `per-instrument` are repeated for each
  instrument of the run, in order, with the instrument's fields filled in.
The source notebooks are never written to; papermill executes the filled-in copy.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import nbformat

from selfreward import CHECKOUT, evaluation

NOTEBOOKS = Path(os.environ.get("SELFREWARD_NOTEBOOKS", CHECKOUT / "notebooks"))
PER_INSTRUMENT = "per-instrument"


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

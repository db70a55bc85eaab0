"""The layout of a run folder, defined once: every path a stage, report, pipeline or test uses.

runs/<name>/
  manifest.json            each stage: status, config, counts, outputs (sizes, hashes), duration
  config.yaml              the resolved config of the last run
  params.yaml              the profile it was made from (before overrides; a stage notebook re-runs from it)
  notebooks/<stage>.ipynb  papermill's executed stage notebooks, named by stage
  stages/<stage>.json      each stage's counts
  data/  eft/  aift/m<t>/  aift/variant_<name>/  models/<model>/   the artifacts of the method
  eval/responses/<model>.jsonl                      every model's answers to the evaluation prompts
  eval/<instrument>.json  eval/<instrument>/        each instrument's result and detail (it names them)
  book/                    the book of this run (never the checkout's)
  .lock                    held by the process running the pipeline (`run.records.locked`)

This module is foundation: it imports nothing of selfreward.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root.root if isinstance(root, RunDir) else root))

    # ------------------------------------------------------------ bookkeeping
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def params(self) -> Path:
        """The profile the run was made from, as loaded (with what it `extends`), before any override: a stage
        notebook re-runs from it and the overrides it shows."""
        return self.root / "params.yaml"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def notebook(self, stage: str) -> Path:
        return self.notebooks / f"{stage}.ipynb"

    def counts(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def partial_counts(self, stage: str) -> Path:
        """What a stage that stopped had counted so far."""
        return self.root / "stages" / f"{stage}.partial.json"

    @property
    def book(self) -> Path:
        return self.root / "book"

    # ------------------------------------------------------------ data and training
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def ift(self) -> Path:
        return self.data / "ift.jsonl"

    @property
    def eft_source(self) -> Path:
        return self.data / "eft_source.jsonl"

    @property
    def rm_eval(self) -> Path:
        return self.data / "rm_eval.jsonl"

    @property
    def eval_prompts(self) -> Path:
        return self.data / "eval_prompts.jsonl"

    @property
    def mt_bench_questions(self) -> Path:
        return self.data / "mt_bench_questions.jsonl"

    @property
    def heldout_prompts(self) -> Path:
        """AlpacaEval instructions used neither for training nor for evaluation (checkpoint selection)."""
        return self.data / "heldout_prompts.jsonl"

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    @property
    def eft(self) -> Path:
        return self.root / "eft"

    @property
    def eft_judgments(self) -> Path:
        return self.eft / "judgments.jsonl"

    @property
    def eft_train(self) -> Path:
        return self.eft / "eft_train.jsonl"

    def aift(self, t: int) -> Path:
        """AIFT(M_t): the prompts, candidates, judgments and pairs of iteration t."""
        return self.root / "aift" / f"m{t}"

    def aift_prompts(self, t: int) -> Path:
        return self.aift(t) / "prompts.jsonl"

    def candidates(self, t: int) -> Path:
        return self.aift(t) / "candidates.jsonl"

    def prepared(self, t: int) -> Path:
        """The candidates as the small-model fixes prepared them (implicit rewards, another model's scores or
        candidates), when a fix is on; candidates.jsonl keeps them as sampled and judged."""
        return self.aift(t) / "prepared.jsonl"

    def pairs(self, t: int) -> Path:
        return self.aift(t) / "pairs.jsonl"

    def positives(self, t: int) -> Path:
        return self.aift(t) / "positive.jsonl"

    def variant(self, name: str) -> Path:
        """An ablation variant's candidates as its fixes prepared them (prepared.jsonl) and its pairs; its model
        is models/variant_<name>."""
        return self.root / "aift" / f"variant_{name}"

    def checkpoint_selection(self, t: int) -> Path:
        return self.aift(t) / "checkpoint_selection.json"

    def checkpoints(self, t: int) -> Path:
        """The saved training checkpoints of M_{t+1} (checkpoint selection), kept until the choice is made."""
        return self.aift(t) / "checkpoints"

    # ------------------------------------------------------------ evaluation
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def responses(self, model: str) -> Path:
        return self.eval / "responses" / f"{model}.jsonl"

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))


def slug(label: str) -> str:
    """A file name for a label such as 'sft_baseline (multiple choice)'."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")



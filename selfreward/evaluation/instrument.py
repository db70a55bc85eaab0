"""What every evaluation instrument is: one class that owns how it measures, the file it writes, its
tables and figures, its headline numbers with intervals, and the paired differences between models that
become rows of the findings table. The stage plan, the results chapter, `compare` and the findings
iterate over the registered instruments (`evaluation.registered()`); adding an instrument is one module.

An instrument's `run` writes one JSON file (`file(run)`, under eval/) holding everything its reports
need, differences included, so that rendering never recomputes a measurement.

An instrument that can measure one model at a time has the per-model hooks: `measure` (one model's rows on
the instrument's items), `rows` (those its own stage wrote, read back) and `compare` (the paired differences
between two models' rows). Its own `run` uses them for the run's models, and the ablation uses them for each
variant's model against the recipe's: an instrument with the hooks joins the ablation by itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from selfreward.config import Config, model_sequence
from selfreward.evaluation.estimates import Estimate, direction
from selfreward.evaluation.health import Health
from selfreward.io import read_json, read_jsonl, write_jsonl
from selfreward.rundir import RunDir, slug


@dataclass(frozen=True)
class Difference:
    """One paired difference between two models on one instrument's metric: `after` minus `before` on the
    same items. `scale` turns the estimate into the units shown (100: percentage points), `span` is the
    metric's range in those units (None: unbounded), `claim` the paper claim it bears on, and `blind` why
    the instrument cannot see this comparison (judge health), if it cannot."""

    metric: str
    before: str
    after: str
    estimate: Estimate
    unit: str = "points"
    scale: float = 100.0
    span: float | None = 100.0
    claim: str | None = None
    blind: str | None = None
    note: str | None = None  # pooled over seeds: how many seeds, and which are missing

    @property
    def comparison(self) -> str:
        return f"{self.before} → {self.after}"

    def too_coarse(self) -> bool:
        """Whether the MDE is over a fifth of the metric's range (20 points on a percentage)."""
        mde = self.estimate.mde
        return self.span is not None and mde is not None and mde * self.scale > 0.2 * self.span

    def direction(self) -> str | None:
        return direction(self.estimate)

    def to_dict(self) -> dict:
        return {**asdict(self), "estimate": self.estimate.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Difference:
        return cls(**{**data, "estimate": Estimate.from_dict(data["estimate"])})


def model_steps(names: list[str]) -> list[tuple[str, str]]:
    """The comparisons along the model sequence: SFT baseline -> M1, each M_t -> M_{t+1}, and M1 -> the last
    model when there are two iterations or more."""
    steps = list(zip(names, names[1:], strict=False))  # consecutive pairs: one fewer than the names
    if len(names) >= 4:
        steps.append((names[1], names[-1]))
    return steps


class Instrument:
    name: str = ""  # its stage and its file, eval/<name>.json
    title: str = ""  # the heading of its chapter and of its section in the results chapter
    description: str = ""  # markdown: what it measures, and what it does not
    sections: tuple[str, ...] = ("seed", "model", "generation", "evaluation")  # the config it reads
    uses_responses: bool = False  # reads every model's answers to the evaluation prompts (stage `responses`)
    after: tuple[str, ...] = ()  # the instruments whose results it reads (`requires` may add to them)
    evaluates_variants: bool = False  # measures the ablation's variant models (needs their stages)
    order: int = 100  # its place among the instruments
    quality: bool = False  # its paired differences measure quality: higher is better (the ablation's verdict)

    def enabled(self, cfg: Config) -> bool:
        """On when the run evaluates, and for one that reads the evaluation prompts' answers, when it answers them."""
        return cfg.evaluation.enabled and (cfg.evaluation.answers != "off" or not self.uses_responses)

    def models(self, cfg: Config) -> list[str]:
        return model_sequence(cfg.iterations)

    def requires(self, cfg: Config) -> tuple[str, ...]:
        """The instruments whose results it reads in this run."""
        return self.after

    def inputs(self, cfg: Config) -> str:
        """What it reads from outside the run (a benchmark's file), for its stage's fingerprint."""
        return ""

    # ------------------------------------------------------------ measuring
    def run(self, cfg: Config, run: RunDir) -> dict:
        """Measure, write `file(run)` (and anything under `folder(run)`), return the stage's counts."""
        raise NotImplementedError

    def file(self, run: RunDir) -> Path:
        return RunDir(run).eval / f"{self.name}.json"

    def folder(self, run: RunDir) -> Path:
        """Where the instrument keeps per-model detail (scores, answers), beside its file."""
        return RunDir(run).eval / self.name

    def outputs(self, run: RunDir) -> list[Path]:
        return [self.file(run), self.folder(run)]

    def result(self, run: RunDir) -> dict:
        return read_json(self.file(run))

    def done(self, run: RunDir) -> bool:
        return self.file(run).is_file()

    # ------------------------------------------------------------ one model at a time
    @property
    def per_model(self) -> bool:
        """Whether it measures one model at a time (it has `measure`), so that the ablation can use it."""
        return type(self).measure is not Instrument.measure

    def measure(self, cfg: Config, run: RunDir, model: str, backend, chat) -> list[dict]:
        """The rows of one model (`model`, loaded as `backend` and `chat`) on the instrument's items."""
        raise NotImplementedError

    @staticmethod
    def loaded(cfg: Config, run: RunDir, model: str):
        """A model of the run (or a variant's), or `base` (M0), loaded with the configured engine, for a `with`
        block."""
        from selfreward.generation import loaded_backend
        from selfreward.method.model_refs import model_path

        folder = RunDir(run).model(model)
        return loaded_backend(str(folder) if folder.is_dir() else model_path(cfg, RunDir(run), model), cfg)

    def measure_models(self, cfg: Config, run: RunDir, models: list[str]) -> tuple[dict[str, list[dict]], int]:
        """`measure` for each of the run's named models, one loaded at a time, each model's rows written where
        `rows` reads them; and the tokens the models generated."""
        found, tokens = {}, 0
        for name in models:
            with self.loaded(cfg, run, name) as (backend, chat):
                found[name] = self.measure(cfg, run, name, backend, chat)
            tokens += backend.tokens_generated
            write_jsonl(self.folder(run) / f"{slug(name)}.jsonl", found[name])
        return found, tokens

    def rows(self, run: RunDir, model: str) -> list[dict]:
        """The rows the instrument's own stage wrote for one of the run's models."""
        return read_jsonl(self.folder(run) / f"{slug(model)}.jsonl")

    def compare(self, cfg: Config, before: list[dict], after: list[dict], names: tuple[str, str]) -> list[Difference]:
        """Paired differences `after` − `before` on the same items (two models' rows, named by `names`)."""
        raise NotImplementedError

    def derive(self, cfg: Config, run: RunDir) -> list[Difference]:
        """Its paired differences computed from the per-item rows its stage wrote: what `run` records, and what
        `selfreward findings` recomputes from a run folder or a book's committed rows. An instrument without
        per-item rows of its own gives back the differences it recorded."""
        return self.differences(run)

    # ------------------------------------------------------------ reporting
    def tables(self, run: RunDir) -> list[tuple[str, pd.DataFrame]]:
        """(caption, table) pairs, the main table first."""
        return []

    def figures(self, run: RunDir) -> list:
        return []

    def headlines(self, run: RunDir) -> dict[str, Estimate | str | None]:
        """The numbers `compare` puts side by side, by name."""
        return {}

    def differences(self, run: RunDir) -> list[Difference]:
        return [Difference.from_dict(d) for d in self.result(run).get("differences", [])]

    def health(self, run: RunDir) -> dict[str, Health]:
        """Each judge's (or comparison's) health, where the instrument has a judge."""
        return {name: Health.from_dict(h) for name, h in self.result(run).get("health", {}).items()}


def differences_table(differences: list[Difference]) -> pd.DataFrame:
    """Paired differences: Δ with its 95% interval and the MDE, in the metric's units."""
    rows = []
    for d in differences:
        digits = 1 if d.scale == 100 else 2
        rows.append({"metric": d.metric, "comparison": d.comparison,
                     "Δ [95% CI]": d.estimate.format(d.scale, digits, mde=True),
                     "MDE ±": None if d.estimate.mde is None else round(d.estimate.mde * d.scale, digits),
                     "unit": d.unit, "n": d.estimate.n,
                     "reads": d.blind and f"judge uninformative: {d.blind}" or d.direction() or "—"})
    return pd.DataFrame(rows).set_index(["metric", "comparison"]) if rows else pd.DataFrame()

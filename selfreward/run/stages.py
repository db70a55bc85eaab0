"""The stages of a run, each defined once by a small builder: what it is (its kind, the iteration it belongs
to, the model it makes), its notebook, its run function, the config sections it reads (its fingerprint),
the stages it needs and the files it writes. Nothing reads a stage's name to learn what it is.

The method's stages (data, sft_baseline, eft, m1, iteration_t; ablation variants), then, when evaluation is
on, the `responses` stage (every model's answers to the evaluation prompts) and one stage per enabled
instrument (`evaluation.instruments`), and the `results` chapter. Each stage notebook calls
`run_stage(stage, config, run_dir)`, which saves the stage's counts as `stages/<name>.json` for the manifest.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from selfreward import evaluation, memory
from selfreward.config import Config, from_dict
from selfreward.evaluation.responses import run_responses
from selfreward.io import write_json
from selfreward.method import data, fixes, loop
from selfreward.run import notebooks
from selfreward.rundir import RunDir

INSTRUMENT_NOTEBOOK = "instrument.ipynb"  # one chapter template for every instrument (`run.notebooks`)
MODEL_SECTIONS = ("seed", "model")  # what every stage that loads a model reads

Kind = Literal["data", "sft", "eft", "iteration", "variant", "responses", "instrument", "report"]


@dataclass(frozen=True)
class Stage:
    name: str
    kind: Kind
    notebook: str  # the source notebook in notebooks/; its executed copy is notebooks/<name>.ipynb
    run: Callable[[Config, RunDir], dict]
    sections: tuple[str, ...]  # the config sections it reads (its fingerprint)
    needs: tuple[str, ...] = ()  # the stages whose outputs it reads
    outputs: Callable[[RunDir], list[Path]] = lambda run: []  # the files and folders it writes
    inputs: Callable[[Config], str] = lambda cfg: ""  # what it reads from outside the run, for its fingerprint
    iteration: int = 0  # an iteration's t, or the t a variant starts from (M_t); 0 for the others
    model: str | None = None  # the model it trains (sft_baseline, m1, m_{t+1}, variant_<name>)
    instrument: str | None = None  # the evaluation instrument it runs
    fields: tuple[tuple[str, str], ...] = ()  # what its notebook template's {title}, {description}, {name}... are

    @property
    def report(self) -> bool:
        """A report renders only: re-run every time, records no outputs."""
        return self.kind == "report"

    @property
    def loads_a_model(self) -> bool:
        """Whether it loads a model (to train, generate, judge or tokenize): after a heavy one, a fresh kernel."""
        return "model" in self.sections

    @property
    def trains_the_chain(self) -> bool:
        """Whether it makes a model of the run's sequence (SFT baseline, M1, M2, ...), the models evaluated."""
        return self.model is not None and self.kind != "variant"


# ---------------------------------------------------------------- the builders, one per kind of stage

def data_stage() -> Stage:
    return Stage("data", "data", "01_data.ipynb", loop.run_data, ("item_seed", "data"), outputs=lambda r: [r.data],
                 inputs=lambda cfg: data.source_identity(cfg.data))


def sft_baseline_stage() -> Stage:
    return Stage("sft_baseline", "sft", "02_sft_baseline.ipynb", loop.run_sft_baseline, MODEL_SECTIONS + ("sft",),
                 ("data",), lambda r: [r.model("sft_baseline")], model="sft_baseline")


def eft_stage() -> Stage:
    return Stage("eft", "eft", "03_eft.ipynb", loop.run_eft, MODEL_SECTIONS + ("generation", "judge", "eft"),
                 ("data", "sft_baseline"), lambda r: [r.eft])


def m1_stage() -> Stage:
    return Stage("m1", "sft", "04_m1.ipynb", loop.run_m1, MODEL_SECTIONS + ("sft",), ("data", "eft"),
                 lambda r: [r.model("m1")], model="m1")


def iteration_stage(cfg: Config, t: int, previous: str) -> Stage:
    """AIFT(M_t) and M_{t+1}, after `previous` (the stage that made M_t)."""
    sections = MODEL_SECTIONS + ("generation", "self_instruct", "candidates", "judge", "aift", "dpo", "sft")
    if cfg.aift.select_every_steps:  # checkpoint selection judges with the evaluation judge
        sections += ("evaluation",)
    return Stage(f"iteration_{t}", "iteration", "05_iteration.ipynb", lambda c, r: loop.run_iteration(c, r, t),
                 sections, ("data", previous), lambda r: [r.aift(t), r.model(f"m{t + 1}")],
                 inputs=lambda c: fixes.fingerprint_revision(c.aift), iteration=t, model=f"m{t + 1}",
                 fields=(("t", str(t)), ("next", str(t + 1))))


def variant_stage(name: str, section, t: int) -> Stage:
    """One ablation variant: an iteration from M_t with the small-model fixes of `section` (an `aift` section)."""
    return Stage(
        f"variant_{name}", "variant", "05_variant.ipynb", lambda c, r: loop.run_variant(c, r, name),
        MODEL_SECTIONS + ("generation", "candidates", "judge", "dpo"), ("data", f"iteration_{t}"),
        lambda r: [r.variant(name), r.model(f"variant_{name}")],
        inputs=lambda c: f"{fixes.plain(section)}|m{t}{fixes.fingerprint_revision(section)}",  # its own options
        iteration=t, model=f"variant_{name}",
        fields=(("name", name), ("title", f"Ablation variant {name}: one iteration from M{t}"),
                ("description", fixes.describe(section, t))))


def responses_stage(trained: tuple[str, ...]) -> Stage:
    return Stage("responses", "responses", "06_responses.ipynb", run_responses, MODEL_SECTIONS + ("evaluation",),
                 ("data",) + trained, lambda r: [r.eval / "responses"])


def instrument_stage(instrument, needs: tuple[str, ...]) -> Stage:
    return Stage(instrument.name, "instrument", INSTRUMENT_NOTEBOOK, instrument.run, instrument.sections, needs,
                 instrument.outputs, inputs=instrument.inputs, instrument=instrument.name,
                 fields=tuple(notebooks.fields(instrument).items()))


def results_stage(stages: list[Stage]) -> Stage:
    return Stage("results", "report", "10_results.ipynb", lambda cfg, run: {}, (), tuple(s.name for s in stages))


def plan(cfg: Config) -> list[Stage]:
    """The stages of a run, in order (the small-model fixes' options checked first: `fixes.check`)."""
    fixes.check(cfg)
    stages = [data_stage(), sft_baseline_stage(), eft_stage(), m1_stage()]
    for t in range(1, cfg.iterations + 1):
        stages.append(iteration_stage(cfg, t, stages[-1].name))
    for name, section, t in cfg.ablation_variants():  # the ablation: one iteration's variants, each from M_t
        stages.append(variant_stage(name, section, t))
    if not cfg.evaluation.enabled:
        return stages
    trained = tuple(s.name for s in stages if s.trains_the_chain)
    variants = tuple(s.name for s in stages if s.kind == "variant")
    instruments = evaluation.registered(cfg)
    if any(i.uses_responses for i in instruments):
        stages.append(responses_stage(trained))
    for instrument in after_what_they_read(instruments, cfg):
        needs = ("data",) + trained + (("responses",) if instrument.uses_responses else ()) + instrument.requires(cfg) \
            + (variants if instrument.evaluates_variants else ())
        stages.append(instrument_stage(instrument, needs))
    stages.append(results_stage(stages))
    return stages


def after_what_they_read(instruments: list, cfg: Config) -> list:
    """The instruments in their order, each moved after the instruments it reads (`requires`)."""
    placed, waiting = [], list(instruments)
    while waiting:
        ready = next((i for i in waiting if set(i.requires(cfg)) <= {p.name for p in placed}), waiting[0])
        placed.append(ready)
        waiting.remove(ready)
    return placed


def get(cfg: Config, name: str) -> Stage:
    """The stage `name` of `cfg`'s plan."""
    found = {s.name: s for s in plan(cfg)}
    if name not in found:
        raise KeyError(f"unknown stage {name!r}; this run's stages: {', '.join(found)}")
    return found[name]


def run_stage(name: str, config: dict | Config, run_dir) -> dict:
    """Run one stage of a run (what each stage notebook calls); saves and returns its counts, with the peak memory
    of this process while it ran (`selfreward.memory`)."""
    cfg = config if isinstance(config, Config) else from_dict(config, "stage config")
    stage = get(cfg, name)
    run, started = RunDir(run_dir), time.time()
    with memory.peak() as peak:
        counts = stage.run(cfg, run)
    memory.give_back_free_pages()  # the next stage starts from what this one still holds, not from its peak
    if stage.report:
        return counts
    # the process that ran it: a stage that loads a model after a heavy one runs in a fresh kernel (run.pipeline)
    counts = {**counts, "seconds": round(time.time() - started, 1), "peak_memory": {**peak.reading,
                                                                                    "process": os.getpid()}}
    write_json(run.counts(name), counts)
    return counts


def describe(stage: Stage) -> dict:
    """What the manifest records of what a stage is: its kind, and its iteration, model or instrument."""
    found = {"kind": stage.kind, "iteration": stage.iteration or None, "model": stage.model,
             "instrument": stage.instrument}
    return {key: value for key, value in found.items() if value is not None}

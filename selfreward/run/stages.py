"""The stages of a run, each defined once: its notebook, its run function, the config sections it reads
(its fingerprint), the stages it needs and the files it writes.

The method's stages come from `method.loop`; then, when evaluation is on, the `responses` stage (every
model's answers to the evaluation prompts) and one stage per enabled instrument (`evaluation.instruments`),
and the `results` chapter. Each stage notebook calls `run_stage(stage, config, run_dir)`, which saves the
stage's counts as `stages/<name>.json` for the manifest.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from selfreward import evaluation
from selfreward.config import Config, from_dict
from selfreward.evaluation.responses import run_responses
from selfreward.io import write_json
from selfreward.method import data, loop, variants
from selfreward.run import notebooks
from selfreward.rundir import RunDir

INSTRUMENT_NOTEBOOK = "instrument.ipynb"  # one chapter template for every instrument (`run.notebooks`)


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str  # the source notebook in notebooks/; its executed copy is notebooks/<name>.ipynb
    run: Callable[[Config, RunDir], dict]
    sections: tuple[str, ...]  # the config sections it reads (its fingerprint)
    needs: tuple[str, ...] = ()  # the stages whose outputs it reads
    outputs: Callable[[RunDir], list[Path]] = lambda run: []  # the files and folders it writes
    inputs: Callable[[Config], str] = lambda cfg: ""  # what it reads from outside the run, for its fingerprint
    iteration: int = 0
    report: bool = False  # renders reports only: re-run every time, records no outputs
    instrument: str | None = None  # the evaluation instrument it runs
    fields: tuple[tuple[str, str], ...] = ()  # what its notebook template's {title}, {description}, {name} are


def plan(cfg: Config) -> list[Stage]:
    """The stages of a run, in order."""
    model_sections = ("seed", "model")
    stages = [
        Stage("data", "01_data.ipynb", loop.run_data, ("seed", "data"), outputs=lambda r: [r.data],
              inputs=lambda cfg: data.source_identity(cfg.data)),
        Stage("sft_baseline", "02_sft_baseline.ipynb", loop.run_sft_baseline, model_sections + ("sft",), ("data",),
              lambda r: [r.model("sft_baseline")]),
        Stage("eft", "03_eft.ipynb", loop.run_eft, model_sections + ("generation", "judge", "eft"),
              ("data", "sft_baseline"), lambda r: [r.eft]),
        Stage("m1", "04_m1.ipynb", loop.run_m1, model_sections + ("sft",), ("data", "eft"), lambda r: [r.model("m1")]),
    ]
    for t in range(1, cfg.iterations + 1):
        sections = model_sections + ("generation", "self_instruct", "candidates", "judge", "aift", "dpo", "sft")
        if cfg.aift.select_every_steps:  # checkpoint selection judges with the evaluation judge
            sections += ("evaluation",)
        stages.append(Stage(
            f"iteration_{t}", "05_iteration.ipynb", functools.partial(loop.run_iteration, iteration=t), sections,
            ("data", "m1" if t == 1 else f"iteration_{t - 1}"),
            functools.partial(lambda r, t: [r.aift(t), r.model(f"m{t + 1}")], t=t),
            inputs=lambda cfg: variants.weighted_dpo_revision(cfg.aift), iteration=t))
    for name, section, t in cfg.variants():  # the ablation: one iteration's variants, each from M_t
        stages.append(Stage(
            f"variant_{name}", "05_variant.ipynb", functools.partial(variants.run_variant, name=name),
            model_sections + ("generation", "candidates", "judge", "dpo"),
            ("data", f"iteration_{t}"), functools.partial(lambda r, n: [r.variant(n), r.model(f"variant_{n}")], n=name),
            inputs=functools.partial(lambda cfg, s, t: f"{dataclasses.asdict(s)}|m{t}{variants.weighted_dpo_revision(s)}",
                                     s=section, t=t),  # its own options
            iteration=t, fields=(("name", name), ("title", f"Ablation variant {name}: one iteration from M{t}"),
                                 ("description", variants.describe(section, t)))))
    if not cfg.evaluation.enabled:
        return stages
    trained = tuple(s.name for s in stages if s.name not in ("data", "eft") and not s.name.startswith("variant_"))
    ablation = tuple(s.name for s in stages if s.name.startswith("variant_"))
    instruments = evaluation.registered(cfg)
    if any(i.uses_responses for i in instruments):
        stages.append(Stage("responses", "06_responses.ipynb", run_responses, model_sections + ("evaluation",),
                            ("data",) + trained, lambda r: [r.eval / "responses"]))
    for instrument in instruments:
        needs = ("data",) + trained + (("responses",) if instrument.uses_responses else ()) + instrument.after \
            + (ablation if instrument.evaluates_variants else ())
        stages.append(Stage(instrument.name, INSTRUMENT_NOTEBOOK, instrument.run, instrument.sections, needs,
                            instrument.outputs, instrument=instrument.name,
                            fields=tuple(notebooks.fields(instrument).items())))
    stages.append(Stage("results", "10_results.ipynb", lambda cfg, run: {}, (), tuple(s.name for s in stages),
                        report=True))
    return stages


def run_stage(name: str, config: dict | Config, run_dir) -> dict:
    """Run one stage of a run (what each stage notebook calls); saves and returns its counts."""
    cfg = config if isinstance(config, Config) else from_dict(config, "stage config")
    stage = {s.name: s for s in plan(cfg)}[name]
    run, started = RunDir(run_dir), time.time()
    counts = stage.run(cfg, run)
    if stage.report:
        return counts
    counts = {**counts, "seconds": round(time.time() - started, 1)}
    write_json(run.counts(name), counts)
    return counts

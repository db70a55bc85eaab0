"""A stage notebook's entry: what its cells call, under the pipeline and when a user re-runs them by hand.

Every stage notebook opens with four readable parameters (papermill injects them; a user may edit them):
`params_file` (the profile the run was made from, for the record: the run folder keeps a copy), `overrides`
(dotted keys over that profile, e.g. {"dpo.beta": 0.1}), `run_dir` (the run folder, relative to the notebook,
so that a run folder that moves still opens) and `stage`. `open_stage` resolves them into the stage's config.

Re-running a stage's cells is a pipeline action, whichever way it happens:
- under `selfreward run` (the kernel has SELFREWARD_PIPELINE), the stage runs and the pipeline records it;
- by hand (Jupyter, nbclient), `StageNotebook.run` takes the run folder's lock (refused, with the holder's PID,
  while another run holds it), runs the stage, and records it as the pipeline would: the overrides that differ
  from the run's become its `tweaks` (the run *becomes* the tweaked experiment: its config and manifest say
  so, and a later `selfreward run` keeps them, saying so, unless its own `--set` replaces them), the stage's
  new fingerprint and outputs, and every later stage that no longer follows is marked stale.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml

from selfreward.config import ConfigError, from_dict
from selfreward.config.loading import apply_overrides, override_mapping
from selfreward.io import write_json, write_text
from selfreward.method import fixes
from selfreward.run import manifest, notebooks, stages
from selfreward.run.records import locked
from selfreward.rundir import RunDir


def display_whole_tables():
    """The chapters show whole tables: every headline row, and cells that hold sentences (verdicts, health)."""
    pd.set_option("display.max_rows", 1000)
    pd.set_option("display.max_colwidth", 400)


def resolve_run_dir(run_dir: str) -> RunDir:
    """The run folder, given relative to the notebook: to the folder the pipeline names (its kernel serves
    every stage notebook of the run), else to where the kernel runs (Jupyter starts it in the notebook's folder)."""
    base = Path(os.environ.get(notebooks.NOTEBOOK_DIR, "."))
    return RunDir((base / run_dir).resolve())


class StageNotebook:
    """One stage of a run, as its notebook sees it: the run folder, the stage, and its config."""

    def __init__(self, run: RunDir, stage_name: str, overrides: dict):
        if not run.params.is_file():
            raise ConfigError(f"{run.root}: not a run folder made by selfreward run (no {run.params.name})")
        self.run_dir, self.overrides = run, override_mapping(overrides)
        profile = yaml.safe_load(run.params.read_text(encoding="utf-8")) or {}
        self.config = from_dict(apply_overrides(profile, self.overrides), f"the overrides of stage {stage_name}")
        fixes.check(self.config)
        try:
            self.stage = stages.get(self.config, stage_name)
        except KeyError as err:
            raise ConfigError(str(err.args[0])) from None

    def config_table(self) -> pd.DataFrame:
        """The config sections this stage reads, one row per value, the overridden ones marked."""
        rows = []
        for section in self.stage.sections:
            value = self.config.to_dict().get(section, getattr(self.config, section, None))  # item_seed: a property
            for key, item in (_flat(value, section) if isinstance(value, dict) else {section: value}).items():
                rows.append({"param": key, "value": repr(item) if isinstance(item, str) else item,
                             "overridden": "yes" if key in self.overrides else ""})
        return pd.DataFrame(rows).set_index("param")

    def run(self) -> dict:
        """Run the stage: under the pipeline, as one of its stages; by hand, as a pipeline action (see above)."""
        if os.environ.get(notebooks.PIPELINE):
            return stages.run_stage(self.stage.name, self.config, self.run_dir)
        with locked(self.run_dir, log=lambda line: None):
            return self._run_by_hand()

    def _run_by_hand(self) -> dict:
        run, cfg, stage = self.run_dir, self.config, self.stage
        record = manifest.read(run)
        if "stages" not in record:
            raise ConfigError(f"{run.root}: no manifest.json: run `selfreward run` first")
        plan = stages.plan(cfg)
        prints = manifest.fingerprints(cfg, plan)
        record["stages"].update({s.name: {"status": "pending"} for s in plan if s.name not in record["stages"]})
        tweaks = self._tweaks(record)
        record.update(overrides=self.overrides, tweaks=tweaks, config=cfg.to_dict(), updated=manifest.now())
        write_text(run.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        manifest.start(record, run, cfg, stage, prints[stage.name], run.relative(run.notebook(stage.name)))
        try:
            counts = stages.run_stage(stage.name, cfg, run)
        except BaseException as err:
            manifest.stop(record, run, stage, "interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                          error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            self._close(record, plan, prints)
            raise
        manifest.finish(record, run, stage)
        self._close(record, plan, prints)
        return counts

    def _close(self, record: dict, plan: list, prints: dict):
        manifest.mark_stale(record, plan, prints)
        record["counts"] = manifest.summary_counts(record)
        write_json(self.run_dir.manifest, record)

    def _tweaks(self, record: dict) -> dict:
        """The run's tweaks after this re-run: each override this notebook sets to a value the run did not have,
        with where and when; those the run had and this notebook keeps stay as they were."""
        before = override_mapping(record.get("overrides", {}))
        tweaks = {k: v for k, v in record.get("tweaks", {}).items() if k in self.overrides}
        for key, value in self.overrides.items():
            if key not in before or before[key] != value:
                tweaks[key] = {"value": value, "at": manifest.now(),
                               "notebook": self.run_dir.relative(self.run_dir.notebook(self.stage.name))}
        return tweaks


def _flat(value: dict, prefix: str) -> dict:
    found = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            found.update(_flat(item, f"{prefix}.{key}"))
        else:
            found[f"{prefix}.{key}"] = item
    return found


def open_stage(run_dir: str, stage: str, overrides: dict) -> StageNotebook:
    """The stage a notebook runs, from its parameters (run_dir relative to the notebook)."""
    display_whole_tables()
    return StageNotebook(resolve_run_dir(run_dir), stage, overrides)

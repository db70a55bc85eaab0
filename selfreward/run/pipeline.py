"""Run the stage notebooks with papermill, keep a manifest, skip what has not changed.

The run folder's layout is `rundir.RunDir`; the stages are `run.stages.plan`; the notebooks papermill
executes are `run.notebooks.source`. A stage is skipped only when `_why_run` finds no reason to run it:
its config sections, inputs and upstream fingerprints are unchanged and its recorded outputs are intact.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from selfreward import generation
from selfreward.config import Config, ConfigError, model_sequence
from selfreward.io import read_json, write_json, write_text
from selfreward.run import notebooks
from selfreward.run.records import changed_files, file_records, locked
from selfreward.run.stages import Stage, describe, plan
from selfreward.rundir import RunDir

KERNEL = "selfreward"
PACKAGES = ["selfreward", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "papermill"]


class PipelineError(RuntimeError):
    """A stage that failed or stopped; the message is one line and names the stage."""


def fingerprints(cfg: Config, stages: list[Stage]) -> dict[str, str]:
    """Each stage's fingerprint covers its own config sections, what it reads from outside the run (the
    data source), and the fingerprints of the stages it needs."""
    result = {}
    for stage in stages:
        upstream = ",".join(result[n] for n in stage.needs)
        blob = f"{upstream}|{stage.name}|{stage.iteration}|{cfg.section_hash(*stage.sections)}|{stage.inputs(cfg)}"
        result[stage.name] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return result


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def ensure_kernel():
    """Install the `selfreward` Jupyter kernel for this interpreter if it is missing."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().get_all_specs()
    argv0 = specs.get(KERNEL, {}).get("spec", {}).get("argv", [""])[0]
    if KERNEL in specs and Path(argv0).resolve() == Path(sys.executable).resolve():
        return
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="Python (selfreward)", prefix=sys.prefix)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PipelineInterrupted(PipelineError):
    """Ctrl-C (or SIGTERM) during a stage; the stage is marked interrupted and a re-run resumes."""


def selected_stages(stages: list[Stage], force: list[str] = (), start: str | None = None) -> set[str]:
    """The stages `--force` (each named stage and everything that depends on it) and `--from` (that stage
    and every later one) ask to re-run, whatever the manifest says."""
    names = [s.name for s in stages]
    for name in [*force, *([start] if start else [])]:
        if name not in names:
            raise PipelineError(f"unknown stage {name!r}; this run's stages: {', '.join(names)}")
    chosen = set(force)
    for stage in stages:  # in order, so that needs are decided before their dependents
        if chosen.intersection(stage.needs):
            chosen.add(stage.name)
    if start:
        chosen.update(names[names.index(start):])
    return chosen


def needed_stages(stages: list[Stage], only: list[str]) -> set[str]:
    """The stages `--only` names and every stage they need, directly or not: all a run must do to reach them
    (the ablation alone, say, without the instruments it does not read)."""
    names = [s.name for s in stages]
    for name in only:
        if name not in names:
            raise PipelineError(f"unknown stage {name!r}; this run's stages: {', '.join(names)}")
    chosen = set(only)
    for stage in reversed(stages):  # a stage needs only earlier ones
        if stage.name in chosen:
            chosen.update(stage.needs)
    return chosen


def preflight(cfg: Config, out_root: Path):
    """What would otherwise fail hours into a run: the output folder, the device, every model spec and
    the endpoint key, checked before anything is written."""
    from selfreward import models

    try:
        out_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_root):
            pass
    except OSError as err:
        raise ConfigError(f"--out {out_root}: cannot write there ({err.strerror or err})") from None
    models.check_device(cfg.model.device)
    references = [cfg.model.spec]
    if cfg.self_instruct.prompt_model not in ("base", "current"):
        references.append(cfg.self_instruct.prompt_model)
    e = cfg.evaluation
    if e.enabled and e.judge_model not in ["base", "endpoint"] + model_sequence(cfg.iterations):
        references.append(e.judge_model)
    for spec in references:
        models.check_spec(spec)
    for section in ("sft", "dpo"):
        tracker = getattr(cfg, section).report_to
        if tracker != "none" and importlib.util.find_spec(tracker) is None:
            raise ConfigError(f"{section}.report_to: {tracker} is not installed here (pip install {tracker})")
    why_not = generation.engine(cfg.generation.backend).unavailable()
    if why_not:
        raise ConfigError(f"generation.backend: {why_not}")
    if e.enabled and e.judge_model == "endpoint" and not os.environ.get(e.endpoint_api_key_env):
        raise ConfigError(f"evaluation.judge_model: the endpoint judge needs an API key in the environment "
                          f"variable {e.endpoint_api_key_env}, which is not set")


def run(cfg: Config, out_root: str | Path = "runs", params_file: str = "", overrides: list[str] | None = None,
        force: list[str] = (), start: str | None = None, verify: bool = False, reuse: str | Path | None = None,
        only: list[str] = (), log=print) -> dict:
    """Run the stages of `cfg` into `out_root/<name>`: stages whose config, inputs and outputs are unchanged
    are skipped; the others run in one Jupyter kernel, in order. With `reuse` (another run's folder), the
    stages that run has finished with the same fingerprints are taken from it first. With `only`, just those
    stages and the ones they need run; the others stay as they were. Returns the manifest."""
    run_dir = RunDir(Path(out_root) / cfg.name)
    stages = plan(cfg)
    rerun = selected_stages(stages, force, start)
    wanted = needed_stages(stages, only) if only else {s.name for s in stages}
    preflight(cfg, Path(out_root))
    other = RunDir(reuse) if reuse else None
    if other is not None and not other.manifest.is_file():
        raise PipelineError(f"--reuse {other.root}: not a run folder (no manifest.json)")
    with locked(run_dir, log), _kernel() as kernel:
        if other is not None:
            reuse_stages(cfg, run_dir, other, stages, rerun, log)
        return _run_stages(cfg, run_dir, stages, rerun, verify, kernel,
                           {"params_file": params_file, "overrides": overrides or []}, log, wanted)


def reuse_stages(cfg: Config, run_dir: RunDir, other: RunDir, stages: list[Stage], rerun: set[str], log) -> list[str]:
    """Take from another run every stage it finished with the same fingerprint (the same config sections,
    inputs and upstream stages) whose outputs are intact there, and this run has not: its files (hard links
    where the disk allows) and its manifest entry, marked `reused_from`. Returns the stages taken."""
    theirs = read_json(other.manifest)["stages"]
    previous = read_json(run_dir.manifest) if run_dir.manifest.is_file() else {}
    ours = dict(previous.get("stages", {}))
    prints, taken = fingerprints(cfg, stages), []
    for stage in stages:
        entry, mine = theirs.get(stage.name, {}), ours.get(stage.name, {})
        if stage.report or stage.name in rerun or entry.get("status") != "done" \
                or entry.get("fingerprint") != prints[stage.name]:
            continue
        if mine.get("status") == "done" and mine.get("fingerprint") == prints[stage.name]:
            continue
        if changed_files(other, entry.get("outputs")) is not None:
            continue
        for name in entry["outputs"]:
            target = run_dir.root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            try:
                os.link(other.root / name, target)
            except OSError:  # another file system: a copy
                shutil.copy2(other.root / name, target)
        ours[stage.name] = {**entry, "reused_from": str(other.root.resolve())}
        taken.append(stage.name)
    if taken:
        write_json(run_dir.manifest, {**previous, "stages": ours})
        log(f"[reuse] from {other.root}: {', '.join(taken)}")
    return taken


def _run_stages(cfg: Config, run_dir: RunDir, stages: list[Stage], rerun: set[str], verify: bool, kernel,
                invocation: dict, log, wanted: set[str]) -> dict:
    previous = read_json(run_dir.manifest) if run_dir.manifest.is_file() else {}
    prints = fingerprints(cfg, stages)
    manifest = {
        "name": cfg.name, **invocation,
        "created": previous.get("created", _now()), "updated": _now(),
        "versions": versions(), "hardware": _hardware(cfg), "config": cfg.to_dict(),
        "stages": {s.name: previous.get("stages", {}).get(s.name, {"status": "pending"}) for s in stages},
    }
    run_dir.notebooks.mkdir(parents=True, exist_ok=True)
    write_text(run_dir.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(run_dir.manifest, manifest)
    ran: set[str] = set()
    for index, stage in enumerate(stages):
        if stage.name not in wanted:  # not asked for (--only): left as it is
            continue
        reason = _why_run(stage, manifest["stages"][stage.name], prints[stage.name], run_dir, rerun, ran, verify)
        if reason is None:
            log(f"[{stage.name}] unchanged, skipped")
            continue
        ran.add(stage.name)
        log(f"[{stage.name}] running {stage.notebook} ({reason})")
        _execute(cfg, run_dir, stage, stages, prints[stage.name], manifest, kernel, log)
    manifest["counts"] = summary_counts(manifest)
    write_json(run_dir.manifest, manifest)
    return manifest


def _why_run(stage: Stage, entry: dict, fingerprint: str, run_dir: RunDir, rerun: set[str], ran: set[str],
             verify: bool) -> str | None:
    """Why a stage must run, or None when its last result still holds."""
    if stage.report:
        return "a report: always rendered"
    if stage.name in rerun:
        return "asked for"
    status = entry.get("status", "pending")
    if status != "done":
        return {"pending": "not run before", "running": "its last run was killed",
                "interrupted": "its last run was interrupted"}.get(status, f"its last run {status}")
    if entry.get("fingerprint") != fingerprint:
        return "its config or inputs changed"
    upstream = sorted(ran.intersection(stage.needs))
    if upstream:
        return f"{', '.join(upstream)} re-ran"
    changed = changed_files(run_dir, entry.get("outputs"), verify_weights=verify)
    return f"outputs changed: {changed}" if changed else None


def _execute(cfg: Config, run_dir: RunDir, stage: Stage, stages: list[Stage], fingerprint: str, manifest: dict,
             kernel, log):
    """Execute one stage notebook and record its result, whatever happens to it."""
    import papermill as pm

    executed, counts_file = run_dir.notebook(stage.name), run_dir.counts(stage.name)
    entry = manifest["stages"][stage.name] = {
        "status": "running", "fingerprint": fingerprint, "notebook": run_dir.relative(executed),
        **describe(stage), "config": {s: _plain(cfg, s) for s in stage.sections},
        "started": _now()}
    write_json(run_dir.manifest, manifest)
    counts_file.unlink(missing_ok=True)
    started = time.time()
    scratch = executed.with_name(f".running.{executed.name}")

    def stop(status: str, **details):
        entry.update(status=status, duration_s=round(time.time() - started, 1), finished=_now(), **details)
        for stage_after in stages[stages.index(stage) + 1:]:  # their old artifacts no longer follow from this run
            manifest["stages"][stage_after.name] = {"status": "pending"}
        write_json(run_dir.manifest, manifest)

    try:
        pm.execute_notebook(notebooks.source(stage, stages), str(scratch), kernel_name=KERNEL, km=kernel,
                            parameters={"config": cfg.to_dict(), "run_dir": str(run_dir.root.resolve()),
                                        "stage": stage.name},
                            log_output=True, progress_bar=False)
    except KeyboardInterrupt:
        scratch.unlink(missing_ok=True)
        stop("interrupted")
        raise PipelineInterrupted(f"interrupted in stage {stage.name}; re-run to resume") from None
    except Exception as err:  # papermill wraps the notebook's exception
        message = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
        failed = executed.with_name(f"{executed.stem}.failed.ipynb")
        if scratch.exists():
            os.replace(scratch, failed)
        stop("failed", error=message, notebook=run_dir.relative(failed))
        raise PipelineError(f"stage {stage.name} stopped: {message.splitlines()[0]} (details: {failed})") from None
    os.replace(scratch, executed)
    counts = read_json(counts_file) if counts_file.is_file() else {}  # report stages count nothing
    outputs = {} if stage.report else file_records(run_dir, stage.outputs(run_dir) + [counts_file, executed])
    entry.update(status="done", counts=counts, outputs=outputs, duration_s=round(time.time() - started, 1),
                 finished=_now())
    write_json(run_dir.manifest, manifest)
    log(f"[{stage.name}] done in {entry['duration_s']} s: {json.dumps(entry['counts'])}")


@contextlib.contextmanager
def _kernel():
    """One Jupyter kernel for every stage of a run: each stage notebook would otherwise start its own and
    import torch, transformers, peft and TRL again (about 10 s each on a CPU)."""
    from jupyter_client.manager import KernelManager

    ensure_kernel()
    with tempfile.TemporaryDirectory(prefix="selfreward-kernel-") as sockets:
        # local sockets in a private folder (TCP would also do, but warns that it is unencrypted)
        kernel = KernelManager(kernel_name=KERNEL, transport="ipc", ip=os.path.join(sockets, "kernel"))
        try:
            yield kernel
        except BaseException:
            # after a failure or Ctrl-C the client's event loop may still hold the interrupted request: a
            # polite shutdown would run it again, so the kernel is killed outright
            process = getattr(kernel.provisioner, "process", None) if kernel.has_kernel else None
            if process is not None:
                process.kill()
                process.wait()
            raise
        else:
            if kernel.has_kernel:
                kernel.shutdown_kernel(now=True)


def summary_counts(manifest: dict) -> dict:
    """The headline counts of a run, gathered from its stages."""
    stages = manifest["stages"]
    counts = {key: stages.get(stage, {}).get("counts", {}).get(key)
              for stage, key in [("data", "ift"), ("eft", "eft"), ("eft", "parse_failures")]}
    counts["eft_parse_failures"] = counts.pop("parse_failures")
    for name, entry in stages.items():
        if entry.get("kind") == "iteration":
            c = entry.get("counts", {})
            counts[name] = {k: c.get(k) for k in ("prompts_generated", "prompts_kept", "candidates", "pairs",
                                                  "positive_examples", "parse_failures")}
    return counts


def _plain(cfg: Config, section: str):
    value = getattr(cfg, section)
    return value if not hasattr(value, "__dataclass_fields__") else cfg.to_dict()[section]


def _hardware(cfg: Config) -> dict:
    """The machine and the dtype the run computes in (requested, and resolved from `auto`)."""
    from selfreward import models

    return {**models.hardware(cfg.model.device), "dtype_requested": cfg.model.dtype,
            "dtype": models.resolve_dtype(cfg.model.dtype, cfg.model.device)}

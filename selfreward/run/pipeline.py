"""Run the stage notebooks with papermill, keep the manifest, skip what has not changed.

The run folder's layout is `rundir.RunDir`; the stages are `run.stages.plan`; the notebooks papermill
executes are `run.notebooks.source`; the manifest and its decisions are `run.manifest`. A stage is skipped
only when `manifest.why_run` finds no reason to run it: its config sections, inputs and upstream fingerprints
are unchanged, the stages it needs have the outputs it was made from, and its recorded outputs are intact. A
stage that fails changes only its own record; what no longer follows is marked stale, never deleted.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import yaml

from selfreward import generation
from selfreward.config import Config, ConfigError, load_config, model_sequence
from selfreward.config.loading import override_mapping
from selfreward.io import read_json, write_json, write_text
from selfreward.run import manifest, notebooks
from selfreward.run.records import changed_files, locked
from selfreward.run.stages import Stage, plan
from selfreward.rundir import RunDir

KERNEL = "selfreward"
PACKAGES = ["selfreward", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "papermill"]


class PipelineError(RuntimeError):
    """A stage that failed or stopped; the message is one line and names the stage."""


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


class PipelineInterrupted(PipelineError):
    """Ctrl-C (or SIGTERM) during a stage; the stage is marked interrupted and a re-run resumes."""


def selected_stages(stages: list[Stage], force: list[str] = (), start: str | None = None) -> set[str]:
    """The stages `--force` (each named stage and everything that depends on it) and `--from` (that stage
    and every later one) ask to re-run, whatever the manifest says."""
    names = [s.name for s in stages]
    for name in [*force, *([start] if start else [])]:
        if name not in names:
            raise ConfigError(f"unknown stage {name!r}; this run's stages: {', '.join(names)}")
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
            raise ConfigError(f"unknown stage {name!r}; this run's stages: {', '.join(names)}")
    chosen = set(only)
    for stage in reversed(stages):  # a stage needs only earlier ones
        if stage.name in chosen:
            chosen.update(stage.needs)
    return chosen


def preflight(cfg: Config, out_root: Path):
    """What would otherwise fail hours into a run: the output folder, the device, every model spec and
    the endpoint key, checked before anything is written."""
    from selfreward import models

    if out_root.exists() and not out_root.is_dir():
        raise ConfigError(f"--out {out_root}: is a file, not a folder")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_root):
            pass
    except OSError as err:
        raise ConfigError(f"--out {out_root}: cannot write there ({err.strerror or err})") from None
    run_dir = out_root / cfg.name
    if run_dir.exists():
        try:
            with tempfile.TemporaryFile(dir=run_dir):
                pass
        except OSError as err:
            raise ConfigError(f"run folder {run_dir}: cannot write there ({err.strerror or err})") from None
    models.check_device(cfg.model.device)
    references = [cfg.model.spec]
    if cfg.self_instruct.prompt_model not in ("base", "current"):
        references.append(cfg.self_instruct.prompt_model)
    e = cfg.evaluation
    if e.enabled and e.judge_model.startswith("reward:"):
        models.check_reward_model(e.judge_model.removeprefix("reward:"))
    elif e.enabled and e.judge_model not in ["base", "endpoint"] + model_sequence(cfg.iterations):
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


def seed_overrides(cfg: Config, overrides: list[str] | dict | None, seed: int) -> dict:
    """The overrides that make the params file's config that of one seed's chain (`Config.for_seed`), so that its
    stage notebooks rebuild it."""
    return {**override_mapping(overrides or []), "name": f"seed_{seed}", "seed": seed, "seeds": None,
            "split_seed": cfg.item_seed, **cfg.first_seed_only()}


def run(cfg: Config, out_root: str | Path = "runs", params_file: str = "", overrides: list[str] | dict | None = None,
        force: list[str] = (), start: str | None = None, verify: bool = False, reuse: str | Path | None = None,
        only: list[str] = (), log=print, params: dict | None = None, tweaks: dict | None = None) -> dict:
    """Run `cfg` into `out_root/<name>`: one chain (`run_chain`), or with several `seeds` one chain per seed.
    The run's own folder holds the first seed's chain and the results that pool them all; every other seed's
    chain is a run of its own in seeds/seed_<s>/, which takes the stages that do not depend on the seed (the
    data) from the run's folder, and has no results chapter of its own. Each chain resumes by stage."""
    seeds = cfg.chain_seeds[1:]
    if not seeds:
        return run_chain(cfg, out_root, params_file, overrides, force, start, verify, reuse, only, log, params, tweaks)
    run_dir = RunDir(Path(out_root) / cfg.name)
    run_chain(cfg, out_root, params_file, overrides, force, start, verify, reuse, ["data"], log, params, tweaks)
    for seed in seeds:
        mine = cfg.for_seed(seed)
        chain = [s.name for s in plan(mine) if not s.report]
        log(f"[seeds] seed {seed}: {run_dir.root / 'seeds' / mine.name}")
        run_chain(mine, run_dir.root / "seeds", params_file, seed_overrides(cfg, overrides, seed), force, start,
                  verify, run_dir.root, [n for n in only if n in chain] or chain, lambda line: log(f"  {line}"), params)
    return run_chain(cfg, out_root, params_file, overrides, force, start, verify, None, only, log, params, tweaks)


def run_chain(cfg: Config, out_root: str | Path = "runs", params_file: str = "",
              overrides: list[str] | dict | None = None, force: list[str] = (), start: str | None = None,
              verify: bool = False, reuse: str | Path | None = None, only: list[str] = (), log=print,
              params: dict | None = None, tweaks: dict | None = None) -> dict:
    """Run the stages of `cfg` into `out_root/<name>`: stages whose config, inputs, needs and outputs are
    unchanged are skipped; the others run in order, in a Jupyter kernel (a fresh one after a heavy model stage:
    `Kernels`). With `reuse` (another run's folder), the stages that run has finished with the same fingerprints
    are taken from it first. With `only`, just those stages and the ones they need run; the others stay as they
    were (and are marked stale where they no longer follow). `params` is the profile as loaded (kept in the run
    folder, so that a stage notebook re-runs from it), `tweaks` the notebook changes the run keeps. Returns the
    manifest."""
    run_dir = RunDir(Path(out_root) / cfg.name)
    fresh_kernel_gb()  # a malformed threshold is said before any stage runs
    stages = plan(cfg)
    rerun = selected_stages(stages, force, start)
    wanted = needed_stages(stages, only) if only else {s.name for s in stages}
    preflight(cfg, Path(out_root))
    other = RunDir(reuse) if reuse else None
    if other is not None and not other.manifest.is_file():
        raise ConfigError(f"--reuse {other.root}: not a run folder (no manifest.json)")
    invocation = {"params_file": params_file, "overrides": override_mapping(overrides or []), "tweaks": tweaks or {}}
    with locked(run_dir, log), _kernel(run_dir) as kernel:
        if other is not None:
            reuse_stages(cfg, run_dir, other, stages, rerun, log)
        if params is not None:
            write_text(run_dir.params, yaml.safe_dump(params, sort_keys=False))
        return _run_stages(cfg, run_dir, stages, rerun, verify, kernel, invocation, log, wanted)


def dry_run(cfg: Config, out_root: str | Path = "runs", force: list[str] = (), start: str | None = None,
            verify: bool = False, only: list[str] = ()) -> list[tuple[str, str | None]]:
    """What `run` would do, with nothing executed or written: each stage and why it would run (None: skipped,
    "not asked for": left as it is by --only). A stage after one that would run would run if that one's
    outputs change, and is listed so."""
    run_dir = RunDir(Path(out_root) / cfg.name)
    fresh_kernel_gb()  # a malformed threshold is said before any stage runs
    stages = plan(cfg)
    rerun = selected_stages(stages, force, start)
    wanted = needed_stages(stages, only) if only else {s.name for s in stages}
    recorded = manifest.read(run_dir)
    recorded.setdefault("stages", {})
    prints = manifest.fingerprints(cfg, stages)
    would, found = set(), []
    for stage in stages:
        if stage.name not in wanted:
            found.append((stage.name, "not asked for (--only): left as it is"))
            continue
        reason = manifest.why_run(stage, recorded, prints[stage.name], run_dir, rerun, set(), verify)
        upstream = [n for n in stage.needs if n in would]
        if reason is None and upstream:
            reason = f"if {', '.join(upstream)} change{'s' if len(upstream) == 1 else ''} when re-run"
        if reason is not None:
            would.add(stage.name)
        stale = recorded["stages"].get(stage.name, {}).get("stale")
        found.append((stage.name, f"{reason} (stale: {stale})" if reason and stale else reason))
    return found


def with_tweaks(params_file: str, overrides: list[str], out_root: str | Path,
                log=print) -> tuple[Config, dict, dict, dict]:
    """The config a run goes on with: the params file, the changes a stage notebook made to this run folder
    (`tweaks` in its manifest), and the command line's overrides, which win. A tweak kept or replaced is said.
    Returns (config, the profile as loaded, every override in force, the tweaks among them)."""
    from selfreward.config.loading import load_params

    asked = override_mapping(overrides)
    cfg = load_config(params_file, asked)
    recorded = manifest.read(RunDir(Path(out_root) / cfg.name)).get("tweaks", {})
    kept = {key: tweak for key, tweak in recorded.items() if key not in asked}
    for key, tweak in recorded.items():
        where = f"set in {tweak['notebook']} at {tweak['at']}"
        if key in asked:
            log(f"[tweaks] {key}={asked[key]!r} from the command line replaces {key}={tweak['value']!r} ({where})")
        else:
            log(f"[tweaks] keeping {key}={tweak['value']!r} ({where}); --set {key}=... replaces it")
    merged = {**{k: t["value"] for k, t in kept.items()}, **asked}
    if kept:
        cfg = load_config(params_file, merged)
    return cfg, load_params(params_file), merged, kept


def reuse_stages(cfg: Config, run_dir: RunDir, other: RunDir, stages: list[Stage], rerun: set[str], log) -> list[str]:
    """Take from another run every stage it finished with the same fingerprint (the same config sections,
    inputs and upstream stages) whose outputs are intact there, and this run has not: its files (hard links
    where the disk allows) and its manifest entry, marked `reused_from`. Returns the stages taken."""
    theirs = read_json(other.manifest)["stages"]
    previous = read_json(run_dir.manifest) if run_dir.manifest.is_file() else {}
    ours = dict(previous.get("stages", {}))
    prints, taken = manifest.fingerprints(cfg, stages), []
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
        ours[stage.name] = {**entry, "reused_from": os.path.relpath(other.root.resolve(), run_dir.root.resolve())}
        taken.append(stage.name)
    if taken:
        write_json(run_dir.manifest, {**previous, "stages": ours})
        log(f"[reuse] from {other.root}: {', '.join(taken)}")
    return taken


def _run_stages(cfg: Config, run_dir: RunDir, stages: list[Stage], rerun: set[str], verify: bool, kernel,
                invocation: dict, log, wanted: set[str]) -> dict:
    previous = manifest.read(run_dir)
    prints = manifest.fingerprints(cfg, stages)
    record = {
        "name": cfg.name, **invocation,
        "created": previous.get("created", manifest.now()), "updated": manifest.now(),
        "versions": versions(), "hardware": _hardware(cfg), "config": cfg.to_dict(),
        "stages": {s.name: previous.get("stages", {}).get(s.name, {"status": "pending"}) for s in stages},
    }
    run_dir.notebooks.mkdir(parents=True, exist_ok=True)
    write_text(run_dir.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(run_dir.manifest, record)
    ran: set[str] = set()
    try:
        for stage in stages:
            if stage.name not in wanted:  # not asked for (--only): left as it is
                continue
            reason = manifest.why_run(stage, record, prints[stage.name], run_dir, rerun, ran, verify)
            if reason is None:
                log(f"[{stage.name}] unchanged, skipped")
                continue
            ran.add(stage.name)
            _warn_if_too_big(cfg, stage, log)
            log(f"[{stage.name}] running {stage.notebook} ({reason})")
            kernel.ready_for(stage)
            _execute(cfg, run_dir, stage, stages, prints[stage.name], record, kernel, log)
            kernel.ran(stage, record["stages"][stage.name].get("peak_memory", {}).get("rss_gb", 0.0))
    finally:  # what no longer follows from the run folder, however the run ended
        stale = manifest.mark_stale(record, stages, prints)
        record["counts"] = manifest.summary_counts(record)
        write_json(run_dir.manifest, record)
    if stale:
        log(f"[stale] made before what they read changed, to be re-run: {', '.join(stale)}")
    return record


def _execute(cfg: Config, run_dir: RunDir, stage: Stage, stages: list[Stage], fingerprint: str, record: dict,
             kernel, log):
    """Execute one stage notebook and record its result, whatever happens to it: only its own record changes."""
    import papermill as pm

    executed = run_dir.notebook(stage.name)
    entry = manifest.start(record, run_dir, cfg, stage, fingerprint, run_dir.relative(executed))
    scratch = executed.with_name(f".running.{executed.name}")
    try:
        pm.execute_notebook(notebooks.source(stage, stages), str(scratch), kernel_name=KERNEL, km=kernel.manager,
                            parameters=notebooks.parameters(record["params_file"], record["overrides"], stage),
                            log_output=True, progress_bar=False)
    except KeyboardInterrupt:
        scratch.unlink(missing_ok=True)
        manifest.stop(record, run_dir, stage, "interrupted")
        raise PipelineInterrupted(f"interrupted in stage {stage.name}; re-run to resume") from None
    except Exception as err:  # papermill wraps the notebook's exception
        failed = executed.with_name(f"{executed.stem}.failed.ipynb")
        if scratch.exists():
            notebooks.scrub_executed(scratch, run_dir, stage)
            os.replace(scratch, failed)
        message = failure(cfg, stage, err, failed)
        manifest.stop(record, run_dir, stage, "failed", error=message, notebook=run_dir.relative(failed))
        raise PipelineError(f"stage {stage.name} stopped: {message} (details: {failed})") from None
    notebooks.scrub_executed(scratch, run_dir, stage)
    os.replace(scratch, executed)
    manifest.finish(record, run_dir, stage)
    log(f"[{stage.name}] done in {entry['duration_s']} s: {json.dumps(entry['counts'])}")


def _warn_if_too_big(cfg: Config, stage: Stage, log):
    """A training stage whose settings ask, by `selfreward plan`'s rules, for more memory than the machine has:
    one line before it runs (the estimate is an upper bound: examples are often shorter than max_length)."""
    from selfreward.run import sizing

    estimate = sizing.stage_estimate(cfg, stage)
    available = sizing.machine_memory_gb(cfg.model.device) if estimate else None
    if estimate and available and estimate[0] > available:
        log(f"[{stage.name}] warning: selfreward plan estimates {estimate[0]:,.1f} GB for this stage ({estimate[1]}), "
            f"more than this machine's {available:,.1f} GB; it may run out of memory")


MEMORY_SETTINGS = {"sft": ("per_device_batch_size", "max_length"), "dpo": ("per_device_batch_size", "max_length"),
                   "generation": ("batch_size",)}


def memory_settings(cfg: Config, stage: Stage) -> str:
    """The settings of a stage that decide its memory, as `--set` would name them."""
    return ", ".join(f"{section}.{key} {getattr(getattr(cfg, section), key)}" for section, keys in
                     MEMORY_SETTINGS.items() if section in stage.sections for key in keys) or "no batch settings"


def failure(cfg: Config, stage: Stage, err: Exception, notebook: Path) -> str:
    """What stopped a stage, in one line: a kernel that died (killed, or out of memory) or an allocation that
    failed, with what the stage was doing and its memory settings; else the notebook's error."""
    name, value = getattr(err, "ename", type(err).__name__), str(getattr(err, "evalue", err))
    doing = last_output_line(notebook)
    doing = f" while {doing!r}" if doing else ""
    if name == "DeadKernelError":
        return (f"its kernel died (killed, perhaps by the system for lack of memory){doing}; its memory settings: "
                f"{memory_settings(cfg, stage)}")
    if name in ("OutOfMemoryError", "MemoryError") or re.search(r"out of memory|can't allocate memory|alloc_cpu", value):
        return (f"it ran out of memory{doing} ({memory_settings(cfg, stage)}): lower them with --set, e.g. a smaller "
                f"batch ({name}: {value.strip().splitlines()[0][:200] if value.strip() else ''})")
    return f"{name}: {value.splitlines()[0] if value else ''}"


def last_output_line(notebook: Path) -> str:
    """The last line a stage printed before it stopped (a progress bar's last state), from its notebook."""
    import nbformat

    try:
        cells = nbformat.read(notebook, as_version=4).cells
    except (OSError, ValueError):
        return ""
    text = "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.replace("\r\n", "\n").split("\n")]
    lines = [line for line in lines if line and "Warning" not in line]
    return lines[-1][:160] if lines else ""


FRESH_KERNEL = "SELFREWARD_FRESH_KERNEL_GB"  # where a stage that loads a model gets a fresh kernel (GB resident)


def fresh_kernel_gb() -> float:
    """A stage that loads a model runs in a fresh kernel when a model stage before it in the current kernel peaked
    at this resident size or more (1.5 GB unless SELFREWARD_FRESH_KERNEL_GB says otherwise): the holes such a
    stage leaves cost more than a kernel's imports (3-5 s); a small model's stages share one kernel."""
    value = os.environ.get(FRESH_KERNEL, "1.5")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{FRESH_KERNEL}={value!r}: not a number of GB") from None


class Kernels:
    """The Jupyter kernel the stages of a run execute in (`manager`). A stage that loads a model after a heavy
    one gets a kernel of its own (`fresh_kernel_gb`; `fresh`: the last kernel is shut down, a new manager starts
    the next on its own sockets): the C allocator keeps the holes of an earlier stage's freed tensors (a trim
    returns their pages, not the layout), so in one kernel each model stage peaked above the last (the study's:
    4.4 GB in its first training stage, 6.6 GB in its last iteration). Each kernel knows it runs for this
    pipeline (SELFREWARD_PIPELINE, so that a stage records nothing itself) and where the notebooks are
    (SELFREWARD_NOTEBOOK_DIR: their run_dir is relative to them)."""

    def __init__(self, sockets: str, fresh_above_gb: float):
        self.sockets, self.fresh_above_gb, self.started, self.manager = sockets, fresh_above_gb, 0, None
        self.fresh()

    def ready_for(self, stage: Stage):
        """A fresh kernel for a stage that loads a model, where a model stage in this one peaked at the bound."""
        if stage.loads_a_model and self.held is not None and self.held >= self.fresh_above_gb:
            self.fresh()

    def ran(self, stage: Stage, peak_gb: float):
        if stage.loads_a_model:
            self.held = max(self.held or 0.0, peak_gb)

    def fresh(self):
        from jupyter_client.manager import AsyncKernelManager

        self.shut_down()
        self.held = None  # the largest peak of a model stage in this kernel (GB resident); None: none ran in it
        self.started += 1
        # local sockets in a private folder (TCP would also do, but warns that it is unencrypted); an async
        # manager, so that nbclient's client polls for output and for a dead kernel in turn (a blocking client
        # waits for output forever when the kernel is killed). nbclient starts the kernel when a notebook runs.
        self.manager = AsyncKernelManager(kernel_name=KERNEL, transport="ipc",
                                          ip=os.path.join(self.sockets, f"kernel-{self.started}"))

    def shut_down(self):
        from jupyter_core.utils import run_sync

        if self.manager is not None and self.manager.has_kernel:
            run_sync(self.manager.shutdown_kernel)(now=True)

    def kill(self):
        """After a failure or Ctrl-C the client's event loop may still hold the interrupted request: a polite
        shutdown would run it again, so the kernel is killed outright."""
        process = getattr(self.manager.provisioner, "process", None) if self.manager.has_kernel else None
        if process is not None:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _kernel(run_dir: RunDir):
    """The run's `Kernels`, for the length of a block; the last kernel ends with it."""
    ensure_kernel()
    with tempfile.TemporaryDirectory(prefix="selfreward-kernel-") as sockets:
        saved = {k: os.environ.get(k) for k in (notebooks.PIPELINE, notebooks.NOTEBOOK_DIR)}
        os.environ.update({notebooks.PIPELINE: str(os.getpid()), notebooks.NOTEBOOK_DIR: str(run_dir.notebooks.resolve())})
        kernels = Kernels(sockets, fresh_kernel_gb())
        try:
            yield kernels
        except BaseException:
            kernels.kill()
            raise
        else:
            kernels.shut_down()
        finally:
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def _hardware(cfg: Config) -> dict:
    """The machine and the dtype the run computes in (requested, and resolved from `auto`)."""
    from selfreward import models

    return {**models.hardware(cfg.model.device), "dtype_requested": cfg.model.dtype,
            "dtype": models.resolve_dtype(cfg.model.dtype, cfg.model.device)}

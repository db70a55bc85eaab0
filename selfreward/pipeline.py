"""Run the stage notebooks with papermill, keep a manifest, skip what has not changed.

The run folder's layout is `rundir.RunDir`; the stages are `stages.plan`.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from selfreward.config import Config
from selfreward.io import read_json, write_json, write_text
from selfreward.rundir import RunDir
from selfreward.stages import Stage, plan

KERNEL = "selfreward"
NOTEBOOKS = Path(os.environ.get("SELFREWARD_NOTEBOOKS", Path(__file__).resolve().parent.parent / "notebooks"))
PACKAGES = ["selfreward", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "papermill"]


class PipelineError(RuntimeError):
    """A stage that failed or stopped; the message is one line and names the stage."""


def fingerprints(cfg: Config, stages: list[Stage]) -> dict[str, str]:
    """Each stage's fingerprint covers its own config sections and the fingerprints of what it needs."""
    result = {}
    for stage in stages:
        upstream = ",".join(result[n] for n in stage.needs)
        blob = f"{upstream}|{stage.name}|{stage.iteration}|{cfg.section_hash(*stage.sections)}"
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


def run(cfg: Config, out_root: str | Path = "runs", params_file: str = "", overrides: list[str] | None = None,
        log=print) -> dict:
    import papermill as pm

    run_dir = RunDir(Path(out_root) / cfg.name)
    run_dir.notebooks.mkdir(parents=True, exist_ok=True)
    previous = read_json(run_dir.manifest) if run_dir.manifest.is_file() else {}
    stages = plan(cfg)
    prints = fingerprints(cfg, stages)
    manifest = {
        "name": cfg.name, "params_file": params_file, "overrides": overrides or [],
        "created": previous.get("created", _now()), "updated": _now(),
        "versions": versions(), "device": _device(cfg), "config": cfg.to_dict(),
        "stages": {s.name: previous.get("stages", {}).get(s.name, {"status": "pending"}) for s in stages},
    }
    write_text(run_dir.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(run_dir.manifest, manifest)
    ensure_kernel()

    ran: set[str] = set()
    for index, stage in enumerate(stages):
        entry = manifest["stages"][stage.name]
        executed, counts_file = run_dir.notebook(stage.name), run_dir.counts(stage.name)
        if (not stage.report and not ran.intersection(stage.needs) and entry.get("status") == "done"
                and entry.get("fingerprint") == prints[stage.name] and counts_file.is_file() and executed.is_file()):
            log(f"[{stage.name}] unchanged, skipped")
            continue
        ran.add(stage.name)
        stage_config = {s: _plain(cfg, s) for s in stage.sections}
        entry = manifest["stages"][stage.name] = {
            "status": "running", "fingerprint": prints[stage.name], "notebook": run_dir.relative(executed),
            "iteration": stage.iteration or None, "config": stage_config, "started": _now()}
        write_json(run_dir.manifest, manifest)
        counts_file.unlink(missing_ok=True)
        log(f"[{stage.name}] running {stage.notebook}")
        started = time.time()
        scratch = executed.with_name(f".running.{executed.name}")
        try:
            pm.execute_notebook(str(NOTEBOOKS / stage.notebook), str(scratch), kernel_name=KERNEL,
                                parameters={"config": cfg.to_dict(), "run_dir": str(run_dir.root.resolve()),
                                            "stage": stage.name},
                                log_output=True, progress_bar=False)
        except Exception as err:  # papermill wraps the notebook's exception
            message = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
            failed = executed.with_name(f"{executed.stem}.failed.ipynb")
            if scratch.exists():
                os.replace(scratch, failed)
            entry.update(status="failed", error=message, duration_s=round(time.time() - started, 1),
                         finished=_now(), notebook=run_dir.relative(failed))
            for later in stages[index + 1:]:  # their old artifacts no longer follow from this run
                manifest["stages"][later.name] = {"status": "pending"}
            write_json(run_dir.manifest, manifest)
            raise PipelineError(f"stage {stage.name} stopped: {message.splitlines()[0]} "
                                f"(details: {failed})") from None
        os.replace(scratch, executed)
        counts = read_json(counts_file) if counts_file.is_file() else {}  # report stages count nothing
        entry.update(status="done", counts=counts, duration_s=round(time.time() - started, 1),
                     finished=_now())
        write_json(run_dir.manifest, manifest)
        log(f"[{stage.name}] done in {entry['duration_s']} s: {json.dumps(entry['counts'])}")
    manifest["counts"] = summary_counts(manifest)
    write_json(run_dir.manifest, manifest)
    return manifest


def summary_counts(manifest: dict) -> dict:
    """The headline counts of a run, gathered from its stages."""
    stages = manifest["stages"]
    counts = {key: stages.get(stage, {}).get("counts", {}).get(key)
              for stage, key in [("data", "ift"), ("eft", "eft"), ("eft", "parse_failures")]}
    counts["eft_parse_failures"] = counts.pop("parse_failures")
    for name, entry in stages.items():
        if name.startswith("iteration_"):
            c = entry.get("counts", {})
            counts[name] = {k: c.get(k) for k in ("prompts_generated", "prompts_kept", "candidates", "pairs",
                                                  "positive_examples", "parse_failures")}
    return counts


def _plain(cfg: Config, section: str):
    value = getattr(cfg, section)
    return value if not hasattr(value, "__dataclass_fields__") else cfg.to_dict()[section]


def _device(cfg: Config) -> str:
    from selfreward.models import pick_device

    device = pick_device(cfg.model.device)
    if device == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores)"

"""The manifest of a run (`manifest.json`), the one record of what the run is: its params and overrides
(those a stage notebook changed, `tweaks`, among them), and for each stage what it is, its config and
fingerprint, its status, counts, peak memory, the files it wrote (sizes and hashes) and the outputs of the
stages it was made from. Both ways a stage runs keep it the same way: the pipeline (`run.pipeline`) and a
stage notebook re-run by hand (`run.notebook`).

From it follow the two decisions about finished work: whether a stage must run again (`why_run`: its config,
inputs or needs changed, or its files did), and which finished stages no longer follow from what is in the run
folder (`mark_stale`: made before a stage they need changed, or from a config that changed since).
"""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone

from selfreward.config import Config
from selfreward.io import read_json, write_json
from selfreward.run.records import changed_files, file_records
from selfreward.run.stages import Stage, describe
from selfreward.rundir import RunDir


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fingerprints(cfg: Config, stages: list[Stage]) -> dict[str, str]:
    """Each stage's fingerprint covers its own config sections, what it reads from outside the run (the
    data source), and the fingerprints of the stages it needs."""
    result = {}
    for stage in stages:
        upstream = ",".join(result[n] for n in stage.needs)
        blob = f"{upstream}|{stage.name}|{stage.iteration}|{cfg.section_hash(*stage.sections)}|{stage.inputs(cfg)}"
        result[stage.name] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return result


def read(run: RunDir) -> dict:
    return read_json(run.manifest) if run.manifest.is_file() else {}


def outputs_digest(entry: dict) -> str | None:
    """One hash of the artifacts a finished stage wrote (its files' hashes; not its counts, which hold its
    duration), or None when it has no record: what the stages after it were made from."""
    outputs = entry.get("outputs")
    if entry.get("status") != "done" or outputs is None:
        return None
    blob = json.dumps(sorted((name, record["sha256"]) for name, record in outputs.items()
                             if not name.startswith("stages/")))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def section_plain(cfg: Config, section: str):
    value = getattr(cfg, section)
    return value if not hasattr(value, "__dataclass_fields__") else cfg.to_dict()[section]


def start(manifest: dict, run: RunDir, cfg: Config, stage: Stage, fingerprint: str, notebook: str) -> dict:
    """A stage's record as it starts: what it is, its config and fingerprint; every other record is left alone."""
    entry = manifest["stages"][stage.name] = {
        "status": "running", "fingerprint": fingerprint, "notebook": notebook, **describe(stage),
        "config": {s: section_plain(cfg, s) for s in stage.sections}, "started": now(), "clock": time.time()}
    write_json(run.manifest, manifest)
    return entry


def stop(manifest: dict, run: RunDir, stage: Stage, status: str, **details):
    """A stage that did not finish (failed, interrupted): its own record says so; no other record changes."""
    entry = manifest["stages"][stage.name]
    entry.update(status=status, duration_s=round(time.time() - entry.pop("clock", time.time()), 1), finished=now(),
                 **details)
    write_json(run.manifest, manifest)


def finish(manifest: dict, run: RunDir, stage: Stage) -> dict:
    """A stage that finished: its counts and peak memory (from its counts file), the files it wrote, and the
    outputs of the stages it was made from (what `why_run` and `mark_stale` compare with later)."""
    entry = manifest["stages"][stage.name]
    counts_file = run.counts(stage.name)
    counts = read_json(counts_file) if counts_file.is_file() else {}  # report stages count nothing
    memory = counts.pop("peak_memory", None)
    entry.update(status="done", counts=counts, duration_s=round(time.time() - entry.pop("clock", time.time()), 1),
                 finished=now(), made_from={n: outputs_digest(manifest["stages"].get(n, {})) for n in stage.needs},
                 outputs={} if stage.report else file_records(run, stage.outputs(run) + [counts_file]))
    if memory:
        entry["peak_memory"] = memory
    entry.pop("stale", None)
    entry.pop("error", None)
    write_json(run.manifest, manifest)
    return entry


def why_run(stage: Stage, manifest: dict, fingerprint: str, run: RunDir, rerun: set[str], ran: set[str],
            verify: bool) -> str | None:
    """Why a stage must run, or None when its last result still holds: its config, inputs or needs changed
    since it ran (a need that re-ran with the same outputs changes nothing), or its files did."""
    entry = manifest["stages"].get(stage.name, {})
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
    made_from = entry.get("made_from")
    if made_from is None:  # a record from before made_from was kept: a need that re-ran counts as changed
        upstream = sorted(ran.intersection(stage.needs))
        if upstream:
            return f"{', '.join(upstream)} re-ran"
    else:
        changed = [n for n in stage.needs if made_from.get(n) != outputs_digest(manifest["stages"].get(n, {}))]
        if changed:
            return f"{', '.join(changed)} changed since it ran"
    changed = changed_files(run, entry.get("outputs"), verify_weights=verify)
    return f"outputs changed: {changed}" if changed else None


def mark_stale(manifest: dict, stages: list[Stage], prints: dict[str, str]) -> list[str]:
    """Mark each finished stage that no longer follows from the run folder: made from a need that changed
    since (or that is itself stale, failed or not run), or with a config that changed since it ran (a stage
    `--only` left alone, a notebook re-run upstream). Returns the stale stages."""
    records = manifest["stages"]
    stale = []
    for stage in stages:
        entry = records.get(stage.name, {})
        if entry.get("status") != "done":
            continue
        reason = None
        for need in stage.needs:
            upstream = records.get(need, {})
            if upstream.get("stale") or upstream.get("status") != "done":
                reason = f"made from {need}, which is {'stale' if upstream.get('stale') else upstream.get('status', 'pending')}"
            elif "made_from" in entry and entry["made_from"].get(need) != outputs_digest(upstream):
                reason = f"made before {need} changed"
            if reason:
                break
        if reason is None and not stage.report and entry.get("fingerprint") != prints.get(stage.name):
            reason = "its config changed since it ran"
        if reason:
            entry["stale"] = reason
            stale.append(stage.name)
        else:
            entry.pop("stale", None)
    return stale


def problems(manifest: dict) -> dict[str, list[str]]:
    """The stages that failed, did not run, or are stale: what a book must say, and what publishing refuses."""
    found = {"failed": [], "not run": [], "stale": []}
    for name, entry in manifest.get("stages", {}).items():
        status = entry.get("status", "pending")
        if status in ("failed", "interrupted", "running"):
            found["failed"].append(name)
        elif status != "done":
            found["not run"].append(name)
        elif entry.get("stale"):
            found["stale"].append(name)
    return {k: v for k, v in found.items() if v}


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

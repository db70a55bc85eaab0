"""End to end: `selfreward run params/tiny.yaml` on the real OASST data (mirror or hub)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import REPO, shared_data_dir

pytestmark = pytest.mark.slow
STAGES = ["data", "sft_baseline", "eft", "m1", "iteration_1", "iteration_2"]


def run_cli(out: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SELFREWARD_CACHE=str(cache))
    if shared_data_dir():
        env["SELFREWARD_DATA_DIR"] = shared_data_dir()
    args = [sys.executable, "-m", "selfreward.cli", "run", str(REPO / "params" / "tiny.yaml"), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    result = run_cli(root / "runs", root / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_tiny_run_produces_every_model_dataset_and_manifest(tiny_run):
    root, _ = tiny_run
    run = root / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == STAGES
    for name, entry in manifest["stages"].items():
        assert entry["status"] == "done", name
        assert entry["duration_s"] > 0 and entry["config"] and entry["fingerprint"]
        notebook = nbformat.read(run / entry["notebook"], as_version=4)
        outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
        assert outputs and not [o for o in outputs if o.output_type == "error"]
    assert manifest["versions"]["torch"] and manifest["versions"]["trl"]
    assert manifest["stages"]["iteration_1"]["config"]["dpo"]["beta"] == 0.1
    for model in ["sft_baseline", "m1", "m2", "m3"]:
        assert (run / "models" / model / "config.json").is_file()
    counts = manifest["counts"]
    assert counts["ift"] == 64 and counts["eft"] >= 1 and counts["eft_parse_failures"] == 0
    for t in (1, 2):
        c = counts[f"iteration_{t}"]
        assert c["prompts_kept"] >= 1 and c["pairs"] >= 1 and c["candidates"] == 4 * c["prompts_kept"]
        pairs = [json.loads(line) for line in (run / "aift" / f"m{t}" / "pairs.jsonl").open()]
        assert len(pairs) == c["pairs"] and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
        candidates = [json.loads(line) for line in (run / "aift" / f"m{t}" / "candidates.jsonl").open()]
        assert all(len(cand["judge"]["judgments"]) == 2 for r in candidates for cand in r["candidates"])
        assert (run / "aift" / f"m{t}" / "positive.jsonl").is_file()
    eft_train = [json.loads(line) for line in (run / "eft" / "eft_train.jsonl").open()]
    assert all(e["response"].rstrip().endswith(f"Score: {e['score']}") for e in eft_train)


def test_rerun_skips_unchanged_stages_and_reruns_changed_ones(tiny_run):
    root, _ = tiny_run
    again = run_cli(root / "runs", root / "cache")
    assert again.returncode == 0
    assert all(f"[{name}] unchanged, skipped" in again.stdout for name in STAGES)
    changed = run_cli(root / "runs", root / "cache", "dpo.beta=0.2", "iterations=1")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "[m1] unchanged, skipped" in changed.stdout and "[iteration_1] running" in changed.stdout
    manifest = json.loads((root / "runs" / "tiny" / "manifest.json").read_text())
    assert list(manifest["stages"]) == STAGES[:5]
    assert manifest["stages"]["iteration_1"]["config"]["dpo"]["beta"] == 0.2


def test_a_profile_without_eft_examples_stops_cleanly(tiny_run):
    root, _ = tiny_run
    out = root / "sampled"
    shutil.copytree(root / "runs", out)
    # a random-init judge never writes "Score: n": sampled mode yields no score, hence no EFT example
    result = run_cli(out, root / "cache", "judge.mode=sampled")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("selfreward: error: stage eft stopped: StageError: no EFT example")
    manifest = json.loads((out / "tiny" / "manifest.json").read_text())
    assert manifest["stages"]["sft_baseline"]["status"] == "done"
    assert manifest["stages"]["eft"]["status"] == "failed" and "no EFT example" in manifest["stages"]["eft"]["error"]
    assert manifest["stages"]["m1"] == {"status": "pending"}
    assert (out / "tiny" / "models" / "sft_baseline" / "config.json").is_file()  # earlier work kept
    assert (out / "tiny" / manifest["stages"]["eft"]["notebook"]).is_file()

"""Faults a hostile but fair user can cause, each with the exact line the user sees and the exit code.

The run-level faults work on copies of the session's finished tiny run (conftest.tiny_run), with the
evaluation switched off where it is not the point, so that each re-runs only what the fault touched.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from selfreward.method.evaluation_judge import EndpointJudge, JudgeError

NO_EVAL = ("--no-book", "--set", "evaluation.enabled=false")


def cli(*args, cwd=REPO, env=None) -> subprocess.CompletedProcess:
    environment = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "selfreward.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=environment)


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def copy_run(tiny_run, name: str) -> Path:
    root = tiny_run[0]
    out = root / name
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    return out


def manifest(out: Path) -> dict:
    return json.loads((out / "tiny" / "manifest.json").read_text())


def counts(out: Path, stage: str) -> dict:
    return {k: v for k, v in manifest(out)["stages"][stage]["counts"].items() if k != "seconds"}


def wait_for(predicate, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def stage_running(out: Path, stage: str) -> bool:
    try:
        return manifest(out)["stages"][stage]["status"] == "running"
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


# ---------------------------------------------------------------- params and arguments (no run needed)

@pytest.mark.parametrize("yaml_text,line", [
    ("name: ..\n", "name: must be one plain folder name"),
    ("name: a/b\n", "name: must be one plain folder name"),
    ("sft:\n  learning_rate: .inf\n", "sft.learning_rate: expected a finite number, got inf"),
    ("dpo:\n  beta: .nan\n", "dpo.beta: expected a finite number, got nan"),
    ("sft:\n  epochs: 1\n  epochs: 2\n", "key 'epochs' given twice (line 3)"),
    ("model:\n  device: gpu\n", "model.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("evaluation:\n  endpoint_api_key_env: sk-proj-abc123SECRET\n",
     "evaluation.endpoint_api_key_env: must be the NAME of an environment variable"),
    ("evaluation:\n  judge_model: endpoint\n  endpoint_model: m\n  endpoint_base_url: http://judge.example.com/v1\n",
     "evaluation.endpoint_base_url: plain http:// would send the API key unencrypted"),
])
def test_bad_params_are_one_line_errors_with_exit_code_2(tmp_path, yaml_text, line):
    params = tmp_path / "p.yaml"
    params.write_text(yaml_text)
    result = cli("run", str(params), "--out", str(tmp_path / "runs"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert last_line(result).startswith(f"selfreward: error: {params}: {line}")
    assert "SECRET" not in result.stderr + result.stdout  # a pasted key is never echoed
    assert not (tmp_path / "runs").exists()  # nothing written


def test_name_override_cannot_escape_the_output_folder(tmp_path):
    result = cli("run", str(REPO / "params" / "tiny.yaml"), "--out", str(tmp_path / "runs"), "--set", "name=..")
    assert result.returncode == 2
    assert last_line(result) == (f"selfreward: error: {REPO / 'params' / 'tiny.yaml'}: name: must be one plain folder "
                                 "name (letters, digits, '.', '_', '-'; not starting with '.')")
    assert list(tmp_path.iterdir()) == []


def test_a_fresh_kernel_threshold_that_is_not_a_number_is_bad_input(tmp_path):
    result = cli("run", str(REPO / "params" / "tiny.yaml"), "--out", str(tmp_path / "runs"),
                 env={"SELFREWARD_FRESH_KERNEL_GB": "lots"})
    assert result.returncode == 2
    assert last_line(result) == "selfreward: error: SELFREWARD_FRESH_KERNEL_GB='lots': not a number of GB"
    assert not (tmp_path / "runs").exists()  # said before anything was written


def test_params_file_that_is_not_utf8(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_bytes(b"name: caf\xe9\n")
    result = cli("run", str(params))
    assert (result.returncode, last_line(result)) == (2, f"selfreward: error: {params}: not UTF-8 text")


def test_out_that_is_a_file_or_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("run", str(REPO / "params" / "tiny.yaml"), "--out", str(blocker))
    assert (result.returncode, last_line(result)) == (2, f"selfreward: error: --out {blocker}: is a file, not a folder")
    for out, reason in [(blocker / "sub", "Not a directory"), (Path("/proc/selfreward-test"), "No such file or directory")]:
        result = cli("run", str(REPO / "params" / "tiny.yaml"), "--out", str(out))
        assert result.returncode == 2, result.stderr
        assert last_line(result) == f"selfreward: error: --out {out}: cannot write there ({reason})"


def test_cuda_without_a_gpu_and_missing_models_fail_before_the_first_stage(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tiny = str(REPO / "params" / "tiny.yaml")
    result = cli("run", tiny, "--out", str(tmp_path), "--set", "model.device=cuda")
    assert (result.returncode, last_line(result)) == (2, "selfreward: error: model.device: cuda requested, but this "
                                                         "machine has no CUDA device (use auto or cpu)")
    for profile in ("gpu-8b", "paper"):  # the GPU profiles say so before any stage runs or any folder is made
        result = cli("run", str(REPO / "params" / f"{profile}.yaml"), "--out", str(tmp_path))
        assert (result.returncode, last_line(result)) == (2, "selfreward: error: model.device: cuda requested, but "
                                                             "this machine has no CUDA device (use auto or cpu)")
        assert not (tmp_path / profile).exists()
    missing = tmp_path / "no-such-model"
    result = cli("run", tiny, "--out", str(tmp_path), "--set", f"evaluation.judge_model={missing}")
    assert (result.returncode, last_line(result)) == (2, f"selfreward: error: model path not found: {missing}")
    result = cli("run", tiny, "--out", str(tmp_path), "--set", "evaluation.judge_model=endpoint",
                 "--set", "evaluation.endpoint_base_url=https://judge.example.com/v1",
                 "--set", "evaluation.endpoint_model=m", "--set", "evaluation.endpoint_api_key_env=NO_SUCH_KEY_VAR")
    assert (result.returncode, last_line(result)) == (2, "selfreward: error: evaluation.judge_model: the endpoint judge "
                                                         "needs an API key in the environment variable NO_SUCH_KEY_VAR, "
                                                         "which is not set")
    assert not (tmp_path / "tiny").exists()  # refused before anything was written


def test_unknown_stage_for_force_or_only_is_bad_input():
    for flag in ("--force", "--only", "--from"):
        result = cli("run", str(REPO / "params" / "tiny.yaml"), "--out", "/tmp/never-written", flag, "m9")
        assert result.returncode == 2, flag
        assert last_line(result).startswith("selfreward: error: unknown stage 'm9'; this run's stages: data, sft_baseline")
    assert not Path("/tmp/never-written").exists()


# ---------------------------------------------------------------- data files

@pytest.mark.parametrize("bad_line,message", [
    ('{"message_id": "x", "parent_id": nu', "line 3: not valid JSON (truncated or corrupt)"),
    ("[1, 2]", "line 3: expected a JSON object, got list"),
])
@pytest.mark.slow
def test_corrupt_data_file_names_the_file_and_line(tiny_run, tmp_path, bad_line, message):
    mirror = tmp_path / "mirror"
    shutil.copytree(_data_dir(), mirror)
    train = mirror / "oasst" / "train.jsonl"
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[:2] + [bad_line] + lines[3:]) + "\n")
    result = run_cli(tmp_path / "runs", tiny_run[0] / "cache", *NO_EVAL, env={"SELFREWARD_DATA_DIR": str(mirror)})
    assert result.returncode == 1
    assert last_line(result).startswith(f"selfreward: error: stage data stopped: DataError: {train} {message}")


def _data_dir() -> Path:
    from conftest import shared_data_dir

    if not shared_data_dir():
        pytest.skip("needs the data mirror (SELFREWARD_DATA_DIR)")
    return Path(shared_data_dir())


# ---------------------------------------------------------------- runs: concurrency, artifacts, interruptions

@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused(tiny_run):
    out = copy_run(tiny_run, "concurrent")
    log = (out / "first.log").open("w")  # a file, not a pipe that nobody reads while the run fills it
    first = run_cli(out, tiny_run[0] / "cache", *NO_EVAL, "--force", "iteration_2", background=True,
                    stdout=log, stderr=log)
    wait_for(lambda: stage_running(out, "iteration_2"))
    second = run_cli(out, tiny_run[0] / "cache", *NO_EVAL, "--set", "data.ift_size=32")
    assert second.returncode == 1
    assert last_line(second).startswith(f"selfreward: error: run folder {out / 'tiny'} is in use by PID {first.pid} ")
    assert first.wait(timeout=300) == 0
    assert manifest(out)["config"]["data"]["ift_size"] == 64  # the second run changed nothing


@pytest.mark.slow
def test_truncated_and_deleted_artifacts_rerun_their_stage(tiny_run):
    out = copy_run(tiny_run, "artifacts")
    pairs = out / "tiny" / "aift" / "m2" / "pairs.jsonl"
    pairs.write_text(pairs.read_text().splitlines()[0] + "\n")
    result = run_cli(out, tiny_run[0] / "cache", *NO_EVAL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[iteration_1] unchanged, skipped" in result.stdout
    assert "[iteration_2] running 05_iteration.ipynb (outputs changed: aift/m2/pairs.jsonl changed size" in result.stdout
    assert counts(out, "iteration_2") == counts(tiny_run[0] / "runs", "iteration_2")

    (out / "tiny" / "models" / "m3" / "model.safetensors").unlink()
    result = run_cli(out, tiny_run[0] / "cache", *NO_EVAL)
    assert "[iteration_2] running 05_iteration.ipynb (outputs changed: models/m3/model.safetensors is missing)" \
        in result.stdout
    assert (out / "tiny" / "models" / "m3" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_changed_data_source_reruns_the_data_stage(tiny_run, tmp_path):
    out = copy_run(tiny_run, "source")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(out, tiny_run[0] / "cache", *NO_EVAL, env={"SELFREWARD_DATA_DIR": str(empty)})
    assert result.returncode == 1
    assert "[data] running 01_data.ipynb (its config or inputs changed)" in result.stdout
    assert last_line(result).startswith(
        f"selfreward: error: stage data stopped: DataError: data file not found: {empty / 'oasst' / 'train.jsonl'}")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_run_killed_or_interrupted_mid_stage_resumes_to_the_same_counts(tiny_run, how):
    out = copy_run(tiny_run, f"stopped-{how}")
    log = out / "stopped.log"
    with log.open("w") as handle:
        # SIGINT as the default action in the run: under a shell's `&` (or nohup) the tests inherit it ignored,
        # and a Python started with SIGINT ignored raises no KeyboardInterrupt
        run = run_cli(out, tiny_run[0] / "cache", *NO_EVAL, "--force", "iteration_2", background=True,
                      stdout=handle, stderr=handle, start_new_session=True,
                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: stage_running(out, "iteration_2"))
    time.sleep(3)  # well inside the stage
    if how == "SIGKILL":
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        assert manifest(out)["stages"]["iteration_2"]["status"] == "running"  # as the killed run left it
    else:
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=120) == 130
        assert log.read_text().strip().splitlines()[-1] == \
            "selfreward: error: interrupted in stage iteration_2; re-run to resume"
        assert manifest(out)["stages"]["iteration_2"]["status"] == "interrupted"
        assert not list((out / "tiny" / "notebooks").glob(".running.*"))
        assert not (out / "tiny" / ".lock").exists()
    resumed = run_cli(out, tiny_run[0] / "cache", *NO_EVAL)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reason = "its last run was killed" if how == "SIGKILL" else "its last run was interrupted"
    assert f"[iteration_2] running 05_iteration.ipynb ({reason})" in resumed.stdout
    if how == "SIGKILL":
        assert "[lock] taking over a stale lock of PID" in resumed.stdout
    assert counts(out, "iteration_2") == counts(tiny_run[0] / "runs", "iteration_2")
    assert not list((out / "tiny").rglob(".*.tmp")) and not list((out / "tiny" / "notebooks").glob(".running.*"))


@pytest.mark.slow
def test_book_publish_refuses_an_incomplete_run(tiny_run):
    out = copy_run(tiny_run, "incomplete")
    entry = manifest(out)
    entry["stages"]["reward_model"]["status"] = "failed"
    (out / "tiny" / "manifest.json").write_text(json.dumps(entry))
    before = sorted(p.name for p in (REPO / "book" / "run").iterdir())
    result = run_cli(out, tiny_run[0] / "cache", "--publish", command="book")
    assert result.returncode == 1
    assert last_line(result) == (f"selfreward: error: refusing to publish {out / 'tiny'}: the reference book needs "
                                 "a complete, fresh run (failed: reward_model)")
    assert sorted(p.name for p in (REPO / "book" / "run").iterdir()) == before


# ---------------------------------------------------------------- a hostile endpoint

class _Redirect(BaseHTTPRequestHandler):
    target = ""

    def do_POST(self):  # noqa: N802
        self.send_response(302)
        self.send_header("Location", self.target)
        self.end_headers()

    def log_message(self, *args):
        pass


class _Collector(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"choices": [{"message": {"content": "Output (a)"}}]}')

    def do_GET(self):  # noqa: N802 (a 302 turns the POST into a GET)
        self.do_POST()

    def log_message(self, *args):
        pass


class _Garbage(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>Bad gateway</html>")

    def log_message(self, *args):
        pass


def _serve(handler, host="127.0.0.1"):
    server = HTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_redirecting_endpoint_never_receives_the_key_elsewhere(monkeypatch):
    collector = _serve(_Collector)
    _Redirect.target = f"http://localhost:{collector.server_port}/v1/chat/completions"  # another origin
    redirect = _serve(_Redirect)
    monkeypatch.setenv("JUDGE_KEY", "sk-TEST-SECRET-123")
    judge = EndpointJudge(f"http://127.0.0.1:{redirect.server_port}/v1", "m", "JUDGE_KEY", backoff=0)
    try:
        with pytest.raises(JudgeError) as err:
            judge.verdicts([("q", "a", "b")])
    finally:
        redirect.shutdown()
        collector.shutdown()
    assert str(err.value) == "judge endpoint redirected to http://localhost: not following it with the API key"
    assert _Collector.seen == [] and "SECRET" not in str(err.value)


def test_an_endpoint_answering_garbage_is_retried_then_one_line(monkeypatch):
    server = _serve(_Garbage)
    monkeypatch.setenv("JUDGE_KEY", "k")
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        with pytest.raises(JudgeError) as err:
            EndpointJudge(url, "m", "JUDGE_KEY", retries=2, backoff=0).verdicts([("q", "a", "b")])
    finally:
        server.shutdown()
    assert str(err.value) == f"judge endpoint {url} failed after 3 tries: an answer that is not the expected JSON"


def test_reuse_takes_the_finished_stages_of_another_run(tiny_run, tmp_path):
    """--reuse: a run in a new folder takes every stage another run finished with the same fingerprint (hard
    links of its files) and runs only the rest: here a stage whose file was damaged there, and the report."""
    root, _, _ = tiny_run
    source = tmp_path / "source"
    shutil.copytree(root / "runs", source, ignore=shutil.ignore_patterns("book"))
    (source / "tiny" / "eval" / "lengths.json").write_text("{}")  # damaged there: not taken
    result = run_cli(tmp_path / "fresh", root / "cache", "--no-book", "--reuse", str(source / "tiny"))
    assert result.returncode == 0, result.stderr[-2000:]
    reused = next(line for line in result.stdout.splitlines() if line.startswith("[reuse]"))
    assert "data, sft_baseline, eft, m1, iteration_1, iteration_2, responses" in reused and "lengths" not in reused
    assert "[mt_bench] unchanged, skipped" in result.stdout and "[lengths] running" in result.stdout
    manifest = json.loads((tmp_path / "fresh" / "tiny" / "manifest.json").read_text())
    assert manifest["stages"]["m1"]["reused_from"] == "../../source/tiny"  # relative: no machine path in a book
    assert (tmp_path / "fresh" / "tiny" / "models" / "m1" / "model.safetensors").stat().st_nlink >= 2
    assert "reused_from" not in manifest["stages"]["lengths"]
    missing = run_cli(tmp_path / "other", root / "cache", "--no-book", "--reuse", str(tmp_path / "nowhere"))
    assert (missing.returncode, last_line(missing)) == (2, f"selfreward: error: --reuse {tmp_path / 'nowhere'}: not a run "
                                                           "folder (no manifest.json)")


# ---------------------------------------------------------------- runs that fail: only their own record changes

def children(pid: int) -> list[int]:
    """The processes `pid` started (from /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


@pytest.mark.slow
def test_a_killed_kernel_ends_its_stage_within_seconds(tiny_run):
    """What the out-of-memory killer does to a stage's kernel: the run ends within seconds, the stage is failed
    with one line saying so (what it was doing, its memory settings), the lock is released, exit 1."""
    out = copy_run(tiny_run, "dead-kernel")
    log = (out / "run.log").open("w")
    run = run_cli(out, tiny_run[0] / "cache", *NO_EVAL, "--force", "m1", background=True, stdout=log, stderr=log)
    wait_for(lambda: stage_running(out, "m1"))
    kernels = []
    wait_for(lambda: kernels.extend(children(run.pid)) or kernels)
    time.sleep(1)
    killed = time.time()
    for pid in kernels:
        os.kill(pid, signal.SIGKILL)
    assert run.wait(timeout=60) == 1
    assert time.time() - killed < 30
    line = (out / "run.log").read_text().strip().splitlines()[-1]
    assert line.startswith("selfreward: error: stage m1 stopped: its kernel died (killed, perhaps by the system for "
                           "lack of memory)")
    assert "its memory settings: sft.per_device_batch_size 16, sft.max_length 1024" in line
    entry = manifest(out)["stages"]["m1"]
    assert entry["status"] == "failed" and entry["error"].startswith("its kernel died")
    assert not (out / "tiny" / ".lock").exists()
    assert manifest(out)["stages"]["iteration_1"]["status"] == "done"  # the stages after it keep their records


def test_running_out_of_memory_names_the_stage_its_work_and_its_settings(tmp_path):
    """An allocation that fails (the CPU allocator's message, as papermill reports it) is said in one line with
    the stage's memory settings and what it was doing."""
    import nbformat
    from papermill.exceptions import PapermillExecutionError

    from selfreward.config import load_config
    from selfreward.run import pipeline
    from selfreward.run.stages import get

    cfg = load_config(REPO / "params" / "tiny.yaml")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("train()")])
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", name="stderr",
                                                        text="training m2:  25%|##   | 1/4\rtraining m2:  50%|#### | 2/4")]
    nbformat.write(notebook, tmp_path / "failed.ipynb")
    err = PapermillExecutionError(0, 1, "", "RuntimeError",
                                  "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: "
                                  "you tried to allocate 2147483648 bytes.", [])
    message = pipeline.failure(cfg, get(cfg, "iteration_1"), err, tmp_path / "failed.ipynb")
    assert message.startswith("it ran out of memory while 'training m2:  50%|#### | 2/4' (sft.per_device_batch_size "
                              "16, sft.max_length 1024, dpo.per_device_batch_size 8, dpo.max_length 1024, "
                              "generation.batch_size 32): lower them with --set")
    assert "\n" not in message


PLUGIN_RAISING = '''
from selfreward.evaluation import register
from selfreward.evaluation.instrument import Instrument


@register
class Broken(Instrument):
    name = "broken"
    title = "A plugin instrument that fails"
    order = 65

    def run(self, cfg, run):
        raise RuntimeError("the plugin's own bug")
'''


@pytest.mark.slow
def test_a_failed_stage_changes_only_its_own_record(tiny_run, tmp_path):
    """An empty data folder fails the data stage; a plugin instrument that raises fails its own stage. Neither
    touches the records of the stages after it, and a correct run then redoes only what changed."""
    out = copy_run(tiny_run, "failed-stages")
    before = manifest(out)["stages"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(out, tiny_run[0] / "cache", "--no-book", env={"SELFREWARD_DATA_DIR": str(empty)})
    assert result.returncode == 1 and "stage data stopped: DataError" in last_line(result)
    after = manifest(out)["stages"]
    assert after["data"]["status"] == "failed" and (out / "tiny" / "stages" / "data.json").is_file()
    for name in list(before)[1:]:
        assert {k: v for k, v in after[name].items() if k != "stale"} == before[name], name
        assert after[name]["stale"].startswith("made from"), name
    again = run_cli(out, tiny_run[0] / "cache", "--no-book")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[data] running 01_data.ipynb (its last run failed)" in again.stdout
    assert all(f"[{name}] unchanged, skipped" in again.stdout for name in list(before)[1:-1])
    fresh = manifest(out)["stages"]
    assert not any(entry.get("stale") for entry in fresh.values())

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "broken_instrument.py").write_text(PLUGIN_RAISING)
    env = {"SELFREWARD_INSTRUMENTS": "broken_instrument", "PYTHONPATH": str(plugin)}
    broken = run_cli(out, tiny_run[0] / "cache", "--no-book", env=env)
    assert broken.returncode == 1
    assert last_line(broken).startswith("selfreward: error: stage broken stopped: RuntimeError: the plugin's own bug")
    stages = manifest(out)["stages"]
    assert stages["broken"]["status"] == "failed" and stages["lengths"] == fresh["lengths"]
    assert stages["results"]["status"] == "done" and stages["results"]["stale"] == "made from broken, which is failed"


@pytest.mark.slow
def test_stages_left_behind_by_only_are_stale_and_publish_refuses_them(tiny_run):
    """`--set dpo.learning_rate=1e-3 --only reward_model` retrains M2 and M3: the stages made from the old models
    are marked stale (manifest, book, dry run), and the run cannot be published until they re-run."""
    out = copy_run(tiny_run, "only-stale")
    result = run_cli(out, tiny_run[0] / "cache", "--set", "dpo.learning_rate=1e-3", "--only", "reward_model")
    assert result.returncode == 0, result.stderr[-2000:]
    stages = manifest(out)["stages"]
    assert not stages["reward_model"].get("stale") and not stages["iteration_2"].get("stale")
    for name in ("responses", "head_to_head", "reference", "mt_bench", "lengths", "human_preference", "results"):
        assert stages[name]["stale"], name
    assert "[stale] made before what they read changed, to be re-run: " in result.stdout
    book = run_cli(out, tiny_run[0] / "cache", "--set", "dpo.learning_rate=1e-3", command="book")
    assert book.returncode == 0 and "selfreward: note: the run is not complete and fresh (stale: " in book.stderr
    assert "Stale:" in (out / "tiny" / "book" / "_build" / "html" / "run" / "lengths.html").read_text()
    published = run_cli(out, tiny_run[0] / "cache", "--set", "dpo.learning_rate=1e-3", "--publish", command="book")
    assert published.returncode == 1 and "a complete, fresh run (stale: responses, head_to_head" in last_line(published)
    dry = run_cli(out, tiny_run[0] / "cache", "--set", "dpo.learning_rate=1e-3", "--dry-run")
    assert dry.returncode == 0 and "iteration_2       skip  unchanged" in dry.stdout
    assert "responses         run   its config or inputs changed (stale: made before iteration_1 changed)" in dry.stdout


@pytest.mark.slow
def test_zero_iterations_is_the_sft_baseline_and_m1_with_their_book(tiny_run):
    out = copy_run(tiny_run, "no-iterations")
    result = run_cli(out, tiny_run[0] / "cache", "--set", "iterations=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no self-rewarding iteration in this run" in (out / "tiny" / "book" / "_build" / "html" / "run" /
                                                         "results.html").read_text()


def test_a_run_folder_that_cannot_be_written_is_one_line(tiny_run, tmp_path):
    """A run folder that exists but is read-only (as root, a read-only bind mount in a mount namespace)."""
    folder = tmp_path / "runs" / "tiny"
    folder.mkdir(parents=True)
    argv = [sys.executable, "-m", "selfreward.cli", "run", str(REPO / "params" / "tiny.yaml"), "--out",
            str(tmp_path / "runs")]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        reason = "Permission denied"
    elif shutil.which("unshare") and subprocess.run(["unshare", "-m", "true"]).returncode == 0:
        argv = ["unshare", "-m", "sh", "-c", f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro '
                f'"{folder}" "{folder}" && exec "$@"', "sh", *argv]
        reason = "Read-only file system"
    else:
        pytest.skip("cannot make a folder read-only for root here")
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert last_line(result) == f"selfreward: error: run folder {folder}: cannot write there ({reason})"


@pytest.mark.parametrize("module,source,line", [
    ("nosuch.module", None, "SELFREWARD_INSTRUMENTS: plugin module 'nosuch.module' cannot be imported "
                            "(ModuleNotFoundError: No module named 'nosuch')"),
    ("raising_plugin", "raise ValueError('broken at import\\nsecond line')",
     "SELFREWARD_INSTRUMENTS: plugin module 'raising_plugin' cannot be imported (ValueError: second line)"),
])
def test_a_plugin_that_is_missing_or_fails_is_one_line(tmp_path, module, source, line):
    if source:
        (tmp_path / f"{module}.py").write_text(source)
    result = cli("run", str(REPO / "params" / "tiny.yaml"), "--out", str(tmp_path / "runs"),
                 env={"SELFREWARD_INSTRUMENTS": module, "PYTHONPATH": str(tmp_path)})
    assert (result.returncode, result.stderr.count("\n"), last_line(result)) == (2, 1, f"selfreward: error: {line}")
    assert not (tmp_path / "runs" / "tiny").exists()


def test_messages_name_the_thing(tmp_path):
    """A params path that is a folder, an empty training file, a corrupt AlpacaEval file: each named."""
    result = cli("run", str(tmp_path))
    assert (result.returncode, last_line(result)) == (2, f"selfreward: error: {tmp_path}: is a folder, not a params file")
    from selfreward.method import data

    corrupt = tmp_path / "alpaca_eval.json"
    corrupt.write_text('[{"instruction": "unterminated')
    with pytest.raises(data.DataError) as err:
        data._json_rows(corrupt, ("instruction",))
    assert str(err.value) == (f"{corrupt}: not valid JSON (Unterminated string starting at: line 1 column 18 "
                              "(char 17))")


@pytest.mark.slow
def test_an_empty_training_file_and_a_partly_failed_book_say_so(tiny_run, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(_data_dir(), mirror)
    (mirror / "oasst" / "train.jsonl").write_text("")
    out = copy_run(tiny_run, "empty-train")
    result = run_cli(out, tiny_run[0] / "cache", *NO_EVAL, env={"SELFREWARD_DATA_DIR": str(mirror)})
    assert result.returncode == 1
    assert (f"DataError: the IFT seed is empty after filtering {mirror / 'oasst' / 'train.jsonl'} (English"
            in last_line(result))
    book = run_cli(out, tiny_run[0] / "cache", *NO_EVAL[1:], command="book")
    assert book.returncode == 0, book.stderr[-2000:]
    assert last_line(book).startswith("selfreward: note: the run is not complete and fresh (failed: data; stale: ")


@pytest.mark.slow
def test_settings_that_ask_for_more_memory_than_the_machine_has_are_warned_before_the_stage(tiny_run):
    """`selfreward plan`'s rules estimate the stage; over the machine's memory, one line says so before it runs (the
    run goes on: the estimate counts max_length, and the tiny examples are shorter)."""
    from selfreward.run import sizing

    out = copy_run(tiny_run, "too-big")
    result = run_cli(out, tiny_run[0] / "cache", "--set", "sft.max_length=2000000", "--only", "sft_baseline")
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("[sft_baseline] warning:"))
    assert "selfreward plan estimates" in line and "(sft.per_device_batch_size 16, sft.max_length 2000000)" in line
    assert f"more than this machine's {sizing.machine_memory_gb('cpu'):,.1f} GB" in line
    assert "[sft_baseline] running" in result.stdout.split(line)[1]  # said before the stage, which still ran

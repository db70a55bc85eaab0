"""The layout of a run folder, defined once: every path a stage, report, pipeline or test uses.

runs/<name>/
  manifest.json            each stage: status, config, counts, outputs (sizes, hashes), duration
  config.yaml              the resolved config of the last run
  notebooks/<stage>.ipynb  papermill's executed stage notebooks, named by stage
  stages/<stage>.json      each stage's counts
  data/  eft/  aift/m<t>/  models/<model>/  eval/   the artifacts
  book/                    the book of this run (never the checkout's)
  .lock                    held by the process running the pipeline (`locked`)
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root.root if isinstance(root, RunDir) else root))

    # ------------------------------------------------------------ bookkeeping
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def notebook(self, stage: str) -> Path:
        return self.notebooks / f"{stage}.ipynb"

    def counts(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def partial_counts(self, stage: str) -> Path:
        """What a stage that stopped had counted so far."""
        return self.root / "stages" / f"{stage}.partial.json"

    @property
    def book(self) -> Path:
        return self.root / "book"

    # ------------------------------------------------------------ data and training
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def ift(self) -> Path:
        return self.data / "ift.jsonl"

    @property
    def eft_source(self) -> Path:
        return self.data / "eft_source.jsonl"

    @property
    def rm_eval(self) -> Path:
        return self.data / "rm_eval.jsonl"

    @property
    def eval_prompts(self) -> Path:
        return self.data / "eval_prompts.jsonl"

    @property
    def mt_bench_questions(self) -> Path:
        return self.data / "mt_bench_questions.jsonl"

    @property
    def heldout_prompts(self) -> Path:
        """AlpacaEval instructions used neither for training nor for evaluation (checkpoint selection)."""
        return self.data / "heldout_prompts.jsonl"

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    @property
    def eft(self) -> Path:
        return self.root / "eft"

    @property
    def eft_judgments(self) -> Path:
        return self.eft / "judgments.jsonl"

    @property
    def eft_train(self) -> Path:
        return self.eft / "eft_train.jsonl"

    def aift(self, t: int) -> Path:
        """AIFT(M_t): the prompts, candidates, judgments and pairs of iteration t."""
        return self.root / "aift" / f"m{t}"

    def aift_prompts(self, t: int) -> Path:
        return self.aift(t) / "prompts.jsonl"

    def candidates(self, t: int) -> Path:
        return self.aift(t) / "candidates.jsonl"

    def pairs(self, t: int) -> Path:
        return self.aift(t) / "pairs.jsonl"

    def positives(self, t: int) -> Path:
        return self.aift(t) / "positive.jsonl"

    def checkpoint_selection(self, t: int) -> Path:
        return self.aift(t) / "checkpoint_selection.json"

    def checkpoints(self, t: int) -> Path:
        """The saved training checkpoints of M_{t+1} (checkpoint selection), kept until the choice is made."""
        return self.aift(t) / "checkpoints"

    # ------------------------------------------------------------ evaluation
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def responses(self, model: str) -> Path:
        return self.eval / "responses" / f"{model}.jsonl"

    @property
    def head_to_head(self) -> Path:
        return self.eval / "head_to_head.json"

    @property
    def reward_model(self) -> Path:
        return self.eval / "reward_model.json"

    def reward_model_scores(self, label: str) -> Path:
        return self.eval / "reward_model" / f"{slug(label)}.jsonl"

    @property
    def human_preference(self) -> Path:
        return self.eval / "human_preference.json"

    @property
    def mt_bench(self) -> Path:
        return self.eval / "mt_bench.json"

    def mt_bench_answers(self, model: str) -> Path:
        return self.eval / "mt_bench" / f"{model}.jsonl"

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))


def slug(label: str) -> str:
    """A file name for a label such as 'sft_baseline (multiple choice)'."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


# ---------------------------------------------------------------- one run at a time

class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder; the message is one line and names it."""


@contextlib.contextmanager
def locked(run: RunDir, log=print):
    """Hold the run folder exclusively for the length of a block.

    The lock is an flock on `.lock`, which the kernel drops when the holder dies, however it dies;
    the file records the holder's PID for the message a second run gets. A file left behind by a
    killed run is a stale lock: it is taken over, and said so."""
    run.root.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusy(f"run folder {run.root} is in use by {holder}; wait for it to finish "
                                f"or stop it first") from None
        if os.path.exists(run.lock) and os.stat(run.lock).st_ino == os.fstat(fd).st_ino:
            break  # still the file at that path (not one a finishing holder just removed)
        os.close(fd)
    stale = _read_holder(fd)
    if stale:
        log(f"[lock] taking over a stale lock of {stale}, which is no longer running")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
    try:
        _remove_leftovers(run)
        yield
    finally:
        os.unlink(run.lock)
        os.close(fd)


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096) or b"null")
    except ValueError:
        return "an unknown process"
    return f"PID {holder['pid']} on {holder['host']} (since {holder['started']})" if holder else ""


def _remove_leftovers(run: RunDir):
    """Scratch files of a run that was killed: half-written temporary files and notebooks in progress."""
    for path in list(run.root.rglob(".*.tmp")) + list(run.notebooks.glob(".running.*")):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


# ---------------------------------------------------------------- what a stage wrote

WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # hashed when written, checked on --verify


def file_records(run: RunDir, paths: list[Path]) -> dict[str, dict]:
    """Size and sha256 of every file under `paths` (files or folders), keyed by path in the run."""
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*") if p.is_dir() else [])
                   if f.is_file() and not f.name.startswith("."))
    return {run.relative(f): {"size": f.stat().st_size, "sha256": sha256(f)} for f in files}


def changed_files(run: RunDir, records: dict[str, dict] | None, verify_weights: bool = False) -> str | None:
    """Why the recorded outputs no longer hold (the first difference), or None when they do. Sizes are
    always compared, contents by hash except for model weights unless `verify_weights`."""
    if not records:
        return "no record of its outputs"
    for name, record in records.items():
        path = run.root / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != record["size"]:
            return f"{name} changed size ({record['size']} -> {path.stat().st_size} bytes)"
        if (verify_weights or not name.endswith(WEIGHTS)) and sha256(path) != record["sha256"]:
            return f"{name} changed content"
    return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""What the pipeline keeps about a run folder: its lock (one run at a time) and the sizes and hashes of
what each stage wrote (so that a skip is checked against the files, not only the manifest)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

from selfreward.rundir import RunDir


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder; the message is one line and names it."""

    def _render_traceback_(self):  # in a notebook (IPython), the same one line as on the command line
        return [f"selfreward: error: {self}"]


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

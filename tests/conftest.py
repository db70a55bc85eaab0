"""Shared fixtures: a tiny random model built here, and small OASST-shaped data files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfreward.models import build_tiny_model, chat_format_for, load_model, load_tokenizer, stop_token_ids
from selfreward.generation import TransformersBackend

REPO = Path(__file__).resolve().parent.parent
CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "How do I sort a list in Python? Use sorted(items) or items.sort().",
    "Write a haiku about rain. Soft rain on the roof, the garden drinks slowly, grey light turns to green.",
    "Explain photosynthesis briefly. Plants turn light, water and carbon dioxide into sugar and oxygen.",
    "Score: 0 Score: 1 Score: 2 Score: 3 Score: 4 Score: 5 Review the response and grade it.",
] * 20


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(out, CORPUS, hidden=32, layers=2, vocab=400, seed=0)
    return str(out)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype="float32", device="cpu")
    chat = chat_format_for(tokenizer)
    return TransformersBackend(model, tokenizer, stop_token_ids(tokenizer, chat), batch_size=4), chat


def message(mid, parent, role, text, rank=None, **extra):
    row = {"message_id": mid, "parent_id": parent, "message_tree_id": "t", "role": role, "lang": "en",
           "text": text, "rank": rank, "synthetic": False, "review_result": True, "deleted": False, "labels": None}
    row.update(extra)
    return row


def write_mirror(root: Path, train: list[dict], validation: list[dict], alpaca: list[dict]) -> Path:
    (root / "oasst").mkdir(parents=True)
    (root / "eval").mkdir()
    for split, rows in [("train", train), ("validation", validation)]:
        (root / "oasst" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "eval" / "alpaca_eval.json").write_text(json.dumps(alpaca))
    return root


def shared_data_dir() -> str | None:
    """The real data for end-to-end tests: SELFREWARD_DATA_DIR, else ../shared/data beside the repo."""
    value = os.environ.get("SELFREWARD_DATA_DIR")
    if value:
        return value
    beside = REPO.parent / "shared" / "data"
    return str(beside) if beside.is_dir() else None


# ---------------------------------------------------------------- the tiny pipeline, run once per session

def run_cli(out: Path, cache: Path, *args: str, command: str = "run", env: dict | None = None,
            background: bool = False, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """`selfreward COMMAND params/tiny.yaml --out OUT ARGS...` with the real data; in the background (a
    Popen with the `popen` arguments) when asked."""
    environment = dict(os.environ, SELFREWARD_CACHE=str(cache), **(env or {}))
    if shared_data_dir() and "SELFREWARD_DATA_DIR" not in (env or {}):
        environment["SELFREWARD_DATA_DIR"] = shared_data_dir()
    argv = [sys.executable, "-m", "selfreward.cli", command, str(REPO / "params" / "tiny.yaml"), "--out", str(out),
            *args]
    if background:
        return subprocess.Popen(argv, env=environment, cwd=REPO, **popen)
    return subprocess.run(argv, capture_output=True, text=True, env=environment, cwd=REPO)


def git_status(path: str = "book") -> str:
    """The checkout's git status below `path` (the committed reference book by default)."""
    return subprocess.run(["git", "status", "--porcelain", "--", path], capture_output=True, text=True,
                          cwd=REPO).stdout


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole tiny profile and its book, once per session; the checkout's git status before it."""
    root = tmp_path_factory.mktemp("pipeline")
    before = git_status()
    # every model stage in a fresh kernel, as the embedded model's stages run (the tiny ones would share one)
    result = run_cli(root / "runs", root / "cache", env={"SELFREWARD_FRESH_KERNEL_GB": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result, before

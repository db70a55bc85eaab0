"""Open Assistant and AlpacaEval data: from the Hugging Face hub or from a local mirror.

The mirror (e.g. SELFREWARD_DATA_DIR=../shared/data) has the hub's `OpenAssistant/oasst1` rows as
`oasst/{train,validation}.jsonl` and the AlpacaEval set as `eval/alpaca_eval.json`.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path


# A mirror kept beside the checkout (as in this project's workplace) is used when present.
MIRROR_BESIDE_CHECKOUT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


class DataError(ValueError):
    """Data that cannot be found or leaves nothing usable; the message is one line."""


def local_dir(data_cfg) -> Path | None:
    """data.local_dir, else SELFREWARD_DATA_DIR, else ../shared/data beside the checkout, else None (the hub)."""
    value = data_cfg.local_dir or os.environ.get("SELFREWARD_DATA_DIR")
    if not value:
        return MIRROR_BESIDE_CHECKOUT if (MIRROR_BESIDE_CHECKOUT / "oasst").is_dir() else None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"data path not found: {path}")
    return path


def load_oasst(split: str, data_cfg) -> list[dict]:
    """All OASST messages of a split ('train' or 'validation') as dicts in the hub schema."""
    root = local_dir(data_cfg)
    if root is not None:
        path = root / "oasst" / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    from datasets import load_dataset

    return list(load_dataset(data_cfg.oasst_hub_id, split=split))


def load_alpaca_eval(data_cfg) -> list[dict]:
    root = local_dir(data_cfg)
    if root is not None:
        path = root / "eval" / "alpaca_eval.json"
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        return json.loads(path.read_text(encoding="utf-8"))
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(data_cfg.alpaca_eval_hub_id, "alpaca_eval.json", repo_type="dataset")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _usable(message: dict) -> bool:
    # the paper's filters: English, not deleted, passed review, written by a person
    return (message.get("lang") == "en" and not message.get("deleted")
            and message.get("review_result") is not False and not message.get("synthetic"))


def first_turn_threads(messages: list[dict], max_prompt_chars: int = 10**9,
                       max_response_chars: int = 10**9) -> list[dict]:
    """Root prompts with their direct assistant replies: {prompt_id, prompt, replies: [{text, rank}]}."""
    roots = {m["message_id"]: m for m in messages
             if m.get("parent_id") is None and m.get("role") == "prompter" and _usable(m)
             and len(m["text"]) <= max_prompt_chars}
    replies: dict[str, list[dict]] = {key: [] for key in roots}
    for m in messages:
        if m.get("parent_id") in roots and m.get("role") == "assistant" and _usable(m) \
                and len(m["text"]) <= max_response_chars:
            replies[m["parent_id"]].append({"text": m["text"], "rank": m.get("rank")})
    threads = []
    for key, root in roots.items():
        ranked = sorted(replies[key], key=lambda r: (r["rank"] is None, r["rank"] if r["rank"] is not None else 0))
        threads.append({"prompt_id": key, "prompt": root["text"], "replies": ranked})
    threads.sort(key=lambda t: t["prompt_id"])  # stable order, whatever the source's order
    return threads


def ift_seed(threads: list[dict], size: int, seed: int) -> list[dict]:
    """Instruction fine-tuning seed: each prompt with its human rank-0 reply."""
    pairs = [{"prompt_id": t["prompt_id"], "prompt": t["prompt"], "response": r["text"]}
             for t in threads for r in t["replies"] if r["rank"] == 0]
    return _sample(pairs, size, seed)


def ranked_threads(threads: list[dict], size: int, seed: int) -> list[dict]:
    """Prompts with at least two ranked replies (EFT source, reward-model evaluation); size 0 = all."""
    usable = []
    for t in threads:
        ranked = [r for r in t["replies"] if r["rank"] is not None]
        if len(ranked) >= 2:
            usable.append({**t, "replies": ranked})
    return usable if size == 0 else _sample(usable, size, seed)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def eval_prompts(alpaca: list[dict], size: int, seed: int, exclude: set[str]) -> list[dict]:
    """AlpacaEval instructions (with the GPT-4 reference output) that appear nowhere in training data."""
    excluded = {_normalise(text) for text in exclude}
    rows = [{"instruction": a["instruction"], "dataset": a.get("dataset", ""), "reference": a.get("output", "")}
            for a in alpaca if _normalise(a["instruction"]) not in excluded]
    return _sample(rows, size, seed)


def _sample(rows: list, size: int, seed: int) -> list:
    if len(rows) <= size:
        return list(rows)
    return random.Random(seed).sample(rows, size)

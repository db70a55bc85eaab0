"""Open Assistant and AlpacaEval data: from the Hugging Face hub or from a local mirror.

The mirror (e.g. SELFREWARD_DATA_DIR=../shared/data) has the hub's `OpenAssistant/oasst1` rows as
`oasst/{train,validation}.jsonl` and the AlpacaEval set as `eval/alpaca_eval.json`.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from selfreward import CHECKOUT


# A mirror kept beside the checkout (as in this project's workplace) is used when present.
MIRROR_BESIDE_CHECKOUT = CHECKOUT.parent / "shared" / "data"


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


MIRROR_FILES = ["oasst/train.jsonl", "oasst/validation.jsonl", "eval/alpaca_eval.json",
                "eval/mt_bench_questions.jsonl"]
OASST_FIELDS = ("message_id", "parent_id", "role", "text")


def source_identity(data_cfg) -> str:
    """Where the data comes from, for the data stage's fingerprint: the hash of each of the mirror's files
    (wherever the mirror lies), or the hub ids."""
    root = local_dir(data_cfg)
    if root is None:
        return f"hub:{data_cfg.oasst_hub_id},{data_cfg.alpaca_eval_hub_id}"
    parts = ["mirror"]
    for name in MIRROR_FILES:
        path = root / name
        parts.append(hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "absent")
    return "|".join(parts)


def source_of(data_cfg, name: str) -> str:
    """Where one data set is read from, for a message: the mirror's file, or the hub id and split."""
    root = local_dir(data_cfg)
    hub = {"oasst/train.jsonl": f"{data_cfg.oasst_hub_id} (train)",
           "oasst/validation.jsonl": f"{data_cfg.oasst_hub_id} (validation)",
           "eval/alpaca_eval.json": data_cfg.alpaca_eval_hub_id}
    return str(root / name) if root is not None else hub.get(name, name)


def source_label(data_cfg) -> str:
    """The data source as a chapter shows it: the mirror's folder name and a hash of its contents (no machine
    path), or the hub ids."""
    root = local_dir(data_cfg)
    if root is None:
        return f"Hugging Face hub: {data_cfg.oasst_hub_id}, {data_cfg.alpaca_eval_hub_id}"
    digest = hashlib.sha256(source_identity(data_cfg).encode()).hexdigest()[:12]
    return f"offline mirror {root.name}/ (contents {digest})"


def read_jsonl_rows(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """JSON objects, one per line; a line that is not one (or lacks a required field) is a one-line
    DataError naming the file and the line."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(f"{path} line {number}: not valid JSON (truncated or corrupt)") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        missing = [key for key in required if key not in row]
        if missing:
            raise DataError(f"{path} line {number}: missing field {missing[0]!r}")
        rows.append(row)
    return rows


def load_oasst(split: str, data_cfg) -> list[dict]:
    """All OASST messages of a split ('train' or 'validation') as dicts in the hub schema."""
    root = local_dir(data_cfg)
    if root is not None:
        return read_jsonl_rows(_mirror_file(root, f"oasst/{split}.jsonl"), OASST_FIELDS)
    from datasets import load_dataset

    return list(load_dataset(data_cfg.oasst_hub_id, split=split))


def load_alpaca_eval(data_cfg) -> list[dict]:
    root = local_dir(data_cfg)
    if root is not None:
        return _json_rows(_mirror_file(root, "eval/alpaca_eval.json"), ("instruction",))
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(data_cfg.alpaca_eval_hub_id, "alpaca_eval.json", repo_type="dataset")
    return _json_rows(Path(path), ("instruction",))


def load_mt_bench(data_cfg) -> list[dict]:
    """The 80 MT-Bench questions: {question_id, category, turns: [first, second]}."""
    root = local_dir(data_cfg)
    if root is not None:
        return read_jsonl_rows(_mirror_file(root, "eval/mt_bench_questions.jsonl"), ("question_id", "category", "turns"))
    from datasets import load_dataset

    return [{"question_id": row["prompt_id"], "category": row["category"], "turns": list(row["prompt"])}
            for row in load_dataset(data_cfg.mt_bench_hub_id, split="train")]


IFEVAL_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


def load_ifeval(data_cfg) -> list[dict]:
    """IFEval's 541 prompts with their verifiable instructions (the hub's `google/IFEval` rows): from the mirror's
    eval/ifeval.jsonl, else the hub. A malformed row is a one-line DataError naming the file and the line."""
    root = local_dir(data_cfg)
    if root is None:
        from datasets import load_dataset

        return [dict(row) for row in load_dataset(data_cfg.ifeval_hub_id, split="train")]
    path = _mirror_file(root, "eval/ifeval.jsonl")
    rows = read_jsonl_rows(path, IFEVAL_FIELDS)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row["instruction_id_list"], list) or not isinstance(row["kwargs"], list) \
                or len(row["instruction_id_list"]) != len(row["kwargs"]):
            raise DataError(f"{path} row {number} (key {row['key']}): instruction_id_list and kwargs must be lists "
                            "of the same length")
    if not rows:
        raise DataError(f"{path}: no IFEval prompt in it")
    return rows


def ifeval_identity(data_cfg) -> str:
    """Where IFEval is read from, for the fingerprint of the stage that reads it: the file's hash, or the hub id."""
    root = local_dir(data_cfg)
    path = root / "eval" / "ifeval.jsonl" if root is not None else None
    if path is None:
        return f"hub:{data_cfg.ifeval_hub_id}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "absent"


def mt_bench_order(questions: list[dict], seed: int) -> list[dict]:
    """A seeded order in which any first N questions cover the categories evenly (round robin)."""
    rng = random.Random(seed)
    by_category: dict[str, list[dict]] = {}
    for q in sorted(questions, key=lambda q: q["question_id"]):
        by_category.setdefault(q["category"], []).append(q)
    for group in by_category.values():
        rng.shuffle(group)
    order = []
    for round_no in range(max(map(len, by_category.values()), default=0)):
        order += [group[round_no] for _, group in sorted(by_category.items()) if round_no < len(group)]
    return order


def check_reference_generator(alpaca: list[dict], expected: str, source: str):
    """The "vs reference" comparisons must be against the model they are labelled with."""
    found = sorted({str(a.get("generator")) for a in alpaca})
    if found != [expected]:
        raise DataError(f"the AlpacaEval reference outputs from {source} come from {', '.join(found)}, not "
                        f"{expected} (data.alpaca_eval_generator): the 'vs reference' rows would be mislabelled")


def _mirror_file(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def _json_rows(path: Path, required: tuple[str, ...]) -> list[dict]:
    """A JSON list of objects, each with the required fields; anything else is a one-line DataError."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or any(key not in row for key in required):
            raise DataError(f"{path}: item {number} is not an object with the fields {', '.join(required)}")
    return rows


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


def split_eft_ift(threads: list[dict], eft_size: int, ift_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The EFT source and the IFT seed, disjoint as in the paper, split once by seed: the EFT source
    (prompts with at least two ranked replies) is drawn first, the IFT seed from the other prompts;
    a prompt whose text is also an EFT source prompt's counts as the same prompt."""
    eft_source = ranked_threads(threads, eft_size, seed)
    return eft_source, ift_seed(without(threads, eft_source), ift_size, seed)


def without(threads: list[dict], exclude: list[dict]) -> list[dict]:
    """The threads whose prompt is not a prompt of `exclude` (by id or by text)."""
    ids, texts = {r["prompt_id"] for r in exclude}, {_normalise(r["prompt"]) for r in exclude}
    return [t for t in threads if t["prompt_id"] not in ids and _normalise(t["prompt"]) not in texts]


def overlap(a: list[dict], b: list[dict]) -> int:
    """Prompts of `a` that are also prompts of `b` (by id or by text)."""
    return len(a) - len(without(a, b))


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


def heldout_ranked_threads(threads: list[dict], size: int, seed: int, exclude: list[dict]) -> list[dict]:
    """`ranked_threads` among the prompts that are not prompts of `exclude` (by id or by text): training
    prompts the run never trains on, for the reward-model evaluation; each marked with its split."""
    return [{**t, "split": "train"} for t in ranked_threads(without(threads, exclude), size, seed)]


def short_reply_threads(threads: list[dict], max_chars: int) -> list[dict]:
    """The prompts whose replies are all at most `max_chars` long (whole prompts are kept or dropped, so that
    the human ranking among the replies stays intact); an empty result is a DataError."""
    kept = [t for t in threads if all(len(r["text"]) <= max_chars for r in t["replies"])]
    if not kept:
        raise DataError(f"no reward-model prompt has all its replies within {max_chars} characters "
                        "(evaluation.rm_max_reply_chars)")
    return kept


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def eval_prompts(alpaca: list[dict], size: int, seed: int, exclude: set[str]) -> list[dict]:
    """AlpacaEval instructions (with the GPT-4 reference output) that appear nowhere in training data."""
    return heldout_and_eval(alpaca, size, seed, exclude)[1]


def heldout_and_eval(alpaca: list[dict], size: int, seed: int, exclude: set[str]) -> tuple[list[dict], list[dict]]:
    """AlpacaEval instructions that appear nowhere in training data, split once by seed: `size` for the
    evaluation, the rest held out (checkpoint selection), in a seeded order."""
    excluded = {_normalise(text) for text in exclude}
    rows = [{"instruction": a["instruction"], "dataset": a.get("dataset", ""), "reference": a.get("output", ""),
             "reference_generator": a.get("generator")}
            for a in alpaca if _normalise(a["instruction"]) not in excluded]
    chosen = _sample(rows, size, seed)
    taken = {r["instruction"] for r in chosen}
    rest = [r for r in rows if r["instruction"] not in taken]
    random.Random(seed).shuffle(rest)
    return rest, chosen


def _sample(rows: list, size: int, seed: int) -> list:
    if len(rows) <= size:
        return list(rows)
    return random.Random(seed).sample(rows, size)

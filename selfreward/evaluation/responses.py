"""Every model's answers to the evaluation prompts (AlpacaEval instructions held out from training): the
`responses` stage, which the head-to-head, reference and length instruments read."""
from __future__ import annotations

import pandas as pd

from selfreward.config import Config, model_sequence
from selfreward.io import exists, read_jsonl, write_jsonl
from selfreward.rundir import RunDir


def answers(cfg: Config, run: RunDir, model: str, backend, chat) -> list[dict]:
    """One model's answers to the evaluation prompts, sampled as `evaluation` says."""
    from selfreward.method.loop import answer

    instructions = [p["instruction"] for p in read_jsonl(run.eval_prompts)]
    outputs = answer(backend, chat, instructions, cfg.evaluation, cfg.seed, desc=f"responses {model}")
    return [{"instruction": i, "response": c.text, "chars": len(c.text), "num_tokens": c.num_tokens,
             "finished": c.finished} for i, (c,) in zip(instructions, outputs, strict=True)]


def characters(row: dict) -> int:
    """An answer's length in characters (a book's compact rows keep the length, not the text)."""
    return row["chars"] if "chars" in row else len(row["response"])


def run_responses(cfg: Config, run: RunDir) -> dict:
    from selfreward.generation import loaded_backend

    tokens = 0
    for name in model_sequence(cfg.iterations):
        with loaded_backend(str(run.model(name)), cfg) as (backend, chat):
            write_jsonl(run.responses(name), answers(cfg, run, name, backend, chat))
        tokens += backend.tokens_generated
    return {"eval_prompts": len(read_jsonl(run.eval_prompts)), "models": len(model_sequence(cfg.iterations)),
            "tokens_generated": tokens}


def load(run: RunDir, names: list[str]) -> dict[str, list[dict]]:
    """The answers of the named models that have them, in the evaluation prompts' order."""
    return {n: read_jsonl(run.responses(n)) for n in names if exists(run.responses(n))}


def side_by_side(run: RunDir, names: list[str], count: int = 3, width: int = 500) -> pd.DataFrame:
    """The first few evaluation prompts with every model's answer."""
    answers = load(run, names)
    first = next(iter(answers.values()), [])
    rows = []
    for i in range(min(count, len(first))):
        row = {"prompt": first[i]["instruction"][:width]}
        row.update({n: answers[n][i]["response"][:width] for n in answers})
        rows.append(row)
    return pd.DataFrame(rows)

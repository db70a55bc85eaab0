"""Evaluation fine-tuning (EFT) data: the SFT baseline's judgments that agree with human ranks.

The SFT baseline judges every ranked reply of a training prompt (`judging.ranked_rows`, the same
rows the reward-model evaluation reads). A prompt's judgments are kept only when they *agree*
with the humans (`metrics.orders_as_humans`): every reply got a readable score, and for every two
replies with different human ranks, the better-ranked one got the strictly higher score.
"""
from __future__ import annotations

import random
from collections import Counter

from selfreward.metrics import orders_as_humans
from selfreward.prompts import judge_prompt, judgment_with_score


def rebalance(examples: list[dict], max_share: float, seed: int) -> list[dict]:
    """Downsample the most frequent score so that it holds at most `max_share` of the result.

    The paper resamples its EFT set because one score (4) dominates. With a single distinct
    score there is nothing to balance against, and the examples are returned unchanged.
    """
    counts = Counter(e["score"] for e in examples)
    if len(counts) < 2 or max_share >= 1:
        return list(examples)
    score, top = counts.most_common(1)[0]
    others = len(examples) - top
    keep = min(top, max(1, int(max_share * others / (1 - max_share))))
    chosen = set(random.Random(seed).sample([i for i, e in enumerate(examples) if e["score"] == score], keep))
    return [e for i, e in enumerate(examples) if e["score"] != score or i in chosen]


def pick_judgment(result: dict) -> tuple[str, int] | None:
    """The judgment text to train on and its integer score: the readable sample nearest the mean."""
    readable = [j for j in result["judgments"] if j["score"] is not None]
    if not readable:
        return None
    best = min(readable, key=lambda j: abs(j["score"] - result["score"]))
    return best["text"], int(round(best["score"]))


def build_eft(threads: list[dict], rows: list[dict], template: str) -> tuple[list[dict], list[dict]]:
    """EFT examples from agreeing prompts, and one record per judged prompt (kept or not).

    `rows` are `judging.ranked_rows(threads)`: one per thread, its replies' results in order.
    """
    examples, records = [], []
    for thread, row in zip(threads, rows, strict=True):
        ok = len(row["scores"]) >= 2 and orders_as_humans(row["scores"], row["ranks"])
        records.append({**row, "agrees": ok})
        if not ok:
            continue
        for reply, result in zip(thread["replies"], row["results"]):
            text, score = pick_judgment(result)
            examples.append({"prompt": judge_prompt(thread["prompt"], reply["text"], template),
                             "response": judgment_with_score(text, score), "score": score,
                             "prompt_id": thread["prompt_id"]})
    return examples, records

"""Evaluation fine-tuning (EFT) data: the SFT baseline's judgments that agree with human ranks.

The SFT baseline judges every ranked reply of a training prompt k times (`self_judge.ranked_rows`, the
same rows the reward-model evaluation reads). Each EFT example teaches one judgment: its reasoning
and an integer "Score: n". A prompt is kept only when its replies can be taught judgments whose
*written* scores agree with the humans (`method.ranks.orders_as_humans`): for every two replies with
different human ranks, the better-ranked one is taught the strictly higher score. For each reply the
judgment is one of its own readable samples, preferring those nearest its mean score; so two replies
the humans ranked apart are never both taught "Score: 4".
"""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter

from selfreward.method.ranks import orders_as_humans
from selfreward.method.prompts import JUDGE_TEMPLATES


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


def teachable_judgments(results: list[dict], ranks: list[int]) -> list[tuple[str, int]] | None:
    """One (reasoning, integer score) per reply whose scores order the replies as the humans do, or None.

    Each reply's readable judgments are tried nearest its mean first; the combination with the smallest
    total distance from the means wins (the k^replies combinations are few)."""
    options = []
    for result in results:
        readable = sorted((j for j in result["judgments"] if j["score"] is not None),
                          key=lambda j: abs(j["score"] - result["score"]))
        if not readable:
            return None
        options.append([(j["text"], math.floor(j["score"] + 0.5), abs(j["score"] - result["score"]))
                        for j in readable])
    fitting = [choice for choice in itertools.product(*options)
               if orders_as_humans([score for _, score, _ in choice], ranks)]
    if not fitting:
        return None
    best = min(fitting, key=lambda choice: sum(distance for _, _, distance in choice))
    return [(text, score) for text, score, _ in best]


def build_eft(threads: list[dict], rows: list[dict], template: str) -> tuple[list[dict], list[dict]]:
    """EFT examples from agreeing prompts, and one record per judged prompt (kept or not).

    `rows` are `self_judge.ranked_rows(threads)`: one per thread, its replies' results in order. Each
    example carries the reply's human `rank` and its `prompt_id` beside the `score` it teaches.
    """
    examples, records, judge = [], [], JUDGE_TEMPLATES[template]
    for thread, row in zip(threads, rows, strict=True):
        taught = teachable_judgments(row["results"], row["ranks"]) if len(row["ranks"]) >= 2 else None
        records.append({**row, "agrees": taught is not None,
                        "taught_scores": [score for _, score in taught] if taught else None})
        for reply, (text, score) in zip(thread["replies"], taught or [], strict=taught is not None):
            examples.append({"prompt": judge.prompt(thread["prompt"], reply["text"]),
                             "response": judge.target(text, score), "score": score,
                             "rank": reply["rank"], "prompt_id": thread["prompt_id"]})
    return examples, records

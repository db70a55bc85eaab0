"""Evaluation fine-tuning (EFT) data: the SFT baseline's judgments that agree with human ranks.

The SFT baseline judges every ranked reply of a training prompt. A prompt's judgments are kept
only when they *agree* with the humans: every reply got a readable score, and for every two
replies with different human ranks, the better-ranked one (lower rank) got the strictly higher
score. A tie in score between differently ranked replies is a disagreement.
"""
from __future__ import annotations

import random
from collections import Counter

from selfreward.prompts import judge_prompt, judgment_with_score


def agrees(scores: list[float | None], ranks: list[int]) -> bool:
    if len(scores) < 2 or any(s is None for s in scores):
        return False
    for i in range(len(scores)):
        for j in range(len(scores)):
            if ranks[i] < ranks[j] and not scores[i] > scores[j]:
                return False
    return True


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


def pick_judgment(result) -> tuple[str, int] | None:
    """The judgment text to train on and its integer score: the readable sample nearest the mean."""
    readable = [j for j in result.judgments if j.score is not None]
    if not readable:
        return None
    mean = result.score
    best = min(readable, key=lambda j: abs(j.score - mean))
    return best.text, int(round(best.score))


def build_eft(threads: list[dict], results: list, template: str) -> tuple[list[dict], list[dict]]:
    """EFT examples from agreeing prompts, and one record per judged prompt (kept or not).

    `results` holds one JudgeResult per reply, in the order of the threads' replies.
    """
    examples, records, position = [], [], 0
    for thread in threads:
        replies = thread["replies"]
        judged = results[position:position + len(replies)]
        position += len(replies)
        scores = [r.score for r in judged]
        ok = agrees(scores, [r["rank"] for r in replies])
        records.append({"prompt_id": thread["prompt_id"], "ranks": [r["rank"] for r in replies],
                        "scores": scores, "agrees": ok, "results": [r.to_dict() for r in judged]})
        if not ok:
            continue
        for reply, result in zip(replies, judged):
            text, score = pick_judgment(result)
            examples.append({"prompt": judge_prompt(thread["prompt"], reply["text"], template),
                             "response": judgment_with_score(text, score), "score": score,
                             "prompt_id": thread["prompt_id"]})
    return examples, records

"""Reward-modeling metrics: how well per-reply scores agree with human rankings, with intervals.

Each prompt has replies with human ranks (0 = best) and scores (None = unreadable): a judge's scores, or
judge-free values such as a reply's log-likelihood per token.
- pairwise accuracy: of reply pairs with different human ranks and two readable scores, the share where
  the better-ranked reply got the strictly higher score (score ties count as wrong; their share is
  reported separately as `pair_ties`).
- 5-best: of replies whose score rounds to 5, the share that humans ranked best (rank 0).
- exact match: share of prompts whose scores order the replies as the humans do
  (`method.ranks.orders_as_humans`, the rule that decides which judgments become EFT data).
- Spearman / Kendall tau: rank correlation between scores and human quality (-rank), per prompt,
  averaged over prompts with every score readable; a prompt whose scores are all equal has no
  defined correlation and counts as 0.
- top-score share: the share of readable scores whose rounded value is the most frequent one.
Intervals and paired differences resample prompts (`evaluation.estimates`).
"""
from __future__ import annotations

import math
from collections import Counter

from scipy import stats

from selfreward.evaluation.estimates import Estimate, bootstrap_many, paired_many
from selfreward.method.ranks import orders_as_humans, pair_outcomes

METRICS = ["pairwise_accuracy", "pair_ties", "five_best", "exact_match", "spearman", "kendall",
           "parse_failure_rate", "top_score_share"]
PERCENT = {"pairwise_accuracy", "pair_ties", "five_best", "exact_match", "parse_failure_rate", "top_score_share"}


def correlation(scores: list, ranks: list[int], kind: str) -> float | None:
    """Spearman or Kendall between scores and human quality; None if a score is unreadable."""
    if len(scores) < 2 or any(s is None for s in scores):
        return None
    if len(set(scores)) == 1 or len(set(ranks)) == 1:
        return 0.0
    quality = [-r for r in ranks]
    value = (stats.spearmanr if kind == "spearman" else stats.kendalltau)(scores, quality)[0]
    return 0.0 if math.isnan(value) else float(value)


def prompt_stats(prompt: dict) -> dict:
    """Everything the metrics need from one prompt, so that bootstrapping only re-adds numbers."""
    scores, ranks = prompt["scores"], prompt["ranks"]
    correct, tied, total = pair_outcomes(scores, ranks)
    rounded = [math.floor(s + 0.5) for s in scores if s is not None]
    fives = [r for s, r in zip(scores, ranks, strict=True) if s is not None and math.floor(s + 0.5) == 5]
    return {"correct": correct, "tied": tied, "pairs": total, "five": len(fives),
            "five_best": sum(r == 0 for r in fives), "match": orders_as_humans(scores, ranks),
            "spearman": correlation(scores, ranks, "spearman"), "kendall": correlation(scores, ranks, "kendall"),
            "judgments": prompt.get("judgments", len(scores)),
            "failures": prompt.get("failures", sum(s is None for s in scores)), "rounded": Counter(rounded)}


def aggregate(per_prompt: list[dict]) -> dict:
    def total(key):
        return sum(p[key] for p in per_prompt)

    def ratio(num, den):
        return num / den if den else None

    def mean(key):
        values = [p[key] for p in per_prompt if p[key] is not None]
        return sum(values) / len(values) if values else None

    rounded = sum((p["rounded"] for p in per_prompt), Counter())
    return {
        "pairwise_accuracy": ratio(total("correct"), total("pairs")),
        "pair_ties": ratio(total("tied"), total("pairs")),
        "five_best": ratio(total("five_best"), total("five")),
        "exact_match": ratio(total("match"), len(per_prompt)),
        "spearman": mean("spearman"),
        "kendall": mean("kendall"),
        "parse_failure_rate": ratio(total("failures"), total("judgments")),
        "top_score_share": ratio(max(rounded.values()), sum(rounded.values())) if rounded else None,
    }


def metrics(prompts: list[dict], samples: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Every metric over prompts given as {"scores": [...], "ranks": [...]}, with its interval; n is the
    number of prompts (`pair_count` says how many reply pairs the accuracy is over)."""
    return bootstrap_many([prompt_stats(p) for p in prompts], aggregate, samples, seed)


def pair_count(prompts: list[dict]) -> int:
    """Reply pairs with different human ranks and readable scores."""
    return sum(pair_outcomes(p["scores"], p["ranks"])[2] for p in prompts)


def paired_metrics(before: list[dict], after: list[dict], samples: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Each metric of `after` minus `before`, on the same prompts (in the same order), resampled together."""
    ids_before, ids_after = [p.get("prompt_id") for p in before], [p.get("prompt_id") for p in after]
    if ids_before != ids_after:
        raise ValueError("paired reward-model rows must be the same prompts in the same order")
    return paired_many([prompt_stats(p) for p in before], [prompt_stats(p) for p in after], aggregate, samples, seed)


def accuracy(prompts: list[dict], samples: int = 1000, seed: int = 0) -> Estimate | None:
    """Pairwise accuracy of any per-reply value against human ranks (n: prompts; `pair_count` counts the reply
    pairs); None when no pair is readable."""
    per_prompt = [prompt_stats(p) for p in prompts]
    estimate = bootstrap_many(per_prompt, lambda xs: {"a": aggregate(xs)["pairwise_accuracy"]}, samples, seed)["a"]
    return None if estimate.value is None else estimate

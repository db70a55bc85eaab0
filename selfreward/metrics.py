"""Reward-modeling metrics: how well a judge's scores agree with human rankings.

Each prompt has replies with human ranks (0 = best) and judge scores (None = unreadable).
- pairwise accuracy: of reply pairs with different human ranks and two readable scores, the
  share where the better-ranked reply got the strictly higher score (score ties count as wrong;
  their share is reported separately as `pair_ties`).
- 5-best: of replies whose score rounds to 5, the share that humans ranked best (rank 0).
- exact match: share of prompts whose scores order the replies as the humans do
  (`orders_as_humans`, the same rule that decides which judgments become EFT data).
- Spearman / Kendall tau: rank correlation between scores and human quality (-rank), per prompt,
  averaged over prompts with every score readable; a prompt whose scores are all equal has no
  defined correlation and counts as 0.
Confidence intervals: a percentile bootstrap over prompts.
"""
from __future__ import annotations

import math
import random

from scipy import stats


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pair_outcomes(scores: list, ranks: list[int]) -> tuple[int, int, int]:
    """(correct, tied, total) over reply pairs with different human ranks and readable scores."""
    correct = tied = total = 0
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] == ranks[j] or scores[i] is None or scores[j] is None:
                continue
            total += 1
            if scores[i] == scores[j]:
                tied += 1
            elif _sign(scores[i] - scores[j]) == _sign(ranks[j] - ranks[i]):
                correct += 1
    return correct, tied, total


def orders_as_humans(scores: list, ranks: list[int]) -> bool:
    """Every score readable, and for every two replies with different human ranks the better-ranked
    one (lower rank) has the strictly higher score; a score tie between them is a disagreement."""
    if any(s is None for s in scores):
        return False
    return all(scores[i] > scores[j] for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j])


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
    fives = [r for s, r in zip(scores, ranks) if s is not None and math.floor(s + 0.5) == 5]
    return {"correct": correct, "tied": tied, "pairs": total, "five": len(fives),
            "five_best": sum(r == 0 for r in fives), "match": orders_as_humans(scores, ranks),
            "spearman": correlation(scores, ranks, "spearman"), "kendall": correlation(scores, ranks, "kendall"),
            "judgments": prompt.get("judgments", len(scores)),
            "failures": prompt.get("failures", sum(s is None for s in scores))}


def aggregate(per_prompt: list[dict]) -> dict:
    def total(key):
        return sum(p[key] for p in per_prompt)

    def ratio(num, den):
        return num / den if den else None

    def mean(key):
        values = [p[key] for p in per_prompt if p[key] is not None]
        return sum(values) / len(values) if values else None

    return {
        "pairwise_accuracy": ratio(total("correct"), total("pairs")),
        "pair_ties": ratio(total("tied"), total("pairs")),
        "five_best": ratio(total("five_best"), total("five")),
        "exact_match": ratio(total("match"), len(per_prompt)),
        "spearman": mean("spearman"),
        "kendall": mean("kendall"),
        "parse_failure_rate": ratio(total("failures"), total("judgments")),
        "prompts": len(per_prompt),
    }


def metrics(prompts: list[dict]) -> dict:
    """Point estimates over prompts given as {"scores": [...], "ranks": [...]}."""
    return aggregate([prompt_stats(p) for p in prompts])


def bootstrap(prompts: list[dict], samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Each metric with a percentile bootstrap interval over prompts: {name: (value, low, high)}."""
    per_prompt = [prompt_stats(p) for p in prompts]
    point = aggregate(per_prompt)
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {k: [] for k in point if k != "prompts"}
    for _ in range(samples):
        resampled = aggregate([per_prompt[rng.randrange(len(per_prompt))] for _ in per_prompt])
        for key in draws:
            if resampled[key] is not None:
                draws[key].append(resampled[key])
    result = {}
    for key, values in draws.items():
        values.sort()
        if point[key] is None or not values:
            result[key] = (point[key], None, None)
            continue
        low = values[int((1 - level) / 2 * (len(values) - 1))]
        high = values[int((1 + level) / 2 * (len(values) - 1))]
        result[key] = (point[key], low, high)
    return result


def mean_interval(values: list[float], samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict | None:
    """The mean of per-prompt values with a percentile bootstrap interval over prompts, or None when empty."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(len(values))] for _ in values) / len(values) for _ in range(samples))
    return {"value": sum(values) / len(values), "low": means[int((1 - level) / 2 * (samples - 1))],
            "high": means[int((1 + level) / 2 * (samples - 1))], "n": len(values)}


def pairwise_accuracy(rows: list[dict], samples: int = 1000, seed: int = 0) -> dict | None:
    """Pairwise accuracy of any per-reply value against human ranks (`scores` beside `ranks` per prompt),
    with its bootstrap interval: {value, low, high, pairs}."""
    value, low, high = bootstrap(rows, samples, seed)["pairwise_accuracy"]
    pairs = sum(pair_outcomes(r["scores"], r["ranks"])[2] for r in rows)
    return None if value is None else {"value": value, "low": low, "high": high, "pairs": pairs}

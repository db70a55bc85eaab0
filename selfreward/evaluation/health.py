"""Judge health, computed once: whether a judge's verdicts or scores can say anything at all, by rules a
blind judge cannot pass.

A number from an instrument that cannot see is not a finding. Two kinds of judge:
- a pairwise judge (head to head, the reference comparison): asked each pair in both orders. A judge blind
  to content that picks the first slot with probability p still agrees with itself across the two orders
  2p(1−p) of the time (at least 25% for any p in [0.15, 0.85]), so a fixed threshold on order agreement
  passes blind judges. The rule compares its order agreement with what a blind judge at its own first-slot
  rate gives (Fisher's exact test of the association between its two verdicts, `beyond_blind`): informative
  only at p < BLIND_ALPHA, so a blind judge passes at most 2.5% of the time, whatever its p. Also uninformative: one slot picked more than
  MAX_SLOT_SHARE of the time, or most verdicts unreadable;
- a scoring judge (reward-model agreement, MT-Bench ratings, the self-judge of an iteration): scale-free
  rules, since the metrics they guard (pairwise accuracy, rank correlations) ignore the scale: uninformative
  when most scores are unreadable or when two of its items tie on more than MAX_TIE_SHARE of pairs (it barely
  tells items apart). A perfect ranker with compressed scores passes; whether a scorer agrees with anything
  beyond chance is its instrument's own measurement (against 50%, and beside the trivial judges). The share of
  the most frequent rounded score is reported beside it (the paper's "without EFT the judge almost always gives
  4"), with an alarm above ONE_SCORE_ALARM.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

MAX_SLOT_SHARE = 0.9
BLIND_ALPHA = 0.025  # one-sided: a blind judge passes at most 2.5% of the time
MAX_UNREADABLE = 0.5
MAX_TIE_SHARE = 0.8  # two items with the same score: a judge that ties 80% of pairs barely ranks
ONE_SCORE_ALARM = 0.8


@dataclass(frozen=True)
class Health:
    informative: bool
    why_not: str | None = None
    stats: dict = field(default_factory=dict)

    def label(self) -> str:
        return "informative" if self.informative else f"uninformative: {self.why_not}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Health | None:
        return None if data is None else cls(**data)


def _verdict(reasons: list[str], readable: bool, stats: dict) -> Health:
    if not readable:
        reasons = reasons or ["nothing it said was readable"]
    return Health(not reasons, "; ".join(reasons) or None, stats)


def beyond_blind(forward: list, backward: list, samples: int = 1000, seed: int = 0) -> dict:
    """Order agreement beyond a blind judge. A judge blind to content gives its two verdicts of a pair
    independently, so it agrees across orders p_f(1−p_b) + (1−p_f)p_b of the time (2p(1−p) at one first-slot
    rate p); a judge that sees prefers the same answer in both orders, so 'slot a' forward goes with 'slot b'
    backward. The test is Fisher's exact test of that association (one-sided) on the prompts with both verdicts
    readable: exact at any p, where a bootstrap of the excess is not (with no prompt lost in both orders every
    resample shows an excess). Returned: the excess in agreement with its bootstrap interval (descriptive), the
    blind judge's agreement, and the test's p-value."""
    from scipy.stats import fisher_exact

    both = [(f == "a", b == "a") for f, b in zip(forward, backward, strict=True) if f is not None and b is not None]
    if not both:
        return {"value": None, "low": None, "high": None, "blind_agreement": None, "p": None, "prompts": 0}
    f, b = np.array(both, float).T

    def excess(index):
        pf, pb = f[index].mean(axis=-1), b[index].mean(axis=-1)
        blind = pf * (1 - pb) + (1 - pf) * pb
        return (f[index] != b[index]).mean(axis=-1) - blind, blind

    n = len(both)
    value, blind = excess(np.arange(n))
    draws = np.sort(excess(np.random.default_rng(seed).integers(0, n, size=(samples, n)))[0])
    table = [[int(((f == 1) & (b == 0)).sum()), int(((f == 1) & (b == 1)).sum())],
             [int(((f == 0) & (b == 0)).sum()), int(((f == 0) & (b == 1)).sum())]]
    return {"value": float(value), "low": float(draws[int(0.025 * (samples - 1))]),
            "high": float(draws[int(0.975 * (samples - 1))]), "blind_agreement": float(blind),
            "p": float(fisher_exact(table, alternative="greater")[1]), "prompts": n}


def pairwise(forward: list, backward: list, samples: int = 1000, seed: int = 0) -> Health:
    """Verdicts 'a' / 'b' / None with X in slot a (forward) and in slot b (backward), prompt by prompt."""
    readable = [v for v in forward + backward if v is not None]
    consistent = sum((f, b) in (("a", "b"), ("b", "a")) for f, b in zip(forward, backward, strict=True))
    first_slot = readable.count("a") / len(readable) if readable else None
    consistency = consistent / len(forward) if forward else None
    unreadable = 1 - len(readable) / (len(forward) + len(backward)) if forward else None
    excess = beyond_blind(forward, backward, samples, seed) if readable else None
    reasons = []
    if excess is not None and not (excess["p"] is not None and excess["p"] < BLIND_ALPHA):
        reasons.append(f"its two orders agree on {consistency:.0%} of prompts, not shown above a blind judge at its "
                       f"first-slot rate" + (f" ({excess['blind_agreement']:.0%}; excess {100 * excess['value']:+.0f} "
                                             f"[{100 * excess['low']:.0f}, {100 * excess['high']:.0f}] points, "
                                             f"p = {excess['p']:.2f})" if excess["p"] is not None else ""))
    if first_slot is not None and not 1 - MAX_SLOT_SHARE <= first_slot <= MAX_SLOT_SHARE:
        reasons.append(f"it picks the first slot {first_slot:.0%} of the time")
    if unreadable is not None and unreadable > MAX_UNREADABLE:
        reasons.append(f"{unreadable:.0%} of its verdicts are unreadable")
    return _verdict(reasons, bool(readable), {"first_slot_rate": first_slot, "order_consistency": consistency,
                                              "beyond_blind": excess, "unreadable_share": unreadable})


def of_comparisons(records: list[dict]) -> Health:
    """The health of the judge behind `both_orders`' records: a reward model's (`rewards`) or a pairwise
    judge's (`pairwise`)."""
    if records and "rewards" in records[0]["forward"]:
        return rewards(records)
    return pairwise([r["forward"]["verdict"] for r in records], [r["backward"]["verdict"] for r in records])


def rewards(records: list[dict]) -> Health:
    """A reward-model judge (`evaluation_judge.RewardJudge`): it has no slot to prefer and its two orders agree
    by construction, so what can fail is the scale: rewards that barely vary, or comparisons mostly tied. The
    records are `both_orders`' (each verdict carries both rewards)."""
    values = [r for record in records for r in record["forward"]["rewards"]]
    ties = sum(record["outcome"] == "tie" for record in records)
    spread = math.sqrt(sum((v - sum(values) / len(values)) ** 2 for v in values) / len(values)) if values else 0.0
    tie_share = ties / len(records) if records else None
    reasons = []
    if tie_share is not None and tie_share > MAX_UNREADABLE:
        reasons.append(f"{tie_share:.0%} of its comparisons are ties")
    if values and spread == 0:
        reasons.append("its rewards are all the same")
    return _verdict(reasons, bool(values), {"reward_spread": spread, "tie_share": tie_share,
                                            "reward_range": [min(values), max(values)] if values else None,
                                            "first_slot_rate": None, "order_consistency": None,
                                            "unreadable_share": 0.0})


def tie_share(values: list[float]) -> float | None:
    """The share of pairs of items whose scores are equal: scale-free, unlike a standard deviation."""
    n = len(values)
    return sum(k * (k - 1) for k in Counter(values).values()) / (n * (n - 1)) if n > 1 else None


def scores(values: list[float | None], low: int, high: int) -> Health:
    """Scores on the range low..high (None = unreadable)."""
    readable = [v for v in values if v is not None]
    unreadable = 1 - len(readable) / len(values) if values else None
    spread = math.sqrt(sum((v - sum(readable) / len(readable)) ** 2 for v in readable) / len(readable)) \
        if readable else 0.0
    ties = tie_share(readable)
    rounded = Counter(math.floor(v + 0.5) for v in readable)
    top, top_count = rounded.most_common(1)[0] if rounded else (None, 0)
    top_share = top_count / len(readable) if readable else None
    reasons = []
    if unreadable is not None and unreadable > MAX_UNREADABLE:
        reasons.append(f"{unreadable:.0%} of its scores are unreadable")
    if ties is not None and ties > MAX_TIE_SHARE:
        reasons.append(f"two of its items tie on {ties:.0%} of pairs (it barely tells them apart)")
    return _verdict(reasons, bool(readable), {
        "unreadable_share": unreadable, "score_spread": spread, "tie_share": ties, "most_frequent_score": top,
        "its_share": top_share, "one_score_alarm": top_share is not None and top_share > ONE_SCORE_ALARM,
        "histogram": {str(s): rounded.get(s, 0) for s in range(low, high + 1)}})

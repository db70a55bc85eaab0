"""Judge health, computed once: whether a judge's verdicts or scores can say anything at all.

A number from an instrument that cannot see is not a finding. Two kinds of judge:
- a pairwise judge (head to head): uninformative when it mostly answers by position (its two orders of
  the same pair agree on fewer than MIN_ORDER_CONSISTENCY of prompts, or it picks one slot more than
  MAX_SLOT_SHARE of the time) or leaves most verdicts unreadable;
- a scoring judge (reward model, MT-Bench ratings, the self-judge of an iteration): uninformative when
  most scores are unreadable, or its scores barely vary (standard deviation below MIN_RELATIVE_SPREAD of
  its score range). The share of the most frequent rounded score is reported beside it (the paper's
  "without EFT the judge almost always gives 4"), with an alarm above ONE_SCORE_ALARM.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

MIN_ORDER_CONSISTENCY = 0.25
MAX_SLOT_SHARE = 0.9
MAX_UNREADABLE = 0.5
MIN_RELATIVE_SPREAD = 0.05  # 0.25 on a 0-5 scale, 0.45 on 1-10
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


def pairwise(forward: list, backward: list) -> Health:
    """Verdicts 'a' / 'b' / None with X in slot a (forward) and in slot b (backward), prompt by prompt."""
    readable = [v for v in forward + backward if v is not None]
    consistent = sum((f, b) in (("a", "b"), ("b", "a")) for f, b in zip(forward, backward, strict=True))
    first_slot = readable.count("a") / len(readable) if readable else None
    consistency = consistent / len(forward) if forward else None
    unreadable = 1 - len(readable) / (len(forward) + len(backward)) if forward else None
    reasons = []
    if consistency is not None and consistency < MIN_ORDER_CONSISTENCY:
        reasons.append(f"its two orders agree on {consistency:.0%} of prompts (< {MIN_ORDER_CONSISTENCY:.0%})")
    if first_slot is not None and not 1 - MAX_SLOT_SHARE <= first_slot <= MAX_SLOT_SHARE:
        reasons.append(f"it picks the first slot {first_slot:.0%} of the time")
    if unreadable is not None and unreadable > MAX_UNREADABLE:
        reasons.append(f"{unreadable:.0%} of its verdicts are unreadable")
    return _verdict(reasons, bool(readable), {"first_slot_rate": first_slot, "order_consistency": consistency,
                                              "unreadable_share": unreadable})


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


def scores(values: list[float | None], low: int, high: int) -> Health:
    """Scores on the range low..high (None = unreadable)."""
    readable = [v for v in values if v is not None]
    unreadable = 1 - len(readable) / len(values) if values else None
    spread = math.sqrt(sum((v - sum(readable) / len(readable)) ** 2 for v in readable) / len(readable)) \
        if readable else 0.0
    rounded = Counter(math.floor(v + 0.5) for v in readable)
    top, top_count = rounded.most_common(1)[0] if rounded else (None, 0)
    top_share = top_count / len(readable) if readable else None
    reasons = []
    if unreadable is not None and unreadable > MAX_UNREADABLE:
        reasons.append(f"{unreadable:.0%} of its scores are unreadable")
    if readable and spread < MIN_RELATIVE_SPREAD * (high - low):
        reasons.append(f"its scores are nearly constant (standard deviation {spread:.2f})")
    return _verdict(reasons, bool(readable), {
        "unreadable_share": unreadable, "score_spread": spread, "most_frequent_score": top, "its_share": top_share,
        "one_score_alarm": top_share is not None and top_share > ONE_SCORE_ALARM,
        "histogram": {str(s): rounded.get(s, 0) for s in range(low, high + 1)}})

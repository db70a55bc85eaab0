"""Implicit-reward ranking (CREAM, Wang et al., ICLR 2025): the candidates are ranked by the DPO implicit
reward log pi_{M_t}(y|x) - log pi_{M_{t-1}}(y|x) (M_0: the base model) instead of the judge's score, which a
small model gives unreliably."""
from __future__ import annotations

from typing import Literal

from selfreward.method.fixes import Fix, Option, register


def implicit_rewards(current: list[float], reference: list[float]) -> list[float]:
    """log pi(y|x) - log pi_ref(y|x) per candidate, from each model's summed log-probabilities."""
    return [a - b for a, b in zip(current, reference, strict=True)]


def read_implicit(step, records: list[dict], policy: str, reference: str, key: str):
    """Each candidate's implicit reward of `policy` against `reference`, stored under `key` (the judge's score
    kept as `judge_score` when `key` is `score`)."""
    texts = [(r["prompt"], c["response"]) for r in records for c in r["candidates"]]
    logps = {}
    for label, path in (("policy", policy), ("reference", reference)):
        with step.backend(path) as (backend, chat):
            logps[label] = [lp for lp, _ in backend.continuation_logprobs(
                [(chat.prompt(p), chat.completion(y)) for p, y in texts], desc=f"implicit reward: {label}")]
    rewards = iter(implicit_rewards(logps["policy"], logps["reference"]))
    for record in records:
        for c in record["candidates"]:
            if key == "score":
                c["judge_score"] = c["score"]
            c[key] = next(rewards)


@register
class ImplicitReward(Fix):
    name = "implicit_reward"
    options = {"reward": Option("judge", Literal["judge", "implicit"], "what ranks the candidates")}
    source = "CREAM, Wang et al., ICLR 2025"
    rule = ("candidates ranked by the DPO implicit reward log π_{M_t} − log π_{M_{t−1}}, not by the judge's score")
    order = 10  # the ranking the others read

    def prepare(self, step, records):
        read_implicit(step, records, step.current, step.model_before(step.t - 1), "score")

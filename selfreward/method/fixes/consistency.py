"""Consistency regularisation (CREAM, Wang et al., ICLR 2025): the Kendall tau between the current and the
previous model's rankings of a prompt's candidates says how far its pair can be trusted, C = (tau + 1) / 2,
and the pair's DPO loss is C * DPO(y+, y-) + (1 - C) * DPO(y-, y+) (the lean DPO loss reads the weight)."""
from __future__ import annotations

import math

from selfreward.config import ConfigError
from selfreward.method.fixes import Fix, Option, get, register
from selfreward.method.self_instruction import judge_candidates


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b between two rankings of the same candidates; 0 where it is undefined (a constant)."""
    from scipy import stats

    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return 0.0
    tau = stats.kendalltau(a, b)[0]
    return 0.0 if math.isnan(tau) else float(tau)


def consistency_weight(current: list[float], previous: list[float]) -> float:
    """C = (tau + 1) / 2: 1 when the two models rank the candidates alike, 0 when exactly reversed."""
    return (kendall_tau(current, previous) + 1) / 2


@register
class Consistency(Fix):
    name = "consistency"
    options = {"consistency": Option(False, bool, "weight each pair by the two models' agreement")}
    source = "CREAM, Wang et al., ICLR 2025"
    rule = ("each pair's DPO loss weighted by C = (τ + 1)/2 between the pair and its reverse, τ the Kendall τ of "
            "M_t's and M_{t−1}'s rankings of the prompt's candidates")
    weighs_pairs = True
    order = 20  # after the ranking (implicit_reward), by the same rule for the previous model

    def check(self, section, key, t, cfg):
        if t == 1:
            raise ConfigError(f"{key}.consistency: needs the previous model's ranking of the candidates, and the first "
                              "iteration (from M1) has no previous model; use it from M2 on (an ablation variant "
                              "with start: m2)")

    def prepare(self, step, records):
        """The previous model ranks the same candidates as the current one does: by its implicit reward
        against the model before it, or by judging them."""
        implicit = get("implicit_reward")
        if implicit.on(step.section):
            from selfreward.method.fixes.implicit_reward import read_implicit

            read_implicit(step, records, step.model_before(step.t - 1), step.model_before(step.t - 2), "previous_score")
            return
        with step.backend(step.model_before(step.t - 1)) as (backend, chat):
            previous = judge_candidates(backend, chat, records, step.cfg.judge, step.seed + 2,
                                        desc="previous model's judgments")
        for record, again in zip(records, previous, strict=True):
            for c, judged in zip(record["candidates"], again["candidates"], strict=True):
                c["previous_score"] = judged["score"]

    def annotate(self, made, scored, section):
        ranked = [c for c in scored if c.get("previous_score") is not None]
        made["weight"] = consistency_weight([c["score"] for c in ranked], [c["previous_score"] for c in ranked])

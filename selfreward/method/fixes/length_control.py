"""Length control (Meta-Rewarding, Wu et al., 2024; NeMo-Aligner's self-rewarding recipe): among the
candidates within rho of the best score the shortest is chosen, among those within rho of the worst the
longest rejected, so that DPO does not learn "longer is better" from a judge that prefers length."""
from __future__ import annotations

from selfreward.config import ConfigError
from selfreward.method.fixes import Fix, Option, register
from selfreward.method.prompts import MAX_SCORE


def length_controlled(scored: list[dict], rho: float) -> tuple[dict, dict] | None:
    """Chosen: the shortest candidate within rho of the best score; rejected: the longest within rho of the
    worst (lengths in characters). None when the two would be the same candidate."""
    if len(scored) < 2:
        return None
    best, worst = max(c["score"] for c in scored), min(c["score"] for c in scored)
    chosen = min((c for c in scored if c["score"] >= best - rho), key=lambda c: len(c["response"]))
    rejected = max((c for c in scored if c["score"] <= worst + rho), key=lambda c: len(c["response"]))
    return None if chosen is rejected else (chosen, rejected)


@register
class LengthControl(Fix):
    name = "length_control"
    options = {"length_rho": Option(0.0, float, "rho, in judge points: 0 = the paper's best and worst")}
    source = "Meta-Rewarding, Wu et al., 2024; NeMo-Aligner"
    rule = "the shortest candidate within ρ of the best score is chosen, the longest within ρ of the worst rejected"
    chooses = True

    def check(self, section, key, t, cfg):
        rho = self.value(section, "length_rho")
        if not 0 <= rho <= MAX_SCORE:
            raise ConfigError(f"{key}.length_rho: must be in [0, {MAX_SCORE}] (the judge's score range), got {rho:g}")
        if section.options.get("reward") == "implicit":
            raise ConfigError(f"{key}.length_rho: is in judge points: it needs reward: judge, not implicit "
                              "(implicit rewards are log-ratios)")

    def choose(self, scored, record, section):
        return length_controlled(scored, self.value(section, "length_rho"))

"""Anchored rejection (Temporal Self-Rewarding, 2025): the rejected reply is the lowest-scored of an anchor
model's candidates for the same prompt, judged by the current model, so that the pair keeps a clear gap as the
current model's own candidates grow alike. The paper anchors to its initial SFT model (M1 here); `base`, M0,
is allowed, but a base model's candidates rarely end, and a cut one enters no pair."""
from __future__ import annotations

from selfreward.config import ConfigError, model_reference_ok, model_sequence
from selfreward.method.fixes import Fix, Option, register
from selfreward.method.self_instruction import judge_candidates, sample_candidates, usable


def anchored(scored: list[dict], anchor_scored: list[dict]) -> tuple[dict, dict] | None:
    """Chosen: the current model's best candidate; rejected: the anchor model's worst for the same prompt,
    both scored by the current judge."""
    if not scored or not anchor_scored:
        return None
    return max(scored, key=lambda c: c["score"]), min(anchor_scored, key=lambda c: c["score"])


def exists_at(anchor: str, t: int, iterations: int) -> bool:
    """Whether the anchor is a model that exists when the iteration from M_t runs: M0, the SFT baseline, M1 ..
    M_t, or a model spec (anything not a model of the run)."""
    names = model_sequence(iterations)
    return anchor not in names or names.index(anchor) <= t


@register
class Anchored(Fix):
    name = "anchored"
    options = {"anchor": Option("", str, "the anchor model: base (M0), a model of the run, or a model spec")}
    source = "Temporal Self-Rewarding, 2025"
    rule = "the rejected reply is the lowest-scored of the anchor model's candidates for the same prompt"
    chooses = True
    order = 30

    def check(self, section, key, t, cfg):
        anchor, names = self.value(section, "anchor"), model_sequence(cfg.iterations)
        if not model_reference_ok(anchor, ["base"] + names):
            raise ConfigError(f"{key}.anchor: unknown model {anchor!r} (expected base, {', '.join(names)}, or a "
                              "model spec)")
        if not exists_at(anchor, t, cfg.iterations):
            ready = ", ".join(["base"] + names[:t + 1])
            raise ConfigError(f"{key}.anchor: {anchor} does not exist yet at the iteration from M{t} (it is trained "
                              f"later); use one of {ready}, or a model spec")

    def prepare(self, step, records):
        with step.backend(step.model(self.value(step.section, "anchor"))) as (backend, chat):
            anchors = sample_candidates(backend, chat, [r["prompt"] for r in records], step.cfg.candidates,
                                        step.seed + 3)
        with step.backend(step.current) as (backend, chat):
            anchors = judge_candidates(backend, chat, anchors, step.cfg.judge, step.seed + 4,
                                       desc="judging the anchor's candidates")
        for record, anchor in zip(records, anchors, strict=True):
            record["anchor_candidates"] = anchor["candidates"]

    def choose(self, scored, record, section):
        return anchored(scored, [c for c in record.get("anchor_candidates", []) if usable(c)])

    def no_pair_reason(self, records, section, max_new_tokens):
        anchors = [c for r in records for c in r.get("anchor_candidates", [])]
        return (f"of the anchor {self.value(section, 'anchor')}'s {len(anchors)} candidates, "
                f"{sum(usable(c) for c in anchors)} finished with a score; a candidate cut at {max_new_tokens} "
                "tokens enters no pair")

"""A meta-judge (Meta-Rewarding, Wu et al., 2024): M_t compares two of its own judgments of the same reply;
the preferred and the rejected judgment become judge-training pairs, trained by DPO beside the answer pairs,
so that the judge improves with the actor."""
from __future__ import annotations

import math

from selfreward.method.fixes import Fix, Option, register
from selfreward.method.prompts import JUDGE_TEMPLATES, META_JUDGE
from selfreward.method.self_instruction import usable


def meta_items(records: list[dict]) -> list[dict]:
    """For each usable candidate with two judgments whose scores differ, the two judgments to compare."""
    items = []
    for record in records:
        for c in record["candidates"]:
            judgments = [j for j in c.get("judge", {}).get("judgments", []) if j["score"] is not None]
            if not usable(c) or len(judgments) < 2:
                continue
            first = judgments[0]
            other = next((j for j in judgments[1:] if j["score"] != first["score"]), None)
            if other is not None:
                items.append({"prompt": record["prompt"], "response": c["response"], "a": first, "b": other})
    return items


def meta_preference(forward_p_a: float | None, backward_p_a: float | None) -> str | None:
    """Which judgment the meta-judge prefers over both orders (a in slot a forward, in slot b backward):
    'a' or 'b', None for a tie or no reading."""
    if forward_p_a is None or backward_p_a is None:
        return None
    p = 0.5 * (forward_p_a + (1 - backward_p_a))
    return "a" if p > 0.5 else "b" if p < 0.5 else None


def judge_pairs(items: list[dict], preferences: list[str | None], template: str) -> list[dict]:
    """Judge-training pairs: the judge prompt of the reply, the preferred judgment (its reasoning and its
    rounded score, as EFT teaches it) chosen, the other rejected."""
    judge = JUDGE_TEMPLATES[template]
    found = []
    for item, preferred in zip(items, preferences, strict=True):
        if preferred is None:
            continue
        chosen, rejected = (item["a"], item["b"]) if preferred == "a" else (item["b"], item["a"])
        found.append({"prompt": judge.prompt(item["prompt"], item["response"]),
                      "chosen": judge.target(chosen["text"], math.floor(chosen["score"] + 0.5)),
                      "rejected": judge.target(rejected["text"], math.floor(rejected["score"] + 0.5)),
                      "chosen_score": chosen["score"], "rejected_score": rejected["score"], "judge_pair": True})
    return found


def meta_judge(backend, chat, items: list[dict]) -> list[str | None]:
    """The model's meta-judgments of its judgment pairs: P(a) read after the answer prefix, in both orders."""
    def prompts(order):
        return [chat.prompt(META_JUDGE.prompt(i["prompt"], i["response"], order(i)[0]["text"], order(i)[1]["text"]))
                + META_JUDGE.answer_prefix for i in items]

    forward = backend.option_probs(prompts(lambda i: (i["a"], i["b"])), list(META_JUDGE.options))
    backward = backend.option_probs(prompts(lambda i: (i["b"], i["a"])), list(META_JUDGE.options))
    return [meta_preference(None if f is None else f[0], None if b is None else b[0])
            for (f, _), (b, _) in zip(forward, backward, strict=True)]


@register
class MetaJudge(Fix):
    name = "meta_judge"
    options = {"meta_judge": Option(False, bool, "train the judge on pairs of its own judgments")}
    source = "Meta-Rewarding, Wu et al., 2024"
    rule = "M_t compares two of its own judgments of a reply; judge pairs trained by DPO beside the answer pairs"

    def more_pairs(self, step, records):
        items = meta_items(records)
        with step.backend(step.current) as (backend, chat):
            found = judge_pairs(items, meta_judge(backend, chat, items), step.cfg.judge.prompt)
        step.counts["meta_judgments"] = len(items)
        return found

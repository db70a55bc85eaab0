"""The small-model fixes of self-rewarding, as options of the same iteration (the `aift` section; the
paper's recipe when all are off), and the ablation stage that runs each one from a model of the run.

The paper showed its recipe at 70B; at 7-8B public reproductions see little or no gain, and later work
aims at what a small model lacks, a reliable self-judge:
- implicit-reward ranking (CREAM, Wang et al., ICLR 2025): candidates ranked by the DPO implicit reward
  log pi_{M_t}(y|x) - log pi_{M_{t-1}}(y|x) instead of the judge's score (`aift.reward: implicit`);
- consistency regularisation (CREAM): the Kendall tau between the current and the previous model's
  rankings of a prompt's candidates sets how much that prompt's pair is trusted, C = (tau + 1) / 2, and
  its DPO loss is C * DPO(y+, y-) + (1 - C) * DPO(y-, y+) (`aift.consistency`);
- length control (Meta-Rewarding, Wu et al., 2024; NeMo-Aligner's self-rewarding recipe): among the
  candidates within rho of the best score the shortest is chosen, among those within rho of the worst the
  longest rejected (`aift.length_rho`);
- a meta-judge (Meta-Rewarding): the model compares two of its own judgments of the same reply; the
  preferred and the rejected judgment become judge-training pairs, trained by DPO beside the answer pairs
  (`aift.meta_judge`);
- anchored rejection (Temporal Self-Rewarding, 2025): the rejected reply is the lowest-scored of the anchor
  model's candidates for the same prompt (`aift.anchor`: the paper anchors to its initial SFT model, here
  M1; `base`, M0, is allowed, but a base model's candidates rarely end, and cut ones enter no pair).
Each rule is a pure function of candidate records (tests check each on constructed data); `run_variant`
is the ablation's stage.
"""
from __future__ import annotations

import math

from scipy import stats

from selfreward.io import read_jsonl, write_jsonl
from selfreward.method.prompts import JUDGE_TEMPLATES, META_JUDGE
from selfreward.method.self_instruction import best_and_worst, judge_candidates, pair, sample_candidates, usable

# ---------------------------------------------------------------- choosing a pair


def length_controlled(scored: list[dict], rho: float) -> tuple[dict, dict] | None:
    """Chosen: the shortest candidate within rho of the best score; rejected: the longest within rho of the
    worst (lengths in characters). None when the two would be the same candidate."""
    if len(scored) < 2:
        return None
    best, worst = max(c["score"] for c in scored), min(c["score"] for c in scored)
    chosen = min((c for c in scored if c["score"] >= best - rho), key=lambda c: len(c["response"]))
    rejected = max((c for c in scored if c["score"] <= worst + rho), key=lambda c: len(c["response"]))
    return None if chosen is rejected else (chosen, rejected)


def anchored(scored: list[dict], anchor_scored: list[dict]) -> tuple[dict, dict] | None:
    """Chosen: the current model's best candidate; rejected: the anchor model's worst for the same prompt,
    both scored by the current judge."""
    if not scored or not anchor_scored:
        return None
    return max(scored, key=lambda c: c["score"]), min(anchor_scored, key=lambda c: c["score"])


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b between two rankings of the same candidates; 0 where it is undefined (a constant)."""
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return 0.0
    tau = stats.kendalltau(a, b)[0]
    return 0.0 if math.isnan(tau) else float(tau)


def consistency_weight(current: list[float], previous: list[float]) -> float:
    """C = (tau + 1) / 2: 1 when the two models rank the candidates alike, 0 when exactly reversed."""
    return (kendall_tau(current, previous) + 1) / 2


def pairs(records: list[dict], aift) -> list[dict]:
    """One pair per prompt by the section's rule (anchored rejection, length control, or the paper's best and
    worst), on `score` (the judge's, or the implicit reward); with `consistency`, each pair carries its
    weight C from its prompt's candidates' `score` and `previous_score`."""
    found = []
    for record in records:
        scored = [c for c in record["candidates"] if usable(c)]
        if aift.anchor:
            picked = anchored(scored, [c for c in record.get("anchor_candidates", []) if usable(c)])
        elif aift.length_rho:
            picked = length_controlled(scored, aift.length_rho)
        else:
            picked = best_and_worst(scored)
        made = picked and pair(record["prompt"], *picked)
        if not made:
            continue
        if aift.consistency:
            ranked = [c for c in scored if c.get("previous_score") is not None]
            made["weight"] = consistency_weight([c["score"] for c in ranked], [c["previous_score"] for c in ranked])
        found.append(made)
    return found


def no_pair_reason(records: list[dict], aift, max_new_tokens: int) -> str:
    """Why `pairs` found none, in one line: with an anchor, how many of the anchor's candidates could be used."""
    why = f"no usable preference pair from {len(records)} prompts"
    if not aift.anchor:
        return why
    anchors = [c for r in records for c in r.get("anchor_candidates", [])]
    return (f"{why} (of the anchor {aift.anchor}'s {len(anchors)} candidates, {sum(usable(c) for c in anchors)} "
            f"finished with a score; a candidate cut at {max_new_tokens} tokens enters no pair)")


def weighted_dpo_revision(aift) -> str:
    """For the fingerprint of a stage that trains weighted pairs: until 2026-12-03 the Trainer dropped the
    `weight` column before the loss saw it (a consistency run trained as the paper's recipe), so such stages
    from before are not taken as done. Empty for every other stage, whose fingerprints stay as they were."""
    return "|weights reach the loss" if aift.consistency else ""


def implicit_rewards(current: list[float], reference: list[float]) -> list[float]:
    """log pi(y|x) - log pi_ref(y|x) per candidate, from each model's summed log-probabilities."""
    return [a - b for a, b in zip(current, reference, strict=True)]


# ---------------------------------------------------------------- the meta-judge

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
            for (f, _), (b, _) in zip(forward, backward)]


# ---------------------------------------------------------------- the ablation's stage

OPTIONS = {  # what each option does, for the chapters
    "reward": ("implicit", "candidates ranked by the DPO implicit reward log π_{M_t} − log π_{M_{t−1}} (CREAM), "
                           "not by the judge"),
    "consistency": (True, "each pair's DPO loss weighted by C = (τ + 1)/2 between the pair and its reverse, τ the "
                          "Kendall τ of M_t's and M_{t−1}'s rankings of the prompt's candidates (CREAM)"),
    "length_rho": (None, "length control: the shortest candidate within ρ of the best is chosen, the longest "
                         "within ρ of the worst rejected (Meta-Rewarding)"),
    "meta_judge": (True, "M_t compares two of its own judgments of a reply; judge pairs trained by DPO beside the "
                         "answer pairs (Meta-Rewarding)"),
    "anchor": (None, "the rejected reply is the lowest-scored of the anchor model's candidates (Temporal "
                     "Self-Rewarding)"),
}


def describe(aift, t: int) -> str:
    """A variant in words: its options beside the paper's recipe, and where it starts."""
    changed = [f"**{key}** = {getattr(aift, key)!r}: {text}" for key, (value, text) in OPTIONS.items()
               if getattr(aift, key) not in ("judge", False, 0.0, "") and (value is None or getattr(aift, key) == value)]
    return (f"One self-rewarding iteration from M{t}, on the prompts, candidates and judgments of AIFT(M{t}) (those the "
            f"paper's recipe used for M{t + 1}), with: " + ("; ".join(changed) or "the paper's recipe") +
            f". Its model is compared with M{t + 1} in the ablation chapter.")


def run_variant(cfg, run, name: str) -> dict:
    """The ablation variant `name` from M_t: AIFT(M_t)'s own prompts, candidates and judgments (those the
    paper's recipe used), what the variant adds (implicit rewards, the previous model's ranking, the anchor's
    candidates, meta-judgments), its pairs, and DPO(M_t, pairs) -> models/variant_<name>."""
    from selfreward.generation import loaded_backend
    from selfreward.method import training
    from selfreward.method.loop import StageError
    from selfreward.method.run_models import model_path

    aift, t = next((section, start) for n, section, start in cfg.variants() if n == name)
    current = str(run.model(f"m{t}"))

    def model_before(k: int) -> str:
        return model_path(cfg, run, "base") if k <= 0 else str(run.model(f"m{k}"))

    records = read_jsonl(run.candidates(t))
    counts = {"start": f"m{t}", "prompts": len(records), "candidates": sum(len(r["candidates"]) for r in records)}
    if aift.reward == "implicit":
        _implicit(cfg, records, current, model_before(t - 1), "score", loaded_backend)
    if aift.consistency:
        if aift.reward == "implicit":
            _implicit(cfg, records, model_before(t - 1), model_before(t - 2), "previous_score", loaded_backend)
        else:  # the previous model judges the same candidates
            with loaded_backend(model_before(t - 1), cfg) as (backend, chat):
                previous = judge_candidates(backend, chat, records, cfg.judge, cfg.seed + 100 * t + 2,
                                            desc="previous model's judgments")
            for record, again in zip(records, previous):
                for c, judged in zip(record["candidates"], again["candidates"]):
                    c["previous_score"] = judged["score"]
    if aift.anchor:
        with loaded_backend(model_path(cfg, run, aift.anchor), cfg) as (backend, chat):
            anchors = sample_candidates(backend, chat, [r["prompt"] for r in records], cfg.candidates,
                                        cfg.seed + 100 * t + 3)
        with loaded_backend(current, cfg) as (backend, chat):
            anchors = judge_candidates(backend, chat, anchors, cfg.judge, cfg.seed + 100 * t + 4,
                                       desc="judging the anchor's candidates")
        for record, anchor in zip(records, anchors):
            record["anchor_candidates"] = anchor["candidates"]
    found = pairs(records, aift)
    judged_pairs = []
    if aift.meta_judge:
        items = meta_items(records)
        with loaded_backend(current, cfg) as (backend, chat):
            judged_pairs = judge_pairs(items, meta_judge(backend, chat, items), cfg.judge.prompt)
        counts["meta_judgments"] = len(items)
    write_jsonl(run.variant(name) / "candidates.jsonl", records)
    write_jsonl(run.variant(name) / "pairs.jsonl", found + judged_pairs)
    counts.update({"pairs": len(found), "judge_pairs": len(judged_pairs),
                   "prompts_with_a_pair": len({p["prompt"] for p in found})})
    if not found:
        raise StageError(f"variant {name}: {no_pair_reason(records, aift, cfg.candidates.max_new_tokens)}")
    summary = training.dpo(current, run.model(f"variant_{name}"), found + judged_pairs, cfg.dpo, cfg.model,
                           cfg.seed + 100 * t, launch=cfg.launch)
    return {**counts, **{f"train_{k}": v for k, v in summary.items() if k != "examples"}}


def _implicit(cfg, records: list[dict], policy: str, reference: str, key: str, loaded_backend):
    """Each candidate's implicit reward of `policy` against `reference`, stored under `key` (the judge's score
    kept as `judge_score` when `key` is `score`)."""
    texts = [(r["prompt"], c["response"]) for r in records for c in r["candidates"]]
    logps = {}
    for label, path in (("policy", policy), ("reference", reference)):
        with loaded_backend(path, cfg) as (backend, chat):
            logps[label] = [lp for lp, _ in backend.continuation_logprobs(
                [(chat.prompt(p), chat.completion(y)) for p, y in texts], desc=f"implicit reward: {label}")]
    rewards = iter(implicit_rewards(logps["policy"], logps["reference"]))
    for record in records:
        for c in record["candidates"]:
            if key == "score":
                c["judge_score"] = c["score"]
            c[key] = next(rewards)

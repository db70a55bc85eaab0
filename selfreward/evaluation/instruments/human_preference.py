"""Judge-free agreement with human preferences: no judge is asked. Each model reads the human-ranked OASST
validation replies, and we count how often the human-preferred reply of a pair has the higher
length-normalised log-likelihood (mean log-probability per token), and, for a DPO-trained model, the
higher implicit reward log pi(reply) - log pi_ref(reply) against the model it was trained from."""
from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import pandas as pd

from selfreward.evaluation import agreement, register
from selfreward.evaluation.estimates import Estimate
from selfreward.evaluation.instrument import Difference, Instrument, model_steps
from selfreward.io import read_jsonl, write_json
from selfreward.method import data

CLAIMS = {("sft_baseline", "m1"): "eft_like_ift", ("m1", "m2"): "m2_beats_m1", ("m2", "m3"): "m3_beats_m2"}


def reply_logprobs(backend, chat, threads: list[dict], max_tokens: int, desc: str) -> list[dict]:
    """Each ranked reply's log-likelihood under the model, given its prompt (the first `max_tokens` of
    the reply when > 0): one row per prompt, beside the human ranks."""
    items = [(chat.prompt(t["prompt"]), chat.completion(r["text"])) for t in threads for r in t["replies"]]
    flat = iter(backend.continuation_logprobs(items, max_tokens, desc=desc))
    rows = []
    for t in threads:
        scored = [next(flat) for _ in t["replies"]]
        rows.append({"prompt_id": t["prompt_id"], "ranks": [r["rank"] for r in t["replies"]],
                     "logps": [lp for lp, _ in scored], "tokens": [n for _, n in scored]})
    return rows


def normalised(rows: list[dict]) -> list[dict]:
    """Per prompt, each reply's log-likelihood per token as its score."""
    return [{"prompt_id": r["prompt_id"], "ranks": r["ranks"],
             "scores": [lp / max(n, 1) for lp, n in zip(r["logps"], r["tokens"], strict=True)]} for r in rows]


def implicit(rows: list[dict], reference: list[dict]) -> list[dict]:
    """Per prompt, each reply's implicit reward log pi - log pi_ref as its score."""
    return [{"prompt_id": r["prompt_id"], "ranks": r["ranks"], "scores": [a - b for a, b in zip(r["logps"], q["logps"], strict=True)]}
            for r, q in zip(rows, reference, strict=True)]


def threads(cfg, run) -> list[dict]:
    """The validation prompts whose ranked replies are read (evaluation.hp_prompts; 0: every one). The held-out
    training prompts `data.rm_train_size` adds give the reward-model reading its power; this one has its
    power from the validation pairs alone (MDE under 2 points), and reads them only."""
    found = [t for t in read_jsonl(run.rm_eval) if t.get("split", "validation") == "validation"]
    return data.ranked_threads(found, cfg.evaluation.hp_prompts, cfg.item_seed) if cfg.evaluation.hp_prompts else found


def references(cfg) -> dict[str, str]:
    """The implicit reward of a DPO-trained M_{t+1} is measured against M_t, the reference of its DPO."""
    return {f"m{t + 1}": f"m{t}" for t in range(1, cfg.iterations + 1)} if cfg.aift.objective == "dpo" else {}


@register
class HumanPreference(Instrument):
    name = "human_preference"
    title = "Without a judge: agreement with human preferences"
    description = (
        "No judge is asked here. Each model reads the human-ranked OASST validation replies, and we ask how often "
        "it gives the human-preferred reply of a pair (different human ranks) the higher **length-normalised "
        "log-likelihood** (mean log-probability per token). For the DPO-trained models we also use DPO's **implicit "
        "reward**, log π(reply) − log π_ref(reply), with π_ref the model it was trained from. 50% is chance; "
        "brackets are 95% intervals over prompts, and differences between models are paired on the same replies.")
    sections = ("seed", "model", "generation", "aift", "evaluation")
    order = 40

    quality = True

    def measure(self, cfg, run, model, backend, chat):
        return reply_logprobs(backend, chat, threads(cfg, run), cfg.evaluation.hp_max_reply_tokens,
                              desc=f"log-likelihoods {model}")

    def compare(self, cfg, before, after, names):
        e = cfg.evaluation
        paired = agreement.paired_metrics(normalised(before), normalised(after), e.bootstrap_samples, cfg.seed)
        return [Difference("likelihood picks the human-preferred reply", *names, paired["pairwise_accuracy"])]

    def run(self, cfg, run) -> dict:
        e = cfg.evaluation
        per_model, _ = self.measure_models(cfg, run, self.models(cfg))
        refs = references(cfg)
        models = {}
        for name, rows in per_model.items():
            entry = {"length_normalised": agreement.accuracy(normalised(rows), e.bootstrap_samples, cfg.seed),
                     "reference": refs.get(name), "implicit_reward": None,
                     "mean_logp_per_token": sum(sum(r["logps"]) for r in rows) / max(sum(sum(r["tokens"]) for r in rows), 1)}
            if refs.get(name) in per_model:
                entry["implicit_reward"] = agreement.accuracy(implicit(rows, per_model[refs[name]]), e.bootstrap_samples,
                                                              cfg.seed)
            models[name] = {k: v.to_dict() if isinstance(v, Estimate) else v for k, v in entry.items()}
        differences = self.derive(cfg, run)
        first = next(iter(per_model.values()))
        pairs = agreement.pair_count(normalised(first))
        write_json(self.file(run), {"prompts": len(first), "replies": sum(len(r["ranks"]) for r in first),
                                    "pairs": pairs, "max_reply_tokens": e.hp_max_reply_tokens, "models": models,
                                    "differences": [d.to_dict() for d in differences]})
        return {"hp_prompts": len(first), "pairs": pairs,
                **{f"length_normalised {n}": round(m["length_normalised"]["value"], 4) for n, m in models.items()}}

    def derive(self, cfg, run):
        per_model = {name: self.rows(run, name) for name in self.models(cfg)}
        return [dataclasses.replace(d, claim=CLAIMS.get((before, after)))
                for before, after in model_steps(list(per_model))
                for d in self.compare(cfg, per_model[before], per_model[after], (before, after))]

    def tables(self, run):
        result = self.result(run)
        rows = []
        for name, m in result["models"].items():
            rows.append({"model": name, "likelihood (per token) picks the human-preferred reply % [95% CI]":
                         Estimate.from_dict(m["length_normalised"]).format(100, 1),
                         "implicit reward picks it % [95% CI]": Estimate.from_dict(m["implicit_reward"]).format(100, 1)
                         if m["implicit_reward"] else "—",
                         "implicit reward against": m["reference"] or "—",
                         "mean log-likelihood per token": round(m["mean_logp_per_token"], 3)})
        return [(f"{result['prompts']} prompts, {result['pairs']} reply pairs with different human ranks"
                 + (f", the first {result['max_reply_tokens']} tokens of each reply" if result["max_reply_tokens"]
                    else ", whole replies") + ".", pd.DataFrame(rows).set_index("model"))]

    def figures(self, run):
        result = self.result(run)
        names = list(result["models"])
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for offset, (key, label) in enumerate([("length_normalised", "likelihood per token"),
                                               ("implicit_reward", "implicit reward (vs the DPO reference)")]):
            points = [(i + 0.08 * (2 * offset - 1), Estimate.from_dict(result["models"][n][key]))
                      for i, n in enumerate(names) if result["models"][n][key]]
            if points:
                xs, estimates = zip(*points, strict=True)
                values = [100 * e.value for e in estimates]
                errors = [[v - 100 * e.low for v, e in zip(values, estimates, strict=True)],
                          [100 * e.high - v for v, e in zip(values, estimates, strict=True)]]
                ax.errorbar(xs, values, yerr=errors, marker="o", capsize=3, linestyle="none", label=label)
        ax.axhline(50, color="grey", linestyle=":", label="chance")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("% of human-ranked pairs")
        ax.set_title(f"Judge-free agreement with the humans ({result['pairs']} reply pairs, 95% CI)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return [fig]

    def headlines(self, run):
        found = {}
        for name, m in self.result(run)["models"].items():
            found[f"human preference {name}: likelihood %"] = Estimate.from_dict(m["length_normalised"])
            found[f"human preference {name}: implicit reward %"] = Estimate.from_dict(m["implicit_reward"])
        return found

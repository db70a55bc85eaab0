"""Each model against AlpacaEval's GPT-4 Turbo reference outputs, judged by this run's own evaluation judge
on this run's evaluation prompts: a stand-in for AlpacaEval 2.0's win rate, not AlpacaEval 2.0 (whose
annotator is GPT-4 Turbo, on all 805 prompts). Beside the raw win rate (ties ½), a length-controlled view
in AlpacaEval's manner: a logistic model of the verdict on the (tanh-squashed, standardised) length
difference, fitted on the run's own verdicts, read at zero length difference."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from selfreward import paper
from selfreward.evaluation import health, register
from selfreward.evaluation.estimates import Estimate, bootstrap_many, paired_many
from selfreward.evaluation.instrument import Difference, Instrument, model_steps
from selfreward.evaluation.responses import load
from selfreward.io import read_jsonl, write_json, write_jsonl
from selfreward.method import evaluation_judge


def length_features(answers: list[str], references: list[str]) -> list[float]:
    """tanh of the length difference (characters) over its standard deviation, as AlpacaEval's LC does."""
    diffs = [len(a) - len(r) for a, r in zip(answers, references, strict=True)]
    sd = math.sqrt(sum(d * d for d in diffs) / len(diffs)) if diffs else 0.0
    return [math.tanh(d / sd) if sd else 0.0 for d in diffs]


RIDGE = 1e-3


def length_controlled(items: list[tuple[float, float]]) -> float | None:
    """P(win) at zero length difference from (outcome in {0, ½, 1}, length feature) items: a logistic fit
    of the outcome on the feature (with a small ridge, so that all-win or all-loss sets stay finite)."""
    if not items:
        return None
    y, x = np.array(items, dtype=float).T
    design = np.stack([np.ones_like(x), x], axis=1)

    def loss_and_gradient(theta):
        z = design @ theta
        loss = np.mean(np.logaddexp(0, z) - y * z) + RIDGE * theta @ theta  # cross-entropy, stable
        return loss, design.T @ (1 / (1 + np.exp(-z)) - y) / len(y) + 2 * RIDGE * theta

    a, _ = minimize(loss_and_gradient, np.zeros(2), jac=True, method="L-BFGS-B").x
    return float(1 / (1 + np.exp(-a)))


def _statistics(items):
    return {"win_rate": sum(y for y, _ in items) / len(items) if items else None,
            "length_controlled": length_controlled(items)}


@register
class Reference(Instrument):
    name = "reference"
    title = "Against GPT-4 Turbo's outputs (this run's judge, not AlpacaEval 2.0)"
    description = (
        "Each model's answer is compared, in both orders, with the GPT-4 Turbo output that AlpacaEval ships for the "
        "same instruction, by **this run's evaluation judge on this run's prompts**: a stand-in for the paper's "
        "AlpacaEval 2.0 win rates (GPT-4 Turbo as annotator, 805 prompts), not that benchmark. The win rate counts "
        "ties ½. The **length-controlled** win rate reads a logistic model of the verdict on the length difference "
        "(fitted on this run's verdicts, as AlpacaEval's LC does) at zero length difference.")
    uses_responses = True
    order = 20

    def enabled(self, cfg):
        return cfg.evaluation.enabled and cfg.evaluation.reference

    def run(self, cfg, run) -> dict:
        e = cfg.evaluation
        prompts = read_jsonl(run.eval_prompts)
        instructions, references = [p["instruction"] for p in prompts], [p["reference"] for p in prompts]
        texts = {n: [r["response"] for r in rows] for n, rows in load(run, self.models(cfg)).items()}
        names = list(texts)
        with evaluation_judge.evaluation_judge(cfg, run) as (judge, judge_name):
            records = evaluation_judge.both_orders(judge, instructions, {**texts, "reference": references},
                                         [(n, "reference") for n in names])
        items, models = {}, {}
        for name in names:
            rows = records[f"{name} vs reference"]
            write_jsonl(self.folder(run) / f"{name}.jsonl", rows)
            items[name] = list(zip([evaluation_judge.POINTS[r["outcome"]] for r in rows],
                                   length_features(texts[name], references), strict=True))
            estimates = bootstrap_many(items[name], _statistics, e.bootstrap_samples, cfg.seed)
            verdicts = health.of_comparisons(rows)
            longer = [evaluation_judge.POINTS[r["outcome"]] for r, a, ref in zip(rows, texts[name], references, strict=True) if len(a) > len(ref)]
            models[name] = {"win_rate": estimates["win_rate"].to_dict(),
                            "length_controlled": estimates["length_controlled"].to_dict(),
                            "mean_chars": sum(map(len, texts[name])) / len(texts[name]),
                            "longer_than_reference": len(longer),
                            "win_rate_where_longer": sum(longer) / len(longer) if longer else None,
                            "health": verdicts.to_dict()}
        differences = []
        for before, after in model_steps(names):
            blind = [f"{m}: {models[m]['health']['why_not']}" for m in (before, after)
                     if not models[m]["health"]["informative"]]
            paired = paired_many(items[before], items[after], _statistics, e.bootstrap_samples, cfg.seed)
            for metric, label in (("win_rate", "win rate vs GPT-4 Turbo outputs"),
                                  ("length_controlled", "length-controlled win rate vs GPT-4 Turbo outputs")):
                differences.append(Difference(label, before, after, paired[metric],
                                              claim="reference_rises" if metric == "win_rate"
                                              and before != "sft_baseline" else None,
                                              blind="; ".join(blind) or None))
        write_json(self.file(run), {
            "judge": judge_name, "prompts": len(prompts), "reference_generator": prompts[0].get("reference_generator"),
            "reference_mean_chars": sum(map(len, references)) / len(references), "models": models,
            "differences": [d.to_dict() for d in differences],
            "health": {n: m["health"] for n, m in models.items()}})
        return {"judge": judge_name, "eval_prompts": len(prompts),
                **{f"win_rate {n}": round(100 * m["win_rate"]["value"], 1) for n, m in models.items()}}

    def tables(self, run):
        data = self.result(run)
        rows = []
        for name, m in data["models"].items():
            h = health.Health.from_dict(m["health"])
            rows.append({"model": name, "win rate % [95% CI]": Estimate.from_dict(m["win_rate"]).format(100, 1),
                         "length-controlled % [95% CI]": Estimate.from_dict(m["length_controlled"]).format(100, 1),
                         "mean characters": round(m["mean_chars"]), "reference mean characters":
                         round(data["reference_mean_chars"]), "prompts where longer": m["longer_than_reference"],
                         "win rate there %": None if m["win_rate_where_longer"] is None
                         else round(100 * m["win_rate_where_longer"], 1),
                         "first slot %": None if h.stats.get("first_slot_rate") is None
                         else round(100 * h.stats["first_slot_rate"], 1),
                         "judge": h.label(), "paper (AlpacaEval 2.0) %": paper.ALPACA_EVAL_2.get(name, "—")})
        caption = (f"Judge: {data['judge']} on {data['prompts']} prompts, against the outputs of "
                   f"{data['reference_generator']}; the paper's column is AlpacaEval 2.0 (another judge, 805 prompts).")
        return [(caption, pd.DataFrame(rows).set_index("model"))]

    def headlines(self, run):
        found = {}
        for name, m in self.result(run)["models"].items():
            found[f"{name} vs GPT-4 Turbo outputs: win rate %"] = Estimate.from_dict(m["win_rate"])
            found[f"{name} vs GPT-4 Turbo outputs: length-controlled %"] = Estimate.from_dict(m["length_controlled"])
        return found

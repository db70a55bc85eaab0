"""Each model against AlpacaEval's GPT-4 Turbo reference outputs, judged by this run's own evaluation judge
on this run's evaluation prompts: a stand-in for AlpacaEval 2.0's win rate, not AlpacaEval 2.0 (whose
annotator is GPT-4 Turbo, on all 805 prompts). Beside the raw win rate (ties ½), a length-controlled view
in AlpacaEval's manner: a logistic model of the verdict on the (tanh-squashed, standardised) length
difference, fitted on the run's own verdicts, read at zero length difference."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from selfreward import paper
from selfreward.evaluation import health, register
from selfreward.evaluation.estimates import Estimate, bootstrap_many, paired_many
from selfreward.evaluation.instrument import Difference, Instrument, model_steps
from selfreward.evaluation.responses import load
from selfreward.io import exists, read_jsonl, write_json, write_jsonl
from selfreward.method import evaluation_judge


def length_features(answer_chars: list[int], reference_chars: list[int]) -> list[float]:
    """tanh of the length difference (characters) over its standard deviation, centred (AlpacaEval's minimal
    length-controlled GLM: `np.tanh(delta / delta.std())`)."""
    diffs = np.array([a - r for a, r in zip(answer_chars, reference_chars, strict=True)], dtype=float)
    sd = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0
    return [float(np.tanh(d / sd)) if sd else 0.0 for d in diffs]


ONE_SIDE = 0.75  # most answers on one side of the reference's length: the zero-difference reading extrapolates


def one_sided(answers: list[str], references: list[str]) -> str | None:
    """A warning when most answers are shorter (or longer) than the reference: the length-controlled rate is then
    read where few answers lie."""
    shorter = sum(len(a) < len(r) for a, r in zip(answers, references, strict=True))
    longer = sum(len(a) > len(r) for a, r in zip(answers, references, strict=True))
    for count, side in ((shorter, "shorter"), (longer, "longer")):
        if count > ONE_SIDE * len(answers):
            return (f"{count} of {len(answers)} answers are {side} than the reference: the length-controlled rate "
                    "is read at zero length difference, where few answers lie (an extrapolation)")
    return None


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
        "(tanh of the difference over its centred standard deviation, fitted on this run's verdicts: AlpacaEval's "
        "minimal length-controlled GLM) at zero length difference; where most answers lie on one side of the "
        "reference's length, that reading extrapolates, and the table says so.")
    uses_responses = True
    order = 20

    def enabled(self, cfg):
        return super().enabled(cfg) and cfg.evaluation.reference

    def run(self, cfg, run) -> dict:
        e = cfg.evaluation
        prompts = read_jsonl(run.eval_prompts)
        instructions, references = [p["instruction"] for p in prompts], [p["reference"] for p in prompts]
        texts = {n: [r["response"] for r in rows] for n, rows in load(run, self.models(cfg)).items()}
        names = list(texts)
        with evaluation_judge.evaluation_judge(cfg, run) as (judge, judge_name):
            records = evaluation_judge.both_orders(judge, instructions, {**texts, "reference": references},
                                         [(n, "reference") for n in names])
        models, written, healths = {}, {}, {}
        for name in names:
            rows = [{**r, "answer_chars": len(a), "reference_chars": len(ref)}  # what the length control reads
                    for r, a, ref in zip(records[f"{name} vs reference"], texts[name], references, strict=True)]
            write_jsonl(self.folder(run) / f"{name}.jsonl", rows)
            estimates = bootstrap_many(self.items(rows), _statistics, e.bootstrap_samples, cfg.seed)
            written[name], healths[name] = rows, health.of_comparisons(rows)
            verdicts = healths[name]
            longer = [evaluation_judge.POINTS[r["outcome"]] for r, a, ref in zip(rows, texts[name], references, strict=True) if len(a) > len(ref)]
            models[name] = {"win_rate": estimates["win_rate"].to_dict(),
                            "length_controlled": estimates["length_controlled"].to_dict(),
                            "mean_chars": sum(map(len, texts[name])) / len(texts[name]),
                            "longer_than_reference": len(longer),
                            "win_rate_where_longer": sum(longer) / len(longer) if longer else None,
                            "length_warning": one_sided(texts[name], references),
                            "health": verdicts.to_dict()}
        differences = self.differences_of(cfg, written, healths)
        write_json(self.file(run), {
            "judge": judge_name, "prompts": len(prompts), "reference_generator": prompts[0].get("reference_generator"),
            "reference_mean_chars": sum(map(len, references)) / len(references), "models": models,
            "differences": [d.to_dict() for d in differences],
            "health": {n: m["health"] for n, m in models.items()}})
        return {"judge": judge_name, "eval_prompts": len(prompts),
                **{f"win_rate {n}": round(100 * m["win_rate"]["value"], 1) for n, m in models.items()}}

    @staticmethod
    def items(rows: list[dict]) -> list[tuple[float, float]]:
        """(outcome points, length feature) per prompt, from the comparison records."""
        return list(zip([evaluation_judge.POINTS[r["outcome"]] for r in rows],
                        length_features([r["answer_chars"] for r in rows], [r["reference_chars"] for r in rows]),
                        strict=True))

    def derive(self, cfg, run):
        rows = {n: read_jsonl(self.folder(run) / f"{n}.jsonl") for n in self.models(cfg)
                if exists(self.folder(run) / f"{n}.jsonl")}
        return self.differences_of(cfg, rows, {n: health.of_comparisons(r) for n, r in rows.items()})

    def differences_of(self, cfg, rows: dict[str, list[dict]], healths: dict[str, health.Health]) -> list[Difference]:
        """Each model's win rates against the next's, from their comparison records and their judge's health."""
        e = cfg.evaluation
        differences = []
        for before, after in model_steps(list(rows)):
            blind = [f"{m}: {healths[m].why_not}" for m in (before, after) if not healths[m].informative]
            paired = paired_many(self.items(rows[before]), self.items(rows[after]), _statistics, e.bootstrap_samples,
                                 cfg.seed)
            for metric, label in (("win_rate", "win rate vs GPT-4 Turbo outputs"),
                                  ("length_controlled", "length-controlled win rate vs GPT-4 Turbo outputs")):
                differences.append(Difference(label, before, after, paired[metric],
                                              claim="reference_rises" if metric == "win_rate"
                                              and before != "sft_baseline" else None,
                                              blind="; ".join(blind) or None))
        return differences

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
                   f"{data['reference_generator']}; the paper's column is AlpacaEval 2.0 (another judge, 805 prompts)."
                   + "".join(f" ⚠ {name}: {m['length_warning']}." for name, m in data["models"].items()
                             if m.get("length_warning")))
        return [(caption, pd.DataFrame(rows).set_index("model"))]

    def headlines(self, run):
        found = {}
        for name, m in self.result(run)["models"].items():
            found[f"{name} vs GPT-4 Turbo outputs: win rate %"] = Estimate.from_dict(m["win_rate"])
            found[f"{name} vs GPT-4 Turbo outputs: length-controlled %"] = Estimate.from_dict(m["length_controlled"])
        return found

"""Reply lengths: how long each model's answers to the evaluation prompts are, and how many finish (end of
sequence before the token limit). The paper's answers grow longer with each iteration; an answer cut by
the limit says nothing about where its model would have stopped."""
from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import pandas as pd

from selfreward import paper
from selfreward.evaluation import register
from selfreward.evaluation.estimates import Estimate, mean, mean_of, paired
from selfreward.evaluation.instrument import Difference, Instrument, model_steps
from selfreward.evaluation import responses
from selfreward.io import read_jsonl, write_json


@register
class Lengths(Instrument):
    name = "lengths"
    title = "Reply lengths"
    description = (
        "Every model's answers to all evaluation prompts: mean length in characters and tokens, and the share that "
        "**finish** (end of turn before `evaluation.max_new_tokens`). Differences are paired on the same prompts. "
        "Where few answers finish, a length difference measures the limit as much as the model.")
    uses_responses = True
    sections = ("seed", "model", "evaluation")
    order = 60

    def measure(self, cfg, run, model, backend, chat):
        return responses.answers(cfg, run, model, backend, chat)

    def rows(self, run, model):
        return read_jsonl(run.responses(model))

    def compare(self, cfg, before, after, names):
        e = cfg.evaluation

        def difference(metric, value, **units):
            return Difference(metric, *names, paired([value(r) for r in before], [value(r) for r in after], mean_of,
                                                     e.bootstrap_samples, cfg.seed), **units)

        return [difference("answer length", responses.characters, unit="characters", scale=1.0, span=None),
                difference("answers that finish", lambda r: float(r["finished"]))]

    def run(self, cfg, run) -> dict:
        e = cfg.evaluation
        answers = responses.load(run, self.models(cfg))
        models = {name: {"characters": mean([responses.characters(r) for r in rows], e.bootstrap_samples, cfg.seed).to_dict(),
                         "tokens": mean([r["num_tokens"] for r in rows], e.bootstrap_samples, cfg.seed).to_dict(),
                         "finished": mean([float(r["finished"]) for r in rows], e.bootstrap_samples, cfg.seed).to_dict()}
                  for name, rows in answers.items()}
        differences = self.derive(cfg, run)
        write_json(self.file(run), {"prompts": len(next(iter(answers.values()), [])), "max_new_tokens": e.max_new_tokens,
                                    "models": models, "differences": [d.to_dict() for d in differences]})
        return {f"mean characters {n}": round(m["characters"]["value"], 1) for n, m in models.items()}

    def derive(self, cfg, run):
        answers, differences = responses.load(run, self.models(cfg)), []
        for before, after in model_steps(list(answers)):
            length, finished = self.compare(cfg, answers[before], answers[after], (before, after))
            differences += [dataclasses.replace(length, claim=None if before == "sft_baseline" else "longer"), finished]
        return differences

    def estimates(self, run) -> dict[str, dict[str, Estimate]]:
        return {n: {k: Estimate.from_dict(v) for k, v in m.items()} for n, m in self.result(run)["models"].items()}

    def tables(self, run):
        result, rows = self.result(run), []
        for name, m in self.estimates(run).items():
            rows.append({"model": name, "mean characters [95% CI]": m["characters"].format(1, 0),
                         "mean tokens [95% CI]": m["tokens"].format(1, 1),
                         "finish before the limit % [95% CI]": m["finished"].format(100, 1),
                         "paper (characters, roughly)": paper.RESPONSE_CHARACTERS.get(name, "—")})
        return [(f"{result['prompts']} evaluation prompts, at most {result['max_new_tokens']} tokens per answer.",
                 pd.DataFrame(rows).set_index("model"))]

    def figures(self, run):
        models = self.estimates(run)
        names = list(models)
        fig, ax = plt.subplots(figsize=(5, 2.6))
        ax.plot(names, [models[n]["characters"].value for n in names], marker="o", label="this run")
        ax.plot([n for n in names if n in paper.RESPONSE_CHARACTERS],
                [paper.RESPONSE_CHARACTERS[n] for n in names if n in paper.RESPONSE_CHARACTERS], "s--", label="paper")
        ax.set_ylabel("mean characters")
        ax.set_title("Answer length per model")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return [fig]

    def headlines(self, run):
        found = {}
        for name, m in self.estimates(run).items():
            found[f"{name}: mean characters"] = m["characters"]
            found[f"{name}: answers that finish %"] = m["finished"]
        return found

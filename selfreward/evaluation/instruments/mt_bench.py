"""MT-Bench: every model answers the questions in both turns (the second asked after its own first answer);
the evaluation judge rates each answer 1-10 (single-answer grading). Unlike the paper's MT-Bench, there
are no reference answers for the math, reasoning and coding questions, and answers are sampled at one
temperature (`evaluation.temperature`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from selfreward import paper
from selfreward.evaluation import health, register
from selfreward.evaluation.estimates import Estimate, mean, mean_of, paired
from selfreward.evaluation.instrument import Difference, Instrument, model_steps
from selfreward.io import exists, read_jsonl, write_json, write_jsonl
from selfreward.method import evaluation_judge
from selfreward.method.prompts import MT_BENCH_RATING

CLAIMS = {("sft_baseline", "m1"): "eft_like_ift"}


def answers(backend, chat, questions: list[dict], evaluation_cfg, seed: int, desc: str) -> list[dict]:
    """Both turns of each MT-Bench question: the first answer, then the second question asked after it."""
    settings = dict(n=1, temperature=evaluation_cfg.temperature, top_p=evaluation_cfg.top_p,
                    max_new_tokens=evaluation_cfg.max_new_tokens, seed=seed)
    first = [c for (c,) in backend.generate([chat.prompt(q["turns"][0]) for q in questions], desc=f"{desc} turn 1",
                                            **settings)]
    second = [c for (c,) in backend.generate([chat.conversation([(q["turns"][0], a.text)], q["turns"][1])
                                              for q, a in zip(questions, first, strict=True)], desc=f"{desc} turn 2", **settings)]
    return [{"question_id": q["question_id"], "category": q["category"], "turns": q["turns"][:2],
             "answers": [a.text, b.text], "num_tokens": [a.num_tokens, b.num_tokens]}
            for q, a, b in zip(questions, first, second, strict=True)]


def question_scores(rows: list[dict]) -> list[float | None]:
    """Each question's score: the mean of its readable turn ratings (None when neither is readable)."""
    return [mean_of([r["rating"] for r in row["ratings"]]) for row in rows]


def scores(rows: list[dict], samples: int, seed: int) -> dict:
    """Per-category, per-turn and overall scores (overall with an interval over questions) and the judge's health."""
    categories = sorted({a["category"] for a in rows})
    return {"overall": (mean(question_scores(rows), samples, seed) or Estimate(None)).to_dict(),
            "turn_1": mean_of([row["ratings"][0]["rating"] for row in rows]),
            "turn_2": mean_of([row["ratings"][1]["rating"] for row in rows]),
            "categories": {c: mean_of([r["rating"] for row in rows if row["category"] == c for r in row["ratings"]])
                           for c in categories},
            "health": rating_health(rows).to_dict()}


def rating_health(rows: list[dict]) -> health.Health:
    """The evaluation judge's health on one model's rated answers (both turns)."""
    return health.scores([r["rating"] for row in rows for r in row["ratings"]], MT_BENCH_RATING.low,
                         MT_BENCH_RATING.high)


@register
class MTBench(Instrument):
    name = "mt_bench"
    title = "MT-Bench"
    description = (
        "Every model answers MT-Bench questions in both turns (the second question is asked after the model's own "
        "first answer). The evaluation judge rates each answer from 1 to 10 (a sampled judge writes `[[rating]]`; a "
        "constrained local judge's probabilities over the ratings are read). Scores are means over both turns, with "
        "95% intervals over questions; differences are paired on the same questions. **Not the paper's MT-Bench**: "
        "no reference answers for math, reasoning and coding, one sampling temperature, and this run's judge.")
    order = 50

    def enabled(self, cfg):
        """With questions to ask, answers asked for (`evaluation.answers`) and a generative judge: a reward model
        rates nothing on MT-Bench's scale."""
        return cfg.evaluation.enabled and cfg.evaluation.answers != "off" and cfg.evaluation.mt_bench_questions > 0 \
            and not evaluation_judge.is_reward_model(cfg.evaluation.judge_model)

    def run(self, cfg, run) -> dict:
        from selfreward.generation import loaded_backend

        e = cfg.evaluation
        questions = read_jsonl(run.mt_bench_questions)[:e.mt_bench_questions]
        written, tokens = {}, 0
        for name in self.models(cfg):
            with loaded_backend(str(run.model(name)), cfg) as (backend, chat):
                written[name] = answers(backend, chat, questions, e, cfg.seed, desc=f"MT-Bench {name}")
            tokens += backend.tokens_generated
        models = {}
        with evaluation_judge.evaluation_judge(cfg, run) as (judge, judge_name):
            for name, rows in written.items():
                exchanges = [(a["turns"][:turn + 1], a["answers"][:turn + 1]) for a in rows for turn in (0, 1)]
                ratings = judge.ratings(exchanges)
                for i, a in enumerate(rows):
                    a["ratings"] = [ratings[2 * i], ratings[2 * i + 1]]
                write_jsonl(self.folder(run) / f"{name}.jsonl", rows)
                models[name] = scores(rows, e.bootstrap_samples, cfg.seed)
        differences = self.differences_of(cfg, written, {n: health.Health.from_dict(m["health"]) for n, m in models.items()})
        write_json(self.file(run), {"judge": judge_name, "questions": len(questions), "models": models,
                                    "differences": [d.to_dict() for d in differences],
                                    "health": {n: m["health"] for n, m in models.items()}})
        return {"questions": len(questions), "tokens_generated": tokens,
                **{f"overall {n}": None if m["overall"]["value"] is None else round(m["overall"]["value"], 3)
                   for n, m in models.items()}}

    def derive(self, cfg, run):
        written = {n: read_jsonl(self.folder(run) / f"{n}.jsonl") for n in self.models(cfg)
                   if exists(self.folder(run) / f"{n}.jsonl")}
        return self.differences_of(cfg, written, {n: rating_health(rows) for n, rows in written.items()})

    def differences_of(self, cfg, written: dict[str, list[dict]], healths: dict[str, health.Health]) -> list[Difference]:
        """Each model's MT-Bench score against the next's, on the same questions."""
        e = cfg.evaluation
        differences = []
        for before, after in model_steps(list(written)):
            blind = "; ".join(f"{m}: {healths[m].why_not}" for m in (before, after) if not healths[m].informative) or None
            estimate = paired(question_scores(written[before]), question_scores(written[after]), mean_of,
                              e.bootstrap_samples, cfg.seed)
            differences.append(Difference("MT-Bench score", before, after, estimate, unit="rating (1-10)", scale=1.0,
                                          span=9.0, blind=blind,
                                          claim=CLAIMS.get((before, after), None if before == "sft_baseline"
                                                           else "mt_bench_rises")))
        return differences

    def tables(self, run):
        result = self.result(run)
        rows = []
        for name, m in result["models"].items():
            h = health.Health.from_dict(m["health"])
            row = {"model": name, "overall [95% CI]": Estimate.from_dict(m["overall"]).format(1, 2),
                   "turn 1": m["turn_1"], "turn 2": m["turn_2"],
                   "unreadable %": None if h.stats["unreadable_share"] is None else 100 * h.stats["unreadable_share"],
                   f"paper ({paper.MODEL}, GPT-4 judge)": paper.MT_BENCH.get(name, "—"), "judge": h.label()}
            row.update(m["categories"])
            rows.append(row)
        return [(f"Judge: {result['judge']}, {result['questions']} questions, both turns.",
                 pd.DataFrame(rows).set_index("model").round(2))]

    def figures(self, run):
        models = self.result(run)["models"]
        names = [n for n in models if models[n]["overall"]["value"] is not None]
        overall = [Estimate.from_dict(models[n]["overall"]) for n in names]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        values = [o.value for o in overall]
        errors = [[v - (o.low if o.low is not None else v) for v, o in zip(values, overall, strict=True)],
                  [(o.high if o.high is not None else v) - v for v, o in zip(values, overall, strict=True)]]
        ax.errorbar(names, values, yerr=errors, marker="o", capsize=3, label="this run")
        ax.plot([n for n in names if n in paper.MT_BENCH], [paper.MT_BENCH[n] for n in names if n in paper.MT_BENCH],
                "s--", label=f"paper ({paper.MODEL}, GPT-4 judge)")
        ax.set_ylim(1, 10)
        ax.set_ylabel("MT-Bench score (1-10)")
        ax.set_title("MT-Bench, both turns (95% CI over questions)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return [fig]

    def headlines(self, run):
        return {f"MT-Bench {n}: overall": Estimate.from_dict(m["overall"]) for n, m in self.result(run)["models"].items()}

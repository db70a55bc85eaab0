"""The models as reward models: each model judges the ranked first-turn replies of held-out OASST prompts
with its own judge prompt and scoring, and its scores are compared with the human ranks
(`evaluation.agreement`). The SFT baseline also judges with a multiple-choice prompt (the paper's
judge-prompt ablation). Paired differences resample the same prompts for both models."""
from __future__ import annotations

import dataclasses
from collections import Counter

import matplotlib.pyplot as plt
import pandas as pd

from selfreward import paper
from selfreward.evaluation import agreement, health, register
from selfreward.evaluation.estimates import Estimate
from selfreward.evaluation.instrument import Difference, Instrument, model_steps
from selfreward.io import read_jsonl, write_json, write_jsonl
from selfreward.method import data
from selfreward.method.prompts import JUDGE_TEMPLATES
from selfreward.rundir import slug

ABLATION = "sft_baseline (multiple choice)"


def prompts(cfg, run) -> list[dict]:
    """The held-out prompts the reward-model judges read (evaluation.rm_prompts, rm_max_reply_chars)."""
    threads = read_jsonl(run.rm_eval)
    if cfg.evaluation.rm_max_reply_chars:
        threads = data.short_reply_threads(threads, cfg.evaluation.rm_max_reply_chars)
    if cfg.evaluation.rm_prompts:
        threads = data.ranked_threads(threads, cfg.evaluation.rm_prompts, cfg.item_seed)
    return threads


def judged_health(rows: list[dict], prompt: str) -> health.Health:
    """Whether a judge's scores of the held-out replies can rank anything (`evaluation.health.scores`)."""
    template = JUDGE_TEMPLATES[prompt]
    return health.scores([s for r in rows for s in r["scores"]], template.low, template.high)


def judge_config(cfg):
    """The judge settings the models judge the held-out replies with: the run's judge, with the evaluation's
    samples and temperature."""
    e = cfg.evaluation
    return dataclasses.replace(cfg.judge, samples=e.rm_samples,
                               temperature=cfg.judge.temperature if e.rm_temperature is None else e.rm_temperature)


@register
class RewardModel(Instrument):
    name = "reward_model"
    title = "Reward modeling: the models as judges"
    description = (
        "Each model judges the ranked replies of held-out OASST prompts (the validation split, and with "
        "`data.rm_train_size` training prompts the run never trains on) with the LLM-as-a-Judge prompt; "
        "its scores are compared with the human ranks. **Pairwise accuracy**: of reply pairs with different human "
        "ranks, the share where the better-ranked reply got the strictly higher score (ties count as wrong; their "
        "share is *pair ties*). **5-best**: of replies scored 5, the share humans ranked best. **Exact match**: "
        "prompts whose judge ordering equals the human one. **Spearman / Kendall τ**: per-prompt rank correlation, "
        "averaged. **Top-score share**: how often the most frequent (rounded) score is given. A judge whose scores "
        "are nearly constant or mostly unreadable is marked *uninformative*. Brackets: 95% intervals over prompts.")
    sections = ("seed", "model", "generation", "judge", "evaluation")
    order = 30

    quality = True

    def measure(self, cfg, run, model, backend, chat, judge_cfg=None):
        from selfreward.method.self_judge import ranked_rows

        return ranked_rows(backend, chat, prompts(cfg, run), judge_cfg or judge_config(cfg), cfg.seed,
                           desc=f"reward model {model}")

    def compare(self, cfg, before, after, names, claim=None):
        e = cfg.evaluation
        healths = [judged_health(rows, cfg.judge.prompt) for rows in (before, after)]
        blind = "; ".join(f"{m}: {h.why_not}" for m, h in zip(names, healths, strict=True) if not h.informative) or None
        paired = agreement.paired_metrics(before, after, e.bootstrap_samples, cfg.seed)
        return [Difference("pairwise accuracy", *names, paired["pairwise_accuracy"], claim=claim, blind=blind)]

    def run(self, cfg, run) -> dict:
        e = cfg.evaluation
        judge_cfg = judge_config(cfg)
        rows, tokens = self.measure_models(cfg, run, self.models(cfg))
        judges = [(name, judge_cfg) for name in self.models(cfg)]
        if e.judge_prompt_ablation:  # the SFT baseline again, with the multiple-choice prompt
            ablation_cfg = dataclasses.replace(judge_cfg, prompt="multiple_choice")
            with self.loaded(cfg, run, "sft_baseline") as (backend, chat):
                rows[ABLATION] = self.measure(cfg, run, ABLATION, backend, chat, ablation_cfg)
            tokens += backend.tokens_generated
            write_jsonl(self.folder(run) / f"{slug(ABLATION)}.jsonl", rows[ABLATION])
            judges.append((ABLATION, ablation_cfg))
        table = {}
        for label, prompt_cfg in judges:
            verdict = judged_health(rows[label], prompt_cfg.prompt)
            table[label] = {"judge_prompt": prompt_cfg.prompt, "mode": rows[label][0]["mode"],
                            "scores_file": f"{self.name}/{slug(label)}.jsonl", "health": verdict.to_dict(),
                            "metrics": {k: v.to_dict() for k, v in
                                        agreement.metrics(rows[label], e.bootstrap_samples, cfg.seed).items()},
                            "pairs": agreement.pair_count(rows[label])}
        differences = self.derive(cfg, run)
        threads = prompts(cfg, run)
        write_json(self.file(run), {"prompts": len(threads), "replies": sum(len(t["replies"]) for t in threads),
                                    "splits": dict(Counter(t.get("split", "validation") for t in threads)),
                                    "samples": judge_cfg.samples, "temperature": judge_cfg.temperature, "models": table,
                                    "differences": [d.to_dict() for d in differences],
                                    "health": {label: t["health"] for label, t in table.items()}})
        return {"rm_prompts": len(threads), "tokens_generated": tokens,
                **{f"pairwise_accuracy {k}": t["metrics"]["pairwise_accuracy"]["value"] for k, t in table.items()}}

    def derive(self, cfg, run):
        e, rows, differences = cfg.evaluation, {name: self.rows(run, name) for name in self.models(cfg)}, []
        for before, after in model_steps(self.models(cfg)):
            differences += self.compare(cfg, rows[before], rows[after], (before, after), claim="rm_rises")
            if before == "sft_baseline":  # with EFT (M1) against without (the SFT baseline): one score piles up?
                paired = agreement.paired_metrics(rows[before], rows[after], e.bootstrap_samples, cfg.seed)
                differences.append(Difference("top-score share", before, after, paired["top_score_share"],
                                              claim="no_eft_one_score", blind=None))
        return differences

    def metrics(self, run) -> dict[str, dict[str, Estimate]]:
        return {label: {k: Estimate.from_dict(v) for k, v in entry["metrics"].items()}
                for label, entry in self.result(run)["models"].items()}

    def tables(self, run):
        result = self.result(run)
        rows = []
        for label, entry in result["models"].items():
            row = {"judge": label, "mode": entry["mode"], "reply pairs": entry["pairs"]}
            for metric in agreement.METRICS:
                percent = metric in agreement.PERCENT
                row[metric.replace("_", " ") + (" %" if percent else "")] = \
                    Estimate.from_dict(entry["metrics"][metric]).format(100 if percent else 1, 1 if percent else 3)
            row["judge health"] = health.Health.from_dict(entry["health"]).label()
            rows.append(row)
        published = pd.DataFrame(paper.REWARD_MODEL)
        published.columns = [c.replace("_", " ") + (" %" if c in agreement.PERCENT else "") for c in published.columns]
        splits = ", ".join(f"{n} {split}" for split, n in result.get("splits", {"validation": result["prompts"]}).items())
        tables = [(f"{result['prompts']} prompts ({splits}), {result['replies']} ranked replies, "
                   f"{result['samples']} judgment(s) "
                   f"per reply at temperature {result.get('temperature', '—')}; 95% intervals over prompts.",
                   pd.DataFrame(rows).set_index("judge")),
                  (f"The paper's numbers ({paper.MODEL}, OASST held-out).", published.rename_axis("judge (paper)")),
                  ("Score distributions on the held-out replies (rounded scores).", self.score_distributions(run))]
        ablation = self.judge_prompt_ablation(run)
        if not ablation.empty:
            tables.append(("Judge-prompt ablation: the SFT baseline with the additive and the multiple-choice prompt.",
                           ablation))
        return tables

    def score_distributions(self, run) -> pd.DataFrame:
        return pd.DataFrame({label: entry["health"]["stats"]["histogram"]
                             for label, entry in self.result(run)["models"].items()}).T.rename_axis("judge")

    def judge_prompt_ablation(self, run) -> pd.DataFrame:
        models, rows = self.metrics(run), []
        for label, prompt in [("sft_baseline", "additive"), (ABLATION, "multiple_choice")]:
            if label in models:
                m, published = models[label], paper.JUDGE_PROMPTS[prompt]
                rows.append({"judge prompt": prompt, "pairwise accuracy %": m["pairwise_accuracy"].format(100, 1),
                             "Spearman": m["spearman"].format(1, 3), "Kendall τ": m["kendall"].format(1, 3),
                             "paper accuracy %": published[0], "paper Spearman": published[1],
                             "paper Kendall τ": published[2]})
        return pd.DataFrame(rows).set_index("judge prompt") if rows else pd.DataFrame()

    def figures(self, run):
        models = {k: v for k, v in self.metrics(run).items() if k != ABLATION}
        names = list(models)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, metric in zip(axes, ["pairwise_accuracy", "spearman"], strict=True):
            scale = 100 if metric in agreement.PERCENT else 1
            ours = [models[m][metric] for m in names]
            values = [o.value * scale if o.value is not None else float("nan") for o in ours]
            errors = [[v - (o.low * scale if o.low is not None else v) for v, o in zip(values, ours, strict=True)],
                      [(o.high * scale if o.high is not None else v) - v for v, o in zip(values, ours, strict=True)]]
            ax.errorbar(names, values, yerr=errors, marker="o", capsize=3, label="this run")
            published = paper.REWARD_MODEL[metric]
            ax.plot([m for m in names if m in published], [published[m] for m in names if m in published],
                    "s--", label=f"paper ({paper.MODEL})")  # the paper's values are in the units shown
            ax.set_title(metric.replace("_", " ") + (" %" if scale == 100 else ""))
            ax.legend(fontsize=7)
        fig.suptitle("The models as reward models (OASST held-out, 95% intervals)")
        fig.tight_layout()
        distribution = self.score_distributions(run)
        hist, ax = plt.subplots(figsize=(8, 3))
        width = 0.8 / max(len(distribution), 1)
        for i, (label, row) in enumerate(distribution.iterrows()):
            total = max(row.sum(), 1)
            ax.bar([s + i * width for s in range(len(row))], row / total * 100, width=width, label=label)
        ax.set_xticks([s + 0.4 - width / 2 for s in range(len(distribution.columns))], list(distribution.columns))
        ax.set_xlabel("score (rounded)")
        ax.set_ylabel("% of judgments")
        ax.legend(fontsize=7)
        ax.set_title("Score distributions on held-out replies")
        hist.tight_layout()
        return [fig, hist]

    def headlines(self, run):
        return {f"reward model {label}: pairwise accuracy %": m["pairwise_accuracy"]
                for label, m in self.metrics(run).items()}

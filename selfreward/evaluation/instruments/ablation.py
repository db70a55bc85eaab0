"""The ablation: each variant of one iteration (the small-model fixes, `method.variants`) against the paper's
recipe from the same model, M_{t+1} of the run, on the same instruments and the same items: the judge-free
preference and the reward-model agreement (the same validation pairs), the answers' length (the same
evaluation prompts) and the share of prompts that yield a usable pair (the same candidates). Every row is
a paired difference with its interval and MDE; the summary says which variant, if any, helps at this size."""
from __future__ import annotations

import filecmp
from pathlib import Path

import pandas as pd

from selfreward.evaluation import agreement, health, register
from selfreward.evaluation.estimates import RISES, mean_of, paired
from selfreward.evaluation.instrument import Difference, Instrument
from selfreward.evaluation.responses import load
from selfreward.io import read_json, read_jsonl, write_json, write_jsonl
from selfreward.method.prompts import JUDGE_TEMPLATES
from selfreward.rundir import slug

METRICS = ["likelihood picks the human-preferred reply", "reward-model pairwise accuracy", "answer length",
           "prompts with a usable pair"]


def same_weights(a: Path, b: Path) -> bool:
    """Whether two saved models hold the same weights, byte for byte (then a variant changed nothing)."""
    files = sorted(p.name for p in Path(a).glob("*.safetensors"))
    return bool(files) and files == sorted(p.name for p in Path(b).glob("*.safetensors")) \
        and all(filecmp.cmp(Path(a) / f, Path(b) / f, shallow=False) for f in files)


def pair_indicator(pairs_path, prompts: list[str]) -> list[float]:
    """1 for each prompt (of AIFT(M_t), in order) that yielded an answer pair, else 0."""
    paired_prompts = {p["prompt"] for p in read_jsonl(pairs_path) if not p.get("judge_pair")} \
        if pairs_path.is_file() else set()
    return [float(p in paired_prompts) for p in prompts]


@register
class Ablation(Instrument):
    name = "ablation"
    title = "Ablation: the small-model fixes against the paper's recipe"
    description = (
        "Each variant trains one iteration from the same model as the paper's recipe did (M_t, on the same prompts, "
        "candidates and judgments of AIFT(M_t)), and its model is compared with the recipe's M_{t+1} on the same "
        "items: the judge-free preference over every validation reply pair, each model judging the validation "
        "replies as a reward model, the length of its answers to the evaluation prompts, and the share of prompts "
        "that yield a usable pair. Δ = variant − recipe, paired, with its 95% interval and MDE: a variant *helps* "
        "only where the interval lies above 0.")
    uses_responses = True
    after = ("human_preference", "reward_model")
    evaluates_variants = True
    sections = ("seed", "model", "generation", "judge", "evaluation")
    order = 70

    def enabled(self, cfg):
        return cfg.evaluation.enabled and bool(cfg.ablation.variants)

    def run(self, cfg, run) -> dict:
        """Each variant model read and judged as the human-preference and reward-model instruments read and
        judged the run's models (the same items, the same settings), and its answers to the evaluation prompts;
        then each difference from the recipe's model, whose rows those instruments and `responses` wrote."""
        import dataclasses

        from selfreward.evaluation.instruments import human_preference, reward_model
        from selfreward.generation import loaded_backend
        from selfreward.method.judging import ranked_rows
        from selfreward.method.loop import answer

        e = cfg.evaluation
        hp_threads, rm_threads = human_preference.threads(cfg, run), reward_model.prompts(cfg, run)
        judge_cfg = reward_model.judge_config(cfg)
        instructions = [p["instruction"] for p in read_jsonl(run.eval_prompts)]
        rm = read_json(run.eval / "reward_model.json")["models"]
        variants, differences, tokens = {}, [], 0
        for name, section, t in cfg.variants():
            model, recipe = f"variant_{name}", f"m{t + 1}"
            with loaded_backend(str(run.model(model)), cfg) as (backend, chat):
                hp_rows = human_preference.reply_logprobs(backend, chat, hp_threads, e.hp_max_reply_tokens,
                                                          desc=f"log-likelihoods {model}")
                rm_rows = ranked_rows(backend, chat, rm_threads, judge_cfg, cfg.seed, desc=f"reward model {model}")
                answers = [{"instruction": i, "response": c.text, "num_tokens": c.num_tokens, "finished": c.finished}
                           for i, (c,) in zip(instructions, answer(backend, chat, instructions, e, cfg.seed,
                                                                    desc=f"responses {model}"))]
            tokens += backend.tokens_generated
            for kind, rows in (("human_preference", hp_rows), ("reward_model", rm_rows), ("responses", answers)):
                write_jsonl(self.folder(run) / kind / f"{model}.jsonl", rows)
            recipe_answers = load(run, [recipe])[recipe]
            prompts = [r["prompt"] for r in read_jsonl(run.candidates(t))]
            found = {
                METRICS[0]: agreement.paired_metrics(
                    human_preference.normalised(read_jsonl(run.eval / "human_preference" / f"{recipe}.jsonl")),
                    human_preference.normalised(hp_rows), e.bootstrap_samples, cfg.seed)["pairwise_accuracy"],
                METRICS[1]: agreement.paired_metrics(read_jsonl(run.eval / "reward_model" / f"{slug(recipe)}.jsonl"),
                                                     rm_rows, e.bootstrap_samples, cfg.seed)["pairwise_accuracy"],
                METRICS[2]: paired([len(r["response"]) for r in recipe_answers], [len(r["response"]) for r in answers],
                                   mean_of, e.bootstrap_samples, cfg.seed),
                METRICS[3]: paired(pair_indicator(run.pairs(t), prompts),
                                   pair_indicator(run.variant(name) / "pairs.jsonl", prompts), mean_of,
                                   e.bootstrap_samples, cfg.seed),
            }
            template = JUDGE_TEMPLATES[judge_cfg.prompt]
            judged = health.scores([s for r in rm_rows for s in r["scores"]], template.low, template.high)
            blind = "; ".join(f"{m}: {why}" for m, why in ((recipe, rm[recipe]["health"]["why_not"]),
                                                           (model, judged.why_not)) if why) or None
            # a model equal to the recipe's reads as "no difference" on every instrument: say what it is instead
            blinds = {METRICS[1]: blind}  # the judge's health concerns the reward-model reading only
            if same_weights(run.model(model), run.model(recipe)):
                blinds = dict.fromkeys(METRICS[:3], f"{model} has the weights of {recipe}, byte for byte: the "
                                                    "option changed nothing in training")
            for metric, estimate in found.items():
                length = metric == METRICS[2]
                differences.append(Difference(metric, f"{recipe} (paper's recipe)", model, estimate,
                                              unit="characters" if length else "points", scale=1.0 if length else 100.0,
                                              span=None if length else 100.0,
                                              blind=blinds.get(metric)))
            counts = read_json(run.counts(model))
            variants[name] = {"start": f"m{t}", "recipe": recipe, "pairs": counts["pairs"],
                              "judge_pairs": counts.get("judge_pairs", 0), "prompts": counts["prompts"],
                              "options": dataclasses.asdict(section), "judge_health": judged.to_dict()}
        write_json(self.file(run), {"variants": variants, "differences": [d.to_dict() for d in differences]})
        return {"tokens_generated": tokens, **{f"variant {n}": f"{v['pairs']} pairs from {v['start']}"
                                               for n, v in variants.items()}}

    def tables(self, run):
        result = self.result(run)
        rows = []
        for name, v in result["variants"].items():
            rows.append({"variant": name, "from": v["start"], "against": v["recipe"], "answer pairs": v["pairs"],
                         "judge pairs": v["judge_pairs"], "prompts": v["prompts"],
                         "options": ", ".join(f"{k}={val}" for k, val in v["options"].items()
                                              if val not in ("judge", False, 0.0, "", "dpo", 0))})
        return [(f"**{self.verdict(run)}** The variants, each from the model the paper's recipe started from:",
                 pd.DataFrame(rows).set_index("variant"))]

    def verdict(self, run) -> str:
        """Which variant, if any, helps at this size, and how sure the intervals let us be."""
        differences = [d for d in self.differences(run) if d.metric in METRICS[:2]]
        helps = sorted({d.after for d in differences if d.direction() == RISES and not d.blind})
        widest = max((d.estimate.half_width * d.scale for d in differences if d.estimate.half_width), default=None)
        if helps:
            return (f"Variants that raise the judge-free or the reward-model agreement beyond their 95% interval: "
                    f"{', '.join(helps)}.")
        return ("No variant raises the judge-free or the reward-model agreement beyond its 95% interval"
                + (f" (intervals up to ±{widest:.1f} points): at this size none is shown to help." if widest else "."))

    def headlines(self, run):
        return {f"ablation {d.after}: {d.metric}" + ("" if d.unit == "characters" else " Δ %"): d.estimate
                for d in self.differences(run)} | {"ablation: verdict": self.verdict(run)}

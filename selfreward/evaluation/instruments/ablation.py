"""The ablation: each variant of one iteration (the small-model fixes, `method.fixes`) against the paper's
recipe from the same model, M_{t+1} of the run, on the same items of every instrument that measures one model
at a time (the per-model hooks of `evaluation.instrument`: the judge-free preference, the reward-model
agreement, the answers' length, ...), and on the share of prompts that yield a usable pair (the same
candidates). Every row is a paired difference with its interval and MDE; the summary says which variant, if
any, helps at this size. A new instrument with the hooks joins the ablation without a change here."""
from __future__ import annotations

import dataclasses
import filecmp
from pathlib import Path

import pandas as pd

from selfreward import evaluation
from selfreward.evaluation import register
from selfreward.evaluation.estimates import holm, mean_of, p_value, paired
from selfreward.evaluation.instrument import Difference, Instrument
from selfreward.io import read_json, read_jsonl, write_json, write_jsonl
from selfreward.method import fixes

USABLE_PAIRS = "prompts with a usable pair"


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


def compared(cfg) -> list[Instrument]:
    """The run's instruments that measure one model at a time: those the ablation compares on."""
    return [i for i in evaluation.registered(cfg) if i.per_model and i.name != Ablation.name]


@register
class Ablation(Instrument):
    name = "ablation"
    title = "Ablation: the small-model fixes against the paper's recipe"
    description = (
        "Each variant trains one iteration from the same model as the paper's recipe did (M_t, on the same prompts, "
        "candidates and judgments of AIFT(M_t)), and its model is compared with the recipe's M_{t+1} on the same "
        "items of every instrument that measures one model at a time (the judge-free preference over every "
        "validation reply pair, each model judging the validation replies as a reward model, its answers to the "
        "evaluation prompts, ...), and on the share of prompts that yield a usable pair. Δ = variant − recipe, "
        "paired, with its 95% interval and MDE: a variant *helps* only where the interval of a quality measure lies "
        "above 0.")
    uses_responses = True
    evaluates_variants = True
    sections = ("seed", "model", "generation", "judge", "evaluation")
    order = 70

    def enabled(self, cfg):
        return cfg.evaluation.enabled and bool(cfg.ablation.variants)

    def requires(self, cfg):
        return tuple(i.name for i in compared(cfg))

    def run(self, cfg, run) -> dict:
        """Each variant's model measured by every per-model instrument on the items it measured the run's models
        on, with the same settings; then each difference from the recipe's model, whose rows those instruments
        wrote."""
        instruments = compared(cfg)
        variants, differences, quality, tokens = {}, [], set(), 0
        for name, section, t in cfg.ablation_variants():
            model, recipe = f"variant_{name}", f"m{t + 1}"
            rows = {}
            with self.loaded(cfg, run, model) as (backend, chat):
                for instrument in instruments:
                    rows[instrument.name] = instrument.measure(cfg, run, model, backend, chat)
            tokens += backend.tokens_generated
            # a model equal to the recipe's reads as "no difference" on every instrument: say what it is instead
            same = same_weights(run.model(model), run.model(recipe)) and (
                f"{model} has the weights of {recipe}, byte for byte: the option changed nothing in training")
            names = (f"{recipe} (paper's recipe)", model)
            for instrument in instruments:
                write_jsonl(self.folder(run) / instrument.name / f"{model}.jsonl", rows[instrument.name])
                for d in instrument.compare(cfg, instrument.rows(run, recipe), rows[instrument.name], names):
                    differences.append(dataclasses.replace(d, blind=same or d.blind))
                    if instrument.quality:
                        quality.add(d.metric)
            prompts = [r["prompt"] for r in read_jsonl(run.candidates(t))]
            differences.append(Difference(USABLE_PAIRS, *names, paired(
                pair_indicator(run.pairs(t), prompts), pair_indicator(run.variant(name) / "pairs.jsonl", prompts),
                mean_of, cfg.evaluation.bootstrap_samples, cfg.seed)))
            counts = read_json(run.counts(model))
            variants[name] = {"start": f"m{t}", "recipe": recipe, "pairs": counts["pairs"],
                              "judge_pairs": counts.get("judge_pairs", 0), "prompts": counts["prompts"],
                              "fixes": [fix.name for fix in fixes.on(section)], "options": fixes.options_set(section)}
        write_json(self.file(run), {"variants": variants, "instruments": [i.name for i in instruments],
                                    "quality_metrics": sorted(quality), "differences": [d.to_dict() for d in differences]})
        return {"tokens_generated": tokens, **{f"variant {n}": f"{v['pairs']} pairs from {v['start']}"
                                               for n, v in variants.items()}}

    def tables(self, run):
        result = self.result(run)
        rows = [{"variant": name, "from": v["start"], "against": v["recipe"], "answer pairs": v["pairs"],
                 "judge pairs": v["judge_pairs"], "prompts": v["prompts"],
                 "options": ", ".join(f"{k}={val}" for k, val in v["options"].items())}
                for name, v in result["variants"].items()]
        return [(f"**{self.verdict(run)}** The variants, each from the model the paper's recipe started from:",
                 pd.DataFrame(rows).set_index("variant"))]

    def adjusted(self, run) -> list[tuple[Difference, float | None]]:
        """The quality differences the verdict reads, each with its Holm-adjusted p-value over all of them (every
        variant on every quality measure is one family: at 95% each, one of twenty rises by chance)."""
        quality = set(self.result(run).get("quality_metrics", []))
        differences = [d for d in self.differences(run) if d.metric in quality and not d.blind]
        return list(zip(differences, holm([p_value(d.estimate) for d in differences]), strict=True))

    def verdict(self, run) -> str:
        """Which variant, if any, helps at this size (Holm-adjusted over every variant and quality measure), and
        how sure the intervals let us be."""
        quality = set(self.result(run).get("quality_metrics", []))
        adjusted = self.adjusted(run)
        helps = sorted({d.after for d, p in adjusted if p is not None and p < 0.05 and d.estimate.value > 0})
        widest = max((d.estimate.half_width * d.scale for d, _ in adjusted if d.estimate.half_width), default=None)
        measures = ", ".join(sorted(quality)) or "no quality measure"
        family = f"Holm-adjusted over {len(adjusted)} variant × measure differences"
        if helps:
            return f"Variants that raise a quality measure ({measures}; {family}): {', '.join(helps)}."
        return (f"No variant raises a quality measure ({measures}) once {len(adjusted)} differences are read together "
                f"({family})" + (f"; intervals up to ±{widest:.1f} points: at this size none is shown to help."
                                 if widest else "."))

    def headlines(self, run):
        return {f"ablation {d.after}: {d.metric}" + ("" if d.unit == "characters" else " Δ %"): d.estimate
                for d in self.differences(run)} | {"ablation: verdict": self.verdict(run)}

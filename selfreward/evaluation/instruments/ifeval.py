"""IFEval (Zhou et al., 2023): instructions a program checks. Every model, M0 as the floor, answers IFEval's
prompts with its chat format (greedy by default), and each verifiable instruction ("no commas", "at least 300
words", "wrap the answer in JSON") is checked by the reference checkers (`evaluation.verifiable`). No judge is
asked, so the paper's headline claim (instruction following improves with each iteration) gets a reading on a
model too small to judge.

Accuracy as the field reports it: prompt-level (every instruction of the prompt followed) and instruction-level
(each instruction on its own), strict (the answer as it is) and loose (also with a first or last line or
markdown asterisks removed). An instruction kind the checker does not know is recorded as None and left out
of both (counted and shown). Paired differences between models are on the same prompts."""
from __future__ import annotations

import dataclasses
import random

import matplotlib.pyplot as plt
import pandas as pd

from selfreward.config import model_sequence
from selfreward.evaluation import register, verifiable
from selfreward.evaluation.estimates import Estimate, bootstrap_many, paired_many
from selfreward.evaluation.instrument import Difference, Instrument, model_steps
from selfreward.io import write_json
from selfreward.method import data

METRICS = {"prompt_strict": "prompt-level strict", "instruction_strict": "instruction-level strict",
           "prompt_loose": "prompt-level loose", "instruction_loose": "instruction-level loose"}
PRIMARY = "prompt_strict"  # the one the claims read: the field's headline number
CLAIMS = {("sft_baseline", "m1"): "eft_like_ift", ("m1", "m2"): "m2_beats_m1", ("m2", "m3"): "m3_beats_m2"}


def prompts(cfg) -> list[dict]:
    """The IFEval prompts this run answers: all (`evaluation.ifeval_prompts` 0) or a seeded sample, in key order."""
    rows = data.load_ifeval(cfg.data)
    count = cfg.evaluation.ifeval_prompts
    if 0 < count < len(rows):
        rows = random.Random(f"ifeval:{cfg.item_seed}").sample(rows, count)
    return sorted(rows, key=lambda r: r["key"])


def accuracies(rows: list[dict], modes=("strict", "loose")) -> dict[str, float | None]:
    """Prompt- and instruction-level accuracy of checked rows, strict and loose; instructions of unknown kind
    (None) left out, a prompt with none known left out of the prompt level."""
    found = {}
    for mode in modes:
        checked = [[v for v in r[mode] if v is not None] for r in rows]
        checked = [c for c in checked if c]
        instructions = sum(len(c) for c in checked)
        found[f"prompt_{mode}"] = sum(all(c) for c in checked) / len(checked) if checked else None
        found[f"instruction_{mode}"] = sum(sum(c) for c in checked) / instructions if instructions else None
    return found


def by_kind(rows: list[dict], mode: str = "strict") -> dict[str, tuple[int, int]]:
    """Per instruction kind: (followed, checked), kinds the checker does not know left out."""
    found: dict[str, list[int]] = {}
    for r in rows:
        for kind, followed in zip(r["kinds"], r[mode], strict=True):
            if followed is not None:
                counts = found.setdefault(kind, [0, 0])
                counts[0] += int(followed)
                counts[1] += 1
    return {kind: tuple(counts) for kind, counts in sorted(found.items())}


def unknown_kinds(rows: list[dict]) -> dict[str, int]:
    """The instruction kinds the checker does not know, with how often they were asked."""
    found: dict[str, int] = {}
    for r in rows:
        for kind, followed in zip(r["kinds"], r["strict"], strict=True):
            if followed is None:
                found[kind] = found.get(kind, 0) + 1
    return found


@register
class IFEval(Instrument):
    name = "ifeval"
    title = "IFEval: instructions a program checks"
    description = (
        "Every model, M0 (the pretrained model) as the floor, answers IFEval's prompts (Zhou et al., 2023) with its "
        "chat format, and a program checks each verifiable instruction (*no commas*, *at least 300 words*, *wrap the "
        "answer in JSON*, ...) with the reference checkers. No judge is asked. **Prompt-level** accuracy counts a "
        "prompt when all its instructions are followed, **instruction-level** each instruction alone; **strict** "
        "reads the answer as it is, **loose** also without a first or last line or markdown asterisks. Brackets are "
        "95% intervals over prompts; differences between models are paired on the same prompts. An answer cut by "
        "the token limit can fail a length or ending instruction for that reason alone: the share that finish is "
        "shown beside each model.")
    sections = ("seed", "model", "generation", "evaluation")
    order = 35
    quality = True

    def enabled(self, cfg):
        return cfg.evaluation.enabled and cfg.evaluation.ifeval_prompts != -1

    def models(self, cfg):
        return ["base"] * cfg.evaluation.ifeval_floor + model_sequence(cfg.iterations)

    def inputs(self, cfg):
        return data.ifeval_identity(cfg.data)

    def measure(self, cfg, run, model, backend, chat):
        e, items = cfg.evaluation, prompts(cfg)
        outputs = backend.generate([chat.prompt(item["prompt"]) for item in items], n=1,
                                   temperature=e.ifeval_temperature, top_p=e.top_p,
                                   max_new_tokens=e.ifeval_max_new_tokens, seed=cfg.seed, desc=f"IFEval {model}")
        return [{"key": item["key"], "kinds": item["instruction_id_list"], "response": c.text,
                 "num_tokens": c.num_tokens, "finished": c.finished, **verifiable.check(item, c.text)}
                for item, (c,) in zip(items, outputs, strict=True)]

    def compare(self, cfg, before, after, names):
        if [r["key"] for r in before] != [r["key"] for r in after]:
            raise ValueError(f"IFEval rows of {names[0]} and {names[1]} are not the same prompts")
        found = paired_many(before, after, accuracies, cfg.evaluation.bootstrap_samples, cfg.seed)
        return [Difference(f"IFEval {METRICS[key]}", *names, found[key]) for key in METRICS]

    def run(self, cfg, run) -> dict:
        e = cfg.evaluation
        per_model, tokens = self.measure_models(cfg, run, self.models(cfg))
        models = {}
        for name, rows in per_model.items():
            estimates = bootstrap_many(rows, accuracies, e.bootstrap_samples, cfg.seed)
            models[name] = {**{k: v.to_dict() if v else None for k, v in estimates.items()},
                            "finished": sum(r["finished"] for r in rows) / len(rows),
                            "mean_tokens": sum(r["num_tokens"] for r in rows) / len(rows),
                            "by_kind": by_kind(rows, "strict"), "by_kind_loose": by_kind(rows, "loose")}
        differences = self.derive(cfg, run)
        first = next(iter(per_model.values()))
        write_json(self.file(run), {"prompts": len(first), "instructions": sum(len(r["kinds"]) for r in first),
                                    "unknown_kinds": unknown_kinds(first), "max_new_tokens": e.ifeval_max_new_tokens,
                                    "temperature": e.ifeval_temperature, "models": models,
                                    "differences": [d.to_dict() for d in differences]})
        return {"ifeval_prompts": len(first), "tokens_generated": tokens,
                **{f"prompt_strict {n}": m[PRIMARY] and round(m[PRIMARY]["value"], 4) for n, m in models.items()}}

    def derive(self, cfg, run):
        """SFT baseline → M1, M1 → M2, M2 → M3, M1 → M3 (M0 is the floor, not a step); the claims on the
        prompt-level strict accuracy."""
        chain = [n for n in self.models(cfg) if n != "base"]
        per_model = {name: self.rows(run, name) for name in chain}
        return [dataclasses.replace(d, claim=CLAIMS.get((before, after)) if d.metric == f"IFEval {METRICS[PRIMARY]}"
                                    else None)
                for before, after in model_steps(chain)
                for d in self.compare(cfg, per_model[before], per_model[after], (before, after))]

    # ------------------------------------------------------------ reporting
    def estimates(self, run) -> dict[str, dict[str, Estimate | None]]:
        return {n: {k: Estimate.from_dict(m[k]) if m[k] else None for k in METRICS}
                for n, m in self.result(run)["models"].items()}

    def tables(self, run):
        result = self.result(run)
        rows = []
        for name, m in self.estimates(run).items():
            rows.append({"model": name, **{f"{label} % [95% CI]": m[k].format(100, 1) if m[k] else "—"
                                           for k, label in METRICS.items()},
                         "answers that finish %": round(100 * result["models"][name]["finished"], 1),
                         "mean tokens": round(result["models"][name]["mean_tokens"], 1)})
        unknown = result["unknown_kinds"]
        caption = (f"{result['prompts']} IFEval prompts ({result['instructions']} instructions), answers of at most "
                   f"{result['max_new_tokens']} tokens at temperature {result['temperature']}."
                   + (f" Not checked (kinds the checker does not know): {unknown}." if unknown else ""))
        return [(caption, pd.DataFrame(rows).set_index("model")),
                ("Instruction-level strict accuracy % per instruction kind (followed / asked).", self.kinds_table(run))]

    def kinds_table(self, run) -> pd.DataFrame:
        models = self.result(run)["models"]
        kinds = sorted({k for m in models.values() for k in m["by_kind"]})
        rows = []
        for kind in kinds:
            row = {"instruction kind": kind}
            for name, m in models.items():
                followed, asked = m["by_kind"].get(kind, (0, 0))
                row[name] = f"{100 * followed / asked:.0f} ({followed}/{asked})" if asked else "—"
            rows.append(row)
        return pd.DataFrame(rows).set_index("instruction kind")

    def figures(self, run):
        result, estimates = self.result(run), self.estimates(run)
        names = list(estimates)
        fig, ax = plt.subplots(figsize=(6, 3))
        for offset, key in enumerate(["prompt_strict", "instruction_strict"]):
            points = [(i + 0.1 * (2 * offset - 1), estimates[n][key]) for i, n in enumerate(names) if estimates[n][key]]
            if points:
                xs, es = zip(*points, strict=True)
                values = [100 * e.value for e in es]
                errors = [[v - 100 * e.low for v, e in zip(values, es, strict=True)],
                          [100 * e.high - v for v, e in zip(values, es, strict=True)]]
                ax.errorbar(xs, values, yerr=errors, marker="o", capsize=3, linestyle="none", label=METRICS[key])
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("% followed (strict)")
        ax.set_title(f"IFEval, {result['prompts']} prompts (95% CI)")
        ax.legend(fontsize=7)
        fig.tight_layout()

        models = result["models"]
        kinds = sorted({k for m in models.values() for k in m["by_kind"]})
        grid = [[100 * models[n]["by_kind"][k][0] / models[n]["by_kind"][k][1] if k in models[n]["by_kind"]
                 else float("nan") for n in names] for k in kinds]
        heat, hx = plt.subplots(figsize=(1.2 + 0.9 * len(names), 0.8 + 0.22 * len(kinds)))
        image = hx.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
        hx.set_xticks(range(len(names)), names)
        hx.set_yticks(range(len(kinds)), kinds, fontsize=7)
        hx.set_title("IFEval: % followed per instruction kind (strict)", fontsize=9)
        heat.colorbar(image, ax=hx, fraction=0.04)
        heat.tight_layout()
        return [fig, heat]

    def headlines(self, run):
        found = {}
        for name, m in self.estimates(run).items():
            found[f"IFEval {name}: prompt-level strict %"] = m["prompt_strict"]
            found[f"IFEval {name}: instruction-level loose %"] = m["instruction_loose"]
        return found

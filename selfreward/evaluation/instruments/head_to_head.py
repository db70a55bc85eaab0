"""Head-to-head instruction following: the evaluation judge compares two models' answers to the same
prompt in both orders (the paper's protocol, after AlpacaEval). Per comparison: win / tie / loss, the net
wins (wins - losses) / n with its interval and MDE, the position-debiased soft win rate, and the judge's
health (a judge that answers by position cannot tell the models apart)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from selfreward import paper
from selfreward.evaluation import health, register
from selfreward.evaluation.estimates import Estimate, bootstrap, mean
from selfreward.evaluation.instrument import Difference, Instrument
from selfreward.evaluation.responses import load
from selfreward.io import exists, read_jsonl, write_json, write_jsonl
from selfreward.method import evaluation_judge

COMPARISONS = [("m1", "sft_baseline"), ("m2", "sft_baseline"), ("m3", "sft_baseline"),
               ("m2", "m1"), ("m3", "m2"), ("m3", "m1")]
CLAIMS = {("m1", "sft_baseline"): "eft_like_ift", ("m2", "m1"): "m2_beats_m1", ("m3", "m2"): "m3_beats_m2"}
NET = {"win": 1.0, "tie": 0.0, "loss": -1.0}


def summarise(records: list[dict], samples: int, seed: int) -> dict:
    """Outcome counts, the net wins and the win rate with intervals, the soft win rate, the judge's health."""
    outcomes = [r["outcome"] for r in records]
    n = len(outcomes)
    net = bootstrap([NET[o] for o in outcomes], lambda xs: sum(xs) / len(xs) if xs else None, samples, seed,
                    with_mde=True)
    rate = bootstrap([evaluation_judge.POINTS[o] for o in outcomes], lambda xs: sum(xs) / len(xs) if xs else None,
                     samples, seed)
    soft = mean([r["soft_preference"] for r in records], samples, seed)
    verdicts = health.of_comparisons(records)
    return {"n": n, **{k: outcomes.count(k) for k in ("win", "tie", "loss")},
            **{f"{k}_pct": 100 * outcomes.count(k) / n if n else None for k in ("win", "tie", "loss")},
            "net_wins": net.to_dict(), "win_rate": rate.to_dict(), "soft_win_rate": soft and soft.to_dict(),
            "health": verdicts.to_dict()}


@register
class HeadToHead(Instrument):
    name = "head_to_head"
    title = "Head-to-head instruction following"
    description = (
        "Every pair of models answers the same held-out AlpacaEval prompts; the evaluation judge compares the "
        "two answers in both orders. A model wins a prompt when the judge prefers it in both orders, loses when it "
        "prefers the other in both; anything else (inconsistent or unreadable) is a tie, as in the paper. **Net "
        "wins** = (wins − losses) / n, with its 95% interval and MDE; the **soft win rate** reads the judge's "
        "probabilities in both orders and removes its preference for a slot in logit space (half the difference of "
        "the two logits), so that a slot bias neither adds to nor shrinks a preference. A judge that "
        "mostly answers by position (first-slot rate, order consistency) is marked *uninformative*.")
    uses_responses = True
    order = 10

    def pairs(self, names: list[str]) -> list[tuple[str, str]]:
        return [c for c in COMPARISONS if c[0] in names and c[1] in names]

    def run(self, cfg, run) -> dict:
        e = cfg.evaluation
        instructions = [p["instruction"] for p in read_jsonl(run.eval_prompts)]
        texts = {n: [r["response"] for r in rows] for n, rows in load(run, self.models(cfg)).items()}
        pairs = self.pairs(list(texts))
        with evaluation_judge.evaluation_judge(cfg, run) as (judge, judge_name):
            records = evaluation_judge.both_orders(judge, instructions, texts, pairs)
        comparisons = {key: summarise(rows, e.bootstrap_samples, cfg.seed) for key, rows in records.items()}
        for key, rows in records.items():
            write_jsonl(self.records_file(run, key), rows)
        differences = self.differences_of(comparisons)
        write_json(self.file(run), {"judge": judge_name, "prompts": len(instructions), "comparisons": comparisons,
                                    "differences": [d.to_dict() for d in differences],
                                    "health": {k: c["health"] for k, c in comparisons.items()}})
        return {"judge": judge_name, "eval_prompts": len(instructions),
                **{key: f"{c['win']}/{c['tie']}/{c['loss']}" for key, c in comparisons.items()}}

    def records_file(self, run, key: str):
        return self.folder(run) / f"{key.replace(' ', '_')}.jsonl"

    def derive(self, cfg, run):
        e = cfg.evaluation
        return self.differences_of({f"{x} vs {y}": summarise(read_jsonl(self.records_file(run, f"{x} vs {y}")),
                                                             e.bootstrap_samples, cfg.seed)
                                    for x, y in COMPARISONS if exists(self.records_file(run, f"{x} vs {y}"))})

    @staticmethod
    def differences_of(comparisons: dict[str, dict]) -> list[Difference]:
        """Each comparison's net wins as a paired difference (`summarise`'s summaries, keyed "X vs Y")."""
        differences = []
        for x, y in COMPARISONS:
            c = comparisons.get(f"{x} vs {y}")
            if c is None:
                continue
            verdicts = health.Health.from_dict(c["health"])
            differences.append(Difference("net wins (wins − losses) / n", y, x, Estimate.from_dict(c["net_wins"]),
                                          claim=CLAIMS.get((x, y)), blind=None if verdicts.informative
                                          else verdicts.why_not))
        return differences

    def tables(self, run):
        data = self.result(run)
        rows = []
        for name, c in data["comparisons"].items():
            h = health.Health.from_dict(c["health"])
            published = paper.HEAD_TO_HEAD.get(name)
            rows.append({"comparison": name, "win %": c["win_pct"], "tie %": c["tie_pct"], "loss %": c["loss_pct"],
                         "net wins % [95% CI]": Estimate.from_dict(c["net_wins"]).format(100, 1),
                         "soft win rate % [95% CI]": c["soft_win_rate"] and
                         Estimate.from_dict(c["soft_win_rate"]).format(100, 1) or "—",
                         "orders agree %": _pct(h.stats.get("order_consistency")),
                         "first slot %": _pct(h.stats.get("first_slot_rate")), "judge": h.label(),
                         "paper win/tie/loss %": "/".join(f"{v:.1f}" for v in published) if published else "—"})
        table = pd.DataFrame(rows).set_index("comparison").round(1)
        return [(f"Judge: {data['judge']}, {data['prompts']} prompts, both orders.", table)]

    def figures(self, run):
        """Stacked win/tie/loss bars, ours beside the paper's, as in the paper's figure."""
        data = self.result(run)["comparisons"]
        bars = []
        for name, c in data.items():
            bars.append((f"{name}\n(this run)", c["win_pct"], c["tie_pct"], c["loss_pct"]))
            if name in paper.HEAD_TO_HEAD:
                bars.append((f"{name}\n(paper)", *paper.HEAD_TO_HEAD[name]))
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1))
        labels, left = [b[0] for b in bars], [0.0] * len(bars)
        for i, (part, colour) in enumerate([("win", "#4c9a4c"), ("tie", "#bbbbbb"), ("loss", "#c85050")]):
            values = [b[i + 1] for b in bars]
            ax.barh(labels, values, left=left, color=colour, label=part)
            left = [lft + v for lft, v in zip(left, values, strict=True)]
        ax.invert_yaxis()
        ax.set_xlabel("% of prompts")
        ax.set_xlim(0, 100)
        ax.legend(loc="lower right")
        ax.set_title("Head-to-head instruction following (both orders, inconsistent = tie)")
        fig.tight_layout()
        return [fig]

    def headlines(self, run):
        found = {}
        for name, c in self.result(run)["comparisons"].items():
            found[f"{name}: win/tie/loss %"] = f"{c['win_pct']:.1f}/{c['tie_pct']:.1f}/{c['loss_pct']:.1f}"
            found[f"{name}: net wins %"] = Estimate.from_dict(c["net_wins"])
            found[f"{name}: soft win rate %"] = Estimate.from_dict(c["soft_win_rate"])
            found[f"{name}: judge"] = health.Health.from_dict(c["health"]).label()
        return found


def _pct(value):
    return None if value is None else 100 * value

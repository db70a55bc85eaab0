"""The paper in one place: Yuan et al. (2024), *Self-Rewarding Language Models*, arXiv:2401.10020.

Its numbers (what the book shows beside ours), its hyper-parameters and protocol (as the params keys that
express them: `CONFIG`), the claims the findings table tests (`CLAIMS`), and the aspects of the method
that the deviations table compares with a run's resolved config (`ASPECTS`). `params/paper.yaml` is
checked against `CONFIG` by a test. Figures as quoted in `../shared/paper/facts.md`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

MODEL = "Llama-2-70B"
MODELS = ["sft_baseline", "m1", "m2", "m3"]

# ---------------------------------------------------------------- results

# head to head, GPT-4 judge, 256 prompts, both orders (inconsistent = tie): win / tie / loss %
HEAD_TO_HEAD = {
    "m1 vs sft_baseline": (30.5, 38.7, 30.9), "m2 vs sft_baseline": (49.2, 36.3, 14.5),
    "m3 vs sft_baseline": (62.5, 27.7, 9.8), "m2 vs m1": (55.5, 32.8, 11.7),
    "m3 vs m2": (47.7, 39.8, 12.5), "m3 vs m1": (68.8, 22.7, 8.6),
}
# AlpacaEval 2.0 win rate % against GPT-4 Turbo (GPT-4 Turbo as annotator, all 805 prompts)
ALPACA_EVAL_2 = {"m1": 9.94, "m2": 15.38, "m3": 20.44}
MT_BENCH = {"sft_baseline": 6.85, "m1": 6.78, "m2": 7.01, "m3": 7.25}
# OASST held-out reward modeling; correlations as fractions, the rest in %
REWARD_MODEL = {
    "pairwise_accuracy": {"sft_baseline": 65.1, "m1": 78.7, "m2": 80.4, "m3": 81.7},
    "five_best": {"sft_baseline": 39.6, "m1": 41.5, "m2": 44.3, "m3": 43.2},
    "exact_match": {"sft_baseline": 10.1, "m1": 13.1, "m2": 14.3, "m3": 14.3},
    "spearman": {"sft_baseline": 0.253, "m1": 0.279, "m2": 0.331, "m3": 0.349},
    "kendall": {"sft_baseline": 0.233, "m1": 0.253, "m2": 0.315, "m3": 0.324},
}
# the SFT baseline as judge: additive vs multiple-choice prompt (pairwise accuracy %, Spearman, Kendall)
JUDGE_PROMPTS = {"additive": (65.1, 0.25, 0.23), "multiple_choice": (26.6, -0.18, -0.16)}
RESPONSE_CHARACTERS = {"m1": 1100, "m2": 1550, "m3": 2550}  # mean answer length, roughly
PAIRS = {"m1": 3964, "m2": 6942}  # preference pairs of AIFT(M1), AIFT(M2)
POSITIVE_ONLY_WIN_RATE = (29.0, 30.0)  # positive-only vs DPO, % win rate: no gain

# ---------------------------------------------------------------- hyper-parameters and protocol, as params

CONFIG = {
    "model.finetune": "full",
    "data.ift_size": 3200,
    "data.eval_prompts": 256,
    "judge.prompt": "additive",
    "judge.mode": "sampled",
    "judge.samples": 3,
    "self_instruct.seed_shots": 6,
    "self_instruct.generated_shots": 2,
    "self_instruct.temperature": 0.6,
    "self_instruct.top_p": 0.9,
    "candidates.n": 4,
    "candidates.temperature": 0.7,
    "candidates.top_p": 0.9,
    "aift.objective": "dpo",
    "aift.select_every_steps": 200,
    "aift.select_prompts": 253,
    "sft.learning_rate": 5.5e-6,
    "sft.min_learning_rate": 1.1e-6,
    "sft.batch_size": 16,
    "sft.dropout": 0.1,
    "dpo.learning_rate": 1e-6,
    "dpo.min_learning_rate": 1e-7,
    "dpo.batch_size": 16,
    "dpo.dropout": 0.1,
    "dpo.beta": 0.1,
    "iterations": 2,
    "evaluation.rm_prompts": 0,
    "evaluation.rm_max_reply_chars": 0,
}
EFT_EXAMPLES = 1630
RM_EVAL = {"prompts": 186, "replies": 541}
GPT4_JUDGES = ("gpt-4-0613", "gpt-4-0314", "gpt-4")  # GPT-4 itself: not GPT-4o, not GPT-4 Turbo


# ---------------------------------------------------------------- claims, for the findings table

# An equivalence claim holds only when the difference is shown to lie within a margin (two one-sided tests);
# the margins, by the unit of the difference: 5 points on a percentage (win rates, accuracies), half a point
# on MT-Bench's 1-10 rating (the paper's M1 and SFT differ by 0.07).
EQUIVALENCE_MARGINS = {"points": 5.0, "rating (1-10)": 0.5}
HEADLINE = "IFEval prompt-level strict"  # the judge-free reading of the headline claims: the primary findings


class ClaimError(ValueError):
    pass


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    paper: str  # the paper's figures behind it
    expect: str  # rises | falls | same: the sign of the paired difference the claim predicts
    unmeasured: str = ""  # why a run without a matching instrument row cannot test it
    margins: dict | None = field(default=None, hash=False)  # same: the equivalence margin by unit of the difference
    primary: str | None = None  # the metric whose rows are primary findings (the others are Holm-adjusted)

    def __post_init__(self):
        if self.expect not in ("rises", "falls", "same"):
            raise ClaimError(f"claim {self.id}: expect must be rises, falls or same, not {self.expect!r}")
        if self.expect == "same" and not self.margins:
            raise ClaimError(f"claim {self.id}: an equivalence claim needs a margin (margins by unit)")

    def margin(self, unit: str) -> float:
        if not self.margins or unit not in self.margins:
            raise ClaimError(f"claim {self.id}: no equivalence margin for a difference in {unit!r}")
        return self.margins[unit]


CLAIMS = [
    Claim("eft_like_ift", "EFT + IFT ≈ IFT alone (M1 vs the SFT baseline)",
          "M1 vs SFT 30.5 / 38.7 / 30.9 % win/tie/loss; MT-Bench 6.78 vs 6.85", "same",
          margins=EQUIVALENCE_MARGINS, primary=HEADLINE),
    Claim("m2_beats_m1", "M2 > M1", "M2 vs M1 55.5 / 32.8 / 11.7 %", "rises", primary=HEADLINE),
    Claim("m3_beats_m2", "M3 > M2", "M3 vs M2 47.7 / 39.8 / 12.5 %", "rises", primary=HEADLINE),
    Claim("rm_rises", "Reward-model pairwise accuracy rises SFT → M1 → M2 → M3", "65.1 → 78.7 → 80.4 → 81.7 %",
          "rises"),
    Claim("reference_rises", "Win rate vs GPT-4 Turbo rises", "AlpacaEval 2.0: 9.94 → 15.38 → 20.44 %", "rises"),
    Claim("mt_bench_rises", "MT-Bench rises", "6.78 → 7.01 → 7.25 (M1 → M3)", "rises",
          "MT-Bench needs a generative evaluation judge (a reward model rates nothing on its 1-10 scale) and "
          "evaluation.mt_bench_questions > 0"),
    Claim("longer", "Replies grow longer", "about 1,100 → 1,550 → 2,550 characters", "rises"),
    Claim("no_eft_one_score", "Without EFT the judge piles on one score (and yields few pairs)",
          "without EFT M1's judge almost always gives 4", "falls",
          "needs the reward-model instrument (the SFT baseline is the judge without EFT)"),
    Claim("positive_only", "Positive-only training gives little", "29 % vs 30 % win rate", "same",
          "needs a run with aift.objective: sft_positive against this one (the ablation profile compares "
          "variants from the same M1)", margins=EQUIVALENCE_MARGINS),
]


# ---------------------------------------------------------------- deviations

@dataclass(frozen=True)
class Aspect:
    """One aspect of the method: the paper's choice, and how to read a run's from its resolved config
    (`cfg`, a dict) and counts (`counted(stage, key)`). With `key`, this run's value is the config's and
    it is the paper's when it equals CONFIG[key]; otherwise `ours` and `same` say."""

    label: str
    paper: str
    key: str | None = None
    ours: Callable[[dict, Callable], str] | None = None
    same: Callable[[dict, Callable], bool] | None = None


def value(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _judge_model(cfg: dict) -> str:
    e, m = cfg["evaluation"], cfg["model"]
    if e["judge_model"].startswith("reward:"):
        return f"reward model {e['judge_model'].removeprefix('reward:')} (scores each answer alone; no MT-Bench)"
    return {"base": f"M0 ({m['spec']})", "endpoint": f"endpoint {e['endpoint_model']}"}.get(e["judge_model"],
                                                                                           e["judge_model"])


def _gpt4(cfg: dict) -> bool:
    e = cfg["evaluation"]
    return e["judge_model"] == "endpoint" and str(e["endpoint_model"]).lower() in GPT4_JUDGES


ASPECTS = [
    Aspect("pretrained model M0", MODEL, ours=lambda c, n: c["model"]["spec"],
           same=lambda c, n: "llama-2-70b" in c["model"]["spec"].lower() and "chat" not in c["model"]["spec"].lower()),
    Aspect("fine-tuning", "full fine-tuning", ours=lambda c, n: "full" if c["model"]["finetune"] == "full" else
           f"LoRA (r {c['model']['lora_r']}, alpha {c['model']['lora_alpha']}, all linear layers)",
           same=lambda c, n: c["model"]["finetune"] == "full"),
    Aspect("IFT seed (OASST rank-0 first turns)", "3,200", ours=lambda c, n: str(n("data", "ift")),
           same=lambda c, n: n("data", "ift") == CONFIG["data.ift_size"]),
    Aspect("EFT prompts disjoint from IFT prompts", "yes",
           ours=lambda c, n: "yes" if n("data", "eft_ift_overlap") == 0 else f"no ({n('data', 'eft_ift_overlap')} shared)",
           same=lambda c, n: n("data", "eft_ift_overlap") == 0),
    Aspect("EFT training examples", f"{EFT_EXAMPLES:,}",
           ours=lambda c, n: f"{n('eft', 'eft')} (from {n('data', 'eft_source_prompts')} source prompts)",
           same=lambda c, n: n("eft", "eft") == EFT_EXAMPLES),
    Aspect("EFT agreement rule", "a judgment is kept when its scores rank the replies as the humans do",
           ours=lambda c, n: "per reply, one of its k readable sampled judgments is taught, searched over the k^replies "
           "combinations for integer scores that strictly order differently ranked replies as the humans do "
           "(nearest the reply's mean score first)", same=lambda c, n: False),
    Aspect("EFT rebalancing", "the over-represented score is downsampled",
           ours=lambda c, n: f"the most frequent score cut to {c['eft']['max_share_per_score']:.0%}"
           if c["eft"]["rebalance"] else "off", same=lambda c, n: c["eft"]["rebalance"]),
    Aspect("judge prompt", "additive 5-point", key="judge.prompt"),
    Aspect("judge scoring", "sampled: 'Score: n' parsed from the text",
           ours=lambda c, n: "sampled: 'Score: n' parsed from the text" if c["judge"]["mode"] == "sampled" else
           f"constrained: P(0..5) read after the reasoning ({c['judge']['constrained_reduce']})",
           same=lambda c, n: c["judge"]["mode"] == CONFIG["judge.mode"]),
    Aspect("judgments per candidate (k)", "3", key="judge.samples"),
    Aspect("judge reasoning length (tokens)", "up to ~100 words", ours=lambda c, n: str(c["judge"]["max_new_tokens"]),
           same=lambda c, n: c["judge"]["max_new_tokens"] >= 128),
    Aspect("model writing new prompts", "a fixed Llama-2-Chat 70B",
           ours=lambda c, n: {"base": f"M0 ({c['model']['spec']})", "current": "M_t, the model being trained"}.get(
               c["self_instruct"]["prompt_model"], c["self_instruct"]["prompt_model"]),
           same=lambda c, n: "llama-2-70b-chat" in c["self_instruct"]["prompt_model"].lower()),
    Aspect("few-shot examples per new prompt", "6 seed + 2 generated",
           ours=lambda c, n: f"{c['self_instruct']['seed_shots']} seed + {c['self_instruct']['generated_shots']} generated",
           same=lambda c, n: (c["self_instruct"]["seed_shots"], c["self_instruct"]["generated_shots"]) == (6, 2)),
    Aspect("new prompts per iteration (before filtering)", "enough for 3,964 / 6,942 pairs",
           ours=lambda c, n: str(c["self_instruct"]["num_prompts"]), same=lambda c, n: c["self_instruct"]["num_prompts"] >= 5000),
    Aspect("candidates per prompt (N)", "4", key="candidates.n"),
    Aspect("candidate sampling", "T 0.7, top-p 0.9",
           ours=lambda c, n: f"T {c['candidates']['temperature']}, top-p {c['candidates']['top_p']}",
           same=lambda c, n: (c["candidates"]["temperature"], c["candidates"]["top_p"]) == (0.7, 0.9)),
    Aspect("candidate length", "uncut", ours=lambda c, n: f"at most {c['candidates']['max_new_tokens']} tokens; "
           "candidates cut by the limit are left out of the pairs", same=lambda c, n: False),
    Aspect("AIFT objective", "DPO on (best, worst) pairs",
           ours=lambda c, n: "DPO on (best, worst) pairs" if c["aift"]["objective"] == "dpo"
           else "SFT on the seed data and the candidates scored 5 (the paper's ablation)", key=None,
           same=lambda c, n: c["aift"]["objective"] == "dpo"),
    Aspect("DPO learning rate", "1e-6, decaying to 1e-7",
           ours=lambda c, n: f"{c['dpo']['learning_rate']:g}, decaying to {c['dpo']['min_learning_rate']:g}",
           same=lambda c, n: (c["dpo"]["learning_rate"], c["dpo"]["min_learning_rate"]) == (1e-6, 1e-7)),
    Aspect("DPO beta, batch, dropout", "0.1, 16, 0.1",
           ours=lambda c, n: f"{c['dpo']['beta']:g}, {c['dpo']['batch_size']}, {c['dpo']['dropout']:g}"
           + (" (dropout 0: against a reference read without dropout, a policy with dropout gives the longer reply of "
              "a pair a lower implicit reward before any learning)" if c["dpo"]["dropout"] == 0 else ""),
           same=lambda c, n: (c["dpo"]["beta"], c["dpo"]["batch_size"], c["dpo"]["dropout"]) == (0.1, 16, 0.1)),
    Aspect("SFT learning rate", "5.5e-6, cosine decay to 1.1e-6",
           ours=lambda c, n: f"{c['sft']['learning_rate']:g}, cosine decay to {c['sft']['min_learning_rate']:g}",
           same=lambda c, n: (c["sft"]["learning_rate"], c["sft"]["min_learning_rate"]) == (5.5e-6, 1.1e-6)),
    Aspect("SFT batch, dropout", "16, 0.1", ours=lambda c, n: f"{c['sft']['batch_size']}, {c['sft']['dropout']:g}",
           same=lambda c, n: (c["sft"]["batch_size"], c["sft"]["dropout"]) == (16, 0.1)),
    Aspect("checkpoint selection", "every 200 steps, pairwise judge on ~253 prompts",
           ours=lambda c, n: f"every {c['aift']['select_every_steps']} steps, on {c['aift']['select_prompts']} held-out "
           "prompts" if c["aift"]["select_every_steps"] else "off (the last step is kept)",
           same=lambda c, n: (c["aift"]["select_every_steps"], c["aift"]["select_prompts"]) == (200, 253)),
    Aspect("self-rewarding iterations", "2 (M2, M3)", key="iterations"),
    Aspect("evaluation judge", "GPT-4", ours=lambda c, n: _judge_model(c), same=lambda c, n: _gpt4(c)),
    Aspect("evaluation prompts (AlpacaEval)", "256", ours=lambda c, n: str(n("responses", "eval_prompts")),
           same=lambda c, n: n("responses", "eval_prompts") == CONFIG["data.eval_prompts"]),
    Aspect("evaluated answer length (tokens)", "uncut (M3 ~2,500 characters)",
           ours=lambda c, n: str(c["evaluation"]["max_new_tokens"]), same=lambda c, n: c["evaluation"]["max_new_tokens"] >= 1024),
    Aspect("'vs GPT-4 Turbo' win rates", "AlpacaEval 2.0: GPT-4 Turbo judges all 805 prompts against GPT-4 Turbo's outputs",
           ours=lambda c, n: f"this run's pairwise judge ({_judge_model(c)}) on {n('responses', 'eval_prompts')} prompts "
           "against AlpacaEval's GPT-4 Turbo outputs (not AlpacaEval 2.0)", same=lambda c, n: False),
    Aspect("MT-Bench", "GPT-4 grading, reference answers for math, reasoning and coding, 80 questions",
           ours=lambda c, n: f"{_judge_model(c)} grading, no reference answers, one sampling temperature "
           f"({c['evaluation']['temperature']:g}), {c['evaluation']['mt_bench_questions']} questions",
           same=lambda c, n: False),
    Aspect("reward-model judgments", "the training judge: k = 3 sampled judgments per reply, averaged",
           ours=lambda c, n: f"{c['evaluation']['rm_samples']} per reply at temperature "
           f"{c['judge']['temperature'] if c['evaluation'].get('rm_temperature') is None else c['evaluation']['rm_temperature']:g}",
           same=lambda c, n: c["evaluation"]["rm_samples"] == 3 and c["evaluation"].get("rm_temperature") is None),
    Aspect("reward-model evaluation set", "all 186 OASST validation prompts (541 ranked replies)",
           ours=lambda c, n: f"{n('reward_model', 'rm_prompts')} prompts" + (
               f", only those whose replies are all at most {c['evaluation']['rm_max_reply_chars']:,} characters"
               if c["evaluation"].get("rm_max_reply_chars") else ""),
           same=lambda c, n: n("reward_model", "rm_prompts") == RM_EVAL["prompts"]
           and not c["evaluation"].get("rm_max_reply_chars")),
]


def deviations(cfg: dict, counted: Callable[[str, str], object]) -> list[tuple[str, str, str, bool]]:
    """(aspect, the paper, this run, the same as the paper?) for every aspect, from the run's resolved
    config and its stages' counts."""
    rows = []
    for a in ASPECTS:
        if a.key is not None:
            ours, same = str(value(cfg, a.key)), value(cfg, a.key) == CONFIG[a.key]
        else:
            ours, same = a.ours(cfg, counted), bool(a.same(cfg, counted))
        rows.append((a.label, a.paper, ours, same))
    return rows

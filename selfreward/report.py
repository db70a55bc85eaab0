"""Tables and figures of a finished run, side by side with the paper's numbers (results chapter)."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from selfreward.config import run_models
from selfreward.io import read_json, read_jsonl
from selfreward.rundir import RunDir

# Yuan et al. (2024), GPT-4 judge, 256 prompts, both orders: win / tie / loss %
PAPER_HEAD_TO_HEAD = {
    "m1 vs sft_baseline": (30.5, 38.7, 30.9), "m2 vs sft_baseline": (49.2, 36.3, 14.5),
    "m3 vs sft_baseline": (62.5, 27.7, 9.8), "m2 vs m1": (55.5, 32.8, 11.7),
    "m3 vs m2": (47.7, 39.8, 12.5), "m3 vs m1": (68.8, 22.7, 8.6),
}
# OASST held-out reward modeling; correlations as fractions, the rest in %
PAPER_REWARD_MODEL = {
    "pairwise_accuracy": {"sft_baseline": 65.1, "m1": 78.7, "m2": 80.4, "m3": 81.7},
    "five_best": {"sft_baseline": 39.6, "m1": 41.5, "m2": 44.3, "m3": 43.2},
    "exact_match": {"sft_baseline": 10.1, "m1": 13.1, "m2": 14.3, "m3": 14.3},
    "spearman": {"sft_baseline": 0.253, "m1": 0.279, "m2": 0.331, "m3": 0.349},
    "kendall": {"sft_baseline": 0.233, "m1": 0.253, "m2": 0.315, "m3": 0.324},
}
PAPER_JUDGE_PROMPTS = {"additive": (65.1, 0.25, 0.23), "multiple_choice": (26.6, -0.18, -0.16)}
PERCENT_METRICS = {"pairwise_accuracy", "five_best", "exact_match", "pair_ties", "parse_failure_rate"}


def head_to_head_table(run_dir) -> pd.DataFrame:
    """Every comparison: hard win/tie/loss (both orders, inconsistent = tie), the position-debiased soft win
    rate with its interval, and the judge's health; "judge uninformative" where it answers by position."""
    data = read_json(RunDir(run_dir).head_to_head)
    rows = []
    for name, c in data["comparisons"].items():
        paper = PAPER_HEAD_TO_HEAD.get(name)
        health = c["judge_health"]
        rows.append({"comparison": _comparison_label(name, data), "win %": c["win_pct"], "tie %": c["tie_pct"],
                     "loss %": c["loss_pct"], "win rate (ties ½) %": c["win_rate"],
                     "soft win rate % [95% CI]": _percent_interval(c.get("soft_win_rate")),
                     "orders agree %": _pct(health["order_consistency"]),
                     "first slot %": _pct(health["first_slot_rate"]),
                     "judge": "informative" if health["informative"] else f"uninformative: {health['why_not']}",
                     "paper win/tie/loss %": "/".join(f"{v:.1f}" for v in paper) if paper else "—"})
    return pd.DataFrame(rows).set_index("comparison").round(1)


def _comparison_label(name: str, data: dict) -> str:
    generator = data.get("reference_generator") or "the AlpacaEval reference"
    return name.replace("vs reference", f"vs {generator} (AlpacaEval 2.0 reference)")


def _percent_interval(interval: dict | None) -> str:
    if not interval:
        return "—"
    return f"{100 * interval['value']:.1f} [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"


def reference_lengths(run_dir) -> pd.DataFrame:
    """Against the reference outputs: answer lengths beside the reference's, and the win rate where the
    model's answer is longer than the reference and where it is not (AlpacaEval 2.0's length effect)."""
    data = read_json(RunDir(run_dir).head_to_head)
    rows = []
    for name, c in data["comparisons"].items():
        split = c.get("length_split")
        if not split:
            continue
        rows.append({"model": name.split(" vs ")[0], "mean characters": split["model_mean_chars"],
                     "reference mean characters": split["reference_mean_chars"],
                     "prompts where longer": split["longer_than_reference"]["prompts"],
                     "win rate there %": split["longer_than_reference"]["win_rate"],
                     "prompts where not longer": split["not_longer"]["prompts"],
                     "win rate there % ": split["not_longer"]["win_rate"]})
    return pd.DataFrame(rows).set_index("model").round(1) if rows else pd.DataFrame()


def _pct(value):
    return None if value is None else 100 * value


def _interval(metric: str, triple) -> str:
    value, low, high = triple
    if value is None:
        return "—"
    scale, digits = (100, 1) if metric in PERCENT_METRICS else (1, 3)
    text = f"{value * scale:.{digits}f}"
    return text if low is None else f"{text} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


REWARD_METRICS = ["pairwise_accuracy", "pair_ties", "five_best", "exact_match", "spearman", "kendall",
                  "parse_failure_rate"]


def reward_model_table(run_dir) -> pd.DataFrame:
    """One row per judge, each metric with its 95% bootstrap interval (percentages where it says %)."""
    data = read_json(RunDir(run_dir).reward_model)
    rows = []
    for label, entry in data["models"].items():
        row = {"judge": label, "mode": entry["mode"]}
        for metric in REWARD_METRICS:
            unit = " %" if metric in PERCENT_METRICS else ""
            row[metric.replace("_", " ") + unit] = _interval(metric, entry["metrics"][metric])
        health = entry.get("judge_health", {"informative": True})
        row["judge health"] = "informative" if health["informative"] else f"uninformative: {health['why_not']}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("judge")


def paper_reward_model_table() -> pd.DataFrame:
    """The paper's reward-modeling table (Llama-2-70B, OASST held-out)."""
    table = pd.DataFrame(PAPER_REWARD_MODEL)
    table.columns = [c.replace("_", " ") + (" %" if c in PERCENT_METRICS else "") for c in table.columns]
    return table.rename_axis("judge (paper)")


def plot_win_tie_loss(run_dir):
    """Stacked win/tie/loss bars, ours beside the paper's, as in the paper's figure."""
    data = read_json(RunDir(run_dir).head_to_head)["comparisons"]
    names = [n for n in data if not n.endswith("reference")]
    bars = []
    for name in names:
        bars.append((f"{name}\n(this run)", data[name]["win_pct"], data[name]["tie_pct"], data[name]["loss_pct"]))
        if name in PAPER_HEAD_TO_HEAD:
            bars.append((f"{name}\n(paper)", *PAPER_HEAD_TO_HEAD[name]))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1))
    labels = [b[0] for b in bars]
    left = [0.0] * len(bars)
    for i, (part, colour) in enumerate([("win", "#4c9a4c"), ("tie", "#bbbbbb"), ("loss", "#c85050")]):
        values = [b[i + 1] for b in bars]
        ax.barh(labels, values, left=left, color=colour, label=part)
        left = [lft + v for lft, v in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel("% of prompts")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right")
    ax.set_title("Head-to-head instruction following (both orders, inconsistent = tie)")
    fig.tight_layout()
    return fig


def plot_reward_model(run_dir):
    data = read_json(RunDir(run_dir).reward_model)["models"]
    models = [m for m in data if "(" not in m]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ["pairwise_accuracy", "spearman"]):
        ours = [data[m]["metrics"][metric] for m in models]
        values = [o[0] if o[0] is not None else float("nan") for o in ours]
        errors = [[v - (o[1] if o[1] is not None else v) for v, o in zip(values, ours)],
                  [(o[2] if o[2] is not None else v) - v for v, o in zip(values, ours)]]
        ax.errorbar(models, values, yerr=errors, marker="o", capsize=3, label="this run")
        paper = PAPER_REWARD_MODEL[metric]
        scale = 100 if metric in PERCENT_METRICS else 1
        ax.plot([m for m in models if m in paper], [paper[m] / scale for m in models if m in paper], "s--",
                label="paper (70B)")
        ax.set_title(metric.replace("_", " "))
        ax.legend()
    fig.suptitle("The models as reward models (OASST held-out, 95% bootstrap intervals)")
    fig.tight_layout()
    return fig


def score_distributions(run_dir) -> pd.DataFrame:
    """How often each judge gives each (rounded) score on the held-out replies."""
    models = read_json(RunDir(run_dir).reward_model)["models"]
    table = {}
    for label, entry in models.items():
        rows = read_jsonl(RunDir(run_dir).root / entry["scores_file"])
        counts = Counter(math.floor(s + 0.5) for row in rows for s in row["scores"] if s is not None)
        table[label] = {score: counts.get(score, 0) for score in range(6)}
    return pd.DataFrame(table).T.rename_axis("judge")


def plot_score_histograms(run_dir):
    table = score_distributions(run_dir)
    fig, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / max(len(table), 1)
    for i, (name, row) in enumerate(table.iterrows()):
        total = max(row.sum(), 1)
        ax.bar([s + i * width for s in range(6)], row / total * 100, width=width, label=name)
    ax.set_xticks([s + 0.4 - width / 2 for s in range(6)], [str(s) for s in range(6)])
    ax.set_xlabel("score (rounded)")
    ax.set_ylabel("% of judgments")
    ax.legend(fontsize=7)
    ax.set_title("Score distributions on held-out replies")
    fig.tight_layout()
    return fig


def _run_models(run_dir) -> list[str]:
    return run_models(read_json(RunDir(run_dir).manifest)["config"]["iterations"])


def _rows(path: Path) -> list[dict]:
    return read_jsonl(path) if path.is_file() else []


def response_lengths(run_dir) -> pd.DataFrame:
    rows = []
    for name in _run_models(run_dir):
        data = read_jsonl(RunDir(run_dir).responses(name))
        tokens = [r["num_tokens"] for r in data]
        rows.append({"model": name, "mean tokens": sum(tokens) / len(tokens),
                     "mean characters": sum(len(r["response"]) for r in data) / len(data),
                     "hit length limit %": 100 * sum(not r["finished"] for r in data) / len(data)})
    return pd.DataFrame(rows).set_index("model").round(1)


def aift_statistics(run_dir) -> pd.DataFrame:
    run, rows = RunDir(run_dir), []
    iterations = read_json(run.manifest)["config"]["iterations"]
    for t in range(1, iterations + 1):  # AIFT(M1) .. AIFT(M_T)
        prompts = read_jsonl(run.aift_prompts(t))
        records, pairs, positives = (_rows(path) for path in (run.candidates(t), run.pairs(t), run.positives(t)))
        scored = [[c["score"] for c in r["candidates"] if c["score"] is not None] for r in records]
        ties = sum(1 for s in scored if len(s) >= 2 and max(s) == min(s))
        gaps = [p["chosen_score"] - p["rejected_score"] for p in pairs]
        rows.append({"AIFT of": f"m{t}", "prompts generated": len(prompts),
                     "prompts kept": sum(p["kept"] for p in prompts), "candidates": sum(len(r["candidates"]) for r in records),
                     "all-tied prompts": ties, "pairs": len(pairs),
                     "mean score gap": sum(gaps) / len(gaps) if gaps else None,
                     "mean chosen score": sum(p["chosen_score"] for p in pairs) / len(pairs) if pairs else None,
                     "positive-only examples": len(positives)})
    return pd.DataFrame(rows).set_index("AIFT of").round(3)


def stage_times(run_dir) -> pd.DataFrame:
    """Wall time and generated tokens of each stage, and their sum over the finished stages. (The stage
    rendering this table, still running, is left out.)"""
    manifest = read_json(RunDir(run_dir).manifest)
    rows = [{"stage": name, "status": e.get("status"), "minutes": round(e.get("duration_s", 0) / 60, 2),
             "tokens generated": e.get("counts", {}).get("tokens_generated")}
            for name, e in manifest["stages"].items() if e.get("status") != "running"]
    done = [r for r in rows if r["status"] == "done"]
    rows.append({"stage": "all finished stages", "status": f"{len(done)} done",
                 "minutes": round(sum(r["minutes"] for r in done), 2),
                 "tokens generated": sum(r["tokens generated"] or 0 for r in done)})
    return pd.DataFrame(rows).set_index("stage")


def judge_prompt_ablation(run_dir) -> pd.DataFrame:
    """SFT baseline as judge with the additive vs the multiple-choice prompt (the paper's comparison)."""
    models = read_json(RunDir(run_dir).reward_model)["models"]
    rows = []
    for label, prompt in [("sft_baseline", "additive"), ("sft_baseline (multiple choice)", "multiple_choice")]:
        if label not in models:
            continue
        m = models[label]["metrics"]
        paper = PAPER_JUDGE_PROMPTS[prompt]
        rows.append({"judge prompt": prompt, "pairwise accuracy %": _interval("pairwise_accuracy", m["pairwise_accuracy"]),
                     "Spearman": _interval("spearman", m["spearman"]), "Kendall τ": _interval("kendall", m["kendall"]),
                     "paper accuracy %": paper[0], "paper Spearman": paper[1], "paper Kendall τ": paper[2]})
    return pd.DataFrame(rows).set_index("judge prompt")


def run_description(run_dir) -> str:
    manifest = read_json(RunDir(run_dir).manifest)
    cfg = manifest["config"]
    h2h = read_json(RunDir(run_dir).head_to_head)
    rm = read_json(RunDir(run_dir).reward_model)
    modes = sorted({entry["mode"] for entry in rm["models"].values()})
    return (
        f"**Run `{manifest['name']}`** (params `{manifest['params_file']}`), model `{cfg['model']['spec']}` "
        f"({cfg['model']['finetune']} fine-tuning), on {hardware_line(manifest['hardware'])}; "
        f"{cfg['data']['ift_size']} IFT examples requested, {cfg['iterations']} self-rewarding iterations.\n\n"
        f"Judge scoring mode during training and reward modeling: **{', '.join(modes)}**. "
        f"Head-to-head judge: **{h2h['judge']}** on {h2h['prompts']} AlpacaEval prompts "
        f"(the paper: GPT-4 on 256). Reward modeling: {rm['prompts']} OASST validation prompts, "
        f"{rm['replies']} ranked replies, {rm['samples']} judgment(s) per reply.\n\n"
        "A small model on small data is not expected to reproduce a 70B model's gains: read the numbers as "
        "what this configuration does, and the intervals as how sure we can be of it.")


def deviations(run_dir) -> pd.DataFrame:
    """Every aspect of the method and its evaluation, the paper's choice beside this run's (from the run's
    config and counts), and whether they differ."""
    manifest = read_json(RunDir(run_dir).manifest)
    cfg, stages = manifest["config"], manifest["stages"]

    def counted(stage, key):
        return stages.get(stage, {}).get("counts", {}).get(key, "—")

    m, d, j, si, c, a, sft, dpo, e = (cfg[k] for k in ("model", "data", "judge", "self_instruct", "candidates",
                                                        "aift", "sft", "dpo", "evaluation"))
    prompt_model = {"base": f"M0 ({m['spec']})", "current": "M_t, the model being trained"}.get(
        si["prompt_model"], si["prompt_model"])
    judge_model = {"base": f"M0 ({m['spec']})", "endpoint": f"endpoint {e['endpoint_model']}"}.get(
        e["judge_model"], e["judge_model"])
    selection = (f"every {a['select_every_steps']} steps, on {a['select_prompts']} held-out prompts"
                 if a["select_every_steps"] else "off (the last step is kept)")
    eft_ok = counted("data", "eft_ift_overlap") == 0
    dpo_paper = (dpo["beta"], dpo["learning_rate"], dpo["min_learning_rate"], dpo["batch_size"], dpo["dropout"]) == \
        (0.1, 1e-6, 1e-7, 16, 0.1)
    sft_paper = (sft["learning_rate"], sft["min_learning_rate"], sft["batch_size"], sft["dropout"]) == \
        (5.5e-6, 1.1e-6, 16, 0.1)
    rows = [  # (aspect, the paper, this run, the same as the paper?)
        ("pretrained model M0", "Llama-2-70B", m["spec"], "llama-2-70b" in m["spec"].lower()),
        ("fine-tuning", "full", "full" if m["finetune"] == "full" else f"LoRA (r {m['lora_r']})",
         m["finetune"] == "full"),
        ("IFT seed (OASST rank-0 first turns)", "3,200", str(counted("data", "ift")), counted("data", "ift") == 3200),
        ("EFT prompts disjoint from IFT prompts", "yes", "yes" if eft_ok else
         f"no ({counted('data', 'eft_ift_overlap')} shared)", eft_ok),
        ("EFT training examples", "1,630", f"{counted('eft', 'eft')} (from {counted('data', 'eft_source_prompts')} "
                                           "source prompts)", counted("eft", "eft") == 1630),
        ("EFT agreement rule", "the judgment's scores rank the replies as the humans do",
         "the taught integer scores strictly order differently ranked replies as the humans do", True),
        ("EFT rebalancing", "the over-represented score is downsampled",
         f"the most frequent score cut to {cfg['eft']['max_share_per_score']:.0%}" if cfg["eft"]["rebalance"]
         else "off", cfg["eft"]["rebalance"]),
        ("judge prompt", "additive 5-point", j["prompt"], j["prompt"] == "additive"),
        ("judge scoring", "sampled: 'Score: n' parsed from the text",
         "sampled: 'Score: n' parsed from the text" if j["mode"] == "sampled" else
         f"constrained: P(0..5) read after the reasoning ({j['constrained_reduce']})", j["mode"] == "sampled"),
        ("judgments per candidate (k)", "3", str(j["samples"]), j["samples"] == 3),
        ("judge reasoning length (tokens)", "up to ~100 words", str(j["max_new_tokens"]), j["max_new_tokens"] >= 128),
        ("model writing new prompts", "a fixed Llama-2-Chat 70B", prompt_model,
         "llama-2-70b-chat" in si["prompt_model"].lower()),
        ("new prompts per iteration (before filtering)", "enough for 3,964 / 6,942 pairs", str(si["num_prompts"]),
         si["num_prompts"] >= 5000),
        ("candidates per prompt (N)", "4", str(c["n"]), c["n"] == 4),
        ("candidate sampling", "T 0.7, top-p 0.9", f"T {c['temperature']}, top-p {c['top_p']}",
         (c["temperature"], c["top_p"]) == (0.7, 0.9)),
        ("AIFT objective", "DPO on (best, worst) pairs", "DPO on (best, worst) pairs" if a["objective"] == "dpo"
         else "SFT on candidates scored 5 (the paper's ablation)", a["objective"] == "dpo"),
        ("DPO", "beta 0.1, lr 1e-6 -> 1e-7, batch 16, dropout 0.1",
         f"beta {dpo['beta']}, lr {dpo['learning_rate']:g} -> {dpo['min_learning_rate']:g}, batch {dpo['batch_size']}, "
         f"dropout {dpo['dropout']}", dpo_paper),
        ("SFT", "lr 5.5e-6 -> 1.1e-6, batch 16, dropout 0.1",
         f"lr {sft['learning_rate']:g} -> {sft['min_learning_rate']:g}, batch {sft['batch_size']}, "
         f"dropout {sft['dropout']}", sft_paper),
        ("checkpoint selection", "every 200 steps, pairwise judge on ~253 prompts", selection,
         bool(a["select_every_steps"])),
        ("self-rewarding iterations", "2 (M2, M3)", str(cfg["iterations"]), cfg["iterations"] == 2),
        ("evaluation judge", "GPT-4", judge_model, e["judge_model"] == "endpoint" and
         "gpt-4" in str(e["endpoint_model"]).lower()),
        ("evaluation prompts (AlpacaEval)", "256", str(counted("evaluation", "eval_prompts")),
         counted("evaluation", "eval_prompts") == 256),
        ("evaluated answer length (tokens)", "uncut (M3 ~2,500 characters)", str(e["max_new_tokens"]),
         e["max_new_tokens"] >= 1024),
        ("reward-model evaluation set", "all 186 OASST validation prompts (541 ranked replies)",
         f"{counted('reward_model', 'rm_prompts')} prompts" + (
             f", only those whose replies are all at most {e['rm_max_reply_chars']:,} characters"
             if e.get("rm_max_reply_chars") else ""),
         counted("reward_model", "rm_prompts") == 186 and not e.get("rm_max_reply_chars")),
    ]
    return pd.DataFrame([{"aspect": aspect, "paper": paper, "this run": ours, "differs": "" if same else "yes"}
                         for aspect, paper, ours, same in rows]).set_index("aspect")


def eft_examples(run_dir, count: int = 5) -> pd.DataFrame:
    """A few EFT training examples: the taught score and judgment, the reply's human rank."""
    rows = _rows(RunDir(run_dir).eft_train)[:count]
    return pd.DataFrame(rows, columns=["prompt_id", "rank", "score", "response"])


def hardware_line(hardware: dict) -> str:
    """'cpu: AMD EPYC (AVX2, 2 threads), float32 (requested auto)' or the GPU's name."""
    where = (f"{hardware['device']}: {hardware['gpu']}" if hardware.get("gpu") else
             f"cpu: {hardware['cpu']} ({hardware['cpu_capability']}, {hardware['threads']} threads)")
    return f"{where}, computing in {hardware['dtype']} (requested {hardware['dtype_requested']})"


PAPER_MT_BENCH = {"sft_baseline": 6.85, "m1": 6.78, "m2": 7.01, "m3": 7.25}


def human_preference_table(run_dir) -> pd.DataFrame:
    """Judge-free accuracy against the humans, per model, with 95% bootstrap intervals over prompts."""
    data = read_json(RunDir(run_dir).human_preference)
    rows = []
    for name, m in data["models"].items():
        rows.append({"model": name, "likelihood (per token) picks the human-preferred reply % [95% CI]":
                     _percent_interval(m["length_normalised"]),
                     "implicit reward picks it % [95% CI]": _percent_interval(m["implicit_reward"]),
                     "implicit reward against": m["reference"] or "—",
                     "mean log-likelihood per token": round(m["mean_logp_per_token"], 3)})
    return pd.DataFrame(rows).set_index("model")


def plot_human_preference(run_dir):
    data = read_json(RunDir(run_dir).human_preference)
    names = list(data["models"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for offset, (key, label) in enumerate([("length_normalised", "likelihood per token"),
                                           ("implicit_reward", "implicit reward (vs the DPO reference)")]):
        points = [(i + 0.08 * (2 * offset - 1), data["models"][n][key]) for i, n in enumerate(names)
                  if data["models"][n][key]]
        if points:
            xs, intervals = zip(*points)
            values = [100 * iv["value"] for iv in intervals]
            errors = [[v - 100 * iv["low"] for v, iv in zip(values, intervals)],
                      [100 * iv["high"] - v for v, iv in zip(values, intervals)]]
            ax.errorbar(xs, values, yerr=errors, marker="o", capsize=3, linestyle="none", label=label)
    ax.axhline(50, color="grey", linestyle=":", label="chance")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("% of human-ranked pairs")
    ax.set_title(f"Judge-free agreement with the humans ({data['pairs']} reply pairs, 95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def mt_bench_table(run_dir) -> pd.DataFrame:
    """MT-Bench scores (1-10) per model beside the paper's, per turn and per category."""
    data = read_json(RunDir(run_dir).mt_bench)
    rows = []
    for name, m in data["models"].items():
        overall = m["overall"]
        row = {"model": name, "overall [95% CI]": "—" if not overall else
               f"{overall['value']:.2f} [{overall['low']:.2f}, {overall['high']:.2f}]",
               "turn 1": m["turn_1"], "turn 2": m["turn_2"], "unreadable %": _pct(m["unreadable_share"]),
               "paper (70B, GPT-4 judge)": PAPER_MT_BENCH.get(name, "—"),
               "judge": "informative" if m["judge_health"]["informative"]
               else f"uninformative: {m['judge_health']['why_not']}"}
        row.update({category: value for category, value in m["categories"].items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model").round(2)


def plot_mt_bench(run_dir):
    data = read_json(RunDir(run_dir).mt_bench)["models"]
    names = [n for n in data if data[n]["overall"]]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    values = [data[n]["overall"]["value"] for n in names]
    errors = [[v - data[n]["overall"]["low"] for v, n in zip(values, names)],
              [data[n]["overall"]["high"] - v for v, n in zip(values, names)]]
    ax.errorbar(names, values, yerr=errors, marker="o", capsize=3, label="this run")
    ax.plot([n for n in names if n in PAPER_MT_BENCH], [PAPER_MT_BENCH[n] for n in names if n in PAPER_MT_BENCH],
            "s--", label="paper (70B, GPT-4 judge)")
    ax.set_ylim(1, 10)
    ax.set_ylabel("MT-Bench score (1-10)")
    ax.set_title("MT-Bench, both turns (95% CI over questions)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def interval_widths(run_dir) -> str:
    """How sure the numbers can be: the half-widths of the 95% intervals, in points."""
    run, lines = RunDir(run_dir), []
    if run.reward_model.is_file():
        rm = read_json(run.reward_model)
        widths = [(label, e["metrics"]["pairwise_accuracy"]) for label, e in rm["models"].items()]
        text = ", ".join(f"{label} ±{50 * (hi - lo):.1f}" for label, (_, lo, hi) in widths if lo is not None)
        lines.append(f"- Reward-model pairwise accuracy ({rm['prompts']} prompts, {rm['replies']} replies): {text} points.")
    if run.human_preference.is_file():
        hp = read_json(run.human_preference)
        text = ", ".join(f"{n} ±{50 * (m['length_normalised']['high'] - m['length_normalised']['low']):.1f}"
                         for n, m in hp["models"].items())
        lines.append(f"- Judge-free human-preference accuracy ({hp['pairs']} pairs): {text} points.")
    if run.head_to_head.is_file():
        h2h = read_json(run.head_to_head)
        soft = [(n, c["soft_win_rate"]) for n, c in h2h["comparisons"].items() if c.get("soft_win_rate")]
        if soft:
            text = ", ".join(f"±{50 * (iv['high'] - iv['low']):.1f}" for _, iv in soft)
            lines.append(f"- Soft win rates ({h2h['prompts']} prompts): {text} points.")
    return "\n".join(lines) or "No intervals in this run."


def _verdict(ours_rises: bool | None, paper_rises: bool) -> str:
    if ours_rises is None:
        return "no direction (the intervals span it)"
    return "agrees" if ours_rises == paper_rises else "differs"


def trend_notes(run_dir) -> str:
    """One line per trend the paper reports, saying whether this run shows it, and "judge uninformative"
    wherever the instrument cannot tell."""
    run, lines = RunDir(run_dir), []
    h2h = read_json(run.head_to_head)["comparisons"]
    for name, (win, _, loss) in PAPER_HEAD_TO_HEAD.items():
        if name not in h2h:
            continue
        ours, health = h2h[name], h2h[name]["judge_health"]
        paper_says = "wins more than it loses" if win > loss else "roughly ties"
        if not health["informative"]:
            lines.append(f"- **{name}**: paper {paper_says} ({win:.1f}/{loss:.1f}); this run: **judge uninformative** "
                         f"({health['why_not']}).")
            continue
        ours_says = ("wins more than it loses" if ours["win"] > ours["loss"] else
                     "loses more than it wins" if ours["loss"] > ours["win"] else "ties")
        verdict = "agrees" if (ours["win"] > ours["loss"]) == (win > loss + 5) else "differs"
        lines.append(f"- **{name}**: paper {paper_says} ({win:.1f}/{loss:.1f}); this run {ours_says} "
                     f"({ours['win_pct']:.1f}/{ours['loss_pct']:.1f}) — {verdict}.")
    rm = read_json(run.reward_model)["models"]
    sequence = [m for m in ["sft_baseline", "m1", "m2", "m3"] if m in rm]
    if len(sequence) >= 2:
        blind = [m for m in sequence if not rm[m].get("judge_health", {"informative": True})["informative"]]
        accuracy = [rm[m]["metrics"]["pairwise_accuracy"] for m in sequence]
        values = ", ".join(f"{m} {100 * a[0]:.1f}%" for m, a in zip(sequence, accuracy) if a[0] is not None)
        if blind:
            verdict = f"**judge uninformative** ({', '.join(blind)}: {rm[blind[0]]['judge_health']['why_not']})"
        else:
            verdict = _verdict(_rises([(a[0], a[1], a[2]) for a in accuracy]), True)
        lines.append(f"- **Reward-model pairwise accuracy** rises with each model in the paper (65.1 → 81.7%); "
                     f"this run: {values} — {verdict}.")
    if run.human_preference.is_file():
        hp = read_json(run.human_preference)["models"]
        names = [m for m in ["m1", "m2", "m3"] if m in hp]
        intervals = [hp[m]["length_normalised"] for m in names]
        values = ", ".join(f"{m} {100 * iv['value']:.1f}% [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"
                           for m, iv in zip(names, intervals))
        lines.append(f"- **Judge-free: self-rewarding moves the model toward what humans prefer** (implied by the "
                     f"paper's gains): {values} — "
                     f"{_verdict(_rises([(iv['value'], iv['low'], iv['high']) for iv in intervals]), True)}.")
    if run.mt_bench.is_file():
        mt = read_json(run.mt_bench)["models"]
        names = [m for m in ["m1", "m2", "m3"] if m in mt and mt[m]["overall"]]
        blind = [m for m in names if not mt[m]["judge_health"]["informative"]]
        if blind:
            verdict = f"**judge uninformative** ({mt[blind[0]]['judge_health']['why_not']})"
        else:
            verdict = _verdict(_rises([(mt[m]["overall"]["value"], mt[m]["overall"]["low"], mt[m]["overall"]["high"])
                                       for m in names]), True)
        values = ", ".join(f"{m} {mt[m]['overall']['value']:.2f}" for m in names)
        lines.append(f"- **MT-Bench** rises from M1 to M3 in the paper (6.78 → 7.25); this run: {values} — {verdict}.")
    return "\n".join(lines) or "No comparisons were run."


def _rises(intervals: list[tuple]) -> bool | None:
    """True when the last model is above the first beyond both intervals, False when below, None when
    the intervals overlap (or are missing)."""
    (first, first_low, first_high), (last, last_low, last_high) = intervals[0], intervals[-1]
    if None in (first, last, first_low, last_low):
        return None
    if last_low > first_high:
        return True
    if last_high < first_low:
        return False
    return None

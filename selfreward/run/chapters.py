"""What the chapters show beyond their counts: training curves, how the self-judge behaved in each
iteration, and any instrument's tables, figures and paired differences (`instrument`). (The results
chapter's own parts are in `run.report`.)"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from selfreward import evaluation
from selfreward.evaluation import health
from selfreward.evaluation.instrument import differences_table
from selfreward.io import read_json, read_jsonl
from selfreward.method.prompts import MAX_SCORE
from selfreward.rundir import RunDir

DPO_CURVES = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]
SFT_CURVES = ["loss", "learning_rate"]


# ---------------------------------------------------------------- an instrument

def instrument(run_dir, name: str):
    """Display an instrument's tables (each under its caption), its figures and its paired differences."""
    run, measured = RunDir(run_dir), evaluation.get(name)
    if not measured.done(run):
        display(Markdown(f"*{measured.title}: not measured in this run.*"))
        return
    for caption, table in measured.tables(run):
        display(Markdown(caption))
        display(table)
    for figure in measured.figures(run):
        display(figure)
        plt.close(figure)
    found = measured.differences(run)
    if found:
        display(Markdown("Paired differences between models (the same items for both; MDE: the smallest "
                         "difference this n detects with 80% power):"))
        display(differences_table(found))


# ---------------------------------------------------------------- training

def training_log(run_dir, model: str) -> list[dict]:
    """The per-step log of the training that produced `model` (its standard trainer_state.json)."""
    state = read_json(RunDir(run_dir).model(model) / "trainer_state.json")
    return [h for h in state["log_history"] if "loss" in h]


def plot_training(run_dir, model: str):
    """Loss and learning rate (SFT), or loss, rewards, margins and accuracies (DPO), per step."""
    log = training_log(run_dir, model)
    curves = DPO_CURVES if any("rewards/margins" in h for h in log) else SFT_CURVES
    fig, axes = plt.subplots(1, len(curves), figsize=(2.6 * len(curves) + 1, 2.6))
    for ax, key in zip(axes, curves, strict=True):
        points = [(h["step"], h[key]) for h in log if key in h]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3)
        ax.set_title(key.replace("rewards/", "reward "), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Training of {model}", fontsize=10)
    fig.tight_layout()
    return fig


def training_summary(run_dir, model: str) -> pd.DataFrame:
    """First and last logged values of each curve."""
    log = training_log(run_dir, model)
    keys = [k for k in DPO_CURVES + SFT_CURVES + ["grad_norm"] if any(k in h for h in log)]
    rows = []
    for key in dict.fromkeys(keys):
        values = [h[key] for h in log if key in h]
        rows.append({"curve": key, "first step": values[0], "last step": values[-1], "steps": len(values)})
    return pd.DataFrame(rows).set_index("curve")


# ---------------------------------------------------------------- an iteration

def generated_prompts(run_dir, iteration: int, count: int = 4) -> pd.DataFrame:
    """Some of the prompts M_t's prompt model wrote: kept ones, and dropped ones with the filter that dropped
    them."""
    records = read_jsonl(RunDir(run_dir).aift_prompts(iteration))
    kept = [r for r in records if r["kept"]][:count]
    dropped = [r for r in records if not r["kept"]][:count]
    return pd.DataFrame([{"prompt": r["prompt"][:300], "verdict": r["reason"],
                          "most similar seed (ROUGE-L)": r["similarity"]} for r in kept + dropped])


def candidate_set(run_dir, iteration: int) -> tuple[str, pd.DataFrame]:
    """One prompt of AIFT(M_t) that yielded a pair: its candidates, their judgments and scores, and which
    became chosen and rejected."""
    run = RunDir(run_dir)
    pairs = {p["prompt"]: p for p in read_jsonl(run.pairs(iteration))} if run.pairs(iteration).is_file() else {}
    records = read_jsonl(run.candidates(iteration))
    record = next((r for r in records if r["prompt"] in pairs), records[0])
    pair = pairs.get(record["prompt"], {})
    rows = []
    for c in record["candidates"]:
        role = "chosen" if c["response"] == pair.get("chosen") else "rejected" if c["response"] == pair.get(
            "rejected") else ""
        rows.append({"candidate": c["response"][:400], "score": c["score"],
                     "judgments": " | ".join(f"{j['score']:.2f}" if j["score"] is not None else "unreadable"
                                             for j in c["judge"]["judgments"]),
                     "first judgment's reasoning": c["judge"]["judgments"][0]["text"][:200], "in the pair": role})
    return record["prompt"], pd.DataFrame(rows)


def preference_pairs(run_dir, iteration: int, count: int = 5, width: int = 300) -> pd.DataFrame:
    """The first preference pairs of AIFT(M_t), with their scores."""
    run = RunDir(run_dir)
    pairs = read_jsonl(run.pairs(iteration))[:count] if run.pairs(iteration).is_file() else []
    return pd.DataFrame([{"prompt": p["prompt"][:width], "chosen": p["chosen"][:width], "rejected": p["rejected"][:width],
                          "chosen score": p["chosen_score"], "rejected score": p["rejected_score"]} for p in pairs])


def checkpoint_selection(run_dir, iteration: int) -> pd.DataFrame | str:
    """The checkpoints of M_{t+1} and their win rates against M_t on held-out prompts, or why there are none."""
    path = RunDir(run_dir).checkpoint_selection(iteration)
    if not path.is_file():
        return "Checkpoint selection was off (`aift.select_every_steps: 0`): M_{t+1} is the last training step."
    data = read_json(path)
    rows = [{"step": c["step"], "win rate vs M_t % (ties ½)": c["win_rate_vs_m_t"],
             "win/tie/loss": "/".join(map(str, c["win_tie_loss"])),
             "soft win rate %": None if c["soft_win_rate"] is None else 100 * c["soft_win_rate"],
             "chosen": "yes" if c["step"] == data["chosen_step"] else ""} for c in data["checkpoints"]]
    return pd.DataFrame(rows).set_index("step").round(1)


def judge_health(run_dir) -> pd.DataFrame:
    """How the self-judge behaved in EFT and in each iteration (`evaluation.health.scores`): unreadable
    judgments, the most frequent (rounded) score and its share (an alarm above 80%: "always 4"), prompts
    whose candidates all tie, and the length gap between chosen and rejected replies (a sign of length bias)."""
    run, rows = RunDir(run_dir), []
    if run.eft_judgments.is_file():
        results = [res for r in read_jsonl(run.eft_judgments) for res in r["results"]]
        rows.append(_health_row("EFT (SFT baseline)", results, None, None))
    iterations = read_json(run.manifest)["config"]["iterations"]
    for t in range(1, iterations + 1):
        if not run.candidates(t).is_file():
            continue
        records = read_jsonl(run.candidates(t))
        pairs = read_jsonl(run.pairs(t)) if run.pairs(t).is_file() else []
        rows.append(_health_row(f"AIFT(M{t})", [c["judge"] for r in records for c in r["candidates"]], records, pairs))
    return pd.DataFrame(rows).set_index("judged by")


def _health_row(label: str, results: list[dict], records, pairs) -> dict:
    judgments = [j for res in results for j in res["judgments"]]
    h = health.scores([res["score"] for res in results], 0, MAX_SCORE)
    stats, share = h.stats, h.stats["its_share"]
    row = {"judged by": label, "judgments": len(judgments),
           "unreadable %": 100 * sum(j["score"] is None for j in judgments) / max(len(judgments), 1),
           "most frequent score": stats["most_frequent_score"], "its share %": None if share is None else 100 * share,
           "alarm": f"one score takes {share:.0%}" if stats["one_score_alarm"] else "",
           "score histogram (0-5)": " ".join(str(n) for n in stats["histogram"].values()), "judge": h.label()}
    if records is not None:
        tied = [r for r in records if len({c["score"] for c in r["candidates"] if c["score"] is not None}) == 1]
        row["all-tied prompts %"] = 100 * len(tied) / max(len(records), 1)
        gaps = [len(p["chosen"]) - len(p["rejected"]) for p in pairs]
        row["chosen - rejected length (chars)"] = sum(gaps) / len(gaps) if gaps else None
    return row


def plot_judge_health(run_dir):
    """Score histograms of the self-judge, EFT and each iteration side by side."""
    table = judge_health(run_dir)
    fig, ax = plt.subplots(figsize=(7, 2.8))
    width = 0.8 / max(len(table), 1)
    for i, (label, row) in enumerate(table.iterrows()):
        counts = [int(c) for c in row["score histogram (0-5)"].split()]
        total = max(sum(counts), 1)
        ax.bar([s + i * width for s in range(6)], [100 * c / total for c in counts], width=width, label=label)
    ax.axhline(100 * health.ONE_SCORE_ALARM, color="grey", linestyle=":", label="alarm: one score")
    ax.set_xticks([s + 0.4 - width / 2 for s in range(6)], [str(s) for s in range(6)])
    ax.set_xlabel("candidate score (rounded mean of k judgments)")
    ax.set_ylabel("% of candidates")
    ax.set_title("The self-judge's scores in each iteration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def variant_pairs(run_dir, name: str, count: int = 5, width: int = 300) -> pd.DataFrame:
    """The first preference pairs of an ablation variant (answer pairs, then judge pairs), with their scores
    and, under consistency, their weights."""
    path = RunDir(run_dir).variant(name) / "pairs.jsonl"
    rows = read_jsonl(path) if path.is_file() else []
    shown = [r for r in rows if not r.get("judge_pair")][:count] + [r for r in rows if r.get("judge_pair")][:2]
    return pd.DataFrame([{"kind": "judge pair" if p.get("judge_pair") else "answer pair", "prompt": p["prompt"][-width:],
                          "chosen": p["chosen"][:width], "rejected": p["rejected"][:width],
                          "chosen score": p["chosen_score"], "rejected score": p["rejected_score"],
                          "weight C": p.get("weight", "—")} for p in shown])

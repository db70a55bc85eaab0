"""The results chapter's own parts: what the run was, the findings over every instrument, how wide the
intervals are, the deviations from the paper (computed from `paper.ASPECTS` against the run's resolved
config), the AIFT statistics and the stage times. Each instrument's tables and figures are its own
(`evaluation.instruments`); `run.chapters.instrument` shows them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from selfreward import evaluation, paper
from selfreward.config import model_sequence
from selfreward.evaluation import findings, pooling
from selfreward.evaluation.responses import side_by_side as _side_by_side
from selfreward.io import read_json, read_jsonl
from selfreward.rundir import RunDir


def _manifest(run_dir) -> dict:
    return read_json(RunDir(run_dir).manifest)


def _names(run_dir) -> list[str]:
    return model_sequence(_manifest(run_dir)["config"]["iterations"])


def done_instruments(run_dir) -> list:
    """The instruments whose results this run has, in order."""
    return [i for i in evaluation.registered() if i.done(RunDir(run_dir))]


def hardware_line(hardware: dict) -> str:
    """'cpu: AMD EPYC (AVX2, 2 threads), float32 (requested auto)' or the GPU's name."""
    where = (f"{hardware['device']}: {hardware['gpu']}" if hardware.get("gpu") else
             f"cpu: {hardware['cpu']} ({hardware['cpu_capability']}, {hardware['threads']} threads)")
    return f"{where}, computing in {hardware['dtype']} (requested {hardware['dtype_requested']})"


def run_description(run_dir) -> str:
    from selfreward.run.manifest import problems

    manifest = _manifest(run_dir)
    cfg, stages = manifest["config"], manifest["stages"]

    def counted(stage, key):
        return stages.get(stage, {}).get("counts", {}).get(key)

    pairs = ", ".join(f"AIFT(M{t}): {counted(f'iteration_{t}', 'pairs')} pairs" for t in range(1, cfg["iterations"] + 1))
    return (
        f"**Run `{manifest['name']}`** (params `{manifest['params_file']}`), model `{cfg['model']['spec']}` "
        f"({cfg['model']['finetune']} fine-tuning), on {hardware_line(manifest['hardware'])}; "
        f"{counted('data', 'ift')} IFT and {counted('m1', 'eft')} EFT examples, {cfg['iterations']} self-rewarding iterations"
        f"{' (' + pairs + ')' if pairs else ''}; judge scoring: **{cfg['judge']['mode']}**.\n\n"
        "A small model on small data is not expected to reproduce a 70B model's gains: read the numbers as what "
        "this configuration does, and the intervals as how sure we can be of it."
        + "".join(f"\n\n**Stale:** {name}: {stages[name]['stale']}." for name in problems(manifest).get("stale", [])
                  if name != "results")
        + _tweaks(manifest))


def _tweaks(manifest: dict) -> str:
    """The parameters a stage notebook changed in this run, said where the run is described."""
    tweaks = manifest.get("tweaks") or {}
    return "".join(f"\n\n**Changed in a notebook:** `{key}` = {t['value']!r} ({t['notebook']}, {t['at']})."
                   for key, t in tweaks.items())


def differences(run_dir) -> dict[str, list]:
    """Every instrument's paired differences, by instrument title: pooled over the run's seeds where it has
    several (`evaluation.pooling`), else the run's own."""
    return pooling.pooled_differences(run_dir)


def findings_table(run_dir) -> pd.DataFrame:
    return findings.table(differences(run_dir))


def findings_details(run_dir) -> pd.DataFrame:
    return findings.details(differences(run_dir))


def seeds_line(run_dir) -> str:
    """Which seeds the findings pool, and which are missing: never a silent pool."""
    seeds, missing = list(pooling.seed_folders(run_dir)), pooling.missing_seeds(run_dir)
    if len(seeds) == 1:
        return (f"One chain (seed {seeds[0]}): the intervals cover the sampling of items, not the variation between "
                "trained chains (`seeds: [0, 1, 2]` trains one chain per seed and pools them).")
    text = (f"**{len(seeds)} seeds** ({', '.join(map(str, seeds))}): each finding pools the seeds' paired differences "
            "with a t-interval whose variance adds the spread between seeds (the variation between trained chains) "
            "and the seeds' own item sampling (they share the items, so their spread alone does not hold it).")
    if missing:
        text += (f"\n\n**Missing from the pool:** seed {', '.join(map(str, missing))} (no evaluation results in its "
                 "chain's folder: run it, or the findings describe fewer chains than the params ask for).")
    return text


def forest_plots(run_dir) -> list:
    """Each finding as a forest plot: every seed's Δ with its 95% interval, and the pooled one (a diamond)."""
    import matplotlib.pyplot as plt

    from selfreward.evaluation.findings import rows

    per_seed = pooling.by_seed(run_dir)
    pooled = differences(run_dir)
    claims = {c.id: c for c in paper.CLAIMS}
    panels = [(title, d) for title, ds in pooled.items() for d in ds if d.claim in claims]
    if not panels:
        return []
    verdicts = {(r["instrument"], r["comparison"]): r["verdict"] for r in rows(pooled)}
    columns = 2
    fig, axes = plt.subplots((len(panels) + columns - 1) // columns, columns, squeeze=False,
                             figsize=(10, 1.9 * ((len(panels) + columns - 1) // columns)))
    for ax, (title, d) in zip(axes.flat, panels, strict=False):
        seeds = per_seed[title][(d.metric, d.before, d.after)]
        labels, points = [f"seed {s}" for s in seeds], [e.estimate for e in seeds.values()]
        if len(seeds) > 1:
            labels, points = labels + ["pooled"], points + [d.estimate]
        for y, (label, e) in enumerate(zip(labels, points, strict=True)):
            if e.value is None:
                continue
            low, high = (e.low, e.high) if e.low is not None else (e.value, e.value)
            ax.plot([low * d.scale, high * d.scale], [y, y], color="black" if label == "pooled" else "tab:blue")
            ax.plot([e.value * d.scale], [y], "D" if label == "pooled" else "o",
                    color="black" if label == "pooled" else "tab:blue")
        ax.axvline(0, color="grey", linestyle=":")
        claim = claims[d.claim]
        if claim.expect == "same" and d.unit in (claim.margins or {}):
            for edge in (-claim.margin(d.unit), claim.margin(d.unit)):
                ax.axvline(edge, color="tab:red", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{claim.text}\n{d.metric} ({d.comparison}): {verdicts.get((f'{title}: {d.metric}', d.comparison), '')}"[:150],
                     fontsize=7)
        ax.set_xlabel(f"Δ ({d.unit})", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return [fig]


def too_coarse(run_dir) -> str:
    """Instruments too small to see: said in the chapter, not left to silence."""
    lines = findings.coarse(differences(run_dir))
    return ("**Too small to see** (MDE over a fifth of the metric's range):\n\n" + "\n".join(lines)) if lines else \
        "Every paired difference has an MDE within a fifth of its metric's range."


def interval_widths(run_dir) -> str:
    """How sure the numbers can be: the half-widths of the 95% intervals of every paired difference."""
    lines = []
    for title, ds in differences(run_dir).items():
        parts = [f"{d.comparison} ±{d.estimate.half_width * d.scale:.1f}" for d in ds if d.estimate.half_width is not None]
        if parts:
            lines.append(f"- {title} ({ds[0].metric}, {ds[0].unit}; n = {ds[0].estimate.n}): {', '.join(parts)}.")
    return "\n".join(lines) or "No intervals in this run."


def side_by_side(run_dir, count: int = 3) -> pd.DataFrame:
    return _side_by_side(RunDir(run_dir), _names(run_dir), count)


def deviations(run_dir) -> pd.DataFrame:
    """Every aspect of the method and its evaluation (`paper.ASPECTS`): the paper's choice beside this run's,
    read from the run's resolved config and counts, and whether they differ."""
    manifest = _manifest(run_dir)

    def counted(stage, key):
        return manifest["stages"].get(stage, {}).get("counts", {}).get(key, "—")

    rows = paper.deviations(manifest["config"], counted)
    return pd.DataFrame([{"aspect": aspect, "paper": published, "this run": ours, "differs": "" if same else "yes"}
                         for aspect, published, ours, same in rows]).set_index("aspect")


def _rows(path: Path) -> list[dict]:
    return read_jsonl(path) if path.is_file() else []


def aift_statistics(run_dir) -> pd.DataFrame:
    run, rows = RunDir(run_dir), []
    for t in range(1, _manifest(run_dir)["config"]["iterations"] + 1):  # AIFT(M1) .. AIFT(M_T)
        prompts = read_jsonl(run.aift_prompts(t))
        records, pairs, positives = (_rows(path) for path in (run.candidates(t), run.pairs(t), run.positives(t)))
        scored = [[c["score"] for c in r["candidates"] if c["score"] is not None] for r in records]
        ties = sum(1 for s in scored if len(s) >= 2 and max(s) == min(s))
        gaps = [p["chosen_score"] - p["rejected_score"] for p in pairs]
        candidates = [c for r in records for c in r["candidates"]]
        rows.append({"AIFT of": f"m{t}", "prompts generated": len(prompts),
                     "prompts kept": sum(p["kept"] for p in prompts), "candidates": len(candidates),
                     "unfinished candidates": sum(not c.get("finished", True) for c in candidates),
                     "all-tied prompts": ties, "pairs": len(pairs),
                     "mean score gap": sum(gaps) / len(gaps) if gaps else None,
                     "mean chosen score": sum(p["chosen_score"] for p in pairs) / len(pairs) if pairs else None,
                     "positive-only examples": len(positives)})
    if not rows:  # iterations: 0, the SFT baseline and M1 only
        return pd.DataFrame({"AIFT of": ["(no self-rewarding iteration in this run)"]}).set_index("AIFT of")
    return pd.DataFrame(rows).set_index("AIFT of").round(3)


MEMORY_COLUMNS = {"rss_gb": "peak RSS GB", "cuda_allocated_gb": "peak GPU allocated GB",
                  "cuda_reserved_gb": "peak GPU reserved GB"}


def stage_times(run_dir) -> pd.DataFrame:
    """Wall time, generated tokens and peak memory (the process's resident set; on a GPU, what torch allocated
    and reserved) of each stage, and the sum (times, tokens) or the maximum (memory) over the finished stages.
    (The stage rendering this table, still running, is left out; a stale stage says so.)"""
    manifest = _manifest(run_dir)
    rows = []
    for name, e in manifest["stages"].items():
        if e.get("status") == "running":
            continue
        memory = e.get("peak_memory", {})
        rows.append({"stage": name, "status": e.get("status") + (" (stale)" if e.get("stale") else ""),
                     "minutes": round(e.get("duration_s", 0) / 60, 2),
                     "tokens generated": e.get("counts", {}).get("tokens_generated"),
                     **{label: memory.get(key) for key, label in MEMORY_COLUMNS.items()}})
    done = [r for r in rows if r["status"].startswith("done")]
    rows.append({"stage": "all finished stages", "status": f"{len(done)} done",
                 "minutes": round(sum(r["minutes"] for r in done), 2),
                 "tokens generated": sum(r["tokens generated"] or 0 for r in done),
                 **{label: max((r[label] for r in done if r[label] is not None), default=None)
                    for label in MEMORY_COLUMNS.values()}})
    table = pd.DataFrame(rows).set_index("stage")
    return table.drop(columns=[c for c in MEMORY_COLUMNS.values() if table[c].isna().all()])


def eft_examples(run_dir, count: int = 5) -> pd.DataFrame:
    """A few EFT training examples: the taught score and judgment, the reply's human rank."""
    rows = _rows(RunDir(run_dir).eft_train)[:count]
    return pd.DataFrame(rows, columns=["prompt_id", "rank", "score", "response"])

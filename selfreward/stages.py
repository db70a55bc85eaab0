"""The pipeline's stages, each defined once: its notebook, its run function, the config sections it
reads, the stages it needs and the files it writes.

Each stage notebook calls `run_stage(stage, config, run_dir)`. A stage reads its inputs from the run
folder (`RunDir`), writes its artifacts atomically, and returns (and saves as `stages/<name>.json`)
the counts that the manifest reports.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from selfreward import data, eft, metrics, models
from selfreward.config import Config, from_dict, run_models
from selfreward.io import read_jsonl, write_json, write_jsonl
from selfreward.rundir import RunDir


class StageError(RuntimeError):
    """A stage that cannot go on with what it was given (e.g. no usable pair); one line."""


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str  # the source notebook in notebooks/; its executed copy is notebooks/<name>.ipynb
    run: Callable[[Config, RunDir], dict]
    sections: tuple[str, ...]  # the config sections it reads (its fingerprint)
    needs: tuple[str, ...] = ()  # the stages whose outputs it reads
    outputs: Callable[[RunDir], list[Path]] = lambda run: []  # the files and folders it writes
    inputs: Callable[[Config], str] = lambda cfg: ""  # what it reads from outside the run, for its fingerprint
    iteration: int = 0
    report: bool = False  # renders reports only: re-run every time, records no outputs


def plan(cfg: Config) -> list[Stage]:
    """The stages of a run, in order."""
    model_sections = ("seed", "model")
    stages = [
        Stage("data", "01_data.ipynb", run_data, ("seed", "data"), outputs=lambda r: [r.data],
              inputs=lambda cfg: data.source_identity(cfg.data)),
        Stage("sft_baseline", "02_sft_baseline.ipynb", run_sft_baseline, model_sections + ("sft",), ("data",),
              lambda r: [r.model("sft_baseline")]),
        Stage("eft", "03_eft.ipynb", run_eft, model_sections + ("generation", "judge", "eft"),
              ("data", "sft_baseline"), lambda r: [r.eft]),
        Stage("m1", "04_m1.ipynb", run_m1, model_sections + ("sft",), ("data", "eft"), lambda r: [r.model("m1")]),
    ]
    for t in range(1, cfg.iterations + 1):
        stages.append(Stage(
            f"iteration_{t}", "05_iteration.ipynb", functools.partial(run_iteration, iteration=t),
            model_sections + ("generation", "self_instruct", "candidates", "judge", "aift", "dpo", "sft"),
            ("data", "m1" if t == 1 else f"iteration_{t - 1}"),
            functools.partial(lambda r, t: [r.aift(t), r.model(f"m{t + 1}")], t=t), iteration=t))
        if cfg.aift.select_every_steps:  # checkpoint selection judges with the evaluation judge
            stages[-1] = dataclasses.replace(stages[-1], sections=stages[-1].sections + ("evaluation",))
    if cfg.evaluation.enabled:
        trained = tuple(s.name for s in stages if s.name not in ("data", "eft"))
        stages += [
            Stage("evaluation", "06_evaluation.ipynb", run_evaluation, model_sections + ("generation", "evaluation"),
                  ("data",) + trained, lambda r: [r.eval / "responses", r.head_to_head]),
            Stage("reward_model", "07_reward_model.ipynb", run_reward_model,
                  model_sections + ("generation", "judge", "evaluation"), ("data",) + trained,
                  lambda r: [r.reward_model, r.eval / "reward_model"]),
            Stage("human_preference", "08_human_preference.ipynb", run_human_preference,
                  model_sections + ("generation", "aift", "evaluation"), ("data",) + trained,
                  lambda r: [r.human_preference]),
        ]
        if cfg.evaluation.mt_bench_questions:
            stages.append(Stage("mt_bench", "09_mt_bench.ipynb", run_mt_bench,
                                model_sections + ("generation", "evaluation"), ("data",) + trained,
                                lambda r: [r.mt_bench, r.eval / "mt_bench"]))
        stages.append(Stage("results", "10_results.ipynb", run_results, (), tuple(s.name for s in stages),
                            report=True))
    return stages


def run_stage(name: str, config: dict | Config, run_dir) -> dict:
    """Run one stage of a run (what each stage notebook calls); saves and returns its counts."""
    cfg = config if isinstance(config, Config) else from_dict(config, "stage config")
    stage = {s.name: s for s in plan(cfg)}[name]
    run, started = RunDir(run_dir), time.time()
    counts = stage.run(cfg, run)
    if stage.report:
        return counts
    counts = {**counts, "seconds": round(time.time() - started, 1)}
    write_json(run.counts(name), counts)
    return counts


# ---------------------------------------------------------------- models of a run

def base_model(cfg: Config, run: RunDir) -> str:
    """M0. The tiny model's tokenizer is trained on the run's IFT texts."""
    def corpus():
        return [text for e in read_jsonl(run.ift) for text in (e["prompt"], e["response"])]

    return models.resolve(cfg.model.spec, corpus=corpus, model_cfg=cfg.model, seed=cfg.seed)


def model_path(cfg: Config, run: RunDir, reference: str) -> str:
    """A model reference of the params: `base` (M0), a model of this run (sft_baseline, m1, ...) or a spec."""
    if reference == "base":
        return base_model(cfg, run)
    if reference in run_models(cfg.iterations):
        return str(run.model(reference))
    return models.resolve(reference)


def _stopped(run: RunDir, name: str, counts: dict, message: str):
    """Save what a stage counted before it had to stop, and stop it with a one-line reason."""
    write_json(run.partial_counts(name), counts)
    raise StageError(message)


# ---------------------------------------------------------------- training stages

def run_data(cfg: Config, run: RunDir) -> dict:
    d = cfg.data
    train = data.first_turn_threads(data.load_oasst("train", d), d.max_prompt_chars, d.max_response_chars)
    valid = data.first_turn_threads(data.load_oasst("validation", d))  # evaluation: no length caps
    eft_source, ift = data.split_eft_ift(train, d.eft_source_size, d.ift_size, cfg.seed)
    rm_eval = data.ranked_threads(valid, d.rm_eval_size, cfg.seed)
    alpaca = data.load_alpaca_eval(d)
    data.check_reference_generator(alpaca, d.alpaca_eval_generator, str(data.local_dir(d) or d.alpaca_eval_hub_id))
    heldout, eval_prompts = data.heldout_and_eval(alpaca, d.eval_prompts, cfg.seed, exclude={t["prompt"] for t in train})
    mt_bench = data.mt_bench_order(data.load_mt_bench(d), cfg.seed)
    for name, rows in [("IFT seed", ift), ("EFT source", eft_source), ("reward-model eval set", rm_eval),
                       ("eval prompts", eval_prompts)]:
        if not rows:
            raise data.DataError(f"the {name} is empty after filtering")
    write_jsonl(run.ift, ift)
    write_jsonl(run.eft_source, eft_source)
    write_jsonl(run.rm_eval, rm_eval)
    write_jsonl(run.eval_prompts, eval_prompts)
    write_jsonl(run.heldout_prompts, heldout)
    write_jsonl(run.mt_bench_questions, mt_bench)
    return {"source": str(data.local_dir(d) or d.oasst_hub_id),
            "train_prompts": len(train), "ift": len(ift), "eft_source_prompts": len(eft_source),
            "eft_ift_overlap": data.overlap(eft_source, ift),
            "eft_source_replies": sum(len(t["replies"]) for t in eft_source),
            "rm_eval_prompts": len(rm_eval), "rm_eval_replies": sum(len(t["replies"]) for t in rm_eval),
            "eval_prompts": len(eval_prompts), "heldout_prompts": len(heldout), "mt_bench_questions": len(mt_bench)}


def run_sft_baseline(cfg: Config, run: RunDir) -> dict:
    from selfreward import training

    ift = read_jsonl(run.ift)
    summary = training.sft(base_model(cfg, run), run.model("sft_baseline"), ift, cfg.sft, cfg.model, cfg.seed,
                           launch=cfg.launch)
    return {"ift": len(ift), **_prefixed("train", summary)}


def run_eft(cfg: Config, run: RunDir) -> dict:
    """The SFT baseline judges ranked training replies; agreeing judgments become EFT data."""
    from selfreward.generation import loaded_backend
    from selfreward.judging import ranked_rows

    threads = read_jsonl(run.eft_source)
    with loaded_backend(str(run.model("sft_baseline")), cfg) as (backend, chat):
        rows = ranked_rows(backend, chat, threads, cfg.judge, seed=cfg.seed, desc="EFT judgments")
    examples, records = eft.build_eft(threads, rows, cfg.judge.prompt)
    agreed = len(examples)
    if cfg.eft.rebalance:
        examples = eft.rebalance(examples, cfg.eft.max_share_per_score, cfg.seed)
    write_jsonl(run.eft_judgments, records)
    judgments, failures = sum(r["judgments"] for r in rows), sum(r["failures"] for r in rows)
    counts = {"judge_mode": rows[0]["mode"], "prompts_judged": len(threads),
              "replies_judged": sum(len(r["ranks"]) for r in rows), "judgments": judgments,
              "parse_failures": failures,
              "sampled_format_readable": sum(j["parsed"] is not None for r in rows for res in r["results"]
                                             for j in res["judgments"]),
              "prompts_agreeing": sum(r["agrees"] for r in records), "eft_before_rebalance": agreed,
              "eft": len(examples), "score_counts": _score_counts(examples),
              "tokens_generated": backend.tokens_generated}
    if len(examples) < cfg.eft.min_examples:
        _stopped(run, "eft", counts, f"{'no EFT example' if not examples else f'only {len(examples)} EFT examples'}"
                 f" (eft.min_examples {cfg.eft.min_examples}): the SFT baseline's judgments agreed with the human "
                 f"ranking on {counts['prompts_agreeing']} of {len(threads)} prompts ({failures} of {judgments} "
                 f"judgments unreadable, mode {rows[0]['mode']})")
    write_jsonl(run.eft_train, examples)
    return counts


def run_m1(cfg: Config, run: RunDir) -> dict:
    from selfreward import training

    ift, eft_train = read_jsonl(run.ift), read_jsonl(run.eft_train)
    summary = training.sft(base_model(cfg, run), run.model("m1"), ift + eft_train, cfg.sft, cfg.model, cfg.seed,
                           launch=cfg.launch)
    return {"ift": len(ift), "eft": len(eft_train), **_prefixed("train", summary)}


def run_iteration(cfg: Config, run: RunDir, iteration: int) -> dict:
    """AIFT(M_t) from M_t's own prompts, candidates and judgments, then M_{t+1} = DPO(M_t, AIFT(M_t))
    (or, with `aift.objective: sft_positive`, SFT of M_t on the candidates scored the maximum)."""
    from selfreward import self_instruction
    from selfreward.generation import loaded_backend
    from selfreward.prompts import MAX_SCORE

    t = iteration
    current = str(run.model(f"m{t}"))
    seed = cfg.seed + 100 * t
    prompt_model = current if cfg.self_instruct.prompt_model == "current" else \
        model_path(cfg, run, cfg.self_instruct.prompt_model)
    with loaded_backend(prompt_model, cfg) as (prompt_backend, _):
        prompt_records = self_instruction.new_prompts(prompt_backend, [e["prompt"] for e in read_jsonl(run.ift)],
                                                      cfg.self_instruct, seed)
    write_jsonl(run.aift_prompts(t), prompt_records)
    kept = [r["prompt"] for r in prompt_records if r["kept"]]
    counts = {"prompts_generated": len(prompt_records), "prompts_kept": len(kept),
              "prompt_drop_reasons": dict(Counter(r["reason"] for r in prompt_records))}
    if not kept:
        raise StageError(f"iteration {t}: none of {len(prompt_records)} generated prompts passed the filters "
                         f"({counts['prompt_drop_reasons']})")

    with loaded_backend(current, cfg) as (backend, chat):
        records = self_instruction.candidates_and_judgments(backend, chat, kept, cfg.candidates, cfg.judge, seed)
    pairs = self_instruction.preference_pairs(records)
    positives = self_instruction.positive_examples(records)
    write_jsonl(run.candidates(t), records)
    write_jsonl(run.pairs(t), pairs)
    write_jsonl(run.positives(t), positives)
    candidates = [c for r in records for c in r["candidates"]]
    scores = [c["score"] for c in candidates if c["score"] is not None]
    counts.update({
        "judge_mode": candidates[0]["judge"]["mode"], "candidates": len(candidates),
        "judgments": sum(len(c["judge"]["judgments"]) for c in candidates),
        "parse_failures": sum(c["judge"]["failures"] for c in candidates),
        "unscored_candidates": len(candidates) - len(scores),
        "pairs": len(pairs), "positive_examples": len(positives), "objective": cfg.aift.objective,
        "tokens_generated": prompt_backend.tokens_generated + backend.tokens_generated})
    if cfg.aift.objective == "dpo" and not pairs:
        _stopped(run, f"iteration_{t}", counts,
                 f"iteration {t}: no usable preference pair from {len(records)} prompts "
                 f"({counts['parse_failures']} of {counts['judgments']} judgments unreadable; the rest tied)")
    if cfg.aift.objective == "sft_positive" and not positives:
        highest = f"the highest was {max(scores):.2f}" if scores else "none was scored"
        _stopped(run, f"iteration_{t}", counts,
                 f"iteration {t}: aift.objective sft_positive needs candidates scored {MAX_SCORE}, and none of "
                 f"{len(candidates)} was ({len(scores)} scored; {highest})")
    return {**counts, **_prefixed("train", train_next_model(cfg, run, t, pairs, positives, seed))}


def train_next_model(cfg: Config, run: RunDir, t: int, pairs: list[dict], positives: list[dict], seed: int) -> dict:
    """M_{t+1} from M_t: DPO on AIFT(M_t)'s pairs, or SFT on its positive examples; with checkpoint
    selection, the saved checkpoint whose answers win most against M_t's."""
    import shutil

    from selfreward import training

    current, target = str(run.model(f"m{t}")), run.model(f"m{t + 1}")
    selection = {"checkpoint_dir": run.checkpoints(t), "checkpoint_every": cfg.aift.select_every_steps} \
        if cfg.aift.select_every_steps else {}
    shutil.rmtree(run.checkpoints(t), ignore_errors=True)
    if cfg.aift.objective == "sft_positive":
        summary = training.sft(current, target, positives, cfg.sft, cfg.model, seed, launch=cfg.launch, **selection)
    else:
        summary = training.dpo(current, target, pairs, cfg.dpo, cfg.model, seed, launch=cfg.launch, **selection)
    if selection:
        summary["selected_step"] = select_checkpoint(cfg, run, t, summary.pop("checkpoints"), summary["steps"])
        shutil.rmtree(run.checkpoints(t), ignore_errors=True)
    return summary


def select_checkpoint(cfg: Config, run: RunDir, t: int, checkpoints: list[str], last_step: int) -> int:
    """As the paper: every saved checkpoint (and the last step) answers `aift.select_prompts` held-out
    prompts, the evaluation judge compares each with M_t on them (both orders), and the checkpoint with the
    highest win rate (ties 1/2; then the later one) becomes M_{t+1}. Writes checkpoint_selection.json."""
    import shutil

    from selfreward import evaluation, training
    from selfreward.generation import loaded_backend

    current, target = str(run.model(f"m{t}")), run.model(f"m{t + 1}")
    prompts = [p["instruction"] for p in read_jsonl(run.heldout_prompts)[:cfg.aift.select_prompts]]
    candidates = {}
    for checkpoint in checkpoints:
        step = int(checkpoint.rsplit("-", 1)[1])
        if step != last_step:  # the last step is the trained model itself
            folder = run.checkpoints(t) / f"model-{step}"
            training.materialize_checkpoint(checkpoint, current, folder, cfg.model)
            candidates[step] = str(folder)
    candidates[last_step] = str(target)
    answers = {}
    for name, path in [("m_t", current)] + [(f"step {step}", path) for step, path in candidates.items()]:
        with loaded_backend(path, cfg) as (backend, chat):
            answers[name] = [r["response"] for r in evaluation.generate_responses(
                backend, chat, prompts, cfg.evaluation, cfg.seed, desc=f"checkpoint selection: {name}")]
    with _evaluation_judge(cfg, run) as (judge, judge_name):
        results = evaluation.head_to_heads(judge, prompts, answers, [(f"step {s}", "m_t") for s in candidates],
                                           cfg.evaluation.bootstrap_samples, cfg.seed)
    rates = {step: results[f"step {step} vs m_t"]["win_rate"] for step in candidates}
    chosen = max(rates, key=lambda step: (rates[step], step))
    write_json(run.checkpoint_selection(t), {
        "judge": judge_name, "prompts": len(prompts), "chosen_step": chosen,
        "checkpoints": [{"step": step, "win_rate_vs_m_t": rates[step],
                         "win_tie_loss": [results[f"step {step} vs m_t"][k] for k in ("win", "tie", "loss")],
                         "soft_win_rate": results[f"step {step} vs m_t"]["soft_win_rate"]} for step in candidates]})
    if chosen != last_step:
        state = target / "trainer_state.json"  # the curves of the whole training stay with the chosen model
        shutil.copy2(state, Path(candidates[chosen]) / "trainer_state.json")
        shutil.rmtree(target)
        shutil.move(candidates[chosen], target)
    return chosen


def _prefixed(prefix: str, summary: dict) -> dict:
    return {f"{prefix}_{key}": value for key, value in summary.items() if key != "examples"}


def _score_counts(examples: list[dict]) -> dict:
    return dict(sorted(Counter(str(e["score"]) for e in examples).items()))


# ---------------------------------------------------------------- evaluation stages

@contextlib.contextmanager
def _evaluation_judge(cfg: Config, run: RunDir):
    """The judge of head-to-head comparisons (`evaluation.judge_model`) and its name for the report."""
    from selfreward import evaluation
    from selfreward.generation import loaded_backend

    e = cfg.evaluation
    if e.judge_model == "endpoint":
        yield evaluation.EndpointJudge(e.endpoint_base_url, e.endpoint_model, e.endpoint_api_key_env), \
            f"endpoint:{e.endpoint_model}"
        return
    name = f"base ({cfg.model.spec})" if e.judge_model == "base" else e.judge_model
    with loaded_backend(model_path(cfg, run, e.judge_model), cfg) as (backend, chat):
        yield evaluation.LocalJudge(backend, chat, e.judge_mode), f"{name}, {e.judge_mode}"


def run_evaluation(cfg: Config, run: RunDir) -> dict:
    """Responses of every model to the eval prompts, then head-to-head and against the references."""
    from selfreward import evaluation
    from selfreward.generation import loaded_backend

    prompts = read_jsonl(run.eval_prompts)
    instructions = [p["instruction"] for p in prompts]
    responses, tokens = {}, 0
    for name in run_models(cfg.iterations):
        with loaded_backend(str(run.model(name)), cfg) as (backend, chat):
            responses[name] = evaluation.generate_responses(backend, chat, instructions, cfg.evaluation, cfg.seed,
                                                            desc=f"responses {name}")
        tokens += backend.tokens_generated
        write_jsonl(run.responses(name), responses[name])
    texts = {name: [r["response"] for r in rows] for name, rows in responses.items()}
    pairs = [c for c in evaluation.COMPARISONS if c[0] in texts and c[1] in texts]
    if cfg.evaluation.reference:
        pairs += [(name, "reference") for name in list(texts)]
        texts["reference"] = [p["reference"] for p in prompts]
    with _evaluation_judge(cfg, run) as (pairwise_judge, judge_name):
        comparisons = evaluation.head_to_heads(pairwise_judge, instructions, texts, pairs,
                                               cfg.evaluation.bootstrap_samples, cfg.seed)
    for name in responses:
        if f"{name} vs reference" in comparisons:
            comparisons[f"{name} vs reference"]["length_split"] = evaluation.length_split(
                comparisons[f"{name} vs reference"], texts[name], texts["reference"])
    write_json(run.head_to_head, {"judge": judge_name, "prompts": len(prompts), "comparisons": comparisons,
                                  "reference_generator": prompts[0].get("reference_generator")})
    summary = {key: f"{c['win']}/{c['tie']}/{c['loss']}" for key, c in comparisons.items()}
    return {"judge": judge_name, "eval_prompts": len(prompts), "tokens_generated": tokens, **summary}


def run_reward_model(cfg: Config, run: RunDir) -> dict:
    """Every model judges the held-out OASST replies; metrics against the human ranks."""
    from selfreward import evaluation
    from selfreward.generation import loaded_backend
    from selfreward.judging import ranked_rows

    threads = read_jsonl(run.rm_eval)
    if cfg.evaluation.rm_max_reply_chars:
        threads = data.short_reply_threads(threads, cfg.evaluation.rm_max_reply_chars)
    if cfg.evaluation.rm_prompts:
        threads = data.ranked_threads(threads, cfg.evaluation.rm_prompts, cfg.seed)
    judge_cfg = dataclasses.replace(cfg.judge, samples=cfg.evaluation.rm_samples)
    judges = [(name, name, judge_cfg) for name in run_models(cfg.iterations)]
    if cfg.evaluation.judge_prompt_ablation:
        judges.append(("sft_baseline (multiple choice)", "sft_baseline",
                       dataclasses.replace(judge_cfg, prompt="multiple_choice")))
    table, tokens = {}, 0
    for label, name, prompt_cfg in judges:
        with loaded_backend(str(run.model(name)), cfg) as (backend, chat):
            rows = ranked_rows(backend, chat, threads, prompt_cfg, cfg.seed, desc=f"reward model {label}")
        tokens += backend.tokens_generated
        write_jsonl(run.reward_model_scores(label), rows)
        table[label] = {"judge_prompt": prompt_cfg.prompt, "mode": rows[0]["mode"],
                        "scores_file": run.relative(run.reward_model_scores(label)),
                        "judge_health": evaluation.score_judge_health(rows),
                        "metrics": metrics.bootstrap(rows, cfg.evaluation.bootstrap_samples, cfg.seed)}
    write_json(run.reward_model, {"prompts": len(threads), "replies": sum(len(t["replies"]) for t in threads),
                                  "samples": judge_cfg.samples, "models": table})
    summary = {label: t["metrics"]["pairwise_accuracy"][0] for label, t in table.items()}
    return {"rm_prompts": len(threads), "tokens_generated": tokens,
            **{f"pairwise_accuracy {k}": v for k, v in summary.items()}}


def run_human_preference(cfg: Config, run: RunDir) -> dict:
    """Judge-free: how each model's log-likelihood orders the human-ranked OASST validation replies."""
    from selfreward import evaluation
    from selfreward.generation import loaded_backend

    e = cfg.evaluation
    threads = read_jsonl(run.rm_eval)
    if e.hp_prompts:
        threads = data.ranked_threads(threads, e.hp_prompts, cfg.seed)
    names = run_models(cfg.iterations)
    per_model = {}
    for name in names:
        with loaded_backend(str(run.model(name)), cfg) as (backend, chat):
            per_model[name] = evaluation.reply_logprobs(backend, chat, threads, e.hp_max_reply_tokens,
                                                         desc=f"log-likelihoods {name}")
    # the implicit reward of a DPO-trained M_{t+1} is measured against M_t, the reference of its DPO
    references = {f"m{t + 1}": f"m{t}" for t in range(1, cfg.iterations + 1)} if cfg.aift.objective == "dpo" else {}
    models_ = evaluation.human_preference(per_model, references, e.bootstrap_samples, cfg.seed)
    write_json(run.human_preference, {
        "prompts": len(threads), "replies": sum(len(t["replies"]) for t in threads),
        "pairs": next(iter(models_.values()))["length_normalised"]["pairs"],
        "max_reply_tokens": e.hp_max_reply_tokens, "models": models_,
        "rows": {name: rows for name, rows in per_model.items()}})
    return {"hp_prompts": len(threads), **{f"length_normalised {name}": round(m["length_normalised"]["value"], 4)
                                            for name, m in models_.items()}}


def run_mt_bench(cfg: Config, run: RunDir) -> dict:
    """Both turns of the MT-Bench questions for every model, rated 1-10 by the evaluation judge."""
    from selfreward import evaluation
    from selfreward.generation import loaded_backend

    e = cfg.evaluation
    questions = read_jsonl(run.mt_bench_questions)[:e.mt_bench_questions]
    answers, tokens = {}, 0
    for name in run_models(cfg.iterations):
        with loaded_backend(str(run.model(name)), cfg) as (backend, chat):
            answers[name] = evaluation.mt_bench_answers(backend, chat, questions, e, cfg.seed, desc=f"MT-Bench {name}")
        tokens += backend.tokens_generated
    scores = {}
    with _evaluation_judge(cfg, run) as (judge, judge_name):
        for name, rows in answers.items():
            exchanges = [(a["turns"][:turn + 1], a["answers"][:turn + 1]) for a in rows for turn in (0, 1)]
            ratings = judge.ratings(exchanges)
            for i, a in enumerate(rows):
                a["ratings"] = [ratings[2 * i], ratings[2 * i + 1]]
            write_jsonl(run.mt_bench_answers(name), rows)
            scores[name] = evaluation.mt_bench_scores(rows, ratings, e.bootstrap_samples, cfg.seed)
    write_json(run.mt_bench, {"judge": judge_name, "questions": len(questions), "models": scores})
    return {"questions": len(questions), "tokens_generated": tokens,
            **{f"overall {name}": None if s["overall"] is None else round(s["overall"]["value"], 3)
               for name, s in scores.items()}}


def run_results(cfg: Config, run: RunDir) -> dict:
    """The results chapter renders the reports itself; nothing to compute here."""
    return {}

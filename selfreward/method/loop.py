"""The self-rewarding loop, stage by stage: each training stage is a function of (config, run folder) that
reads its inputs from the run folder, writes its artifacts atomically and returns the counts the manifest
reports. `run.stages.plan` puts them in order with the evaluation instruments.

data -> sft_baseline (M0 + SFT on IFT) -> eft (its judgments of ranked replies) -> m1 (M0 + SFT on IFT + EFT)
-> iteration_t (AIFT(M_t): new prompts, N candidates, k self-judgments, pairs; M_{t+1} = DPO(M_t, pairs)).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from selfreward.config import Config
from selfreward.io import read_jsonl, write_json, write_jsonl
from selfreward.method import data, eft, fixes
from selfreward.method.model_refs import base_model, model_path
from selfreward.rundir import RunDir


class StageError(RuntimeError):
    """A stage that cannot go on with what it was given (e.g. no usable pair); one line."""


def _stopped(run: RunDir, name: str, counts: dict, message: str):
    """Save what a stage counted before it had to stop, and stop it with a one-line reason."""
    write_json(run.partial_counts(name), counts)
    raise StageError(message)


def run_data(cfg: Config, run: RunDir) -> dict:
    d = cfg.data
    messages = data.load_oasst("train", d)
    train = data.first_turn_threads(messages, d.max_prompt_chars, d.max_response_chars)
    valid = data.first_turn_threads(data.load_oasst("validation", d))  # evaluation: no length caps
    eft_source, ift = data.split_eft_ift(train, d.eft_source_size, d.ift_size, cfg.item_seed)
    rm_eval = [{**t, "split": "validation"} for t in data.ranked_threads(valid, d.rm_eval_size, cfg.item_seed)]
    if d.rm_train_size:  # held-out training prompts, whole (no length caps) as the validation ones are
        rm_eval += data.heldout_ranked_threads(data.first_turn_threads(messages), d.rm_train_size, cfg.item_seed,
                                               exclude=eft_source + ift)
    alpaca = data.load_alpaca_eval(d)
    data.check_reference_generator(alpaca, d.alpaca_eval_generator, str(data.local_dir(d) or d.alpaca_eval_hub_id))
    heldout, eval_prompts = data.heldout_and_eval(alpaca, d.eval_prompts, cfg.item_seed, exclude={t["prompt"] for t in train})
    mt_bench = data.mt_bench_order(data.load_mt_bench(d), cfg.item_seed)
    for name, rows, source in [("IFT seed", ift, "oasst/train.jsonl"), ("EFT source", eft_source, "oasst/train.jsonl"),
                               ("reward-model eval set", rm_eval, "oasst/validation.jsonl"),
                               ("eval prompts", eval_prompts, "eval/alpaca_eval.json")]:
        if not rows:
            raise data.DataError(f"the {name} is empty after filtering {data.source_of(d, source)} (English, reviewed, "
                                 "first-turn prompts with their replies, within data.max_prompt_chars and "
                                 "max_response_chars)")
    write_jsonl(run.ift, ift)
    write_jsonl(run.eft_source, eft_source)
    write_jsonl(run.rm_eval, rm_eval)
    write_jsonl(run.eval_prompts, eval_prompts)
    write_jsonl(run.heldout_prompts, heldout)
    write_jsonl(run.mt_bench_questions, mt_bench)
    return {"source": data.source_label(d),
            "train_prompts": len(train), "ift": len(ift), "eft_source_prompts": len(eft_source),
            "eft_ift_overlap": data.overlap(eft_source, ift),
            "eft_source_replies": sum(len(t["replies"]) for t in eft_source),
            "rm_eval_prompts": len(rm_eval), "rm_eval_replies": sum(len(t["replies"]) for t in rm_eval),
            "rm_eval_train_prompts": sum(t["split"] == "train" for t in rm_eval),
            "eval_prompts": len(eval_prompts), "heldout_prompts": len(heldout), "mt_bench_questions": len(mt_bench)}


def run_sft_baseline(cfg: Config, run: RunDir) -> dict:
    from selfreward.method import training

    ift = read_jsonl(run.ift)
    summary = training.sft(base_model(cfg, run), run.model("sft_baseline"), ift, cfg.sft, cfg.model, cfg.seed,
                           launch=cfg.launch)
    return {"ift": len(ift), **_prefixed("train", summary)}


def run_eft(cfg: Config, run: RunDir) -> dict:
    """The SFT baseline judges ranked training replies; agreeing judgments become EFT data."""
    from selfreward.generation import loaded_backend
    from selfreward.method.self_judge import ranked_rows

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
    from selfreward.method import training

    ift, eft_train = read_jsonl(run.ift), read_jsonl(run.eft_train)
    summary = training.sft(base_model(cfg, run), run.model("m1"), ift + eft_train, cfg.sft, cfg.model, cfg.seed,
                           launch=cfg.launch)
    return {"ift": len(ift), "eft": len(eft_train), **_prefixed("train", summary)}


def run_iteration(cfg: Config, run: RunDir, iteration: int) -> dict:
    """AIFT(M_t) from M_t's own prompts, candidates and judgments, then M_{t+1} = DPO(M_t, AIFT(M_t))
    (or, with `aift.objective: sft_positive`, SFT of M_t on the candidates scored the maximum)."""
    from selfreward.method import self_instruction
    from selfreward.generation import loaded_backend
    from selfreward.method.prompts import MAX_SCORE

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
    step = fixes.Step(cfg, run, t, cfg.aift)  # the small-model fixes the aift section switches on, if any
    pairs, own_pairs, prepared = fixes.preference_pairs(step, records)
    positives = self_instruction.positive_examples(records)
    write_jsonl(run.candidates(t), records)
    if fixes.on(cfg.aift):
        write_jsonl(run.prepared(t), prepared)
    write_jsonl(run.pairs(t), pairs + own_pairs)
    write_jsonl(run.positives(t), positives)
    candidates = [c for r in records for c in r["candidates"]]
    scores = [c["score"] for c in candidates if c["score"] is not None]
    counts.update({
        "judge_mode": candidates[0]["judge"]["mode"], "candidates": len(candidates),
        "judgments": sum(len(c["judge"]["judgments"]) for c in candidates),
        "parse_failures": sum(c["judge"]["failures"] for c in candidates),
        "unscored_candidates": len(candidates) - len(scores),
        "unfinished_candidates": sum(not c["finished"] for c in candidates),  # left out of pairs and positives
        "pairs": len(pairs), "positive_examples": len(positives), "objective": cfg.aift.objective,
        **_fix_counts(cfg.aift, own_pairs, step.counts),
        "tokens_generated": prompt_backend.tokens_generated + backend.tokens_generated})
    if cfg.aift.objective == "dpo" and not pairs:
        _stopped(run, f"iteration_{t}", counts,
                 f"iteration {t}: {fixes.no_pair_reason(prepared, cfg.aift, cfg.candidates.max_new_tokens)} "
                 f"({counts['parse_failures']} of {counts['judgments']} judgments unreadable; the rest tied)")
    if cfg.aift.objective == "sft_positive" and not positives:
        highest = f"the highest was {max(scores):.2f}" if scores else "none was scored"
        _stopped(run, f"iteration_{t}", counts,
                 f"iteration {t}: aift.objective sft_positive needs candidates scored {MAX_SCORE}, and none of "
                 f"{len(candidates)} was ({len(scores)} scored; {highest})")
    return {**counts, **_prefixed("train", train_next_model(cfg, run, t, pairs + own_pairs, positives, seed))}


def run_variant(cfg: Config, run: RunDir, name: str) -> dict:
    """The ablation variant `name` from M_t: AIFT(M_t)'s own prompts, candidates and judgments (those the
    paper's recipe used), prepared and paired by the variant's fixes (`method.fixes`, the same rules a whole
    run's iteration applies), then DPO(M_t, pairs) -> models/variant_<name>."""
    from selfreward.method import training

    section, t = next((s, start) for n, s, start in cfg.ablation_variants() if n == name)
    records = read_jsonl(run.candidates(t))
    step = fixes.Step(cfg, run, t, section)
    pairs, own_pairs, prepared = fixes.preference_pairs(step, records)
    write_jsonl(run.variant(name) / "prepared.jsonl", prepared)
    write_jsonl(run.variant(name) / "pairs.jsonl", pairs + own_pairs)
    counts = {"start": f"m{t}", "prompts": len(records), "candidates": sum(len(r["candidates"]) for r in records),
              "pairs": len(pairs), "prompts_with_a_pair": len({p["prompt"] for p in pairs}),
              **_fix_counts(section, own_pairs, step.counts)}
    if not pairs:
        raise StageError(f"variant {name}: {fixes.no_pair_reason(prepared, section, cfg.candidates.max_new_tokens)}")
    summary = training.dpo(step.current, run.model(f"variant_{name}"), pairs + own_pairs, cfg.dpo, cfg.model, step.seed,
                           launch=cfg.launch)
    return {**counts, **_prefixed("train", summary)}


def _fix_counts(section, own_pairs: list[dict], counted: dict) -> dict:
    """What the stage's counts say of the small-model fixes it applied (nothing at the paper's recipe)."""
    names = [fix.name for fix in fixes.on(section)]
    return {"fixes": names, "judge_pairs": len(own_pairs), **counted} if names else {}


def train_next_model(cfg: Config, run: RunDir, t: int, pairs: list[dict], positives: list[dict], seed: int) -> dict:
    """M_{t+1}: DPO of M_t on AIFT(M_t)'s pairs; or, for the paper's positive-only variant, the candidates
    scored the maximum join the SFT data, M_{t+1} = SFT(M0, IFT + EFT + the positives of AIFT(M1..M_t)).
    With checkpoint selection, the saved checkpoint whose answers win most against M_t's."""
    import shutil

    from selfreward.method import training

    current, target = str(run.model(f"m{t}")), run.model(f"m{t + 1}")
    selection = {"checkpoint_dir": run.checkpoints(t), "checkpoint_every": cfg.aift.select_every_steps} \
        if cfg.aift.select_every_steps else {}
    shutil.rmtree(run.checkpoints(t), ignore_errors=True)
    if cfg.aift.objective == "sft_positive":
        earlier = [row for k in range(1, t) if run.positives(k).is_file() for row in read_jsonl(run.positives(k))]
        seed_data = read_jsonl(run.ift) + (read_jsonl(run.eft_train) if run.eft_train.is_file() else [])
        summary = training.sft(base_model(cfg, run), target, seed_data + earlier + positives, cfg.sft, cfg.model, seed,
                               launch=cfg.launch, **selection)
        summary["positive_examples_trained"] = len(earlier) + len(positives)
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

    from selfreward.generation import loaded_backend
    from selfreward.method import evaluation_judge, training

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
            answers[name] = [c.text for (c,) in answer(backend, chat, prompts, cfg.evaluation, cfg.seed,
                                                         desc=f"checkpoint selection: {name}")]
    with evaluation_judge.evaluation_judge(cfg, run) as (judge, judge_name):
        results = evaluation_judge.both_orders(judge, prompts, answers, [(f"step {s}", "m_t") for s in candidates])
    rates = {step: evaluation_judge.win_rate(results[f"step {step} vs m_t"]) for step in candidates}
    chosen = max(rates, key=lambda step: (rates[step], step))
    write_json(run.checkpoint_selection(t), {
        "judge": judge_name, "prompts": len(prompts), "chosen_step": chosen,
        "checkpoints": [{"step": step, "win_rate_vs_m_t": 100 * rates[step],
                         "win_tie_loss": [sum(r["outcome"] == k for r in results[f"step {step} vs m_t"])
                                          for k in ("win", "tie", "loss")],
                         "soft_win_rate": evaluation_judge.soft_win_rate(results[f"step {step} vs m_t"])} for step in candidates]})
    if chosen != last_step:
        state = target / "trainer_state.json"  # the curves of the whole training stay with the chosen model
        shutil.copy2(state, Path(candidates[chosen]) / "trainer_state.json")
        shutil.rmtree(target)
        shutil.move(candidates[chosen], target)
    return chosen


def answer(backend, chat, instructions: list[str], evaluation_cfg, seed: int, desc: str):
    """One answer per instruction, sampled as the evaluation samples them (`evaluation` section)."""
    return backend.generate([chat.prompt(i) for i in instructions], n=1, temperature=evaluation_cfg.temperature,
                            top_p=evaluation_cfg.top_p, max_new_tokens=evaluation_cfg.max_new_tokens, seed=seed,
                            desc=desc)


def _prefixed(prefix: str, summary: dict) -> dict:
    return {f"{prefix}_{key}": value for key, value in summary.items() if key != "examples"}


def _score_counts(examples: list[dict]) -> dict:
    return dict(sorted(Counter(str(e["score"]) for e in examples).items()))

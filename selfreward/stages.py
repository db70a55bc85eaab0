"""The pipeline's stages. Each stage notebook calls one of these functions.

A stage reads its inputs from the run folder, writes its artifacts atomically, and returns
(and saves as `stages/<name>.json`) the counts that the manifest reports.
"""
from __future__ import annotations

import dataclasses
import gc
import re
import time
from collections import Counter
from pathlib import Path

from selfreward import data, eft, evaluation, metrics, models, self_instruction, training
from selfreward.config import Config, from_dict, run_models
from selfreward.generation import FastBackend, TransformersBackend
from selfreward.io import read_json, read_jsonl, write_json, write_jsonl
from selfreward.judging import judge


class StageError(RuntimeError):
    """A stage that cannot go on with what it was given (e.g. no usable pair); one line."""


def config_from(config: dict | Config) -> Config:
    return config if isinstance(config, Config) else from_dict(config, "stage config")


def model_dir(run_dir, name: str) -> Path:
    return Path(run_dir) / "models" / name


def base_model(cfg: Config, run_dir) -> str:
    """M0. The tiny model's tokenizer is trained on the run's IFT texts."""
    def corpus():
        return [text for e in read_jsonl(Path(run_dir) / "data" / "ift.jsonl") for text in (e["prompt"], e["response"])]

    return models.resolve(cfg.model.spec, corpus=corpus, model_cfg=cfg.model, seed=cfg.seed)


def resolve_prompt_model(cfg: Config, run_dir, current: str) -> str:
    spec = cfg.self_instruct.prompt_model
    return base_model(cfg, run_dir) if spec == "base" else current if spec == "current" else models.resolve(spec)


def load_backend(path: str, cfg: Config) -> tuple[TransformersBackend, models.ChatFormat]:
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path, dtype=cfg.model.dtype, device=cfg.model.device)
    chat = models.chat_format_for(tokenizer, cfg.model.chat_format)
    engine = FastBackend if cfg.generation.backend == "fast" else TransformersBackend
    return engine(model, tokenizer, models.stop_token_ids(tokenizer, chat), cfg.generation.batch_size), chat


def _finish(run_dir, name: str, counts: dict, started: float) -> dict:
    counts = {**counts, "seconds": round(time.time() - started, 1)}
    write_json(Path(run_dir) / "stages" / f"{name}.json", counts)
    return counts


# ---------------------------------------------------------------- stages

def run_data(config, run_dir) -> dict:
    cfg, started, out = config_from(config), time.time(), Path(run_dir) / "data"
    d = cfg.data
    train = data.first_turn_threads(data.load_oasst("train", d), d.max_prompt_chars, d.max_response_chars)
    valid = data.first_turn_threads(data.load_oasst("validation", d))  # evaluation: no length caps
    ift = data.ift_seed(train, d.ift_size, cfg.seed)
    eft_source = data.ranked_threads(train, d.eft_source_size, cfg.seed)
    rm_eval = data.ranked_threads(valid, d.rm_eval_size, cfg.seed)
    eval_prompts = data.eval_prompts(data.load_alpaca_eval(d), d.eval_prompts, cfg.seed,
                                     exclude={t["prompt"] for t in train})
    for name, rows in [("IFT seed", ift), ("EFT source", eft_source), ("reward-model eval set", rm_eval),
                       ("eval prompts", eval_prompts)]:
        if not rows:
            raise data.DataError(f"the {name} is empty after filtering")
    write_jsonl(out / "ift.jsonl", ift)
    write_jsonl(out / "eft_source.jsonl", eft_source)
    write_jsonl(out / "rm_eval.jsonl", rm_eval)
    write_jsonl(out / "eval_prompts.jsonl", eval_prompts)
    return _finish(run_dir, "data", {
        "source": str(data.local_dir(d) or d.oasst_hub_id),
        "train_prompts": len(train), "ift": len(ift), "eft_source_prompts": len(eft_source),
        "eft_source_replies": sum(len(t["replies"]) for t in eft_source),
        "rm_eval_prompts": len(rm_eval), "rm_eval_replies": sum(len(t["replies"]) for t in rm_eval),
        "eval_prompts": len(eval_prompts)}, started)


def run_sft_baseline(config, run_dir) -> dict:
    cfg, started = config_from(config), time.time()
    ift = read_jsonl(Path(run_dir) / "data" / "ift.jsonl")
    summary = training.sft(base_model(cfg, run_dir), model_dir(run_dir, "sft_baseline"), ift, cfg.sft, cfg.model,
                           cfg.seed)
    return _finish(run_dir, "sft_baseline", {"ift": len(ift), **_prefixed("train", summary)}, started)


def run_eft(config, run_dir) -> dict:
    """The SFT baseline judges ranked training replies; agreeing judgments become EFT data."""
    cfg, started, out = config_from(config), time.time(), Path(run_dir) / "eft"
    threads = read_jsonl(Path(run_dir) / "data" / "eft_source.jsonl")
    backend, chat = load_backend(str(model_dir(run_dir, "sft_baseline")), cfg)
    items = [(t["prompt"], r["text"]) for t in threads for r in t["replies"]]
    results = judge(backend, chat, items, cfg.judge, seed=cfg.seed, desc="EFT judgments")
    examples, records = eft.build_eft(threads, results, cfg.judge.prompt)
    agreed = len(examples)
    if cfg.eft.rebalance:
        examples = eft.rebalance(examples, cfg.eft.max_share_per_score, cfg.seed)
    write_jsonl(out / "judgments.jsonl", records)
    judgments = sum(len(r.judgments) for r in results)
    failures = sum(r.failures for r in results)
    counts = {"judge_mode": results[0].mode, "prompts_judged": len(threads), "replies_judged": len(items),
              "judgments": judgments, "parse_failures": failures,
              "sampled_format_readable": sum(j.parsed is not None for r in results for j in r.judgments),
              "prompts_agreeing": sum(r["agrees"] for r in records), "eft_before_rebalance": agreed,
              "eft": len(examples), "score_counts": _score_counts(examples),
              "tokens_generated": backend.tokens_generated}
    if not examples:
        write_json(Path(run_dir) / "stages" / "eft.partial.json", counts)
        raise StageError(f"no EFT example: the SFT baseline's judgments agreed with the human ranking on 0 of "
                         f"{len(threads)} prompts ({failures} of {judgments} judgments unreadable, "
                         f"mode {results[0].mode})")
    write_jsonl(out / "eft_train.jsonl", examples)
    return _finish(run_dir, "eft", counts, started)


def run_m1(config, run_dir) -> dict:
    cfg, started = config_from(config), time.time()
    ift = read_jsonl(Path(run_dir) / "data" / "ift.jsonl")
    eft_train = read_jsonl(Path(run_dir) / "eft" / "eft_train.jsonl")
    summary = training.sft(base_model(cfg, run_dir), model_dir(run_dir, "m1"), ift + eft_train, cfg.sft,
                           cfg.model, cfg.seed)
    return _finish(run_dir, "m1", {"ift": len(ift), "eft": len(eft_train), **_prefixed("train", summary)}, started)


def run_iteration(config, run_dir, iteration: int) -> dict:
    """AIFT(M_t) from M_t's own prompts, candidates and judgments, then M_{t+1} = DPO(M_t, AIFT(M_t))."""
    cfg, started, t = config_from(config), time.time(), iteration
    current = str(model_dir(run_dir, f"m{t}"))
    out = Path(run_dir) / "aift" / f"m{t}"
    seed = cfg.seed + 100 * t
    ift = read_jsonl(Path(run_dir) / "data" / "ift.jsonl")

    prompt_backend, _ = load_backend(resolve_prompt_model(cfg, run_dir, current), cfg)
    prompt_records = self_instruction.new_prompts(prompt_backend, [e["prompt"] for e in ift], cfg.self_instruct, seed)
    prompt_tokens = prompt_backend.tokens_generated
    del prompt_backend
    gc.collect()  # free the prompt model before loading M_t
    write_jsonl(out / "prompts.jsonl", prompt_records)
    kept = [r["prompt"] for r in prompt_records if r["kept"]]
    counts = {"prompts_generated": len(prompt_records), "prompts_kept": len(kept),
              "prompt_drop_reasons": _reason_counts(prompt_records)}
    if not kept:
        raise StageError(f"iteration {t}: none of {len(prompt_records)} generated prompts passed the filters "
                         f"({counts['prompt_drop_reasons']})")

    backend, chat = load_backend(current, cfg)
    records = self_instruction.candidates_and_judgments(backend, chat, kept, cfg.candidates, cfg.judge, seed)
    pairs = self_instruction.preference_pairs(records)
    positives = self_instruction.positive_examples(records)
    write_jsonl(out / "candidates.jsonl", records)
    write_jsonl(out / "positive.jsonl", positives)
    cands = [c for r in records for c in r["candidates"]]
    counts.update({
        "judge_mode": cands[0]["judge"]["mode"], "candidates": len(cands),
        "judgments": sum(len(c["judge"]["judgments"]) for c in cands),
        "parse_failures": sum(c["judge"]["failures"] for c in cands),
        "unscored_candidates": sum(c["score"] is None for c in cands),
        "pairs": len(pairs), "positive_examples": len(positives),
        "tokens_generated": prompt_tokens + backend.tokens_generated})
    del backend
    gc.collect()  # free generation memory before training
    if not pairs:
        write_json(Path(run_dir) / "stages" / f"iteration_{t}.partial.json", counts)
        raise StageError(f"iteration {t}: no usable preference pair from {len(records)} prompts "
                         f"({counts['parse_failures']} of {counts['judgments']} judgments unreadable; "
                         f"the rest tied)")
    write_jsonl(out / "pairs.jsonl", pairs)
    summary = training.dpo(current, model_dir(run_dir, f"m{t + 1}"), pairs, cfg.dpo, cfg.model, seed)
    counts.update(_prefixed("train", summary))
    return _finish(run_dir, f"iteration_{t}", counts, started)


def _prefixed(prefix: str, summary: dict) -> dict:
    return {f"{prefix}_{key}": value for key, value in summary.items() if key != "examples"}


def _score_counts(examples: list[dict]) -> dict:
    return dict(sorted(Counter(str(e["score"]) for e in examples).items()))


def _reason_counts(records: list[dict]) -> dict:
    return dict(Counter(r["reason"] for r in records))


def load_stage_result(run_dir, name: str) -> dict:
    return read_json(Path(run_dir) / "stages" / f"{name}.json")


# ---------------------------------------------------------------- evaluation

def _pairwise_judge(cfg: Config, run_dir):
    e = cfg.evaluation
    if e.judge == "endpoint":
        return evaluation.EndpointPairwiseJudge(e.endpoint_base_url, e.endpoint_model, e.endpoint_api_key_env), \
            f"endpoint:{e.endpoint_model}"
    if e.judge == "base":
        path, name = base_model(cfg, run_dir), f"base ({cfg.model.spec})"
    elif e.judge in run_models(cfg.iterations):
        path, name = str(model_dir(run_dir, e.judge)), e.judge
    else:
        path, name = models.resolve(e.judge), e.judge
    backend, chat = load_backend(path, cfg)
    return evaluation.LocalPairwiseJudge(backend, chat, e.judge_mode), f"{name}, {e.judge_mode}"


def run_evaluation(config, run_dir) -> dict:
    """Responses of every model to the eval prompts, then head-to-head and against the references."""
    cfg, started, out = config_from(config), time.time(), Path(run_dir) / "eval"
    prompts = read_jsonl(Path(run_dir) / "data" / "eval_prompts.jsonl")
    instructions = [p["instruction"] for p in prompts]
    responses, tokens = {}, 0
    for name in run_models(cfg.iterations):
        backend, chat = load_backend(str(model_dir(run_dir, name)), cfg)
        responses[name] = evaluation.generate_responses(backend, chat, instructions, cfg.evaluation, cfg.seed,
                                                        desc=f"responses {name}")
        tokens += backend.tokens_generated
        write_jsonl(out / "responses" / f"{name}.jsonl", responses[name])
        del backend
        gc.collect()
    judge_, judge_name = _pairwise_judge(cfg, run_dir)
    texts = {name: [r["response"] for r in rows] for name, rows in responses.items()}
    pairs = [c for c in evaluation.COMPARISONS if c[0] in texts and c[1] in texts]
    if cfg.evaluation.reference:
        pairs += [(name, "reference") for name in list(texts)]
        texts["reference"] = [p["reference"] for p in prompts]
    comparisons = evaluation.head_to_heads(judge_, instructions, texts, pairs)
    write_json(out / "head_to_head.json", {"judge": judge_name, "prompts": len(prompts), "comparisons": comparisons})
    summary = {key: f"{c['win']}/{c['tie']}/{c['loss']}" for key, c in comparisons.items()}
    return _finish(run_dir, "evaluation", {"judge": judge_name, "eval_prompts": len(prompts),
                                           "tokens_generated": tokens, **summary}, started)


def run_reward_model(config, run_dir) -> dict:
    """Every model judges the held-out OASST replies; metrics against the human ranks."""
    cfg, started, out = config_from(config), time.time(), Path(run_dir) / "eval"
    threads = read_jsonl(Path(run_dir) / "data" / "rm_eval.jsonl")
    if cfg.evaluation.rm_prompts:
        threads = data.ranked_threads(threads, cfg.evaluation.rm_prompts, cfg.seed)
    judge_cfg = dataclasses.replace(cfg.judge, samples=cfg.evaluation.rm_samples)
    judges = [(name, name, judge_cfg) for name in run_models(cfg.iterations)]
    if cfg.evaluation.judge_prompt_ablation:
        judges.append(("sft_baseline (multiple choice)", "sft_baseline",
                       dataclasses.replace(judge_cfg, prompt="multiple_choice")))
    table, tokens = {}, 0
    for label, name, jcfg in judges:
        backend, chat = load_backend(str(model_dir(run_dir, name)), cfg)
        rows = evaluation.reward_model_scores(backend, chat, threads, jcfg, cfg.seed, desc=f"reward model {label}")
        tokens += backend.tokens_generated
        del backend
        gc.collect()
        scores_file = f"reward_model/{re.sub(r'[^a-z0-9]+', '_', label).strip('_')}.jsonl"
        write_jsonl(out / scores_file, rows)
        table[label] = {"judge_prompt": jcfg.prompt, "mode": rows[0]["mode"], "scores_file": scores_file,
                        "metrics": metrics.bootstrap(rows, cfg.evaluation.bootstrap_samples, cfg.seed)}
    write_json(out / "reward_model.json", {"prompts": len(threads), "replies": sum(len(t["replies"]) for t in threads),
                                           "samples": judge_cfg.samples, "models": table})
    summary = {label: t["metrics"]["pairwise_accuracy"][0] for label, t in table.items()}
    return _finish(run_dir, "reward_model", {"rm_prompts": len(threads), "tokens_generated": tokens,
                                             **{f"pairwise_accuracy {k}": v for k, v in summary.items()}}, started)

"""What each unit of a run costs on this machine, measured on the embedded Gemma-3-270M and real OASST and
AlpacaEval data: seconds per SFT example and per DPO pair, per candidate and self-judgment, per judged
reward-model reply, per judge-free reply, per evaluation answer and pairwise verdict, per MT-Bench question.
A profile's counts are chosen from these (params/cpu-study.yaml says how). Writes JSON naming the hardware.

  python benchmarks/stage_costs.py --out benchmarks/stage_costs.json
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

from selfreward import models
from selfreward.evaluation import verifiable
from selfreward.config import (CandidatesConfig, DataConfig, DPOConfig, EvaluationConfig, GenerationConfig,
                               JudgeConfig, ModelConfig, TrainConfig)
from selfreward.evaluation.instruments.human_preference import reply_logprobs
from selfreward.evaluation.instruments.mt_bench import answers as mt_bench_answers
from selfreward.generation import loaded_backend
from selfreward.method import data, training
from selfreward.method.evaluation_judge import LocalJudge, both_orders
from selfreward.method.self_judge import ranked_rows
from selfreward.method.loop import answer
from selfreward.method.self_instruction import candidates_and_judgments


class Timer:
    def __init__(self):
        self.results = {}

    def __call__(self, name: str, items: int, seconds: float, **extra):
        self.results[name] = {"items": items, "seconds": round(seconds, 2), "seconds_per_item": round(seconds / items, 4),
                              **extra}
        print(f"{name:<34} {items:>5} items {seconds:>8.1f} s  {seconds / items:>8.3f} s/item", flush=True)


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


class Profile:
    """The few params sections the units read, as a run's config would carry them."""

    def __init__(self, args):
        self.model = ModelConfig(spec=models.EMBEDDED_GEMMA, dtype=args.dtype)
        self.generation = GenerationConfig(backend="fast", batch_size=args.generation_batch)
        self.seed = 0


def ifeval_answers(backend, chat, items: list[dict], max_new_tokens: int) -> list[dict]:
    """IFEval prompts answered greedily and checked, as the instrument does (`instruments.ifeval`)."""
    outputs = backend.generate([chat.prompt(i["prompt"]) for i in items], n=1, temperature=0,
                               max_new_tokens=max_new_tokens, seed=0, desc="IFEval")
    return [{"finished": c.finished, "num_tokens": c.num_tokens, **verifiable.check(i, c.text)}
            for i, (c,) in zip(items, outputs, strict=True)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--generation-batch", type=int, default=64)
    parser.add_argument("--train-examples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512, help="training tokens per example")
    parser.add_argument("--max-response-chars", type=int, default=1500, help="OASST replies kept for training")
    parser.add_argument("--prompts", type=int, default=16, help="prompts for the generation units")
    parser.add_argument("--candidate-tokens", type=int, default=128)
    parser.add_argument("--judge-tokens", type=int, default=16)
    parser.add_argument("--answer-tokens", type=int, default=192)
    parser.add_argument("--rm-prompts", type=int, default=0,
                        help="validation prompts judged as a reward model (0: all 186, as the study reads them)")
    parser.add_argument("--rm-train-prompts", type=int, default=100,
                        help="held-out training prompts judged as a reward model (data.rm_train_size adds these)")
    parser.add_argument("--ifeval-prompts", type=int, default=32, help="IFEval prompts answered (a seeded sample)")
    parser.add_argument("--ifeval-tokens", type=int, default=512, help="evaluation.ifeval_max_new_tokens")
    parser.add_argument("--out", default="benchmarks/stage_costs.json")
    args = parser.parse_args(argv)
    cfg, timer, base = Profile(args), Timer(), models.resolve(models.EMBEDDED_GEMMA)
    d = DataConfig()
    train = data.first_turn_threads(data.load_oasst("train", d), 1000, args.max_response_chars)
    ift = data.ift_seed(train, args.train_examples, 0)
    pairs = [{"prompt": e["prompt"], "chosen": e["response"], "rejected": ift[i - 1]["response"]}
             for i, e in enumerate(ift)]
    lora = ModelConfig(spec=models.EMBEDDED_GEMMA, dtype=args.dtype, finetune="lora", lora_r=16)
    with tempfile.TemporaryDirectory() as scratch:
        summary, seconds = timed(training.sft, base, f"{scratch}/sft", ift, TrainConfig(
            batch_size=8, per_device_batch_size=4, max_length=args.max_length, learning_rate=2e-4,
            min_learning_rate=4e-5), lora)
        timer(f"SFT example (LoRA, max_length {args.max_length})", len(ift), seconds, steps=summary["steps"])
        summary, seconds = timed(training.dpo, base, f"{scratch}/dpo", pairs, DPOConfig(
            batch_size=8, per_device_batch_size=2, max_length=args.max_length, learning_rate=2e-5,
            min_learning_rate=2e-6), lora)
        timer(f"DPO pair (LoRA, max_length {args.max_length})", len(pairs), seconds, steps=summary["steps"])
    prompts = [e["prompt"] for e in ift[:args.prompts]]
    judge = JudgeConfig(samples=2, mode="constrained", max_new_tokens=args.judge_tokens)
    with loaded_backend(base, cfg) as (backend, chat):
        records, seconds = timed(candidates_and_judgments, backend, chat, prompts, CandidatesConfig(
            n=4, max_new_tokens=args.candidate_tokens), judge, 0)
        timer(f"prompt: 4 candidates of {args.candidate_tokens} tokens + 8 judgments", len(prompts), seconds,
              tokens=sum(c["num_tokens"] for r in records for c in r["candidates"]))
        valid = data.ranked_threads(data.first_turn_threads(data.load_oasst("validation", d)), 0, 0)
        heldout = data.heldout_ranked_threads(data.first_turn_threads(data.load_oasst("train", d)),
                                              args.rm_train_prompts, 0, exclude=ift)
        greedy = JudgeConfig(samples=1, mode="constrained", max_new_tokens=args.judge_tokens, temperature=0)
        for split, threads in [("validation", data.ranked_threads(valid, args.rm_prompts, 0)),
                               ("held-out train", heldout)]:
            replies = sum(len(t["replies"]) for t in threads)
            _, seconds = timed(ranked_rows, backend, chat, threads, greedy)
            timer(f"reward-model reply, {split} (1 greedy judgment, {args.judge_tokens} tokens)", replies, seconds,
                  prompts=len(threads),
                  mean_reply_chars=round(sum(len(r["text"]) for t in threads for r in t["replies"]) / replies))
        _, seconds = timed(reply_logprobs, backend, chat, valid, 0, "judge-free")
        timer("judge-free reply (whole, all 186 prompts)", sum(len(t["replies"]) for t in valid), seconds)
        alpaca = data.heldout_and_eval(data.load_alpaca_eval(d), 32, 0, set())[1]
        evaluation = EvaluationConfig(max_new_tokens=args.answer_tokens)
        outputs, seconds = timed(answer, backend, chat, [p["instruction"] for p in alpaca], evaluation, 0, "answers")
        timer(f"evaluation answer ({args.answer_tokens} tokens at most)", len(alpaca), seconds,
              finished=sum(c.finished for (c,) in outputs))
        judging = LocalJudge(backend, chat, "constrained")
        texts = {"x": [c.text for (c,) in outputs], "reference": [p["reference"] for p in alpaca]}
        _, seconds = timed(both_orders, judging, [p["instruction"] for p in alpaca], texts, [("x", "reference")])
        timer("comparison vs reference (both orders)", len(alpaca), seconds)
        questions = data.mt_bench_order(data.load_mt_bench(d), 0)[:8]
        written, seconds = timed(mt_bench_answers, backend, chat, questions, evaluation, 0, "MT-Bench")
        exchanges = [(a["turns"][:turn + 1], a["answers"][:turn + 1]) for a in written for turn in (0, 1)]
        _, rating = timed(judging.ratings, exchanges)
        timer("MT-Bench question (2 answers + 2 ratings)", len(questions), seconds + rating)
        items = sorted(random.Random(0).sample(data.load_ifeval(d), args.ifeval_prompts), key=lambda r: r["key"])
        checked, seconds = timed(ifeval_answers, backend, chat, items, args.ifeval_tokens)
        timer(f"IFEval answer ({args.ifeval_tokens} tokens at most, greedy) and its check", len(items), seconds,
              finished=sum(r["finished"] for r in checked), tokens=sum(r["num_tokens"] for r in checked))
    hardware = models.hardware("cpu")
    result = {"hardware": {**hardware, "dtype": models.resolve_dtype(args.dtype, "cpu")}, "args": vars(args),
              "units": timer.results}
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"{hardware['cpu']} ({hardware['cpu_capability']}, {hardware['threads']} threads), "
          f"{result['hardware']['dtype']}: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

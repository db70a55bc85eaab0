"""Generation throughput: selfreward's FastBackend against plain `model.generate`, same prompts and
sampling settings (temperature 0.7, top-p 0.9), in one run. Then constrained judging as the pipeline
does it (k judgments per candidate, the reasoning then P(score)): the plain engine generates and then
reads the scores in a second pass over the text; the fast engine shares the judge instructions' prefill
and reads in the same pass. Then the pairwise judge's reading of P(a) vs P(b) with and without shared
prefills. Prints the hardware, the timings and their ratios, writes JSON.

  python benchmarks/bench_generate.py                      # CPU, the embedded Gemma-3-270M
  python benchmarks/bench_generate.py --random-init --batch 256 --device cuda   # GPU, same cost
  ... --vllm      # also vLLM's engine (generation.backend: vllm) on the same prompts, where vllm is installed
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from selfreward import models
from selfreward.method import data
from selfreward.config import DataConfig
from selfreward.config import JudgeConfig
from selfreward.generation import FastBackend, TransformersBackend
from selfreward.method.self_judge import SCORE_OPTIONS, score_responses
from selfreward.method.prompts import judge_prompt

# two judge "reasonings" of typical length; their content does not change the cost of reading scores
REASONINGS = ["The response is relevant and answers the basic elements of the question, but it is not "
              "complete and some details are missing or unclear.",
              "It addresses the question directly; the explanation is short and could be better organised."]


def load(random_init: bool, device: str, dtype: str, config_dir: str | None):
    path = config_dir or models.resolve(models.EMBEDDED_GEMMA)
    tokenizer = models.load_tokenizer(path)
    if random_init:  # Gemma-3-270M's config with random weights costs the same per token
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=models.DTYPES[dtype])
    else:
        model = models.load_model(path, dtype=dtype, device=device)
    return model.to(device).eval(), tokenizer


def oasst_examples(count: int) -> list[dict]:
    threads = data.first_turn_threads(data.load_oasst("train", DataConfig()), max_prompt_chars=400,
                                      max_response_chars=600)
    seed = data.ift_seed(threads, count, seed=0)
    return (seed * (count // max(len(seed), 1) + 1))[:count]


def judge_prefixes(chat, count: int) -> list[str]:
    """What constrained judging reads: each candidate's judge prompt, one of k reasonings, "Score:"."""
    return [f"{chat.prompt(judge_prompt(e['prompt'], e['response']))}{reasoning}\nScore:"
            for e in oasst_examples(count) for reasoning in REASONINGS]


def _differences(probs_a, probs_b) -> list[float]:
    return [abs(a - b) for p, q in zip(probs_a, probs_b, strict=True) if p and q for a, b in zip(p, q, strict=True)]


def timed_judging(backend, chat, items, samples: int, max_new_tokens: int) -> dict:
    judge_cfg = JudgeConfig(samples=samples, mode="constrained", max_new_tokens=max_new_tokens)
    start = time.perf_counter()
    results = score_responses(backend, chat, items, judge_cfg, seed=0, desc=f"judging ({type(backend).__name__})")
    seconds = time.perf_counter() - start
    return {"judgments": sum(len(r.judgments) for r in results), "seconds": round(seconds, 2),
            "mean_score": round(sum(r.score for r in results) / len(results), 3)}


def timed_scores(backend, prefixes) -> dict:
    start = time.perf_counter()
    probs = backend.option_probs(prefixes, SCORE_OPTIONS)
    seconds = time.perf_counter() - start
    return {"judgments": len(prefixes), "seconds": round(seconds, 2), "probs": [p for p, _ in probs]}


def timed(backend, texts, args) -> dict:
    backend.tokens_generated = 0
    start = time.perf_counter()
    backend.generate(texts, n=1, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0,
                     desc=type(backend).__name__)
    seconds = time.perf_counter() - start
    return {"tokens": backend.tokens_generated, "seconds": round(seconds, 2),
            "tokens_per_s": round(backend.tokens_generated / seconds, 1)}


def timed_vllm(model, tokenizer, stops, texts, args) -> dict:
    """The same prompts through vLLM's engine, from a folder holding the same (possibly random) weights."""
    import tempfile

    from selfreward.config import GenerationConfig
    from selfreward.generation.vllm import VLLMBackend

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        engine = VLLMBackend(folder, tokenizer, stops, GenerationConfig(backend="vllm", gpu_memory_utilization=0.5),
                             args.dtype)
        timed(engine, texts[:2], argparse.Namespace(max_new_tokens=4))  # warm-up (graph capture)
        result = timed(engine, texts, args)
        engine.release()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where the hardware computes it natively")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--config-dir", help="config and tokenizer of the model (default: the embedded Gemma)")
    parser.add_argument("--judged-candidates", type=int, default=32)
    parser.add_argument("--judge-tokens", type=int, default=32, help="reasoning tokens per judgment")
    parser.add_argument("--vllm", action="store_true", help="also time selfreward.generation.vllm (needs vllm, a GPU)")
    parser.add_argument("--out", default="benchmarks/bench_generate.json")
    args = parser.parse_args()
    device = models.pick_device(args.device)
    args.dtype = models.resolve_dtype(args.dtype, device)
    hardware = models.hardware(device)
    print("hardware:", json.dumps(hardware), "dtype:", args.dtype, flush=True)
    model, tokenizer = load(args.random_init, device, args.dtype, args.config_dir)
    chat = models.chat_format_for(tokenizer)
    stops = models.stop_token_ids(tokenizer, chat)
    texts = [chat.prompt(e["prompt"]) for e in oasst_examples(args.batch)]
    plain = TransformersBackend(model, tokenizer, stops, batch_size=args.batch)
    fast = FastBackend(model, tokenizer, stops, batch_size=args.batch)
    timed(fast, texts[:2], argparse.Namespace(max_new_tokens=4))  # warm-up
    result = {"hardware": hardware, "batch": args.batch,
              "max_new_tokens": args.max_new_tokens, "dtype": args.dtype, "random_init": args.random_init,
              "generate": timed(plain, texts, args), "fast": timed(fast, texts, args)}
    result["speedup"] = round(result["fast"]["tokens_per_s"] / result["generate"]["tokens_per_s"], 2)
    if args.vllm:
        result["vllm"] = timed_vllm(model, tokenizer, stops, texts, args)
        result["vllm_vs_fast"] = round(result["vllm"]["tokens_per_s"] / result["fast"]["tokens_per_s"], 2)

    items = [(e["prompt"], e["response"]) for e in oasst_examples(args.judged_candidates)]
    plain_judging = timed_judging(plain, chat, items, len(REASONINGS), args.judge_tokens)
    fast_judging = timed_judging(fast, chat, items, len(REASONINGS), args.judge_tokens)
    result["judging"] = {"candidates": len(items), "judgments_per_candidate": len(REASONINGS),
                         "reasoning_tokens": args.judge_tokens, "plain": plain_judging, "fast": fast_judging,
                         "speedup": round(plain_judging["seconds"] / fast_judging["seconds"], 2)}

    prefixes = judge_prefixes(chat, args.judged_candidates)
    plain_scores, shared_scores = timed_scores(plain, prefixes), timed_scores(fast, prefixes)
    # bf16 sums depend on batch shapes: the plain path at another batch size gives the noise floor
    smaller = TransformersBackend(model, tokenizer, stops, batch_size=max(1, args.batch // 4))
    floor = timed_scores(smaller, prefixes)["probs"]
    plain_probs = plain_scores.pop("probs")
    differences = _differences(plain_probs, shared_scores.pop("probs"))
    prompt_tokens = [len(plain.option_token_ids(p, SCORE_OPTIONS)[0]) for p in prefixes]
    result["reading_scores"] = {"candidates": args.judged_candidates, "judgments_per_candidate": len(REASONINGS),
                              "mean_prefix_tokens": round(sum(prompt_tokens) / len(prompt_tokens), 1),
                              "plain": plain_scores, "shared_prefill": shared_scores,
                              "speedup": round(plain_scores["seconds"] / shared_scores["seconds"], 2),
                              "max_probability_difference": round(max(differences), 5),
                              "plain_vs_plain_smaller_batch": round(max(_differences(plain_probs, floor)), 5)}
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

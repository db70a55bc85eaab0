"""Reading long texts: the reward-model judging and the judge-free log-likelihoods of held-out OASST replies
(judge prompts of 100-1,700 tokens), as the study reads them, by three engines in one run:
- plain: transformers' `generate`, then a second pass for the score (`generation.backend: transformers`);
- fast without blocks: the fast engine with attention over every key behind a mask and the whole vocabulary's
  logits in float32 (the engine before the blocked kernels);
- fast: the fast engine (`blocked_attention_for`, `head_logprobs`).
Also the padded prompt tokens of the reward-model reading in fixed batches of `--batch` prompts in character
order (the engines' batching before) and in `length_batches`, and the decoder's prefill throughput at 512 to
4,096 tokens with and without `blocked_attention_for`. Writes JSON naming the hardware.

  python benchmarks/bench_reading.py --prompts 40 --out benchmarks/bench_reading.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from selfreward import models
from selfreward.config import DataConfig, JudgeConfig
from selfreward.evaluation.instruments.human_preference import reply_logprobs
from selfreward.generation import FastBackend, TransformersBackend
from selfreward.generation.contract import length_batches
from selfreward.generation.fast.kernels import blocked_attention_for, weight_major_linears
from selfreward.method import data
from selfreward.method.self_judge import ranked_rows
from selfreward.method.prompts import JUDGE_TEMPLATES


class FastWithoutBlocks(FastBackend):
    """The fast engine without its blocked kernels: sdpa over every key, the full logits in float32."""

    @contextlib.contextmanager
    def _kernels(self):
        with weight_major_linears(self.model):
            yield

    def _chunk_logprobs(self, hidden, targets):
        return TransformersBackend._chunk_logprobs(self, hidden, targets)


def padded_tokens(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


@torch.no_grad()
def prefill_tokens_per_second(model, length: int, rows: int) -> dict:
    """The decoder over `rows` random texts of `length` tokens (one left-padded by a third), with sdpa over every
    key and block by block."""
    torch.manual_seed(0)
    ids = torch.randint(100, 20000, (rows, length))
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, :length // 3] = 0
    decoder, rates = model.get_decoder(), {}
    for name, context in (("sdpa", contextlib.nullcontext), ("blocked", lambda: blocked_attention_for(model))):
        with context():
            decoder(input_ids=ids[:, :64], attention_mask=mask[:, :64])  # warm-up
            started = time.perf_counter()
            decoder(input_ids=ids, attention_mask=mask)
            rates[name] = round(rows * length / (time.perf_counter() - started))
    return {"tokens": length, "rows": rows, "tokens_per_s": rates, "speedup": round(rates["blocked"] / rates["sdpa"], 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=40, help="OASST validation prompts (about 3 replies each)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--judge-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default="benchmarks/bench_reading.json")
    args = parser.parse_args(argv)
    path = models.resolve(models.EMBEDDED_GEMMA)
    dtype = models.resolve_dtype(args.dtype, "cpu")
    model, tokenizer = models.load_model(path, dtype=dtype, device="cpu").eval(), models.load_tokenizer(path)
    chat = models.chat_format_for(tokenizer)
    stops = models.stop_token_ids(tokenizer, chat)
    valid = data.ranked_threads(data.first_turn_threads(data.load_oasst("validation", DataConfig())), 0, 0)
    threads = data.ranked_threads(valid, args.prompts, 0)
    replies = sum(len(t["replies"]) for t in threads)
    judge = JudgeConfig(samples=1, mode="constrained", max_new_tokens=args.judge_tokens, temperature=0)
    prompts = [chat.prompt(JUDGE_TEMPLATES[judge.prompt].prompt(t["prompt"], r["text"]))
               for t in threads for r in t["replies"]]
    lengths = [len(ids) for ids in tokenizer(prompts).input_ids]
    by_chars = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    result = {"hardware": models.hardware("cpu"), "dtype": dtype, "prompts": len(threads), "replies": replies,
              "judge_prompt_tokens": {"mean": round(sum(lengths) / len(lengths)), "max": max(lengths)},
              "padded_prompt_tokens": {
                  "real": sum(lengths),
                  "fixed_batches_in_character_order": padded_tokens(
                      lengths, [by_chars[s:s + args.batch] for s in range(0, len(by_chars), args.batch)]),
                  "length_batches": padded_tokens(lengths, length_batches(
                      [n + args.judge_tokens for n in lengths], args.batch))}}
    result["prefill"] = [prefill_tokens_per_second(model, length, rows)
                         for length, rows in [(512, 8), (1024, 4), (2048, 2), (4096, 1)]]
    print(result["prefill"], flush=True)
    engines = {"plain": TransformersBackend, "fast_without_blocks": FastWithoutBlocks, "fast": FastBackend}
    readings = {}
    for name, engine in engines.items():
        backend = engine(model, tokenizer, stops, args.batch)
        started = time.perf_counter()
        scores = ranked_rows(backend, chat, threads, judge, desc=f"reward model ({name})")
        judging = time.perf_counter() - started
        started = time.perf_counter()
        logps = reply_logprobs(backend, chat, threads, 0, f"judge-free ({name})")
        judge_free = time.perf_counter() - started
        readings[name] = (scores, logps)
        result[name] = {"reward_model_seconds_per_reply": round(judging / replies, 3),
                        "judge_free_seconds_per_reply": round(judge_free / replies, 3)}
        print(name, result[name], flush=True)
    for unit in ("reward_model", "judge_free"):
        key = f"{unit}_seconds_per_reply"
        result[f"{unit}_speedup"] = {"fast_vs_plain": round(result["plain"][key] / result["fast"][key], 2),
                                     "fast_vs_fast_without_blocks":
                                         round(result["fast_without_blocks"][key] / result["fast"][key], 2)}
    # the same readings up to bf16's summation order: the largest differences between the fast engines
    before, after = readings["fast_without_blocks"], readings["fast"]
    result["max_score_difference"] = round(max(abs(a - b) for x, y in zip(before[0], after[0], strict=True)
                                               for a, b in zip(x["scores"], y["scores"], strict=True)), 4)
    result["max_mean_logprob_difference"] = round(max(abs(a / n - b / n) for x, y in zip(before[1], after[1], strict=True)
                                                      for a, b, n in zip(x["logps"], y["logps"], x["tokens"], strict=True)), 4)
    print(json.dumps(result, indent=1))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Generation throughput: selfreward's FastBackend against plain `model.generate`, same prompts and
sampling settings (temperature 0.7, top-p 0.9), in one run. Prints tokens/s of both and their ratio
and writes JSON.

  python benchmarks/bench_generate.py                      # CPU, the embedded Gemma-3-270M
  python benchmarks/bench_generate.py --random-init --batch 256 --device cuda   # GPU, same cost
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from selfreward import data, models
from selfreward.config import DataConfig
from selfreward.generation import FastBackend, TransformersBackend


def load(random_init: bool, device: str, dtype: str):
    path = models.resolve(models.EMBEDDED_GEMMA)
    tokenizer = models.load_tokenizer(path)
    if random_init:  # Gemma-3-270M's config with random weights costs the same per token
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=models.DTYPES[dtype])
    else:
        model = models.load_model(path, dtype=dtype, device=device)
    return model.to(device).eval(), tokenizer


def prompts(count: int) -> list[str]:
    threads = data.first_turn_threads(data.load_oasst("train", DataConfig()), max_prompt_chars=400)
    seed = data.ift_seed(threads, count, seed=0)
    return [e["prompt"] for e in seed] * (count // max(len(seed), 1) + 1)


def timed(backend, texts, args) -> dict:
    backend.tokens_generated = 0
    start = time.perf_counter()
    backend.generate(texts, n=1, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0,
                     desc=type(backend).__name__)
    seconds = time.perf_counter() - start
    return {"tokens": backend.tokens_generated, "seconds": round(seconds, 2),
            "tokens_per_s": round(backend.tokens_generated / seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--out", default="benchmarks/bench_generate.json")
    args = parser.parse_args()
    device = models.pick_device(args.device)
    model, tokenizer = load(args.random_init, device, args.dtype)
    chat = models.chat_format_for(tokenizer)
    stops = models.stop_token_ids(tokenizer, chat)
    texts = [chat.prompt(p) for p in prompts(args.batch)][: args.batch]
    plain = TransformersBackend(model, tokenizer, stops, batch_size=args.batch)
    fast = FastBackend(model, tokenizer, stops, batch_size=args.batch)
    timed(fast, texts[:2], argparse.Namespace(max_new_tokens=4))  # warm-up
    result = {"device": device if device == "cpu" else torch.cuda.get_device_name(0), "batch": args.batch,
              "max_new_tokens": args.max_new_tokens, "dtype": args.dtype, "random_init": args.random_init,
              "generate": timed(plain, texts, args), "fast": timed(fast, texts, args)}
    result["speedup"] = round(result["fast"]["tokens_per_s"] / result["generate"]["tokens_per_s"], 2)
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

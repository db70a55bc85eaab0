"""Training step time and peak memory: selfreward's loss (`train.logprobs: selected`, the output layer
only at response tokens) against TRL's default head (`trl`), same model, data and batch, in one run.
Each variant trains in its own process so that its peak memory is its own. Prints seconds per step,
peak memory and the ratios, and writes JSON.

  python benchmarks/bench_train.py                 # CPU: the embedded Gemma-3-270M, LoRA, dtype auto
  python benchmarks/bench_train.py --device cuda --random-init --finetune full --batch 16 --max-length 512
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import tempfile
import time

import torch

from selfreward import memory, models
from selfreward.method import data
from selfreward.config import DataConfig, DPOConfig, ModelConfig, TrainConfig
from selfreward.method.training import dpo_trainer, sft_trainer


def oasst_rows(count: int, max_chars: int) -> tuple[list[dict], list[dict]]:
    """SFT examples (prompt, top reply) and DPO pairs (top reply vs. another prompt's) from real OASST."""
    threads = data.first_turn_threads(data.load_oasst("train", DataConfig()), max_prompt_chars=800,
                                      max_response_chars=max_chars)
    seed = data.ift_seed(threads, count, seed=0)
    pairs = [{"prompt": e["prompt"], "chosen": e["response"], "rejected": seed[i - 1]["response"]}
             for i, e in enumerate(seed)]
    return seed, pairs


def model_dir(args) -> str:
    path = args.config_dir or models.resolve(models.EMBEDDED_GEMMA)
    if not args.random_init:
        return path
    # Gemma-3-270M's config with random weights costs the same per step as the real one
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    target = tempfile.mkdtemp(prefix="bench-random-gemma-")
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.bfloat16).save_pretrained(target)
    models.load_tokenizer(path).save_pretrained(target)
    return target


class StepTimer:
    def __init__(self):
        self.seconds, self.peak_bytes = [], []

    def on_step_begin(self, *_, **__):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()

    def on_step_end(self, *_, **__):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak_bytes.append(torch.cuda.max_memory_allocated())
        self.seconds.append(time.perf_counter() - self.started)


def one_variant(kind: str, logprobs: str, path: str, rows: list[dict], args, queue):
    from transformers import TrainerCallback

    model_cfg = ModelConfig(spec=path, dtype=args.dtype, finetune=args.finetune, device=args.device)
    cfg_class = TrainConfig if kind == "sft" else DPOConfig
    cfg = cfg_class(batch_size=args.batch, per_device_batch_size=args.batch, max_steps=args.steps + 1,
                    max_length=args.max_length, learning_rate=1e-5, min_learning_rate=1e-6, logprobs=logprobs)
    build = sft_trainer if kind == "sft" else dpo_trainer
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build(path, rows, cfg, model_cfg, scratch, 0)
        timer = StepTimer()
        trainer.add_callback(type("Timer", (TrainerCallback,), {"on_step_begin": timer.on_step_begin,
                                                                 "on_step_end": timer.on_step_end}))
        with torch.no_grad():  # weights loaded from a memory-mapped file are paged in when first read: count
            for parameter in trainer.model.parameters():  # them as the model, not as training
                parameter.sum()
        rss_before = _rss_bytes()
        memory.reset_resident_peak()  # the high-water mark of training alone, not of loading before it
        trainer.train()
    tokens = [len(r["input_ids"]) for r in trainer.train_dataset] if "input_ids" in trainer.train_dataset.column_names \
        else None
    result = {"seconds_per_step": round(statistics.median(timer.seconds[1:]), 2),  # step 1 warms up
              "steps_timed": len(timer.seconds) - 1,
              "mean_tokens_per_example": round(statistics.mean(tokens), 1) if tokens else None}
    if timer.peak_bytes:
        result["peak_gpu_gib"] = round(max(timer.peak_bytes[1:]) / 2**30, 2)
    else:  # CPU: the process's high-water mark while training, above what it held before
        result["peak_rss_above_model_gib"] = round((memory.resident_peak_gb() * 1e9 - rss_before) / 2**30, 2)
    queue.put(result)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="sft,dpo")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="timed steps, after one warm-up step")
    parser.add_argument("--max-length", type=int, default=640)
    parser.add_argument("--max-chars", type=int, default=1500, help="longest OASST reply used (as cpu-small)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where the hardware computes it natively")
    parser.add_argument("--finetune", default="lora", choices=["lora", "full"])
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--config-dir", help="config and tokenizer of the model (default: the embedded Gemma)")
    parser.add_argument("--out", default="benchmarks/bench_train.json")
    args = parser.parse_args()
    args.device = models.pick_device(args.device)
    args.dtype = models.resolve_dtype(args.dtype, args.device)
    hardware = models.hardware(args.device)
    print("hardware:", json.dumps(hardware), "dtype:", args.dtype, flush=True)
    path = model_dir(args)
    sft_rows, dpo_rows = oasst_rows(args.batch * (args.steps + 1), args.max_chars)
    result = {"hardware": hardware, "batch": args.batch, "max_length": args.max_length, "dtype": args.dtype,
              "finetune": args.finetune, "random_init": args.random_init}
    context = multiprocessing.get_context("spawn")
    for kind in args.kinds.split(","):
        rows = sft_rows if kind == "sft" else dpo_rows
        result[kind] = {}
        for logprobs in ["trl", "selected"]:
            queue = context.Queue()
            process = context.Process(target=one_variant, args=(kind, logprobs, path, rows, args, queue))
            process.start()
            result[kind][logprobs] = queue.get()
            process.join()
            print(kind, logprobs, result[kind][logprobs], flush=True)
        trl, ours = result[kind]["trl"], result[kind]["selected"]
        result[kind]["step_time_ratio"] = round(ours["seconds_per_step"] / trl["seconds_per_step"], 3)
        memory = "peak_gpu_gib" if "peak_gpu_gib" in ours else "peak_rss_above_model_gib"
        if trl[memory] > 0:
            result[kind]["peak_memory_ratio"] = round(ours[memory] / trl[memory], 3)
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

"""glibc's heap while training on a CPU: peak resident set and step time of the lean SFT and DPO steps with
glibc's own moving mmap threshold against fixed thresholds (`memory.lean_heap`, which `training.train_here` holds
with `memory.TRAINING_MMAP_THRESHOLD`), same model, rows and seed, each variant in its own process, in one run.
Shaped as the quick tour trains (params/cpu-small.yaml: micro-batches of 4 rows, max_length 512, SFT in
batches of 8, DPO in batches of 4 pairs of 2 a micro-batch). The peak is the process's high-water mark, the
trainer's construction (DPO's reference log-probabilities) included, as a stage's is; the losses show that the
threshold does not change the results. Prints and writes JSON.

  python benchmarks/bench_heap.py                          # glibc's own, 4, 3 and 2 MiB
  python benchmarks/bench_heap.py --thresholds glibc,3 --kinds sft
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import tempfile

from bench_train import StepTimer, oasst_rows

from selfreward import memory, models
from selfreward.config import DPOConfig, ModelConfig, TrainConfig
from selfreward.method.training import dpo_trainer, sft_trainer


def one_variant(kind: str, threshold: int | None, path: str, rows: list[dict], args, queue):
    from transformers import TrainerCallback

    model_cfg = ModelConfig(spec=path, dtype=args.dtype, device="cpu")
    per_device = args.micro_batch if kind == "sft" else args.micro_batch // 2  # a DPO row is a pair
    cfg = (TrainConfig if kind == "sft" else DPOConfig)(
        batch_size=per_device * args.accumulation, per_device_batch_size=per_device, max_steps=args.steps,
        max_length=args.max_length, learning_rate=2e-4 if kind == "sft" else 2e-5, min_learning_rate=1e-6)
    build = sft_trainer if kind == "sft" else dpo_trainer
    heap = memory.lean_heap(threshold) if threshold else contextlib.nullcontext()  # as `training.train_here`
    with tempfile.TemporaryDirectory() as scratch, heap:
        trainer = build(path, rows, cfg, model_cfg, scratch, 0)
        timer = StepTimer()
        trainer.add_callback(type("Timer", (TrainerCallback,), {"on_step_begin": timer.on_step_begin,
                                                                 "on_step_end": timer.on_step_end}))
        trainer.train()
    seconds = timer.seconds
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    queue.put({"seconds_per_step": round(statistics.median(seconds[1:]), 2), "steps": len(seconds),
               "training_seconds": round(sum(seconds), 1),
               "peak_rss_gb": round(memory.resident_peak_gb(), 3),
               "losses": [round(loss, 6) for loss in losses]})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="sft,dpo")
    parser.add_argument("--thresholds", default="glibc,4,3,2", help="glibc (its own) or fixed MiB, the first the baseline")
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per micro-batch (a DPO pair is 2 rows)")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps (the first is left out of the median)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-chars", type=int, default=1000, help="longest OASST reply used (as cpu-small)")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU computes it natively")
    parser.add_argument("--out", default="benchmarks/bench_heap.json")
    args = parser.parse_args()
    args.dtype = models.resolve_dtype(args.dtype, "cpu")
    hardware = models.hardware("cpu")
    print("hardware:", json.dumps(hardware), "dtype:", args.dtype, flush=True)
    path = models.resolve(models.EMBEDDED_GEMMA)
    sft_rows, dpo_rows = oasst_rows(args.micro_batch * args.accumulation * args.steps, args.max_chars)
    result = {"hardware": hardware, "dtype": args.dtype, "micro_batch_rows": args.micro_batch,
              "accumulation": args.accumulation, "max_length": args.max_length, "steps": args.steps}
    context = multiprocessing.get_context("spawn")
    for kind in args.kinds.split(","):
        result[kind] = {}
        for name in args.thresholds.split(","):
            threshold, label = (None, name) if name == "glibc" else (int(float(name) * 2**20), f"{name} MiB")
            queue = context.Queue()
            process = context.Process(target=one_variant, args=(kind, threshold, path,
                                                                 sft_rows if kind == "sft" else dpo_rows, args, queue))
            process.start()
            result[kind][label] = queue.get()
            process.join()
            print(kind, label, result[kind][label], flush=True)
        baseline = next(iter(result[kind].values()))
        for found in result[kind].values():
            found["peak_ratio"] = round(found["peak_rss_gb"] / baseline["peak_rss_gb"], 3)
            found["step_time_ratio"] = round(found["seconds_per_step"] / baseline["seconds_per_step"], 3)
            found["same_losses"] = found["losses"] == baseline["losses"]
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

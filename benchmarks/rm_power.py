"""How many prompts the reward-model reading needs for a given MDE, measured on a finished run's models.

Two models of the run judge held-out OASST training prompts (the set `data.rm_train_size` adds: prompts with
>= 2 ranked replies that are neither EFT source nor IFT seed prompts of the run), with the run's reward-model
judge settings; their rows are put after the validation rows the run's `reward_model` stage wrote, and the
paired difference in pairwise accuracy (after - before) is bootstrapped over the first n prompts for growing
n. Writes JSON naming the hardware, the seconds per judged reply and, for each n, Δ [95% CI] and the MDE.

  python benchmarks/rm_power.py runs/cpu-study --before sft_baseline --after m1 --extra 400 \
      --out benchmarks/rm_power.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from selfreward import models
from selfreward.config import load_config
from selfreward.evaluation import agreement
from selfreward.evaluation.instruments.reward_model import judge_config
from selfreward.generation import loaded_backend
from selfreward.io import read_jsonl
from selfreward.method import data
from selfreward.method.self_judge import ranked_rows
from selfreward.rundir import RunDir, slug


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished run folder (its models and eval/reward_model rows)")
    parser.add_argument("--before", default="sft_baseline")
    parser.add_argument("--after", default="m1")
    parser.add_argument("--extra", type=int, default=400, help="held-out training prompts judged by both models")
    parser.add_argument("--step", type=int, default=100, help="n grows by this many prompts")
    parser.add_argument("--out", default="benchmarks/rm_power.json")
    args = parser.parse_args(argv)
    run = RunDir(Path(args.run))
    cfg = load_config(run.config)
    exclude = read_jsonl(run.ift) + read_jsonl(run.eft_source)
    extra = data.heldout_ranked_threads(data.first_turn_threads(data.load_oasst("train", cfg.data)), args.extra,
                                        cfg.seed, exclude=exclude)
    replies = sum(len(t["replies"]) for t in extra)
    rows, seconds = {}, {}
    for name in (args.before, args.after):
        started = time.time()
        with loaded_backend(str(run.model(name)), cfg) as (backend, chat):
            judged = ranked_rows(backend, chat, extra, judge_config(cfg), cfg.seed, desc=f"reward model {name}")
        seconds[name] = round(time.time() - started, 1)
        rows[name] = read_jsonl(run.eval / "reward_model" / f"{slug(name)}.jsonl") + judged
    validation = len(rows[args.before]) - len(extra)
    sizes = sorted({validation, *range(validation + args.step, len(rows[args.before]), args.step),
                    len(rows[args.before])})
    table = []
    for n in sizes:
        difference = agreement.paired_metrics(rows[args.before][:n], rows[args.after][:n], cfg.evaluation.bootstrap_samples,
                                              cfg.seed)["pairwise_accuracy"]
        table.append({"prompts": n, "train_prompts": n - validation, **difference.to_dict()})
        print(f"n {n:4d}: Δ {difference.format(100, 1, mde=True)} pts, MDE {difference.mde * 100:.1f}")
    hardware = models.hardware("cpu")
    result = {"hardware": {**hardware, "dtype": models.resolve_dtype(cfg.model.dtype, "cpu")}, "args": vars(args),
              "extra_prompts": len(extra), "extra_replies": replies,
              "seconds_per_reply": {name: round(s / replies, 3) for name, s in seconds.items()},
              "pairwise_accuracy_difference": table}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{hardware['cpu']} ({hardware['cpu_capability']}, {hardware['threads']} threads), "
          f"{result['hardware']['dtype']}: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

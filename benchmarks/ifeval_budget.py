"""How many new tokens IFEval answers need, and what an answer costs: a model answers IFEval prompts greedily up
to a generous limit; since greedy decoding is the same token for token whatever the limit, the answer at any
smaller limit is a prefix of it, so one pass gives, for each limit, the share of answers that finish within it,
the strict prompt-level accuracy the limit would give, and the time an answer takes. `evaluation.ifeval_max_new_tokens`
is chosen from these (the smallest limit past which few more answers finish). Writes JSON naming the hardware.

  python benchmarks/ifeval_budget.py --model runs/cpu-small/models/sft_baseline --prompts 96
"""
from __future__ import annotations

import argparse
import json
import random
import time

from selfreward import models
from selfreward.config import DataConfig, GenerationConfig, ModelConfig
from selfreward.evaluation import verifiable
from selfreward.evaluation.instruments.ifeval import accuracies
from selfreward.generation import loaded_backend
from selfreward.method import data

LIMITS = (128, 192, 256, 384, 512, 768, 1024)


class Profile:
    def __init__(self, args):
        self.model = ModelConfig(spec=args.model, dtype=args.dtype)
        self.generation = GenerationConfig(backend="fast", batch_size=args.generation_batch)
        self.seed = 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an instruction-tuned model folder (a run's sft_baseline or m1)")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--limit", type=int, default=768, help="the generous limit answered to")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--generation-batch", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/ifeval_budget.json")
    args = parser.parse_args(argv)
    rows = sorted(random.Random(0).sample(data.load_ifeval(DataConfig()), args.prompts), key=lambda r: r["key"])
    with loaded_backend(args.model, Profile(args)) as (backend, chat):
        started = time.perf_counter()
        outputs = backend.generate([chat.prompt(r["prompt"]) for r in rows], n=1, temperature=0, max_new_tokens=args.limit,
                                   seed=0, desc="IFEval answers")
        seconds = time.perf_counter() - started
        tokenizer = backend.tokenizer
    answers = [completion for (completion,) in outputs]
    by_limit = {}
    for limit in [lim for lim in LIMITS if lim <= args.limit]:
        cut = []
        for row, answer in zip(rows, answers, strict=True):
            ids = tokenizer(answer.text, add_special_tokens=False).input_ids
            text = answer.text if answer.finished and len(ids) <= limit else tokenizer.decode(ids[:limit])
            cut.append({"kinds": row["instruction_id_list"], **verifiable.check(row, text)})
        finished = sum(a.finished and a.num_tokens <= limit for a in answers) / len(answers)
        by_limit[limit] = {"finished": round(finished, 3),
                           "prompt_strict": round(accuracies(cut)["prompt_strict"], 3),
                           "prompt_loose": round(accuracies(cut)["prompt_loose"], 3)}
        print(f"limit {limit:>5}: {100 * finished:5.1f}% finish, prompt-level strict "
              f"{100 * by_limit[limit]['prompt_strict']:.1f}%", flush=True)
    hardware = models.hardware("cpu")
    result = {"hardware": {**hardware, "dtype": models.resolve_dtype(args.dtype, "cpu")}, "args": vars(args),
              "answers": len(answers), "seconds": round(seconds, 1),
              "seconds_per_answer": round(seconds / len(answers), 3),
              "mean_tokens": round(sum(a.num_tokens for a in answers) / len(answers), 1), "by_limit": by_limit}
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"{len(answers)} answers in {seconds:.0f} s ({seconds / len(answers):.2f} s each, up to {args.limit} "
          f"tokens) on {hardware['cpu']} ({hardware['cpu_capability']}, {hardware['threads']} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

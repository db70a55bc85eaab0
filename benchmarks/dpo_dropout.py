"""DPO's implicit reward with and without dropout, on a finished run's first iteration: M1 trained on AIFT(M1)'s
pairs with the run's `dpo` section twice, at dropout 0 (selfreward's default) and at the paper's 0.1, the rest
the same. The policy trains with its dropout against a reference read without it, so with dropout every reply
gets an implicit reward beta (log pi - log pi_ref) before any update, larger for longer replies. Reports the
first logged step (before the first update has any effect on it) and the last: rewards/chosen,
rewards/rejected, their margin and accuracy. Writes JSON naming the hardware.

  python benchmarks/dpo_dropout.py --run runs/cpu-study --out benchmarks/dpo_dropout.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from selfreward import models
from selfreward.config.loading import from_dict
from selfreward.io import read_json, read_jsonl
from selfreward.method import training
from selfreward.rundir import RunDir

KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "loss")


def logged(step: dict) -> dict:
    return {key: round(step[key], 4) for key in KEYS if key in step}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder whose iteration 1 has finished")
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--out", default="benchmarks/dpo_dropout.json")
    args = parser.parse_args(argv)
    run = RunDir(args.run)
    cfg = from_dict(read_json(run.manifest)["config"], str(run.manifest))
    pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in read_jsonl(run.pairs(1))
             if not p.get("judge_pair")]
    results = {}
    for dropout in args.dropouts:
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            summary = training.dpo(str(run.model("m1")), Path(scratch) / "m2", pairs,
                                   dataclasses.replace(cfg.dpo, dropout=dropout), cfg.model, cfg.seed)
            seconds = time.perf_counter() - started
            history = [h for h in read_json(Path(scratch) / "m2" / "trainer_state.json")["log_history"]
                       if "rewards/margins" in h]
        results[str(dropout)] = {"steps": summary["steps"], "seconds": round(seconds, 1),
                                 "first_step": logged(history[0]), "last_step": logged(history[-1])}
        print(f"dropout {dropout}: first step {results[str(dropout)]['first_step']}, "
              f"last step {results[str(dropout)]['last_step']}", flush=True)
    hardware = models.hardware("cpu")
    result = {"hardware": {**hardware, "dtype": models.resolve_dtype(cfg.model.dtype, "cpu")},
              "args": {**vars(args), "run": Path(args.run).name}, "pairs": len(pairs),
              "dpo": dataclasses.asdict(cfg.dpo), "dropout": results}
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"{len(pairs)} pairs of {Path(args.run).name}'s AIFT(M1) on {hardware['cpu']} "
          f"({hardware['cpu_capability']}, {hardware['threads']} threads): {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

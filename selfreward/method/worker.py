"""One process of a launched training job: `accelerate launch -m selfreward.method.worker JOB.json`,
started by `method.launch` (never by hand). It trains with `method.training.train_here`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from selfreward.io import write_json


def main(argv: list[str] | None = None) -> int:
    """One process of a launched training job (run by accelerate, not by hand)."""
    from accelerate import PartialState

    from selfreward import config
    from selfreward.method import training

    # the process group first: every process loads its part of the model knowing its rank and the others
    PartialState()
    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    train_class = config.DPOConfig if job["kind"] == "dpo" else config.TrainConfig
    train_cfg = config.build(train_class, job["train"], job["kind"])
    model_cfg = config.build(config.ModelConfig, job["model"], "model")
    checkpoints = {"checkpoint_dir": job["checkpoint_dir"], "checkpoint_every": job["checkpoint_every"]} \
        if job["checkpoint_every"] else {}
    summary = training.train_here(job["kind"], job["model_dir"], job["out_dir"], job["rows"], train_cfg, model_cfg,
                                  job["seed"], **checkpoints)
    if training.processes().main:
        write_json(job["summary"], summary)
    PartialState().wait_for_everyone()
    PartialState().destroy_process_group()  # a clean exit for every process (ZeRO-3 otherwise aborts at exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())

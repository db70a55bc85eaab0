"""The launcher: training over several processes, `accelerate launch -m selfreward.method.worker JOB.json`.

The stage's process writes a job (what to train, on what rows, with which params), starts accelerate
with `launch.num_processes` processes (DDP by default, or what `launch.accelerate_config` says: FSDP,
DeepSpeed ZeRO-3), streams their log into the notebook, and reads back the summary the main process
wrote. A failure ends the stage with the exit status and the last error line. With one process and no
accelerate config, `method.training` trains in its own process and never comes here.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from selfreward.io import write_json


SHARDED = ("fsdp", "deepspeed")  # the parallelism kinds in which each process holds a part of the model


def load_dtype(finetune: str, compute_dtype: str, kind: str) -> str:
    """The dtype a training loads its weights in, by fine-tuning, compute dtype and parallelism kind
    (single, ddp, fsdp, deepspeed); `method.training` loads by it and `selfreward plan` sizes memory by it:
    - LoRA: the compute dtype (the frozen weights; the adapters train in fp32);
    - full fine-tuning in one process or under DDP: float32, the master weights (bf16 weights would round
      small updates away), with autocast for speed;
    - full fine-tuning sharded (FSDP, ZeRO-3): the compute dtype, straight from disk; the sharding keeps the
      fp32 master weights per shard (FSDP2 upcasts its shards, ZeRO-3 its optimizer partition), so no rank
      ever holds a full fp32 copy."""
    return compute_dtype if finetune == "lora" or kind in SHARDED else "float32"


def dpo_reference(finetune: str, kind: str) -> str:
    """What DPO holds as its reference (the reference log-probabilities are precomputed before training):
    `adapter off` under LoRA (the same weights), `the policy` in one process, DDP or ZeRO-3 (its forward
    before the first step), `a sharded copy` under FSDP (TRL loads one in the policy's dtype, shards it as
    the policy for the precompute and frees it before training). Never an fp32 copy per rank."""
    if finetune == "lora":
        return "adapter off"
    return "a sharded copy" if kind == "fsdp" else "the policy"


class LaunchError(RuntimeError):
    """A launched training job that failed; the message is one line with its last error line."""


def accelerate_command(launch, job: str, port: int, mixed_precision: str = "no") -> list[str]:
    """The `accelerate launch` command line for a job file."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(launch.num_processes),
               "--num_machines", "1", "--main_process_port", str(port), "--dynamo_backend", "no",
               "--mixed_precision", mixed_precision]
    if launch.accelerate_config is not None:
        command += ["--config_file", launch.accelerate_config]
    elif launch.num_processes > 1:
        command += ["--multi_gpu"]  # torchrun's launcher; on CPU the Trainer then uses gloo
    return command + ["-m", "selfreward.method.worker", job]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHER_NOISE = ("ChildFailedError", "CalledProcessError")  # torchrun's own report that a child failed


def last_error_line(lines) -> str:
    """The line that says what went wrong: the last `SomeError: ...` line of a process (not the launcher's
    report that one failed), else the last non-empty line."""
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", line).strip() for line in lines]
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.match(r"[\w.]*(Error|Exception)\b[^:]*:", line)
              and not any(noise in line for noise in LAUNCHER_NOISE)]
    return (errors or lines or ["no output"])[-1]


def in_processes(kind: str, model_dir: str, out_dir, rows: list[dict], train_cfg, model_cfg, launch, seed: int,
                 checkpoint_dir=None, checkpoint_every: int = 0) -> dict:
    """Train `kind` (sft or dpo) under `accelerate launch`; returns the main process's summary."""
    from selfreward.models import resolve_dtype

    dtype = resolve_dtype(model_cfg.dtype, model_cfg.device)
    mixed_precision = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "no")
    with tempfile.TemporaryDirectory(prefix="selfreward-train-") as scratch:
        job, summary_path = Path(scratch) / "job.json", Path(scratch) / "summary.json"
        write_json(job, {"kind": kind, "model_dir": str(model_dir), "out_dir": str(out_dir), "rows": rows,
                         "train": dataclasses.asdict(train_cfg), "model": dataclasses.asdict(model_cfg),
                         "seed": seed, "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
                         "checkpoint_every": checkpoint_every, "summary": str(summary_path)})
        command = accelerate_command(launch, str(job), free_port(), mixed_precision)
        print(f"[{kind}] {launch.num_processes} processes: accelerate launch ... -m selfreward.method.worker", flush=True)
        tail = collections.deque(maxlen=200)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) as process:
            for line in process.stdout:  # the processes' log, as it comes, into the notebook
                print(line, end="", flush=True)
                tail.append(line)
        if process.returncode != 0:
            raise LaunchError(f"{kind}: accelerate launch exited with status {process.returncode}: "
                                f"{last_error_line(tail)}")
        if not summary_path.is_file():
            raise LaunchError(f"{kind}: accelerate launch finished but wrote no summary")
        return json.loads(summary_path.read_text())

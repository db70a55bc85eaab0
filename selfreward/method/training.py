"""SFT and DPO with TRL, on prompt/completion text so that the loss covers response tokens only.

Each run starts from a plain checkpoint folder and saves one (LoRA adapters merged), so the
model sequence SFT baseline -> M1 -> M2 -> M3 is a chain of ordinary checkpoints.

`sft` and `dpo` train in this process, or, with a multi-process `launch`, hand the job to
`method.launch`, which starts `accelerate launch -m selfreward.method.worker`; each worker process
calls `train_here`. The launcher imports nothing of this module and this module nothing of the worker.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from selfreward.method import launch as launcher
from selfreward.method.lean import LeanDPOTrainer, LeanSFTTrainer
from selfreward.io import atomic_dir, write_json
from selfreward.memory import give_back_free_pages, lean_heap
from selfreward.models import (DTYPES, chat_format_for, free_memory, load_model, load_tokenizer, pick_device,
                               resolve_dtype, save_model)


class TrainingError(ValueError):
    """Training that cannot start (e.g. no examples); the message is one line."""


@dataclass(frozen=True)
class Processes:
    """How this training's processes were started, as `accelerate launch` tells them through the environment
    (read in this one place): how many train together, this one's rank, and how they share the model."""
    world_size: int = 1
    rank: int = 0
    deepspeed: bool = False
    fsdp: bool = False
    fsdp_cpu_ram_efficient_loading: bool = False  # ranks > 0 build on the meta device and receive rank 0's weights
    fsdp_activation_checkpointing: bool = False  # FSDP recomputes the activations itself

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallelism(self) -> str:
        """`single` (one process), `ddp` (each holds the whole model), `fsdp` or `deepspeed` (each a shard)."""
        return "deepspeed" if self.deepspeed else "fsdp" if self.fsdp else "ddp" if self.world_size > 1 else "single"

    @property
    def builds_on_meta(self) -> bool:
        """Whether this process builds the model without weights and receives its shard from the main process:
        ranks > 0 under FSDP with cpu-RAM-efficient loading (the shipped FSDP configs)."""
        return self.fsdp and self.fsdp_cpu_ram_efficient_loading and not self.main


def processes() -> Processes:
    """This process's place among the training processes (one process, rank 0, outside `accelerate launch`)."""
    def flag(name: str) -> bool:
        return os.environ.get(name, "").lower() == "true"

    return Processes(world_size=int(os.environ.get("WORLD_SIZE", "1")), rank=int(os.environ.get("RANK", "0")),
                     deepspeed=flag("ACCELERATE_USE_DEEPSPEED"), fsdp=flag("ACCELERATE_USE_FSDP"),
                     fsdp_cpu_ram_efficient_loading=flag("FSDP_CPU_RAM_EFFICIENT_LOADING"),
                     fsdp_activation_checkpointing=flag("FSDP_ACTIVATION_CHECKPOINTING"))


def _common_args(train_cfg, model_cfg, output_dir: str, seed: int) -> dict:
    on_cpu = pick_device(model_cfg.device) == "cpu"
    dtype = resolve_dtype(model_cfg.dtype, model_cfg.device)
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=train_cfg.per_device_batch_size,
        # the effective batch stays batch_size whatever the number of processes (checked on load)
        gradient_accumulation_steps=train_cfg.batch_size // (train_cfg.per_device_batch_size * processes().world_size),
        learning_rate=train_cfg.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",  # the paper decays to a floor, not to zero
        # the floor as a share of the peak: `min_lr` would read optimizer.defaults, which ZeRO-3's optimizer lacks
        lr_scheduler_kwargs={"min_lr_rate": train_cfg.min_learning_rate / train_cfg.learning_rate},
        **warmup_arguments(train_cfg.warmup_ratio),
        num_train_epochs=train_cfg.epochs,
        max_steps=train_cfg.max_steps,
        max_length=train_cfg.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=train_cfg.report_to,
        seed=seed,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=on_cpu,
        # the lean path recomputes the decoder's activations as `recompute` says (memory a laptop or a GPU can
        # spare); TRL's head on GPUs only, as before; under FSDP its own checkpointing does it
        gradient_checkpointing=(train_cfg.recompute if train_cfg.logprobs == "selected" else not on_cpu)
        and not processes().fsdp_activation_checkpointing,
        dataloader_num_workers=0,
        **train_cfg.trainer_args,  # checked when the params were loaded: TRL fields that selfreward does not set
    )



def warmup_arguments(ratio: float, fields: set[str] | None = None) -> dict:
    """The warmup as a share of the training steps, in the installed transformers' terms: 4.x has
    `warmup_ratio` (its `warmup_steps` is a whole number of steps); 5.x reads a `warmup_steps` below 1 as
    the ratio and has no `warmup_ratio`."""
    if fields is None:
        from transformers import TrainingArguments

        fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in fields else {"warmup_steps": ratio}


def training_dtype(model_cfg, kind: str) -> str:
    """The dtype this training loads its weights in (`method.launch.load_dtype`, the rule `plan` sizes by)."""
    return launcher.load_dtype(model_cfg.finetune, resolve_dtype(model_cfg.dtype, model_cfg.device), kind)


def _load_for_training(model_dir: str, model_cfg, dropout: float):
    """The model to train, loaded as `training_dtype` says; with several processes the process group exists
    already (the worker starts it first), nothing is moved to a device here (accelerate places each rank's
    part), ranks > 0 under FSDP build on the meta device, and ZeRO-3 loads each rank's partition only."""
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM

    here = processes()
    kind = here.parallelism
    dtype = DTYPES[training_dtype(model_cfg, kind)]
    if kind == "single":
        model = load_model(model_dir, dtype=training_dtype(model_cfg, kind), device=model_cfg.device,
                           attention_dropout=dropout)
    elif here.builds_on_meta:
        from accelerate import init_empty_weights

        config = AutoConfig.from_pretrained(model_dir, attention_dropout=dropout)
        with init_empty_weights(include_buffers=False):  # weights on meta; buffers (rotary tables) real
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.tie_weights()  # as from_pretrained does: a tied output layer is the embedding, on rank 0 as here
    else:
        if kind == "deepspeed":
            _zero3_init()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attention_dropout=dropout)
    model.selfreward_loaded = loaded_numel(model)  # for the training summary: what this rank held after loading
    tokenizer = load_tokenizer(model_dir)
    peft_config = None
    if model_cfg.finetune == "lora":
        peft_config = LoraConfig(r=model_cfg.lora_r, lora_alpha=model_cfg.lora_alpha, lora_dropout=dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    return model, tokenizer, peft_config, chat_format_for(tokenizer, model_cfg.chat_format)


def _zero3_init():
    """Under ZeRO-3 (zero3_init_flag), `from_pretrained` loads each rank's partition only (deepspeed.zero.Init),
    once the DeepSpeed config is registered with transformers; accelerate registers it only when the
    Trainer is built, after the model is loaded, so it is registered here first."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()  # the config `accelerate launch` passed in the environment
    if plugin.zero_stage == 3 and plugin.zero3_init_flag:
        plugin.set_deepspeed_weakref()
        _zero3_init.plugin = plugin  # the registration lives as long as the plugin object


def loaded_numel(model) -> int:
    """Parameter elements this process holds: none on the meta device, its partition under ZeRO-3."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else 0 if p.is_meta else p.numel()
    return total


def held_parameters(model) -> tuple[int, int]:
    """(this process's parameter elements, the model's): FSDP2 shards (DTensor), ZeRO-3 partitions, or whole."""
    from torch.distributed.tensor import DTensor

    seen, local, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if hasattr(p, "ds_tensor"):
            local, total = local + p.ds_tensor.numel(), total + p.ds_numel
        elif isinstance(p, DTensor):
            local, total = local + p.to_local().numel(), total + p.numel()
        else:
            local, total = local + p.numel(), total + p.numel()
    return local, total


def sharding(trainer) -> list[dict]:
    """Per process: how the trained model was wrapped (FSDP2, DeepSpeed, DDP or plain) and how much of it
    the process held after loading and while training; gathered from every process."""
    from torch.distributed.fsdp import FSDPModule

    model = trainer.model
    wrapper = "FSDP2" if isinstance(model, FSDPModule) or any(isinstance(m, FSDPModule) for m in model.modules()) \
        else type(trainer.model_wrapped).__name__
    held, total = held_parameters(model)
    base = trainer.accelerator.unwrap_model(model)
    here = processes()
    mine = {"rank": here.rank, "parallelism": here.parallelism, "wrapper": wrapper,
            "held_numel": held, "total_numel": total,
            "loaded_numel": getattr(getattr(base, "get_base_model", lambda: base)(), "selfreward_loaded", None)}
    if not torch.distributed.is_initialized():
        return [mine]
    everyone = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, mine)
    return everyone


def sft_trainer(model_dir: str, examples: list[dict], train_cfg, model_cfg, output_dir: str, seed: int = 0):
    """A TRL SFTTrainer on prompt/completion rows: the loss covers the completion tokens only."""
    if not examples:
        raise TrainingError("SFT: no training examples")
    model, tokenizer, peft_config, chat = _load_for_training(model_dir, model_cfg, train_cfg.dropout)
    rows = [{"prompt": chat.prompt(e["prompt"]), "completion": chat.completion(e["response"])} for e in examples]
    args = SFTConfig(**_common_args(train_cfg, model_cfg, output_dir, seed), completion_only_loss=True,
                     packing=False)
    return _trainer(LeanSFTTrainer if train_cfg.logprobs == "selected" else SFTTrainer, model, args, rows,
                    tokenizer, peft_config)


def sft(model_dir: str, out_dir, examples: list[dict], train_cfg, model_cfg, seed: int = 0, launch=None,
        **checkpoints) -> dict:
    """Supervised fine-tuning on {prompt, response} examples; returns the training log summary. With a
    multi-process `launch` (config.LaunchConfig), it runs under `accelerate launch` (selfreward.method.worker)."""
    return _train("sft", model_dir, out_dir, examples, train_cfg, model_cfg, seed, launch, **checkpoints)


def dpo_trainer(model_dir: str, pairs: list[dict], train_cfg, model_cfg, output_dir: str, seed: int = 0):
    """A TRL DPOTrainer on {prompt, chosen, rejected}; the reference is the starting model (frozen)."""
    if not pairs:
        raise TrainingError("DPO: no preference pairs")
    model, tokenizer, peft_config, chat = _load_for_training(model_dir, model_cfg, train_cfg.dropout)
    rows = [{"prompt": chat.prompt(p["prompt"]), "chosen": chat.completion(p["chosen"]),
             "rejected": chat.completion(p["rejected"]), **({"weight": p["weight"]} if "weight" in p else {})}
            for p in pairs]
    if any("weight" in r for r in rows):
        if train_cfg.logprobs != "selected":
            raise TrainingError("DPO: weighted pairs (aift.consistency) need dpo.logprobs: selected")
        rows = [{**r, "weight": r.get("weight", 1.0)} for r in rows]  # judge pairs carry full weight
    # the paper keeps dropout on in the policy; the reference log-probs are computed once, before training,
    # without dropout (the model is in eval mode until training starts)
    args = DPOConfig(**_common_args(train_cfg, model_cfg, output_dir, seed), beta=train_cfg.beta,
                     disable_dropout=False, precompute_ref_log_probs=True)
    model.eval()
    return _trainer(LeanDPOTrainer if train_cfg.logprobs == "selected" else DPOTrainer, model, args, rows,
                    tokenizer, peft_config)


def dpo(model_dir: str, out_dir, pairs: list[dict], train_cfg, model_cfg, seed: int = 0, launch=None,
        **checkpoints) -> dict:
    """DPO on {prompt, chosen, rejected} pairs; returns the training log summary (`launch`: as `sft`)."""
    return _train("dpo", model_dir, out_dir, pairs, train_cfg, model_cfg, seed, launch, **checkpoints)


def _train(kind: str, model_dir: str, out_dir, rows: list[dict], train_cfg, model_cfg, seed: int, launch=None,
           checkpoint_dir=None, checkpoint_every: int = 0) -> dict:
    """Train `kind` (sft or dpo) here, or in the processes of a multi-process `launch`."""
    checkpoints = {"checkpoint_dir": checkpoint_dir, "checkpoint_every": checkpoint_every} if checkpoint_every else {}
    if launch is not None and launch.multi_process:
        return launcher.in_processes(kind, model_dir, out_dir, rows, train_cfg, model_cfg, launch, seed,
                                     **checkpoints)
    return train_here(kind, model_dir, out_dir, rows, train_cfg, model_cfg, seed, **checkpoints)


def train_here(kind: str, model_dir: str, out_dir, rows: list[dict], train_cfg, model_cfg, seed: int,
               checkpoint_dir=None, checkpoint_every: int = 0) -> dict:
    """Train `kind` (sft or dpo) in this process (alone, or as one of a launch's processes) and save the
    final model (adapters merged) into `out_dir`. With `checkpoint_every`, the model is also saved every
    that many steps into `checkpoint_dir/checkpoint-<step>` (LoRA: the adapter only; see
    `materialize_checkpoint`), and the summary lists them."""
    make_trainer = dpo_trainer if kind == "dpo" else sft_trainer
    # glibc's heap as lean as the steps (memory.lean_heap): without, the quick tour's M1 peaked at 3.29 GB, not 2.47
    with _work_dir(out_dir) as work, lean_heap():
        trainer = make_trainer(model_dir, rows, train_cfg, model_cfg, str(checkpoint_dir or work), seed)
        if checkpoint_every:
            trainer.args.save_strategy, trainer.args.save_steps, trainer.args.save_only_model = \
                "steps", checkpoint_every, True
        trainer.train()
        summary = _finish(trainer, trainer.processing_class, out_dir, len(rows), model_dir, model_cfg)
    # the trainer and its model live on in reference cycles until a collection: free them now, before a
    # generation engine asks for its share of the GPU
    del trainer
    free_memory()
    if checkpoint_every:
        summary["checkpoints"] = sorted((str(p) for p in Path(checkpoint_dir).glob("checkpoint-*")),
                                        key=lambda p: int(p.rsplit("-", 1)[1]))
    return summary


@contextlib.contextmanager
def _work_dir(out_dir):
    """Where the Trainer writes while it trains: a temporary folder; with several processes, one folder
    beside `out_dir` that they all share (TRL's cached reference log-probs are a file the main process
    writes and every process reads), removed at the end by the main process."""
    if processes().world_size == 1:
        with tempfile.TemporaryDirectory() as scratch:
            yield scratch
        return
    shared = Path(out_dir).parent / f".{Path(out_dir).name}.work"
    shared.mkdir(parents=True, exist_ok=True)
    try:
        yield str(shared)
    finally:
        if processes().main:
            shutil.rmtree(shared, ignore_errors=True)


def materialize_checkpoint(checkpoint: str, base_dir: str, out_dir, model_cfg, extra_json: dict | None = None):
    """A training checkpoint as a plain model folder, on the CPU (a 70B model is never gathered onto one GPU):
    full fine-tuning's checkpoint is a model folder already and is copied with the base's tokenizer; a
    LoRA checkpoint's adapter is merged into its base, loaded in its compute dtype."""
    from peft import PeftModel

    tokenizer = load_tokenizer(base_dir)
    with _outside_zero3():
        if not (Path(checkpoint) / "adapter_config.json").is_file():
            with atomic_dir(out_dir) as tmp:
                for item in Path(checkpoint).iterdir():
                    if item.is_file() and not item.name.startswith(("optimizer", "scheduler", "rng_state", "training_args")):
                        shutil.copy2(item, tmp / item.name)
                tokenizer.save_pretrained(tmp)
                for name, data in (extra_json or {}).items():
                    write_json(Path(tmp) / name, data)
            return
        base = load_model(base_dir, dtype=resolve_dtype(model_cfg.dtype, model_cfg.device), device="cpu")
        save_model(PeftModel.from_pretrained(base, checkpoint), tokenizer, out_dir, extra_json)


@contextlib.contextmanager
def _outside_zero3():
    """A model loaded in the main process alone must not be partitioned: under ZeRO-3, transformers would load
    it inside deepspeed.zero.Init, whose collectives the other processes never join (a deadlock)."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


class SimilarLengthSampler(torch.utils.data.Sampler):
    """A random order in which each micro-batch holds examples of similar length: shuffle, sort each
    window of `window` micro-batches by length, cut it into micro-batches, shuffle those. Padding to
    the longest row of a micro-batch then costs little (about a third of an SFT step's tokens with
    random batches of 4 on OASST), and the order stays random, not sorted."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 4):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.epoch = 0

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            window = sorted(order[start:start + span], key=self.lengths.__getitem__)
            batches += [window[i:i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        rng.shuffle(batches)
        return iter([index for batch in batches for index in batch])


def _example_lengths(dataset) -> list[int]:
    """Tokens per example of a TRL-prepared dataset: SFT rows, or DPO prompt plus its longer reply."""
    if "input_ids" in dataset.column_names:
        return [len(ids) for ids in dataset["input_ids"]]
    return [len(p) + max(len(c), len(r))
            for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True)]


class SimilarLengthBatches:
    """A trainer whose micro-batches hold examples of similar length (`SimilarLengthSampler`)."""

    def _get_train_sampler(self, *args, **kwargs):
        return SimilarLengthSampler(_example_lengths(self.train_dataset), self.args.per_device_train_batch_size,
                                    self.args.seed)


@functools.cache
def length_batched(trainer_class: type) -> type:
    """`trainer_class` (TRL's or a lean one) drawing its micro-batches by similar length: a subclass, so that no
    trainer is patched after it is built."""
    return type(f"LengthBatched{trainer_class.__name__}", (SimilarLengthBatches, trainer_class), {})


def _trainer(trainer_class, model, args, rows: list[dict], tokenizer, peft_config):
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    dataset = Dataset.from_list(rows)
    if args.world_size > 1:
        # TRL caches the reference log-probs beside the dataset's own cache files, and every process reads
        # the main process's file: the rows must live in a folder all share, not in a per-process temp folder
        folder = str(Path(args.output_dir) / "rows")
        with args.main_process_first(desc="training rows"):
            if args.process_index == 0:
                dataset.save_to_disk(folder)
        dataset = load_from_disk(folder)
    trainer = length_batched(trainer_class)(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                            peft_config=peft_config)
    # inside a papermill notebook the Trainer would draw an HTML widget nobody sees; log text instead
    if trainer.pop_callback(NotebookProgressCallback) is not None:
        trainer.add_callback(ProgressCallback)
    trainer.add_callback(GiveBackFreePages())
    return trainer


class GiveBackFreePages(TrainerCallback):
    """After each optimizer step, the C allocator's free pages go back to the system: a step's transient
    tensors leave holes in glibc's heap that it would otherwise keep, and the next step's peak stacks on them
    (the quick tour's SFT: 3.5 GB peak resident without, 3.0 with, at the same step time)."""

    def on_step_end(self, args, state, control, **kwargs):
        give_back_free_pages()


def _finish(trainer, tokenizer, out_dir, num_examples: int, model_dir: str, model_cfg) -> dict:
    history = [h for h in trainer.state.log_history if "loss" in h]
    # TRL drops examples whose response is truncated away: report what was really trained on
    summary = {"examples": num_examples, "examples_trained": len(trainer.train_dataset),
               "steps": trainer.state.global_step,
               "first_loss": history[0]["loss"] if history else None,
               "final_loss": history[-1]["loss"] if history else None}
    # the Trainer's own state file (log_history: one entry per logged step) travels with the model
    state = {"trainer_state.json": dataclasses.asdict(trainer.state)}
    summary["processes"] = sharding(trainer)
    if trainer.args.world_size == 1:
        save_model(trainer.model, tokenizer, out_dir, extra_json=state)
        return summary
    # several processes: every process takes part in gathering the weights (FSDP / ZeRO-3 shards, into the
    # main process's host memory), the main process writes them (a LoRA run: its adapter) and makes a plain
    # model folder of them on the CPU, as in one process; nothing is gathered onto one GPU
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # a collective: the full weights, on rank 0
    if trainer.is_world_process_zero():
        from peft import get_peft_model

        with _outside_zero3():
            if model_cfg.finetune == "lora":
                # the gathered weights into a fresh CPU copy of the LoRA model, merged as in one process
                # (PEFT's save_pretrained finds no adapter in an FSDP2-wrapped model: it writes an empty one)
                fresh = load_model(model_dir, dtype=resolve_dtype(model_cfg.dtype, model_cfg.device), device="cpu")
                fresh = get_peft_model(fresh, trainer.accelerator.unwrap_model(trainer.model).peft_config["default"])
                fresh.load_state_dict(weights, strict=True)
                save_model(fresh, tokenizer, out_dir, extra_json=state)
            else:
                with atomic_dir(out_dir) as tmp:
                    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp, state_dict=weights)
                    tokenizer.save_pretrained(tmp)
                    for name, data in state.items():
                        write_json(Path(tmp) / name, data)
    trainer.accelerator.wait_for_everyone()
    return summary

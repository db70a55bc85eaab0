"""SFT and DPO with TRL, on prompt/completion text so that the loss covers response tokens only.

Each run starts from a plain checkpoint folder and saves one (LoRA adapters merged), so the
model sequence SFT baseline -> M1 -> M2 -> M3 is a chain of ordinary checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset, load_from_disk
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from selfreward.models import (chat_format_for, final_logit_cap, load_model, load_tokenizer, pick_device,
                               resolve_dtype, save_model, soft_cap)


class TrainingError(ValueError):
    """Training that cannot start (e.g. no examples); the message is one line."""


def world_size() -> int:
    """Processes training together (set by `accelerate launch`; 1 in a stage's own process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _common_args(train_cfg, model_cfg, output_dir: str, seed: int) -> dict:
    on_cpu = pick_device(model_cfg.device) == "cpu"
    dtype = resolve_dtype(model_cfg.dtype, model_cfg.device)
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=train_cfg.per_device_batch_size,
        # the effective batch stays batch_size whatever the number of processes (checked on load)
        gradient_accumulation_steps=train_cfg.batch_size // (train_cfg.per_device_batch_size * world_size()),
        learning_rate=train_cfg.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",  # the paper decays to a floor, not to zero
        lr_scheduler_kwargs={"min_lr": train_cfg.min_learning_rate},
        warmup_steps=train_cfg.warmup_ratio,
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
        # CPU runs are small: recomputation only costs time there; under FSDP its own checkpointing does it
        gradient_checkpointing=not on_cpu and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING") != "true",
        dataloader_num_workers=0,
        **train_cfg.trainer_args,  # checked when the params were loaded: TRL fields that selfreward does not set
    )


# ---------------------------------------------------------------- log-probabilities at response tokens only

def token_logprobs(model, input_ids, attention_mask, labels, recompute: bool = False):
    """log p(next token) at every position whose next label is not -100, as a [batch, length - 1] fp32
    tensor (0 elsewhere), with the positions' mask.

    The output layer runs on those positions only, never on prompts or padding (TRL's default head
    scores every position on CPU and adds full-vocabulary entropy and top-1 statistics for logging),
    and `SelectedLogProbs` keeps its backward to one pass over the logits."""
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    weight = model.get_output_embeddings().weight
    values = SelectedLogProbs.apply(hidden[:, :-1][mask], weight, targets[mask], final_logit_cap(model), recompute)
    # masked_scatter keeps a batch without any response token connected to the graph (a zero loss)
    return values.new_zeros(mask.shape).masked_scatter(mask, values), mask


class SelectedLogProbs(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[target] for N positions, by hand in both directions.

    Autograd would keep fp32 logits and, in the backward, allocate a zero [N, vocab] tensor for the
    gather and make several passes over fresh [N, vocab] tensors; on a CPU the page faults of those
    allocations cost more than the arithmetic. Here the softmax statistics and the gradient of the
    logits, onehot(target) - softmax, are formed in place in one reused fp32 buffer, chunk by chunk.
    The logits (in the compute dtype) are kept for the backward, or with `recompute` (GPUs, where
    memory is scarce and FLOPs are not) rebuilt from the hidden states chunk by chunk."""

    CHUNK = 512  # positions per fp32 buffer: 512 x 262k x 4 bytes = 0.5 GiB

    @staticmethod
    def forward(ctx, hidden, weight, targets, cap, recompute):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        hidden, w = hidden.to(dtype), weight.to(dtype)
        logits = SelectedLogProbs._logits(hidden, w, cap)
        exact = torch.promote_types(dtype, torch.float32)  # softmax statistics in fp32 at least
        lse = torch.empty(len(targets), dtype=exact, device=hidden.device)
        buffer = torch.empty(min(len(targets), SelectedLogProbs.CHUNK), w.shape[0], dtype=exact, device=hidden.device)
        for rows in SelectedLogProbs._chunks(len(targets)):
            top = logits[rows].amax(-1, keepdim=True).to(exact)
            chunk = torch.sub(logits[rows], top, out=buffer[:rows.stop - rows.start])
            lse[rows] = chunk.exp_().sum(-1).log_() + top.squeeze(-1)
        values = logits.gather(-1, targets[:, None]).squeeze(-1).to(exact) - lse
        ctx.cap, ctx.recompute, ctx.weight_dtype = cap, recompute, weight.dtype
        ctx.save_for_backward(hidden, w, targets, lse, None if recompute else logits)
        return values

    @staticmethod
    def _logits(hidden, w, cap):
        return soft_cap(hidden @ w.T, cap)

    @staticmethod
    def _chunks(n: int):
        return [slice(start, min(start + SelectedLogProbs.CHUNK, n)) for start in range(0, n, SelectedLogProbs.CHUNK)]

    @staticmethod
    def backward(ctx, grad):
        hidden, w, targets, lse, logits = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(w.shape, dtype=lse.dtype, device=w.device) if ctx.needs_input_grad[1] else None
        rows_max = min(len(targets), SelectedLogProbs.CHUNK)
        buffer = torch.empty(rows_max, w.shape[0], dtype=lse.dtype, device=w.device)
        low = buffer if w.dtype == lse.dtype else torch.empty(rows_max, w.shape[0], dtype=w.dtype, device=w.device)
        for rows in SelectedLogProbs._chunks(len(targets)):
            n = rows.stop - rows.start
            z = SelectedLogProbs._logits(hidden[rows], w, ctx.cap) if ctx.recompute else logits[rows]
            g = grad[rows].to(lse.dtype)[:, None]
            # d log p[target] / d logits = onehot(target) - softmax, times the incoming gradient
            dlogits = torch.sub(z, lse[rows, None], out=buffer[:n]).exp_().mul_(-g)
            dlogits.scatter_add_(1, targets[rows, None], g)
            if ctx.cap:  # through cap * tanh(z / cap)
                dlogits.mul_(1 - (z.to(lse.dtype) / ctx.cap) ** 2)
            grad_hidden[rows] = (dlogits if low is buffer else low[:n].copy_(dlogits)) @ w
            if grad_weight is not None:
                grad_weight.addmm_(dlogits.T, hidden[rows].to(lse.dtype))
        grad_weight = None if grad_weight is None else grad_weight.to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


class FastDropout(torch.nn.Module):
    """nn.Dropout with the same law, its mask drawn with `torch.rand` instead of `bernoulli_`, which
    on CPU took 30% of a LoRA training step (every adapter has its own dropout)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p  # fp32 draws: bf16 ones are too coarse
        return x * keep.to(x.dtype) * (1 / (1 - self.p))


def use_fast_dropout(model):
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(module, name, FastDropout(child.p))
    return model


# The lean trainers subclass TRL's and rely on these TRL internals; check them on a TRL upgrade:
# - the SFT batch carries `input_ids`, `attention_mask` and `labels` (-100 outside the completion);
# - the DPO batch carries `input_ids`, `attention_mask` and `completion_mask`, chosen rows first,
#   then the rejected rows in the same order;
# - `self._metrics[mode][name]` lists are what TRL logs (averaged per logging step);
# - `self._total_train_tokens` is SFTTrainer's running token count, logged as `num_tokens`;
# - `self.ref_model` (None under LoRA, where the reference is the model with its adapter disabled);
# - with `precompute_ref_log_probs`, TRL calls `compute_ref_log_probs(model, batch)` for every batch in
#   its __init__ and adds `ref_chosen_logps` / `ref_rejected_logps` to the batches.

class _WithFastDropout:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_fast_dropout(self.model)


class LeanSFTTrainer(_WithFastDropout, SFTTrainer):
    """TRL's SFTTrainer with the loss from `token_logprobs`; data handling, optimisation, scheduling
    and logging stay TRL's."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, mask = token_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                     recompute=self.args.gradient_checkpointing)
        # the same normalisation as TRL's: tokens of the whole accumulated batch when known
        tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -logps.sum() / torch.as_tensor(tokens).clamp(min=1)
        if model.training:
            self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return (loss, None) if return_outputs else loss


def dpo_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """The paper's sigmoid DPO loss. Both inputs hold one sequence log-probability per row, the chosen
    rows first, then the rejected rows in the same order. Returns the mean loss and, per pair, the
    implicit rewards beta * (log pi - log pi_ref) of both replies and their margin."""
    chosen, rejected = (policy_logps - reference_logps).chunk(2)
    margin = beta * (chosen - rejected)
    return -F.logsigmoid(margin).mean(), {"rewards/chosen": beta * chosen, "rewards/rejected": beta * rejected,
                                          "rewards/margins": margin, "rewards/accuracies": (margin > 0).float()}


@contextlib.contextmanager
def eval_mode(model):
    """No dropout for the length of a block, then the mode the model was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class LeanDPOTrainer(_WithFastDropout, DPOTrainer):
    """TRL's DPOTrainer with `dpo_loss` on log-probabilities from `token_logprobs`. The reference
    log-probabilities are computed once, before training (`precompute_ref_log_probs`), by
    `compute_ref_log_probs`: a deterministic eval-mode forward of the starting model."""

    def compute_ref_log_probs(self, model, inputs):
        """log pi_ref of the chosen and the rejected rows of a batch. The reference is the starting model
        without dropout (the policy keeps its dropout): under LoRA the same weights with the adapter off."""
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        reference = self.ref_model or model
        adapter_off = self.accelerator.unwrap_model(self.model).disable_adapter() \
            if self.ref_model is None and hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        with torch.no_grad(), adapter_off, eval_mode(reference):
            logps = token_logprobs(reference, inputs["input_ids"], inputs["attention_mask"], labels)[0].sum(-1)
        return logps.chunk(2)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        logps = token_logprobs(model, inputs["input_ids"], inputs["attention_mask"], labels,
                               recompute=self.args.gradient_checkpointing)[0].sum(-1)
        if "ref_chosen_logps" in inputs:
            reference = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps)
        else:
            reference = torch.cat(self.compute_ref_log_probs(model, inputs))
        loss, rewards = dpo_loss(logps, reference, self.beta)
        mode = "train" if model.training else "eval"
        chosen_logps, rejected_logps = logps.detach().chunk(2)
        for key, value in {**rewards, "logps/chosen": chosen_logps, "logps/rejected": rejected_logps}.items():
            self._metrics[mode][key].append(float(value.detach().float().mean()))
        return (loss, None) if return_outputs else loss


def _load_for_training(model_dir: str, model_cfg, dropout: float):
    from peft import LoraConfig

    # LoRA trains fp32 adapters on frozen weights; full fine-tuning keeps fp32 master weights
    # (bf16 weights would round small updates away) and uses autocast for speed.
    dtype = resolve_dtype(model_cfg.dtype, model_cfg.device) if model_cfg.finetune == "lora" else "float32"
    model = load_model(model_dir, dtype=dtype, device=model_cfg.device, attention_dropout=dropout)
    tokenizer = load_tokenizer(model_dir)
    peft_config = None
    if model_cfg.finetune == "lora":
        peft_config = LoraConfig(r=model_cfg.lora_r, lora_alpha=model_cfg.lora_alpha, lora_dropout=dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    return model, tokenizer, peft_config, chat_format_for(tokenizer, model_cfg.chat_format)


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
    multi-process `launch` (config.LaunchConfig), it runs under `accelerate launch` (selfreward.train)."""
    return _train("sft", model_dir, out_dir, examples, train_cfg, model_cfg, seed, launch, **checkpoints)


def dpo_trainer(model_dir: str, pairs: list[dict], train_cfg, model_cfg, output_dir: str, seed: int = 0):
    """A TRL DPOTrainer on {prompt, chosen, rejected}; the reference is the starting model (frozen)."""
    if not pairs:
        raise TrainingError("DPO: no preference pairs")
    model, tokenizer, peft_config, chat = _load_for_training(model_dir, model_cfg, train_cfg.dropout)
    rows = [{"prompt": chat.prompt(p["prompt"]), "chosen": chat.completion(p["chosen"]),
             "rejected": chat.completion(p["rejected"])} for p in pairs]
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
    """Train `kind` (sft or dpo) and save the final model (adapters merged) into `out_dir`. With
    `checkpoint_every`, the model is also saved every that many steps into `checkpoint_dir/checkpoint-<step>`
    (LoRA: the adapter only; see `materialize_checkpoint`), and the summary lists them. With a multi-process
    `launch`, this runs in each process of `accelerate launch` instead (selfreward.train)."""
    checkpoints = {"checkpoint_dir": checkpoint_dir, "checkpoint_every": checkpoint_every} if checkpoint_every else {}
    if launch is not None and launch.multi_process:
        from selfreward.train import in_processes
        return in_processes(kind, model_dir, out_dir, rows, train_cfg, model_cfg, launch, seed, **checkpoints)
    make_trainer = dpo_trainer if kind == "dpo" else sft_trainer
    with _work_dir(out_dir) as work:
        trainer = make_trainer(model_dir, rows, train_cfg, model_cfg, str(checkpoint_dir or work), seed)
        if checkpoint_every:
            trainer.args.save_strategy, trainer.args.save_steps, trainer.args.save_only_model = \
                "steps", checkpoint_every, True
        trainer.train()
        summary = _finish(trainer, trainer.processing_class, out_dir, len(rows), model_dir, model_cfg, work)
    if checkpoint_every:
        summary["checkpoints"] = sorted((str(p) for p in Path(checkpoint_dir).glob("checkpoint-*")),
                                        key=lambda p: int(p.rsplit("-", 1)[1]))
    return summary


@contextlib.contextmanager
def _work_dir(out_dir):
    """Where the Trainer writes while it trains: a temporary folder; with several processes, one folder
    beside `out_dir` that they all share (TRL's cached reference log-probs are a file the main process
    writes and every process reads), removed at the end by the main process."""
    if world_size() == 1:
        with tempfile.TemporaryDirectory() as scratch:
            yield scratch
        return
    shared = Path(out_dir).parent / f".{Path(out_dir).name}.work"
    shared.mkdir(parents=True, exist_ok=True)
    try:
        yield str(shared)
    finally:
        if is_main_process():
            shutil.rmtree(shared, ignore_errors=True)


def materialize_checkpoint(checkpoint: str, base_dir: str, out_dir, model_cfg, extra_json: dict | None = None):
    """A training checkpoint as a plain model folder: a LoRA checkpoint's adapter merged into its base."""
    from peft import PeftModel

    tokenizer = load_tokenizer(base_dir)
    if not (Path(checkpoint) / "adapter_config.json").is_file():  # full fine-tuning: already a model
        save_model(load_model(checkpoint, dtype=model_cfg.dtype, device=model_cfg.device), tokenizer, out_dir,
                   extra_json)
        return
    base = load_model(base_dir, dtype=model_cfg.dtype, device=model_cfg.device)
    save_model(PeftModel.from_pretrained(base, checkpoint), tokenizer, out_dir, extra_json)


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
            for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]


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
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=peft_config)
    lengths = _example_lengths(trainer.train_dataset)
    trainer._get_train_sampler = lambda *_: SimilarLengthSampler(lengths, args.per_device_train_batch_size, args.seed)
    # inside a papermill notebook the Trainer would draw an HTML widget nobody sees; log text instead
    if trainer.pop_callback(NotebookProgressCallback) is not None:
        trainer.add_callback(ProgressCallback)
    return trainer


def _finish(trainer, tokenizer, out_dir, num_examples: int, model_dir: str, model_cfg, work: str) -> dict:
    history = [h for h in trainer.state.log_history if "loss" in h]
    # TRL drops examples whose response is truncated away: report what was really trained on
    summary = {"examples": num_examples, "examples_trained": len(trainer.train_dataset),
               "steps": trainer.state.global_step,
               "first_loss": history[0]["loss"] if history else None,
               "final_loss": history[-1]["loss"] if history else None}
    # the Trainer's own state file (log_history: one entry per logged step) travels with the model
    state = {"trainer_state.json": dataclasses.asdict(trainer.state)}
    if trainer.args.world_size == 1:
        save_model(trainer.model, tokenizer, out_dir, extra_json=state)
        return summary
    # several processes: the Trainer gathers the weights (FSDP / ZeRO-3 shards) and the main process writes
    # them (a LoRA run: its adapter), then merges them into a plain model folder as in one process
    gathered = str(Path(work) / "gathered")
    trainer.save_model(gathered)
    if trainer.is_world_process_zero():
        materialize_checkpoint(gathered, model_dir, out_dir, model_cfg, extra_json=state)
    trainer.accelerator.wait_for_everyone()
    return summary

"""SFT and DPO with TRL, on prompt/completion text so that the loss covers response tokens only.

Each run starts from a plain checkpoint folder and saves one (LoRA adapters merged), so the
model sequence SFT baseline -> M1 -> M2 -> M3 is a chain of ordinary checkpoints.
"""
from __future__ import annotations

import tempfile

from selfreward.models import chat_format_for, load_model, load_tokenizer, pick_device, save_model


class TrainingError(ValueError):
    """Training that cannot start (e.g. no examples); the message is one line."""


def _common_args(cfg, model_cfg, output_dir: str, seed: int) -> dict:
    on_cpu = pick_device(model_cfg.device) == "cpu"
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.per_device_batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",  # the paper decays to a floor, not to zero
        lr_scheduler_kwargs={"min_lr": cfg.min_learning_rate},
        warmup_steps=cfg.warmup_ratio,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_length=cfg.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=model_cfg.dtype == "bfloat16",
        fp16=model_cfg.dtype == "float16",
        use_cpu=on_cpu,
        gradient_checkpointing=not on_cpu,  # CPU runs are small; recomputation only costs time there
        dataloader_num_workers=0,
    )


def _load_for_training(model_dir: str, model_cfg, dropout: float):
    from peft import LoraConfig

    # LoRA trains fp32 adapters on frozen weights; full fine-tuning keeps fp32 master weights
    # (bf16 weights would round small updates away) and uses autocast for speed.
    dtype = model_cfg.dtype if model_cfg.finetune == "lora" else "float32"
    model = load_model(model_dir, dtype=dtype, device=model_cfg.device, attention_dropout=dropout)
    tokenizer = load_tokenizer(model_dir)
    peft_config = None
    if model_cfg.finetune == "lora":
        peft_config = LoraConfig(r=model_cfg.lora_r, lora_alpha=model_cfg.lora_alpha, lora_dropout=dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    return model, tokenizer, peft_config


def sft_trainer(model_dir: str, examples: list[dict], cfg, model_cfg, output_dir: str, seed: int = 0):
    """A TRL SFTTrainer on prompt/completion rows: the loss covers the completion tokens only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise TrainingError("SFT: no training examples")
    model, tokenizer, peft_config = _load_for_training(model_dir, model_cfg, cfg.dropout)
    chat = chat_format_for(tokenizer, model_cfg.chat_format)
    rows = [{"prompt": chat.prompt(e["prompt"]), "completion": chat.completion(e["response"])} for e in examples]
    args = SFTConfig(**_common_args(cfg, model_cfg, output_dir, seed), completion_only_loss=True, packing=False)
    return _text_progress(SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                     processing_class=tokenizer, peft_config=peft_config))


def sft(model_dir: str, out_dir, examples: list[dict], cfg, model_cfg, seed: int = 0) -> dict:
    """Supervised fine-tuning on {prompt, response} examples; returns the training log summary."""
    with tempfile.TemporaryDirectory() as scratch:
        trainer = sft_trainer(model_dir, examples, cfg, model_cfg, scratch, seed)
        trainer.train()
    return _finish(trainer, trainer.processing_class, out_dir, len(examples))


def dpo(model_dir: str, out_dir, pairs: list[dict], cfg, model_cfg, seed: int = 0) -> dict:
    """DPO on {prompt, chosen, rejected}; the reference is the starting model (frozen)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise TrainingError("DPO: no preference pairs")
    model, tokenizer, peft_config = _load_for_training(model_dir, model_cfg, cfg.dropout)
    chat = chat_format_for(tokenizer, model_cfg.chat_format)
    rows = [{"prompt": chat.prompt(p["prompt"]), "chosen": chat.completion(p["chosen"]),
             "rejected": chat.completion(p["rejected"])} for p in pairs]
    with tempfile.TemporaryDirectory() as scratch:
        # the paper keeps dropout on during DPO
        args = DPOConfig(**_common_args(cfg, model_cfg, scratch, seed), beta=cfg.beta, disable_dropout=False)
        trainer = _text_progress(DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                            processing_class=tokenizer, peft_config=peft_config))
        trainer.train()
    return _finish(trainer, tokenizer, out_dir, len(rows))


def _text_progress(trainer):
    """Inside a papermill notebook the Trainer would draw an HTML widget nobody sees; log text instead."""
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    if trainer.pop_callback(NotebookProgressCallback) is not None:
        trainer.add_callback(ProgressCallback)
    return trainer


def _finish(trainer, tokenizer, out_dir, num_examples: int) -> dict:
    history = [h for h in trainer.state.log_history if "loss" in h]
    # TRL drops examples whose response is truncated away: report what was really trained on
    summary = {"examples": num_examples, "examples_trained": len(trainer.train_dataset),
               "steps": trainer.state.global_step,
               "first_loss": history[0]["loss"] if history else None,
               "final_loss": history[-1]["loss"] if history else None}
    save_model(trainer.model, tokenizer, out_dir,
               extra_json={"train_log.json": {"summary": summary, "log_history": trainer.state.log_history}})
    return summary

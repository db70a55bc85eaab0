"""Generation: batched sampling, constrained reading and scoring behind one contract.

- `contract`: the backend contract (`Backend`, `Completion`, `Reading`) every engine meets and every
  caller relies on; it imports nothing of selfreward.
- `plain`: transformers' `model.generate` (`generation.backend: transformers`).
- `fast`: selfreward's own decode loop for CPUs (`fast`, the default), with its KV cache and kernels.
- `vllm`: vLLM on GPUs (`vllm`, the `vllm` extra).
This package may import `selfreward.models` and `selfreward.io`, nothing above them. `loaded_backend`
loads the configured engine for a model folder and frees it when the block ends.
"""
from __future__ import annotations

import contextlib

from selfreward import models
from selfreward.generation.contract import CONTRACT, Backend, Completion, Reading
from selfreward.generation.fast import FastBackend
from selfreward.generation.plain import TransformersBackend

__all__ = ["CONTRACT", "Backend", "Completion", "FastBackend", "Reading", "TransformersBackend", "load_backend",
           "loaded_backend"]


def load_backend(path: str, cfg) -> tuple[Backend, models.ChatFormat]:
    """The generation engine of `cfg.generation.backend` for the model folder `path`, and its chat format."""
    tokenizer = models.load_tokenizer(path)
    chat = models.chat_format_for(tokenizer, cfg.model.chat_format)
    if cfg.generation.backend == "vllm":
        from selfreward.generation.vllm import VLLMBackend
        dtype = models.resolve_dtype(cfg.model.dtype, cfg.model.device)
        return VLLMBackend(path, tokenizer, models.stop_token_ids(tokenizer, chat), cfg.generation, dtype,
                           cfg.seed, lora_r=cfg.model.lora_r), chat
    model = models.load_model(path, dtype=cfg.model.dtype, device=cfg.model.device)
    engine = FastBackend if cfg.generation.backend == "fast" else TransformersBackend
    return engine(model, tokenizer, models.stop_token_ids(tokenizer, chat), cfg.generation.batch_size), chat


@contextlib.contextmanager
def loaded_backend(path: str, cfg):
    """`load_backend` for the length of a block; the model's memory is freed when it ends, before the
    next model (or training) needs it."""
    backend, chat = load_backend(path, cfg)
    try:
        yield backend, chat
    finally:
        backend.release()
        models.free_memory()

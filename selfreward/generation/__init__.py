"""Generation: batched sampling, constrained reading and scoring behind one contract.

- `contract`: the backend contract (`Backend`, `Completion`, `Reading`) every engine meets and every
  caller relies on, and the registry of engines; it imports nothing of selfreward.
- `plain`: transformers' `model.generate` (`generation.backend: transformers`).
- `fast`: selfreward's own decode loop for CPUs (`fast`, the default), with its KV cache and kernels.
- `vllm`: vLLM on GPUs (`vllm`, the `vllm` extra).
Each engine's module registers it (`contract.register_engine`); so does every module named in the
environment variable SELFREWARD_ENGINES (comma-separated; a plugin). This package may import
`selfreward.models` and `selfreward.io`, nothing above them. `loaded_backend` loads the configured engine
for a model folder and frees it when the block ends.
"""
from __future__ import annotations

import contextlib

from selfreward import models
from selfreward.generation import plain, vllm  # noqa: F401  (each registers its engine)
from selfreward.generation.contract import CONTRACT, ENGINES, Backend, Completion, Engine, Reading
from selfreward.generation.fast import FastBackend
from selfreward.generation.plain import TransformersBackend
from selfreward.plugins import import_plugins

__all__ = ["CONTRACT", "Backend", "Completion", "Engine", "FastBackend", "Reading", "TransformersBackend", "engine",
           "engines", "load_backend", "loaded_backend"]


def engines() -> dict[str, Engine]:
    """Every registered engine by name, plugins included."""
    import_plugins("SELFREWARD_ENGINES")
    return dict(ENGINES)


def engine(name: str) -> Engine:
    found = engines()
    if name not in found:
        raise KeyError(f"unknown generation engine {name!r} (registered: {', '.join(sorted(found))})")
    return found[name]


def load_backend(path: str, cfg) -> tuple[Backend, models.ChatFormat]:
    """The generation engine of `cfg.generation.backend` for the model folder `path`, and its chat format."""
    tokenizer = models.load_tokenizer(path)
    chat = models.chat_format_for(tokenizer, cfg.model.chat_format)
    return engine(cfg.generation.backend).load(path, cfg, tokenizer, models.stop_token_ids(tokenizer, chat)), chat


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

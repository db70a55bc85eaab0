"""Which model a name in the params means: `base` (M0), a model of the run (sft_baseline, m1, ...), or a
model spec; and the model sequence's references (the model each was trained from)."""
from __future__ import annotations

from selfreward import models
from selfreward.config import Config, model_sequence
from selfreward.io import read_jsonl
from selfreward.rundir import RunDir


def base_model(cfg: Config, run: RunDir) -> str:
    """M0. The tiny model's tokenizer is trained on the run's IFT texts."""
    def corpus():
        return [text for e in read_jsonl(run.ift) for text in (e["prompt"], e["response"])]

    return models.resolve(cfg.model.spec, corpus=corpus, model_cfg=cfg.model, seed=cfg.item_seed)


def model_path(cfg: Config, run: RunDir, reference: str) -> str:
    """A model reference of the params: `base` (M0), a model of this run (sft_baseline, m1, ...) or a spec."""
    if reference == "base":
        return base_model(cfg, run)
    if reference in model_sequence(cfg.iterations):
        return str(run.model(reference))
    return models.resolve(reference)

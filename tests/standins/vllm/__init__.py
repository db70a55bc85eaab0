"""A stand-in for vLLM 0.33 on a CPU, for tests only: the names selfreward calls (LLM, SamplingParams,
LoRARequest) with vLLM's own argument names and defaults, answering with vLLM-shaped outputs computed by
the real model through transformers. It refuses arguments vLLM 0.33 does not have, and records every
engine it starts and shuts down in the file named by STANDIN_VLLM_LOG (one JSON line each).
tests/test_vllm_backend.py checks the same calls against the installed vLLM where there is one."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

__version__ = "0.33.0-standin"

# vLLM 0.33's LLM / EngineArgs names that selfreward may pass (a subset of the real ones)
ENGINE_ARGUMENTS = {"model", "tokenizer", "dtype", "seed", "tensor_parallel_size", "gpu_memory_utilization",
                    "enable_prefix_caching", "enable_lora", "max_lora_rank", "max_loras", "max_model_len",
                    "enforce_eager"}


def _log(event: dict):
    path = os.environ.get("STANDIN_VLLM_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(event) + "\n")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logprob_token_ids: list[int] | None = None

    def __post_init__(self):
        if self.logprob_token_ids is not None and self.logprobs not in (None, len(self.logprob_token_ids)):
            raise ValueError("logprobs must equal len(logprob_token_ids)")  # as vLLM 0.33 checks


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None
    stop_reason: object = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list | None
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


class _EngineCore:
    def __init__(self, engine_id: int):
        self.engine_id = engine_id

    def shutdown(self, timeout: float | None = None):
        _log({"event": "shutdown", "engine": self.engine_id})


class _Engine:
    def __init__(self, engine_id: int):
        self.engine_core = _EngineCore(engine_id)


class LLM:
    started = 0

    def __init__(self, model: str, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        unknown = set(kwargs) - ENGINE_ARGUMENTS
        if unknown:
            raise TypeError(f"LLM got unexpected arguments {sorted(unknown)}")
        LLM.started += 1
        self.llm_engine = _Engine(LLM.started)
        _log({"event": "start", "engine": LLM.started, "model": model, "kwargs": kwargs})
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("the number of sampling params must match the number of prompts")
        return [self._one(i, p, s) for i, (p, s) in enumerate(zip(prompts, params, strict=True))]

    @torch.no_grad()
    def _one(self, index: int, prompt, params: SamplingParams) -> RequestOutput:
        ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else self.tokenizer(prompt).input_ids
        tensor = torch.tensor([ids])
        prompt_logprobs = None
        if params.prompt_logprobs is not None:
            logps = self.model(tensor).logits[0].float().log_softmax(-1)
            prompt_logprobs = [None] + [{ids[p]: Logprob(float(logps[p - 1, ids[p]]))} for p in range(1, len(ids))]
        if params.logprob_token_ids is not None:
            logps = self.model(tensor).logits[0, -1].float().log_softmax(-1)
            chosen = int(logps.argmax())
            position = {t: Logprob(float(logps[t]), rank) for rank, t in enumerate(params.logprob_token_ids, 1)}
            outputs = [CompletionOutput(0, self.tokenizer.decode([chosen]), [chosen], None, [position],
                                        finish_reason="length")]
        else:
            outputs = [self._sample(tensor, params, k) for k in range(params.n)]
        return RequestOutput(str(index), None, ids, prompt_logprobs, outputs)

    def _sample(self, tensor, params: SamplingParams, k: int) -> CompletionOutput:
        torch.manual_seed((params.seed or 0) * 1000 + k)
        greedy = params.temperature == 0
        extra = dict(stop_strings=params.stop, tokenizer=self.tokenizer) if params.stop else {}
        output = self.model.generate(tensor, max_new_tokens=params.max_tokens, do_sample=not greedy,
                                     temperature=None if greedy else params.temperature,
                                     top_p=None if greedy else params.top_p, top_k=None,
                                     eos_token_id=params.stop_token_ids or None,
                                     pad_token_id=self.tokenizer.pad_token_id or 0, **extra)[0, tensor.shape[1]:]
        tokens = output.tolist()
        stopped_at = next((i for i, t in enumerate(tokens) if t in (params.stop_token_ids or [])), None)
        tokens = tokens if stopped_at is None else tokens[:stopped_at + 1]  # vLLM keeps the stop token in ids
        text = self.tokenizer.decode(tokens if stopped_at is None else tokens[:-1],
                                     skip_special_tokens=params.skip_special_tokens)
        stopped = stopped_at is not None
        for stop in params.stop or []:
            if stop in text:  # vLLM ends at a stop string and leaves it out of the text
                text, stopped = text[:text.index(stop)], True
        return CompletionOutput(k, text, tokens, None, None, finish_reason="stop" if stopped else "length")


__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob"]

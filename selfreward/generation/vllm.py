"""Generation with vLLM (`generation.backend: vllm`, the `vllm` extra; GPU machines).

The same interface as `generation.TransformersBackend` (generate with an optional constrained
`Reading`, option_probs, continuation_logprobs), so sampling candidates, self-instruction and judging
run unchanged. The request building and the reading of vLLM's outputs are plain functions of plain
values (tested without vLLM installed); `VLLMBackend` only hands them to the engine.

Every model folder a run writes holds merged weights, which vLLM loads directly; a folder holding a
LoRA adapter (adapter_config.json, e.g. a training checkpoint) is served as its base model plus the
adapter through vLLM's LoRA support.
"""
from __future__ import annotations

import gc
import json
import math
from pathlib import Path

from tqdm.auto import tqdm

from selfreward.generation.contract import Backend, Completion, normalised_options

TOP_LOGPROBS = 20  # options outside the top 20 of the engine's distribution read as probability 0


def model_and_adapter(path: str) -> tuple[str, str | None]:
    """What the engine loads for a model folder: the folder itself, or a LoRA adapter's base and the adapter."""
    adapter_config = Path(path) / "adapter_config.json"
    if not adapter_config.is_file():
        return path, None
    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_config}: a LoRA adapter without base_model_name_or_path")
    return base, path


def engine_kwargs(model: str, generation_cfg, dtype: str, seed: int, lora: bool, max_lora_rank: int = 16) -> dict:
    """Arguments of `vllm.LLM`."""
    kwargs = dict(model=model, tensor_parallel_size=generation_cfg.tensor_parallel_size, dtype=dtype, seed=seed,
                  gpu_memory_utilization=generation_cfg.gpu_memory_utilization,
                  enable_prefix_caching=True)  # judge prompts share their instructions
    if lora:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
    return kwargs


def sampling_kwargs(n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                    stop_ids: list[int], stop_strings: list[str] | None = None) -> dict:
    """Arguments of `vllm.SamplingParams` for n completions of one prompt."""
    return dict(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
                seed=seed, stop_token_ids=list(stop_ids), stop=list(stop_strings or []), skip_special_tokens=True)


def option_kwargs() -> dict:
    """`vllm.SamplingParams` for reading the next token's distribution after a prefix."""
    return dict(n=1, temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS)


def scoring_kwargs() -> dict:
    """`vllm.SamplingParams` for the log-probabilities of the prompt's own tokens."""
    return dict(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0)


def completions(request_output, stop_ids: list[int]) -> list[Completion]:
    """vLLM's RequestOutput (its `outputs`: text, token_ids, finish_reason) as selfreward Completions."""
    results = []
    for output in request_output.outputs:
        tokens = list(output.token_ids)
        stopped = output.finish_reason == "stop"
        # vLLM leaves a stop token in token_ids and out of the text; the count includes it, as in generate
        results.append(Completion(text=output.text.strip(), num_tokens=len(tokens), finished=stopped))
    return results


def _logprob(value) -> float:
    return value.logprob if hasattr(value, "logprob") else float(value)


def read_options(top_logprobs: dict, option_ids: list[int]) -> tuple[list[float] | None, float]:
    """The options' probabilities (renormalised) and their raw mass from one position's top log-probs
    ({token_id: Logprob}); an option outside them counts 0, no option at all reads as nothing (None)."""
    return normalised_options([math.exp(_logprob(top_logprobs[i])) if i in top_logprobs else 0.0
                               for i in option_ids])


def continuation_sum(prompt_logprobs: list, token_ids: list[int], start: int) -> tuple[float, int]:
    """Summed log-probability of token_ids[start:] from vLLM's prompt_logprobs (one {token_id: Logprob}
    per prompt position, None for the first), and how many tokens that is."""
    start = max(start, 1)
    total = sum(_logprob(prompt_logprobs[p][token_ids[p]]) for p in range(start, len(token_ids)))
    return total, len(token_ids) - start


class VLLMBackend(Backend):
    """The backend contract with vLLM doing the work; a `Reading` is a second request per text."""

    def __init__(self, path: str, tokenizer, stop_ids: list[int], generation_cfg, dtype: str, seed: int = 0):
        import vllm  # the `vllm` extra; checked before a run starts (pipeline preflight)

        super().__init__(tokenizer, stop_ids, generation_cfg.batch_size)
        self._vllm = vllm
        model, self.adapter = model_and_adapter(path)
        self.llm = vllm.LLM(**engine_kwargs(model, generation_cfg, dtype, seed, self.adapter is not None))

    def _run(self, prompts, params, desc):
        lora = None
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest
            lora = LoRARequest("adapter", 1, self.adapter)
        with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
            outputs = self.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
            bar.update(len(prompts))
        return outputs

    def _generate(self, prompts, n, temperature, top_p, max_new_tokens, seed, desc, stop_strings, reading):
        # one seed per prompt, so that a prompt's samples do not depend on the rest of the batch
        params = [self._vllm.SamplingParams(**sampling_kwargs(n, temperature, top_p, max_new_tokens, seed + i,
                                                              self.stop_ids, stop_strings))
                  for i in range(len(prompts))]
        results = [completions(o, self.stop_ids) for o in self._run(list(prompts), params, desc)]
        self.tokens_generated += sum(c.num_tokens for cs in results for c in cs)
        return results

    def option_probs(self, prefixes, options):
        rows = [self.option_token_ids(p, options) for p in prefixes]
        prompts = [{"prompt_token_ids": ids} for ids, _ in rows]
        outputs = self._run(prompts, self._vllm.SamplingParams(**option_kwargs()), "reading scores")
        return [read_options(o.outputs[0].logprobs[0], option_ids) for o, (_, option_ids) in zip(outputs, rows)]

    def continuation_logprobs(self, items: list[tuple[str, str]], max_tokens: int = 0,
                              desc: str = "log-likelihoods") -> list[tuple[float, int]]:
        rows = self.continuation_rows(items, max_tokens)
        outputs = self._run([{"prompt_token_ids": ids} for ids, _ in rows],
                            self._vllm.SamplingParams(**scoring_kwargs()), desc)
        return [continuation_sum(o.prompt_logprobs, ids, boundary) for o, (ids, boundary) in zip(outputs, rows)]

    def release(self):
        """Free the engine (and its GPU memory) before the next model or training needs it."""
        self.llm = None
        try:  # vLLM's own teardown of its parallel state, where this version has it
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
            destroy_model_parallel()
            destroy_distributed_environment()
        except (ImportError, AssertionError, RuntimeError):
            pass
        gc.collect()

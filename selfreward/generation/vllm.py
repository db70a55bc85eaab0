"""Generation with vLLM (`generation.backend: vllm`, the `vllm` extra, checked against vLLM 0.33; GPU machines).

The backend contract (`generation.contract`) with vLLM doing the work: sampling (candidates, new prompts,
sampled judging, answers), constrained judging (a second request per text reads the exact log-probabilities
of the options, `logprob_token_ids`), and continuation log-probabilities (`prompt_logprobs`). The request
building and the reading of vLLM's outputs are plain functions of plain values, tested without vLLM; the
tests also drive `VLLMBackend` through every generating stage with a stand-in engine, and check each call
against the installed vLLM's own signatures where it is installed.

Memory: the engine asks for `gpu_memory_utilization` of each GPU when it starts, so everything a stage
trained before it is freed first (`models.free_memory`), and `release` shuts the engine down
explicitly before the next model or training needs the GPU.

Every model folder a run writes holds merged weights, which vLLM loads directly; a folder holding a
LoRA adapter (adapter_config.json, e.g. a training checkpoint) is served as its base model plus the
adapter through vLLM's LoRA support, with the rank of `model.lora_r`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm.auto import tqdm

from selfreward import models
from selfreward.generation.contract import Backend, Completion, Engine, normalised_options, register_engine
from selfreward.models import free_memory

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM 0.33's LoRAConfig accepts
MAX_LOGPROB_TOKEN_IDS = 128  # vLLM's limit on the named token ids of one request


def model_and_adapter(path: str) -> tuple[str, str | None]:
    """What the engine loads for a model folder: the folder itself, or a LoRA adapter's base and the adapter."""
    adapter_config = Path(path) / "adapter_config.json"
    if not adapter_config.is_file():
        return path, None
    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_config}: a LoRA adapter without base_model_name_or_path")
    return base, path


def lora_rank_for(r: int) -> int:
    """The smallest LoRA rank vLLM accepts that holds an adapter of rank r."""
    for rank in LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"LoRA rank {r} is above the largest vLLM serves ({LORA_RANKS[-1]})")


def engine_kwargs(model: str, generation_cfg, dtype: str, seed: int, lora_r: int | None = None) -> dict:
    """Arguments of `vllm.LLM`: `lora_r` is the adapter's rank when a LoRA adapter is served."""
    kwargs = dict(model=model, tensor_parallel_size=generation_cfg.tensor_parallel_size, dtype=dtype, seed=seed,
                  gpu_memory_utilization=generation_cfg.gpu_memory_utilization,
                  enable_prefix_caching=True,  # judge prompts share their instructions
                  enforce_eager=generation_cfg.enforce_eager)
    if generation_cfg.max_model_len:
        kwargs["max_model_len"] = generation_cfg.max_model_len
    if lora_r is not None:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank_for(lora_r), max_loras=1)
    return kwargs


def sampling_kwargs(n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                    stop_ids: list[int], stop_strings: list[str] | None = None) -> dict:
    """Arguments of `vllm.SamplingParams` for n completions of one prompt."""
    return dict(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
                seed=seed, stop_token_ids=list(stop_ids), stop=list(stop_strings or []), skip_special_tokens=True)


def option_kwargs(option_ids: list[int]) -> dict:
    """`vllm.SamplingParams` that return the exact (full-vocabulary) log-probabilities of the option tokens at
    the next position, whatever their rank: not just the top-k, where an option outside it would read as 0."""
    if len(option_ids) > MAX_LOGPROB_TOKEN_IDS:
        raise ValueError(f"{len(option_ids)} options: vLLM reads at most {MAX_LOGPROB_TOKEN_IDS} named tokens")
    return dict(n=1, temperature=0.0, max_tokens=1, logprobs=len(option_ids), logprob_token_ids=list(option_ids))


def scoring_kwargs() -> dict:
    """`vllm.SamplingParams` for the log-probabilities of the prompt's own tokens."""
    return dict(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0)


def completions(request_output) -> list[Completion]:
    """vLLM's RequestOutput (its `outputs`: text, token_ids, finish_reason) as selfreward Completions."""
    results = []
    for output in request_output.outputs:
        # vLLM leaves a stop token in token_ids and out of the text; the count includes it, as in generate
        results.append(Completion(text=output.text.strip(), num_tokens=len(output.token_ids),
                                  finished=output.finish_reason == "stop"))
    return results


def _logprob(value) -> float:
    return value.logprob if hasattr(value, "logprob") else float(value)


def read_options(position_logprobs: dict, option_ids: list[int]) -> tuple[list[float] | None, float]:
    """The options' probabilities (renormalised) and their raw mass from one position's log-probabilities
    ({token_id: Logprob}); with `option_kwargs` every option is among them. An option missing all the same
    is an error, not a zero: it would silently move the judge's reading."""
    missing = [i for i in option_ids if i not in position_logprobs]
    if missing:
        raise ValueError(f"vLLM returned no log-probability for the option tokens {missing}")
    return normalised_options([math.exp(_logprob(position_logprobs[i])) for i in option_ids])


def continuation_sum(prompt_logprobs: list, token_ids: list[int], start: int) -> tuple[float, int]:
    """Summed log-probability of token_ids[start:] from vLLM's prompt_logprobs (one {token_id: Logprob}
    per prompt position, None for the first), and how many tokens that is."""
    start = max(start, 1)
    total = sum(_logprob(prompt_logprobs[p][token_ids[p]]) for p in range(start, len(token_ids)))
    return total, len(token_ids) - start


class VLLMBackend(Backend):
    """The backend contract with vLLM doing the work; a `Reading` is a second request per text."""

    def __init__(self, path: str, tokenizer, stop_ids: list[int], generation_cfg, dtype: str, seed: int = 0,
                 lora_r: int = 16):
        import vllm  # the `vllm` extra; checked before a run starts (pipeline preflight)

        super().__init__(tokenizer, stop_ids, generation_cfg.batch_size)
        self._vllm = vllm
        model, self.adapter = model_and_adapter(path)
        free_memory()
        self.llm = vllm.LLM(**engine_kwargs(model, generation_cfg, dtype, seed,
                                            lora_r if self.adapter is not None else None))

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
        results = [completions(o) for o in self._run(list(prompts), params, desc)]
        self.tokens_generated += sum(c.num_tokens for cs in results for c in cs)
        return results

    def option_probs(self, prefixes, options):
        rows = [self.option_token_ids(p, options) for p in prefixes]
        prompts = [{"prompt_token_ids": ids} for ids, _ in rows]
        params = [self._vllm.SamplingParams(**option_kwargs(option_ids)) for _, option_ids in rows]
        outputs = self._run(prompts, params, "reading scores")
        return [read_options(o.outputs[0].logprobs[0], option_ids) for o, (_, option_ids) in zip(outputs, rows, strict=True)]

    def continuation_logprobs(self, items: list[tuple[str, str]], max_tokens: int = 0,
                              desc: str = "log-likelihoods") -> list[tuple[float, int]]:
        rows = self.continuation_rows(items, max_tokens)
        outputs = self._run([{"prompt_token_ids": ids} for ids, _ in rows],
                            self._vllm.SamplingParams(**scoring_kwargs()), desc)
        return [continuation_sum(o.prompt_logprobs, ids, boundary) for o, (ids, boundary) in zip(outputs, rows, strict=True)]

    def release(self):
        """Shut the engine down (its worker processes and their GPU memory) before the next model or
        training needs the GPU: vLLM 0.33 has no LLM.shutdown, so its engine core is shut down, then the
        parallel state it set up is destroyed."""
        llm, self.llm = self.llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
        except ImportError:  # an engine without vLLM's distributed state (the tests' stand-in)
            cleanup_dist_env_and_memory = None
        if cleanup_dist_env_and_memory is not None:
            cleanup_dist_env_and_memory()
        free_memory()


def load(path: str, cfg, tokenizer, stop_ids: list[int]) -> VLLMBackend:
    dtype = models.resolve_dtype(cfg.model.dtype, cfg.model.device)
    return VLLMBackend(path, tokenizer, stop_ids, cfg.generation, dtype, cfg.seed, lora_r=cfg.model.lora_r)


def unavailable() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("vllm") is not None else (
        "vllm is not installed here (pip install 'selfreward[vllm]' on a GPU machine), or set generation.backend: fast")


register_engine(Engine("vllm", load, unavailable))

"""The vLLM engine's requests and the reading of its outputs, without vLLM (plain values in vLLM's shapes)."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from selfreward.generation import vllm as vb
from selfreward.config import GenerationConfig, load_config
from selfreward.generation import Completion

REPO = Path(__file__).resolve().parent.parent


def output(text, token_ids, finish_reason, logprobs=None):
    return SimpleNamespace(text=text, token_ids=token_ids, finish_reason=finish_reason, logprobs=logprobs)


def logprob(value):  # vLLM's Logprob has .logprob (and rank, decoded_token)
    return SimpleNamespace(logprob=value, rank=1, decoded_token=None)


def test_sampling_requests():
    kwargs = vb.sampling_kwargs(4, 0.7, 0.9, 512, seed=3, stop_ids=[1, 106], stop_strings=["\nTask"])
    assert kwargs == {"n": 4, "temperature": 0.7, "top_p": 0.9, "max_tokens": 512, "seed": 3,
                      "stop_token_ids": [1, 106], "stop": ["\nTask"], "skip_special_tokens": True}
    assert vb.sampling_kwargs(1, 0.0, 0.9, 8, 0, [1])["top_p"] == 1.0  # greedy: no nucleus
    assert vb.option_kwargs()["max_tokens"] == 1 and vb.option_kwargs()["logprobs"] == vb.TOP_LOGPROBS
    assert vb.scoring_kwargs()["prompt_logprobs"] == 0


def test_engine_arguments_and_tensor_parallelism():
    cfg = GenerationConfig(backend="vllm", tensor_parallel_size=8, gpu_memory_utilization=0.8)
    kwargs = vb.engine_kwargs("/runs/x/models/m1", cfg, "bfloat16", seed=0, lora=False)
    assert kwargs["tensor_parallel_size"] == 8 and kwargs["gpu_memory_utilization"] == 0.8
    assert kwargs["model"] == "/runs/x/models/m1" and "enable_lora" not in kwargs
    assert vb.engine_kwargs("base", cfg, "bfloat16", 0, lora=True)["enable_lora"] is True


def test_merged_folders_load_directly_and_adapters_through_lora(tmp_path):
    merged = tmp_path / "m2"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    assert vb.model_and_adapter(str(merged)) == (str(merged), None)
    adapter = tmp_path / "checkpoint-200"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/runs/x/models/m1"}))
    assert vb.model_and_adapter(str(adapter)) == ("/runs/x/models/m1", str(adapter))


def test_outputs_become_completions():
    request = SimpleNamespace(outputs=[output(" Paris. ", [50, 51, 1], "stop"), output("Lyon is", [52, 53], "length")])
    assert vb.completions(request, [1]) == [Completion("Paris.", 3, True), Completion("Lyon is", 2, False)]


def test_option_reading_from_top_logprobs():
    top = {10: logprob(math.log(0.5)), 11: logprob(math.log(0.3)), 99: logprob(math.log(0.1))}
    probs, mass = vb.read_options(top, [10, 11, 12])  # option 12 is not among the top log-probs: 0
    assert mass == pytest.approx(0.8) and probs == pytest.approx([0.625, 0.375, 0.0])
    assert vb.read_options({99: logprob(-0.1)}, [10, 11]) == (None, 0.0)  # nothing to read, not a guess


def test_continuation_from_prompt_logprobs():
    tokens = [2, 7, 8, 9]
    prompt_logprobs = [None, {7: logprob(-1.0)}, {8: logprob(-2.0), 5: logprob(-0.5)}, {9: logprob(-0.25)}]
    assert vb.continuation_sum(prompt_logprobs, tokens, start=2) == (pytest.approx(-2.25), 2)
    assert vb.continuation_sum(prompt_logprobs, tokens, start=0) == (pytest.approx(-3.25), 3)  # never position 0


def test_vllm_backend_is_a_config_choice_checked_before_a_run(tmp_path):
    import importlib.util

    from selfreward.config import ConfigError
    from selfreward.run.pipeline import preflight

    cfg = load_config(REPO / "params" / "tiny.yaml", ["generation.backend=vllm", "generation.tensor_parallel_size=2"])
    assert cfg.generation.backend == "vllm" and cfg.generation.tensor_parallel_size == 2
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="generation.backend: vllm is not installed here"):
            preflight(cfg, tmp_path)
    else:
        preflight(cfg, tmp_path)

"""The vLLM engine: its requests and the reading of its outputs (plain values in vLLM's shapes), the whole
backend driven through every generating stage with a stand-in engine (tests/standins/vllm: vLLM's names
and output shapes, computed by the real tiny model), and, where vLLM itself is installed, every call
checked against its own signatures and classes."""
import importlib
import inspect
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, run_cli
from selfreward.config import GenerationConfig, load_config
from selfreward.generation import CONTRACT, Completion
from selfreward.generation import vllm as vb

STANDINS = str(Path(__file__).resolve().parent / "standins")


def output(text, token_ids, finish_reason, logprobs=None):
    return SimpleNamespace(text=text, token_ids=token_ids, finish_reason=finish_reason, logprobs=logprobs)


def logprob(value):  # vLLM's Logprob has .logprob (and rank, decoded_token)
    return SimpleNamespace(logprob=value, rank=1, decoded_token=None)


def test_sampling_requests():
    kwargs = vb.sampling_kwargs(4, 0.7, 0.9, 512, seed=3, stop_ids=[1, 106], stop_strings=["\nTask"])
    assert kwargs == {"n": 4, "temperature": 0.7, "top_p": 0.9, "max_tokens": 512, "seed": 3,
                      "stop_token_ids": [1, 106], "stop": ["\nTask"], "skip_special_tokens": True}
    assert vb.sampling_kwargs(1, 0.0, 0.9, 8, 0, [1])["top_p"] == 1.0  # greedy: no nucleus
    # the options' exact log-probabilities, whatever their rank: not the top 20, where one could be missing
    assert vb.option_kwargs([10, 11, 12]) == {"n": 1, "temperature": 0.0, "max_tokens": 1, "logprobs": 3,
                                              "logprob_token_ids": [10, 11, 12]}
    with pytest.raises(ValueError, match="at most 128"):
        vb.option_kwargs(list(range(129)))
    assert vb.scoring_kwargs()["prompt_logprobs"] == 0


def test_engine_arguments_come_from_the_params():
    cfg = GenerationConfig(backend="vllm", tensor_parallel_size=8, gpu_memory_utilization=0.8, max_model_len=4096,
                           enforce_eager=True)
    kwargs = vb.engine_kwargs("/runs/x/models/m1", cfg, "bfloat16", seed=0)
    assert kwargs["tensor_parallel_size"] == 8 and kwargs["gpu_memory_utilization"] == 0.8
    assert kwargs["max_model_len"] == 4096 and kwargs["enforce_eager"] is True
    assert kwargs["model"] == "/runs/x/models/m1" and "enable_lora" not in kwargs
    assert "max_model_len" not in vb.engine_kwargs("m", GenerationConfig(), "bfloat16", 0)  # 0: the model's own
    lora = vb.engine_kwargs("base", cfg, "bfloat16", 0, lora_r=64)
    assert lora["enable_lora"] is True and lora["max_lora_rank"] == 64  # gpu-8b's r 64, not a fixed 16
    assert vb.lora_rank_for(4) == 8 and vb.lora_rank_for(100) == 128  # the ranks vLLM accepts
    with pytest.raises(ValueError, match="512"):
        vb.lora_rank_for(1024)


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
    assert vb.completions(request) == [Completion("Paris.", 3, True), Completion("Lyon is", 2, False)]


def test_option_reading_is_exact_and_never_guesses():
    named = {10: logprob(math.log(0.5)), 11: logprob(math.log(0.3)), 12: logprob(math.log(1e-9))}
    probs, mass = vb.read_options(named, [10, 11, 12])
    assert mass == pytest.approx(0.8) and probs == pytest.approx([0.625, 0.375, 0.0], abs=1e-8)
    with pytest.raises(ValueError, match=r"no log-probability for the option tokens \[12\]"):
        vb.read_options({10: logprob(-0.1), 11: logprob(-2.0)}, [10, 11, 12])


def test_continuation_from_prompt_logprobs():
    tokens = [2, 7, 8, 9]
    prompt_logprobs = [None, {7: logprob(-1.0)}, {8: logprob(-2.0), 5: logprob(-0.5)}, {9: logprob(-0.25)}]
    assert vb.continuation_sum(prompt_logprobs, tokens, start=2) == (pytest.approx(-2.25), 2)
    assert vb.continuation_sum(prompt_logprobs, tokens, start=0) == (pytest.approx(-3.25), 3)  # never position 0


@pytest.fixture
def standin(monkeypatch, tmp_path):
    """The stand-in engine importable as `vllm` for this test; its log file."""
    log = tmp_path / "engines.jsonl"
    monkeypatch.setenv("STANDIN_VLLM_LOG", str(log))
    monkeypatch.syspath_prepend(STANDINS)
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.import_module("vllm")
    return log


def vllm_backend(tiny_model_dir, **generation):
    from selfreward import models

    tokenizer = models.load_tokenizer(tiny_model_dir)
    chat = models.chat_format_for(tokenizer)
    cfg = GenerationConfig(backend="vllm", batch_size=8, **generation)
    return vb.VLLMBackend(tiny_model_dir, tokenizer, models.stop_token_ids(tokenizer, chat), cfg, "float32"), chat


def test_the_vllm_backend_meets_the_contract_and_shuts_its_engine_down(tiny_model_dir, standin):
    backend, _ = vllm_backend(tiny_model_dir, enforce_eager=True, max_model_len=512)
    assert [m for m in CONTRACT if not hasattr(backend, m)] == []  # batch_size was missing once
    assert backend.batch_size == 8 and backend.tokens_generated == 0
    backend.release()
    events = [json.loads(line) for line in standin.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "shutdown"]
    assert events[0]["kwargs"]["enforce_eager"] is True and events[0]["kwargs"]["max_model_len"] == 512


def test_every_generating_stage_runs_on_the_vllm_backend(tiny_model_dir, tiny_backend, standin):
    """Self-instruction, candidates with sampled and constrained self-judging, the reward-model rows, the
    pairwise and MT-Bench judge, and reply log-likelihoods, each through VLLMBackend; constrained readings
    and log-likelihoods equal the plain engine's (the stand-in computes them with the same model)."""
    from selfreward.config import CandidatesConfig, JudgeConfig, SelfInstructConfig
    from selfreward.evaluation.instruments.human_preference import reply_logprobs
    from selfreward.method.evaluation_judge import LocalJudge
    from selfreward.method.self_judge import ranked_rows
    from selfreward.method.self_instruction import candidates_and_judgments, new_prompts

    backend, chat = vllm_backend(tiny_model_dir)
    plain, _ = tiny_backend
    records = new_prompts(backend, ["Name a colour.", "Sort a list in Python.", "Write a haiku."],
                          SelfInstructConfig(num_prompts=4, max_new_tokens=12), seed=0)
    assert len(records) == 4 and all("reason" in r for r in records)
    for mode in ("sampled", "constrained"):
        judged = candidates_and_judgments(backend, chat, ["Name a colour.", "Say hi."],
                                          CandidatesConfig(n=2, max_new_tokens=8),
                                          JudgeConfig(samples=2, mode=mode, max_new_tokens=8), seed=0)
        judgments = [j for r in judged for c in r["candidates"] for j in c["judge"]["judgments"]]
        assert len(judgments) == 2 * 2 * 2
        if mode == "constrained":
            assert all(j["probs"] and sum(j["probs"]) == pytest.approx(1) for j in judgments)
    threads = [{"prompt_id": "p", "prompt": "Name a prime number.",
                "replies": [{"text": "Seven.", "rank": 0}, {"text": "Eight.", "rank": 1}]}]
    rows = ranked_rows(backend, chat, threads, JudgeConfig(samples=1, mode="constrained", max_new_tokens=4))
    assert rows[0]["ranks"] == [0, 1] and all(s is not None for s in rows[0]["scores"])
    triples = [("Name a colour.", "Blue.", "Seven.")]
    ours = LocalJudge(backend, chat, "constrained").verdicts(triples)[0]
    reference = LocalJudge(plain, chat, "constrained").verdicts(triples)[0]
    assert ours["p_a"] == pytest.approx(reference["p_a"], rel=1e-4)
    ratings = LocalJudge(backend, chat, "constrained").ratings([(["Name a colour."], ["Blue."])])
    assert len(ratings[0]["probs"]) == 10 and 1 <= ratings[0]["rating"] <= 10
    logps = reply_logprobs(backend, chat, threads, 0, "vllm")
    expected = reply_logprobs(plain, chat, threads, 0, "plain")
    assert logps[0]["tokens"] == expected[0]["tokens"]
    assert logps[0]["logps"] == pytest.approx(expected[0]["logps"], rel=1e-4)
    assert backend.tokens_generated > 0
    backend.release()


@pytest.mark.slow
def test_the_tiny_pipeline_runs_on_the_vllm_backend(tiny_run, tmp_path):
    """The tiny profile's generating stages re-run with generation.backend: vllm on the stand-in engine: every
    stage finishes, and every engine started is shut down again."""
    import shutil

    root, _, _ = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    log = tmp_path / "engines.jsonl"
    result = run_cli(out, root / "cache", "--no-book", "--set", "generation.backend=vllm",
                     env={"PYTHONPATH": STANDINS, "STANDIN_VLLM_LOG": str(log)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[sft_baseline] unchanged, skipped" in result.stdout and "[eft] running" in result.stdout
    manifest = json.loads((out / "tiny" / "manifest.json").read_text())
    assert all(e["status"] == "done" for e in manifest["stages"].values())
    events = [json.loads(line) for line in log.read_text().splitlines()]
    started = [e["engine"] for e in events if e["event"] == "start"]
    assert len(started) >= 10 and sorted(started) == sorted(e["engine"] for e in events if e["event"] == "shutdown")


def test_the_trainer_is_freed_before_an_engine_starts(tiny_model_dir, tmp_path, monkeypatch):
    """Training in the stage's process leaves no model alive (reference cycles included) once it returns, so
    that an engine asking for a share of the GPU finds the memory free."""
    import weakref

    from selfreward.config import ModelConfig, TrainConfig
    from selfreward.method import training

    kept = []
    original = training.sft_trainer
    monkeypatch.setattr(training, "sft_trainer", lambda *a, **k: (lambda t: kept.append(weakref.ref(t.model)) or t)(
        original(*a, **k)))
    examples = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(4)]
    training.sft(tiny_model_dir, tmp_path / "out", examples, TrainConfig(max_steps=1, batch_size=2,
                                                                          per_device_batch_size=2, max_length=64),
                 ModelConfig(spec="tiny", finetune="full", dtype="float32", device="cpu"))
    assert kept and kept[0]() is None


def test_vllm_backend_is_a_config_choice_checked_before_a_run(tmp_path):
    from selfreward.config import ConfigError
    from selfreward.run.pipeline import preflight

    cfg = load_config(REPO / "params" / "tiny.yaml", ["generation.backend=vllm", "generation.tensor_parallel_size=2"])
    assert cfg.generation.backend == "vllm" and cfg.generation.tensor_parallel_size == 2
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="generation.backend: vllm is not installed here"):
            preflight(cfg, tmp_path)
    else:
        preflight(cfg, tmp_path)


def test_every_call_matches_the_installed_vllm():
    """Where vLLM itself is installed (not the stand-in): each call selfreward makes, checked against vLLM's
    own signatures, and its own output classes read by selfreward's readers. Run once in a throwaway venv
    with vLLM 0.33.0 (see the closing note of the change that added it)."""
    vllm = pytest.importorskip("vllm")
    if "standin" in getattr(vllm, "__version__", "standin"):
        pytest.skip("the stand-in engine, not vLLM")
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.logprobs import Logprob
    from vllm.lora.request import LoRARequest
    from vllm.outputs import CompletionOutput, RequestOutput

    params = SamplingParams(**vb.sampling_kwargs(4, 0.7, 0.9, 32, 3, [1, 2], ["\nTask"]))
    assert (params.n, params.max_tokens, params.stop_token_ids, params.stop) == (4, 32, [1, 2], ["\nTask"])
    options = SamplingParams(**vb.option_kwargs([5, 6, 7]))
    assert options.logprob_token_ids == [5, 6, 7] and options.logprobs == 3
    assert SamplingParams(**vb.scoring_kwargs()).prompt_logprobs == 0
    engine_fields = {f.name for f in __import__("dataclasses").fields(EngineArgs)}
    kwargs = vb.engine_kwargs("m", GenerationConfig(max_model_len=2048, enforce_eager=True), "bfloat16", 0, lora_r=64)
    assert set(kwargs) <= engine_fields, set(kwargs) - engine_fields
    generate = inspect.signature(vllm.LLM.generate).parameters
    assert generate["lora_request"].kind is inspect.Parameter.KEYWORD_ONLY and "use_tqdm" in generate
    assert LoRARequest("adapter", 1, "/x").lora_path == "/x"
    position = {5: Logprob(logprob=math.log(0.2)), 6: Logprob(logprob=math.log(0.6)), 7: Logprob(logprob=math.log(0.2))}
    completion = CompletionOutput(index=0, text=" Yes ", token_ids=[9, 2], cumulative_logprob=None,
                                  logprobs=[position], finish_reason="stop", stop_reason=None)
    request = RequestOutput(request_id="0", prompt=None, prompt_token_ids=[1, 5], outputs=[completion],
                            prompt_logprobs=[None, {5: Logprob(logprob=-1.5)}], finished=True)
    assert vb.completions(request) == [Completion("Yes", 2, True)]
    assert vb.read_options(request.outputs[0].logprobs[0], [5, 6, 7])[0] == pytest.approx([0.2, 0.6, 0.2])
    assert vb.continuation_sum(request.prompt_logprobs, [1, 5], 1) == (pytest.approx(-1.5), 1)
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    from vllm.v1.engine.core_client import SyncMPClient

    assert callable(cleanup_dist_env_and_memory) and hasattr(SyncMPClient, "shutdown")

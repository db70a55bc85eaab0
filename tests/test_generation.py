import pytest
import torch

from selfreward.generation import FastBackend
from selfreward.method.self_judge import SCORE_OPTIONS

PROMPTS = ["What is the capital of France?", "Sort a list", "Write a haiku about rain please, a long one"]


def test_greedy_batched_generation_matches_unpadded_generate(tiny_backend):
    backend, chat = tiny_backend
    prompts = [chat.prompt(p) for p in PROMPTS]
    batched = backend.generate(prompts, n=1, temperature=0, max_new_tokens=12)
    for prompt, (completion,) in zip(prompts, batched, strict=True):
        ids = backend.tokenizer(prompt, return_tensors="pt").input_ids
        reference = backend.model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=backend.stop_ids,
                                           pad_token_id=backend.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        expected = backend._completion(reference)
        assert completion == expected


def test_sampling_returns_n_completions_per_prompt_and_is_seeded(tiny_backend):
    backend, chat = tiny_backend
    prompts = [chat.prompt(p) for p in PROMPTS]
    first = backend.generate(prompts, n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7)
    again = backend.generate(prompts, n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7)
    other = backend.generate(prompts, n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=8)
    assert [len(c) for c in first] == [3, 3, 3]
    assert first == again and first != other
    for completions in first:
        for c in completions:
            assert 1 <= c.num_tokens <= 8 and (c.finished or c.num_tokens == 8)


def test_completion_stops_at_end_of_turn(tiny_backend):
    backend, _ = tiny_backend
    tok = backend.tokenizer
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    words = tok("hello world", add_special_tokens=False).input_ids
    completion = backend._completion(words + [eot] + words)
    assert completion.finished and completion.text == "hello world" and completion.num_tokens == len(words) + 1
    assert not backend._completion(words).finished


def test_option_probs_match_a_plain_forward_pass(tiny_backend):
    backend, chat = tiny_backend
    prefixes = [chat.prompt(p) + "Some reasoning.\nScore:" for p in PROMPTS]
    results = backend.option_probs(prefixes, SCORE_OPTIONS)
    for prefix, (probs, mass) in zip(prefixes, results, strict=True):
        common, option_ids = backend.option_token_ids(prefix, SCORE_OPTIONS)
        with torch.no_grad():
            logits = backend.model(torch.tensor([common])).logits[0, -1].float()
        expected = logits.softmax(-1)[option_ids]
        assert torch.allclose(torch.tensor(probs), expected / expected.sum(), atol=1e-5)
        assert abs(mass - float(expected.sum())) < 1e-5 and abs(sum(probs) - 1) < 1e-5


@pytest.mark.parametrize("engine", [None, FastBackend])
def test_continuation_logprobs_equal_a_full_forward(tiny_backend, engine):
    backend, chat = tiny_backend
    reader = engine(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4) if engine else backend
    items = [(chat.prompt("What is the capital of France?"), chat.completion("Paris, of course.")),
             (chat.prompt("Sort a list"), chat.completion("Use sorted(items).")),
             (chat.prompt("Sort a list"), chat.completion("No."))]
    results = reader.continuation_logprobs(items)
    truncated = reader.continuation_logprobs(items, max_tokens=2)
    for (prefix, continuation), (total, count), (short, two) in zip(items, results, truncated, strict=True):
        start = len(backend.tokenizer(prefix).input_ids)
        ids = backend.tokenizer(prefix + continuation).input_ids
        with torch.no_grad():
            logps = backend.model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        per_token = logps[torch.arange(start - 1, len(ids) - 1), torch.tensor(ids[start:])]
        assert count == len(ids) - start and total == pytest.approx(float(per_token.sum()), abs=1e-4)
        assert two == 2 and short == pytest.approx(float(per_token[:2].sum()), abs=1e-4)


def test_every_engine_meets_the_backend_contract(tiny_model_dir):
    """Every member of `contract.CONTRACT` exists on every engine once built (the vLLM engine: see
    test_vllm_backend), and the code outside selfreward.generation uses no member of a backend beyond it."""
    import ast
    from pathlib import Path

    from selfreward import models
    from selfreward.generation import CONTRACT, FastBackend, TransformersBackend

    tokenizer = models.load_tokenizer(tiny_model_dir)
    model = models.load_model(tiny_model_dir, "float32", "cpu")
    for engine in (TransformersBackend, FastBackend):
        backend = engine(model, tokenizer, [tokenizer.eos_token_id], batch_size=4)
        assert [m for m in CONTRACT if not hasattr(backend, m)] == [], engine.__name__
    package = Path(models.__file__).parent
    used = set()
    for path in package.rglob("*.py"):
        if "generation" in path.relative_to(package).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name.endswith("backend"):
                    used.add(node.attr)
    assert used and used <= set(CONTRACT), sorted(used - set(CONTRACT))


def test_engines_are_registered_and_the_params_name_exactly_them():
    """Each engine module registers its engine; `generation.backend` accepts exactly the registered names, and
    an engine that cannot run here says why (vLLM without vllm installed)."""
    import importlib.util
    import typing

    from selfreward import generation
    from selfreward.config import GenerationConfig

    assert set(typing.get_args(typing.get_type_hints(GenerationConfig)["backend"])) == set(generation.engines())
    assert generation.engine("fast").unavailable() is None and generation.engine("transformers").unavailable() is None
    if importlib.util.find_spec("vllm") is None:
        assert generation.engine("vllm").unavailable().startswith("vllm is not installed here")
    with pytest.raises(KeyError, match="unknown generation engine 'nope'"):
        generation.engine("nope")

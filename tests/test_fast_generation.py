"""The fast engine against plain `model.generate`: identical greedy tokens, the same sampling law."""
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from selfreward.generation import FastBackend, TransformersBackend, sample_top_p

PROMPTS = ["What is the capital of France?", "Sort a list", "Write a haiku about rain please, a long one"]


def test_greedy_tokens_identical_to_generate(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4)
    batch = backend.tokenizer([chat.prompt(p) for p in PROMPTS], return_tensors="pt", padding=True)
    reference = backend.model.generate(**batch, max_new_tokens=16, do_sample=False, eos_token_id=[-1],
                                       pad_token_id=backend.tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    fast.stop_ids = [-1]  # no stops: compare every position
    ours = fast._decode(batch["input_ids"], batch["attention_mask"], 1, 0.0, 1.0, 16, None, None)
    assert ours == reference.tolist()


def test_completions_identical_to_the_plain_backend_with_stops(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4)
    prompts = [chat.prompt(p) for p in PROMPTS]
    assert fast.generate(prompts, temperature=0, max_new_tokens=12) == \
        backend.generate(prompts, temperature=0, max_new_tokens=12)


def _hf_kept(logits, temperature, top_p):
    scores = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    return torch.isfinite(scores)


def test_nucleus_is_the_same_set_as_transformers():
    torch.manual_seed(0)
    for scale in (0.5, 2.0, 8.0):  # flat to peaked distributions
        logits = torch.randn(6, 5000) * scale
        hf = _hf_kept(logits, 0.7, 0.9)
        counts = torch.zeros_like(logits)
        generator = torch.Generator().manual_seed(1)
        for _ in range(300):
            counts[torch.arange(6), sample_top_p(logits, 0.7, 0.9, generator)] += 1
        assert not bool((counts > 0)[~hf].any())  # never outside transformers' nucleus


def test_sampling_frequencies_match_transformers():
    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 2
    hf_scores = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(0.7)(None, logits.clone()))
    expected = hf_scores.softmax(-1)[0]
    draws = 20000
    generator = torch.Generator().manual_seed(2)
    tokens = sample_top_p(logits.expand(draws, -1), 0.7, 0.9, generator)
    observed = torch.bincount(tokens, minlength=50).float() / draws
    assert 0.5 * (observed - expected).abs().sum() < 0.02  # total variation distance


def test_samples_share_the_prefill_and_are_seeded(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=6)
    prompts = [chat.prompt(p) for p in PROMPTS]
    first = fast.generate(prompts, n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5)
    assert [len(c) for c in first] == [3, 3, 3]
    assert first == fast.generate(prompts, n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5)
    assert isinstance(fast, TransformersBackend)  # same interface, option_probs included

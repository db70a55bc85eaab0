"""The fast engine against plain `model.generate`: identical greedy tokens, the same sampling law."""
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from selfreward import models
from selfreward.generation import FastBackend, Reading, TransformersBackend
from selfreward.generation.contract import budget_batches, common_prefix_length, length_batches, similar_lengths
from selfreward.generation.fast import MIN_SHARED_PREFIX, kernels
from selfreward.generation.fast.cache import new_cache
from selfreward.generation.fast.kernels import sample_top_p, shared_prefix_batches
from selfreward.method.self_judge import SCORE_OPTIONS
from selfreward.method.prompts import judge_prompt

PROMPTS = ["What is the capital of France?", "Sort a list", "Write a haiku about rain please, a long one"]


def test_greedy_tokens_identical_to_generate(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4)
    batch = backend.tokenizer([chat.prompt(p) for p in PROMPTS], return_tensors="pt", padding=True)
    reference = backend.model.generate(**batch, max_new_tokens=16, do_sample=False, eos_token_id=[-1],
                                       pad_token_id=backend.tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    fast.stop_ids = [-1]  # no stops: compare every position
    rows = [ids[mask == 1].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    ours = fast._decode(rows, 1, 0.0, 1.0, 16, None, None, None)
    assert [c.text for c in ours] == [fast._completion(r).text for r in reference.tolist()]
    assert [c.num_tokens for c in ours] == [16] * len(PROMPTS)


def test_completions_identical_to_the_plain_backend_with_stops(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4)
    prompts = [chat.prompt(p) for p in PROMPTS]
    assert fast.generate(prompts, temperature=0, max_new_tokens=12) == \
        backend.generate(prompts, temperature=0, max_new_tokens=12)


def test_a_shared_prompt_prefix_is_prefilled_once_with_the_same_outputs(tiny_backend):
    """Judge prompts share their instructions: prefilled once, the greedy outputs stay those of `generate`."""
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4)
    prompts = [chat.prompt(judge_prompt(p, "An answer of some length to " + p)) for p in PROMPTS]
    rows = [backend.tokenizer(p).input_ids for p in prompts]
    assert common_prefix_length(rows) >= MIN_SHARED_PREFIX  # the shared path is taken
    assert fast.generate(prompts, temperature=0, max_new_tokens=12) == \
        backend.generate(prompts, temperature=0, max_new_tokens=12)


def test_prompts_past_the_sliding_window_go_apart_with_the_same_outputs(tiny_backend, monkeypatch):
    """One long judge prompt must not stop the short ones from sharing their prefix: the batch is decoded
    in two parts, and the outputs (and samples per prompt) stay those of the plain engine."""
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=8)
    prompts = [chat.prompt(judge_prompt(p, "An answer to " + p * (8 if i == 1 else 1))) for i, p in enumerate(PROMPTS)]
    rows = [backend.tokenizer(p).input_ids for p in prompts]
    window = sorted(len(r) for r in rows)[-2] + 12  # the two short prompts and their new tokens fit, not the long
    monkeypatch.setattr(backend.model.config, "sliding_window", window, raising=False)
    assert fast.window_parts(rows, 12) == [[0, 2], [1]]
    plain = backend.generate(prompts, temperature=0, max_new_tokens=12)
    assert fast.generate(prompts, temperature=0, max_new_tokens=12) == plain
    # n samples per prompt go back to their own prompt (greedy: n copies of the same answer)
    assert fast.generate(prompts, n=2, temperature=0, max_new_tokens=12) == [cs * 2 for cs in plain]
    monkeypatch.setattr(backend.model.config, "sliding_window", None, raising=False)
    assert fast.window_parts(rows, 12) == [[0, 1, 2]]


def test_reading_in_the_same_pass_equals_a_forward_over_the_kept_tokens_and_the_suffix(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4)
    prompts = [chat.prompt(judge_prompt(p, "Some answer to " + p)) for p in PROMPTS]
    # a cut that matches inside the text, so that written tokens are masked out before the suffix
    reading = Reading(suffix="\nScore:", options=SCORE_OPTIONS, cut=r"[a-z]{2}")
    completions = fast.generate(prompts, n=2, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=3,
                                reading=reading)
    suffix = backend.tokenizer("\nScore:", add_special_tokens=False).input_ids
    options = fast.option_token_ids("\nScore:", SCORE_OPTIONS)[1]
    cut_somewhere = False
    for prompt, pair in zip(prompts, completions, strict=True):
        for c in pair:
            text = backend.tokenizer.decode(c.kept_ids, skip_special_tokens=True).rstrip()
            fewer = backend.tokenizer.decode(c.kept_ids[:-1], skip_special_tokens=True).rstrip()
            kept = reading.kept_text(c.text)
            # the fewest tokens that hold the kept text: the same text, or one more token where the cut falls
            # inside a token (the tiny model's byte tokens may also split the last character differently)
            assert (len(fewer) < len(kept) <= len(text) and text[:len(kept) - 1] == kept[:-1]) if kept else \
                c.kept_ids == []
            cut_somewhere |= len(kept) < len(c.text.rstrip())
            ids = torch.tensor([backend.tokenizer(prompt).input_ids + c.kept_ids + suffix])
            with torch.no_grad():
                probs = backend.model(ids).logits[0, -1].float().softmax(-1)[options]
            assert c.probs == pytest.approx((probs / probs.sum()).tolist(), abs=1e-5)
            assert c.option_mass == pytest.approx(float(probs.sum()), abs=1e-6)
    assert cut_somewhere


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


def test_rows_widen_their_window_independently():
    """A flat row needs a window far past 64 tokens while peaked rows beside it do not."""
    torch.manual_seed(0)
    flat, peaked = torch.randn(5000) * 0.3, torch.randn(5000) * 8
    logits = torch.stack([flat, peaked] * 500)
    hf = _hf_kept(logits[:2], 0.7, 0.9)
    tokens = sample_top_p(logits, 0.7, 0.9, torch.Generator().manual_seed(3)).view(500, 2)
    for row in range(2):
        assert bool(hf[row, tokens[:, row]].all())  # inside transformers' nucleus
    top64 = set(flat.topk(64).indices.tolist())
    assert sum(t not in top64 for t in tokens[:, 0].tolist()) > 300  # the flat row used its wide window
    assert hf[0].sum() > 1000 and hf[1].sum() < 64


def test_samples_share_the_prefill_and_are_seeded(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=6)
    prompts = [chat.prompt(p) for p in PROMPTS]
    first = fast.generate(prompts, n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5)
    assert [len(c) for c in first] == [3, 3, 3]
    assert first == fast.generate(prompts, n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5)
    assert isinstance(fast, TransformersBackend)  # same interface, option_probs included


def test_shared_prefix_batches_group_the_judgments_of_a_candidate():
    instructions = list(range(100))
    judgments = [instructions + [1000 + c] * 40 + [5000 + k, 7] for c in range(3) for k in range(2)]
    strangers = [instructions + [2000 + i] * 5 for i in range(3)]
    assert shared_prefix_batches(judgments, 16) == [[0, 1], [2, 3], [4, 5]]
    assert shared_prefix_batches(strangers[:2] + judgments[:4] + strangers[2:] + strangers, 3) == \
        [[0, 1], [2, 3], [4, 5], [6, 7, 8], [9]]
    assert shared_prefix_batches(judgments, 1) == [[i] for i in range(6)]
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # each row keeps a token of its own


def test_similar_lengths_bound_the_padding():
    lengths = [100, 10, 12, 95, 11, 400]
    groups = similar_lengths(lengths)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert groups == [[1, 4, 2], [3, 0], [5]]
    for group in groups:
        assert max(lengths[i] for i in group) * len(group) <= 1.25 * sum(lengths[i] for i in group)
    assert similar_lengths([]) == []


def test_length_batches_cap_the_size_and_keep_similar_lengths_together():
    lengths = [100, 10, 12, 95, 11, 400, 13, 98]
    batches = length_batches(lengths, 2)
    assert sorted(i for b in batches for i in b) == list(range(8)) and all(len(b) <= 2 for b in batches)
    assert batches == [[1, 4], [2, 6], [3, 7], [0], [5]]
    assert length_batches([], 4) == []


def test_budget_batches_fill_short_prompts_and_give_long_ones_fewer_rows():
    lengths = [30, 600, 20, 25, 1500, 700, 10, 650, 40]
    batches = budget_batches(lengths, size=4, tokens_per_prompt=512)  # at most 2,048 padded tokens a batch
    assert batches == [[6, 2, 3, 0], [8, 1, 7], [5], [4]]
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 4 * 512
    assert budget_batches([5] * 9, size=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]  # short prompts: full batches


def test_option_probs_with_shared_prefill_equal_the_plain_ones(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=3)
    instructions = "Review the user's question and the response below and grade it. " * 4
    prefixes = [chat.prompt(f"{instructions}User: {question}") + f"{reasoning}\nScore:"
                for question in ["Sort a list in Python please, with an example of sorted.", "Name a prime."]
                for reasoning in ["The answer is relevant. " * 12, "It is short", " Fine."]]
    prefixes.append(chat.prompt("Something else entirely") + "\nScore:")
    options = [f" {d}" for d in range(6)]
    plain, shared = backend.option_probs(prefixes, options), fast.option_probs(prefixes, options)
    for (plain_probs, plain_mass), (probs, mass) in zip(plain, shared, strict=True):
        assert probs == pytest.approx(plain_probs, abs=1e-5) and mass == pytest.approx(plain_mass, rel=1e-4)


def test_weight_major_linears_match_and_are_undone(tiny_model_dir, monkeypatch):
    model = models.load_model(tiny_model_dir, "float32", "cpu")
    taken, real = [], kernels.weight_major  # the rows of each product computed weight-major (the real function)

    def counted(weight, rows):
        out = real(weight, rows)
        if out is not None:
            taken.append(len(rows))
        return out

    monkeypatch.setattr(kernels, "weight_major", counted)
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    few, many = torch.randint(5, vocab, (3, 1)), torch.randint(5, vocab, (3, 100))  # 3 rows; 300 rows (left alone)
    decoder = model.get_decoder()
    with torch.no_grad():
        before = [decoder(input_ids=ids).last_hidden_state for ids in (few, many)]
    with kernels.weight_major_linears(model):
        patched = [m for m in model.modules() if "forward" in m.__dict__]
        assert patched and all(isinstance(m, torch.nn.Linear) for m in patched)
        with torch.no_grad():
            inside = [decoder(input_ids=ids).last_hidden_state for ids in (few, many)]
        assert taken and set(taken) == {3}  # every product of the 3-row input, none of the 300-row one
        with_gradients = decoder(input_ids=few).last_hidden_state
    assert not any("forward" in m.__dict__ for m in model.modules())  # the class's forward again
    torch.testing.assert_close(inside[0], before[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(inside[1], before[1])  # larger inputs take the usual path
    assert torch.equal(with_gradients, before[0])  # and so do inputs that need gradients


def test_head_logits_in_vocabulary_blocks_match_the_layer(tiny_model_dir, monkeypatch):
    model = models.load_model(tiny_model_dir, "float32", "cpu")
    monkeypatch.setattr(kernels, "WEIGHT_MAJOR_BLOCK", 300)  # blocks that do not divide the vocabulary
    hidden = torch.randn(5, model.config.hidden_size)
    expected = model.get_output_embeddings()(hidden)
    with torch.no_grad():
        torch.testing.assert_close(kernels.head_logits(model, hidden), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(kernels.head_logits(model, hidden), expected)  # with gradients: the layer itself


def tiny_gemma3(window: int = 8):
    """A random Gemma-3 of three layers, two of them sliding-window ones, as the embedded model has them."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=window,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                              max_position_embeddings=512, attn_implementation="sdpa")
    return Gemma3ForCausalLM(config).eval()


def test_blocked_attention_equals_sdpa_with_padding_windows_and_a_cache(monkeypatch):
    """Query blocks attend to the span of keys they can see (no more: the spans are counted) and give sdpa's
    values, with left and right padding, sliding windows and a cache in front; outside the block, and with
    gradients on, the model attends as before."""
    from transformers.integrations import sdpa_attention
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model, window, block = tiny_gemma3(window=8), 8, 4
    spans, real = [], sdpa_attention.sdpa_attention_forward

    def counted(module, query, key, *args, **kwargs):
        spans.append((module.is_sliding, query.shape[2], key.shape[2]))
        return real(module, query, key, *args, **kwargs)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", counted)
    torch.manual_seed(1)
    ids = torch.randint(3, 300, (3, 40))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[0, :11], mask[2, 33:] = 0, 0  # left padding on one row, right padding on another
    decoder = model.get_decoder()

    def run(prefix: int):
        """Hidden states of the last 40 - prefix tokens, the first `prefix` in a cache already."""
        cache = new_cache(model.config)
        with torch.no_grad():
            if prefix:
                decoder(input_ids=ids[:, :prefix], attention_mask=mask[:, :prefix], cache=cache, use_cache=True)
            return decoder(input_ids=ids[:, prefix:], attention_mask=mask, cache=cache, use_cache=True,
                           cache_position=torch.arange(prefix, 40)).last_hidden_state

    for prefix in (0, 12):
        expected = run(prefix)
        spans.clear()
        with kernels.blocked_attention_for(model, block=block):
            assert model.config._attn_implementation.startswith("selfreward_blocked")
            blocked = run(prefix)
        assert model.config._attn_implementation == "sdpa"
        assert not [name for name in ALL_ATTENTION_FUNCTIONS if name.startswith("selfreward")]  # known inside only
        seen = mask[:, prefix:] == 1
        torch.testing.assert_close(blocked[seen], expected[seen], rtol=1e-5, atol=1e-5)
        long = [(sliding, q, k) for sliding, q, k in spans if q <= block and k > 0]
        assert len(long) >= 3 * (40 - prefix) // block - 3  # the prefill went block by block in every layer
        assert max(k for sliding, q, k in long if sliding) <= window + block  # a window's keys, not all 40
        assert min(k for sliding, q, k in long if not sliding) <= prefix + 2 * block  # causal: the early block
    spans.clear()
    with kernels.blocked_attention_for(model, block=block):
        decoder(input_ids=ids, attention_mask=mask)  # gradients on: the usual path, one call per layer
    assert len(spans) == 3


def test_blocked_attention_leaves_other_attention_alone(tiny_model_dir):
    model = models.load_model(tiny_model_dir, "float32", "cpu")
    model.set_attn_implementation("eager")
    with kernels.blocked_attention_for(model):
        assert model.config._attn_implementation == "eager"


def test_head_logprobs_in_vocabulary_blocks_equal_the_log_softmax(tiny_model_dir, monkeypatch):
    model = models.load_model(tiny_model_dir, "float32", "cpu")
    torch.manual_seed(0)
    hidden = torch.randn(7, model.config.hidden_size) * 4
    targets = torch.randint(0, model.config.vocab_size, (7,))
    for cap in (None, 3.0):  # Gemma-2's final soft cap included
        monkeypatch.setattr(model.config, "final_logit_softcapping", cap, raising=False)
        expected = models.head_logits(model, hidden).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        with torch.no_grad():  # blocks that do not divide the vocabulary, and one block for all of it
            for block in (37, model.config.vocab_size):
                torch.testing.assert_close(kernels.head_logprobs(model, hidden, targets, block), expected,
                                           rtol=1e-5, atol=1e-5)

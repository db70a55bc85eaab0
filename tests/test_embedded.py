"""The real embedded model: Gemma-3-270M base from the PyPI GGUF package generates and judges."""
import pytest

from selfreward import models
from selfreward.config import JudgeConfig
from selfreward.generation import TransformersBackend
from selfreward.method.self_judge import score_responses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    path = models.resolve(models.EMBEDDED_GEMMA)  # dequantized once into the cache (~1 min)
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path, dtype="bfloat16", device="cpu")
    chat = models.chat_format_for(tokenizer)
    return TransformersBackend(model, tokenizer, models.stop_token_ids(tokenizer, chat), batch_size=8), chat


def test_embedded_model_is_gemma_base_with_our_chat_format(gemma):
    backend, chat = gemma
    assert backend.model.config.model_type == "gemma3_text" and backend.model.config.vocab_size == 262144
    assert chat == models.CHAT_FORMATS["gemma"]
    assert backend.stop_ids == [backend.tokenizer.eos_token_id, backend.tokenizer.convert_tokens_to_ids("<end_of_turn>")]


def test_embedded_model_continues_text_sensibly(gemma):
    backend, _ = gemma
    (completion,), = backend.generate(["The capital of France is"], temperature=0, max_new_tokens=6)
    assert "Paris" in completion.text or "capital" in completion.text


def test_embedded_model_generates_and_judges(gemma):
    backend, chat = gemma
    items = [("What is the capital of France?", "The capital of France is Paris."),
             ("What is the capital of France?", "Bananas are yellow.")]
    results = score_responses(backend, chat, items, JudgeConfig(samples=2, mode="constrained", max_new_tokens=24), seed=0)
    for result in results:
        assert result.failures == 0 and 0 <= result.score <= 5
        assert all(j.text for j in result.judgments)
        # a real pretrained model puts real probability on a digit right after "Score:"
        assert all(j.option_mass > 0.05 for j in result.judgments)


def test_fast_engine_matches_generate_on_gemma(gemma):
    """Gemma-3 mixes sliding-window and global attention layers: the cache handling must agree too."""
    from selfreward.generation import FastBackend

    backend, chat = gemma
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=8)
    prompts = [chat.prompt("Name three colours."), chat.prompt("What is the boiling point of water at sea level?")]
    assert fast.generate(prompts, temperature=0, max_new_tokens=12) == \
        backend.generate(prompts, temperature=0, max_new_tokens=12)


def test_shared_prefill_scores_match_on_gemma_past_its_sliding_window():
    """Judge prompts longer than Gemma-3's 512-token sliding window, in float32 so that the only
    differences left are summation order: shared prefills must give the plain probabilities."""
    from selfreward.generation import FastBackend
    from selfreward.method.self_judge import SCORE_OPTIONS
    from selfreward.method.prompts import judge_prompt

    path = models.resolve(models.EMBEDDED_GEMMA)
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path, dtype="float32", device="cpu")
    chat = models.chat_format_for(tokenizer)
    plain = TransformersBackend(model, tokenizer, [tokenizer.eos_token_id], batch_size=4)
    fast = FastBackend(model, tokenizer, [tokenizer.eos_token_id], batch_size=4)
    long_answer = "Paris is the capital of France, on the Seine, and its largest city. " * 30
    prefixes = [f"{chat.prompt(judge_prompt('What is the capital of France?', answer))}{reasoning}\nScore:"
                for answer in [long_answer, "Bananas."] for reasoning in ["It answers the question.", "Off topic."]]
    assert max(len(tokenizer(p).input_ids) for p in prefixes) > model.config.sliding_window
    for (expected, _), (probs, _) in zip(plain.option_probs(prefixes, SCORE_OPTIONS),
                                         fast.option_probs(prefixes, SCORE_OPTIONS), strict=True):
        assert probs == pytest.approx(expected, abs=2e-3)


def test_reading_in_the_same_pass_matches_a_plain_forward_on_gemma_past_its_sliding_window():
    """Constrained judging reads P(score) in the decode pass itself (masked cut, fed suffix, growing cache):
    the probabilities are those of a plain forward over the prompt, the kept tokens and the suffix."""
    import torch

    from selfreward.generation import FastBackend
    from selfreward.method.self_judge import SCORE_READING
    from selfreward.method.prompts import judge_prompt

    path = models.resolve(models.EMBEDDED_GEMMA)
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path, dtype="float32", device="cpu")
    chat = models.chat_format_for(tokenizer)
    fast = FastBackend(model, tokenizer, models.stop_token_ids(tokenizer, chat), batch_size=4)
    long_answer = "Paris is the capital of France, on the Seine, and its largest city. " * 30
    prompts = [chat.prompt(judge_prompt("What is the capital of France?", answer)) for answer in [long_answer, "Bananas."]]
    assert len(tokenizer(prompts[0]).input_ids) > model.config.sliding_window
    suffix = tokenizer(SCORE_READING.suffix, add_special_tokens=False).input_ids
    options = fast.option_token_ids(SCORE_READING.suffix, SCORE_READING.options)[1]
    for prompt, completions in zip(prompts, fast.generate(prompts, n=2, temperature=0.7, max_new_tokens=24,
                                                          reading=SCORE_READING), strict=True):
        for c in completions:
            with torch.no_grad():
                logits = model(torch.tensor([tokenizer(prompt).input_ids + c.kept_ids + suffix])).logits[0, -1]
            expected = logits.float().softmax(-1)[options]
            assert c.probs == pytest.approx((expected / expected.sum()).tolist(), abs=2e-3)

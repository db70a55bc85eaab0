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


def real_pairs(count: int = 4) -> list[dict]:
    """OASST prompts with their best and worst human-ranked replies (the mirror's validation split when there is
    one, else written here), the longer reply chosen as often as not."""
    from conftest import shared_data_dir

    from selfreward.config import DataConfig
    from selfreward.method import data

    if not shared_data_dir():
        return [{"prompt": "Name a colour.", "chosen": "Blue, like a clear summer sky over the sea.", "rejected": "No."},
                {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "I would rather not greet anyone today, sorry."}]
    threads = data.ranked_threads(data.first_turn_threads(data.load_oasst("validation", DataConfig(
        local_dir=shared_data_dir())), max_prompt_chars=300), count, seed=0)
    ranked = [sorted(t["replies"], key=lambda r: r["rank"]) for t in threads]
    return [{"prompt": t["prompt"], "chosen": r[0]["text"][:400], "rejected": r[-1]["text"][:400]}
            for t, r in zip(threads, ranked, strict=True)]


def test_a_dpo_step_before_learning_has_no_implicit_reward_without_dropout(tmp_path):
    """DPO's implicit reward beta (log pi - log pi_ref) before any update is 0 when the policy has no dropout
    (dpo.dropout's default). With the paper's 0.1 against a reference read without dropout, the same step on the
    same pairs (float32, AVX512-BF16 CPU) read rewards of -1.75 (chosen) and -2.10 (rejected): every reply starts
    with a reward it did not learn, in proportion to its length."""
    from selfreward.config import DPOConfig, ModelConfig
    from selfreward.method import training

    path = models.resolve(models.EMBEDDED_GEMMA)
    cfg = DPOConfig(batch_size=4, per_device_batch_size=4, max_length=256, max_steps=1)
    assert cfg.dropout == 0
    trainer = training.dpo_trainer(path, real_pairs(), cfg, ModelConfig(spec=path, dtype="float32"), str(tmp_path))
    trainer.train()
    first = trainer.state.log_history[0]
    assert max(abs(first["rewards/chosen"]), abs(first["rewards/rejected"])) < 1e-3, first

import pytest

from selfreward.config import JudgeConfig
from selfreward.method.self_judge import Judgment, JudgeResult, reduce_probs, score_responses

ITEMS = [("What is the capital of France?", "Paris."), ("Sort a list", "Use sorted().")]


def test_reduce_probs():
    probs = [0.0, 0.1, 0.2, 0.3, 0.4, 0.0]
    assert reduce_probs(probs, "argmax") == 4.0
    assert reduce_probs(probs, "expectation") == pytest.approx(0.1 + 0.4 + 0.9 + 1.6)


def test_result_averages_readable_scores_and_counts_failures():
    result = JudgeResult("sampled", [Judgment("a", 4.0, 4.0), Judgment("b", None, None), Judgment("c", 3.0, 3.0)])
    assert result.score == 3.5 and result.failures == 1
    assert JudgeResult("sampled", [Judgment("x", None, None)]).score is None  # never 0


def test_sampled_mode_keeps_raw_judgments_and_reports_unreadable_ones(tiny_backend):
    backend, chat = tiny_backend
    cfg = JudgeConfig(samples=3, mode="sampled", max_new_tokens=10)
    results = score_responses(backend, chat, ITEMS, cfg, seed=0)
    assert len(results) == 2
    for result in results:
        assert result.mode == "sampled" and len(result.judgments) == 3
        for j in result.judgments:
            assert j.score == j.parsed and j.probs is None  # the score is exactly what the text says
        assert result.failures == sum(j.parsed is None for j in result.judgments)


@pytest.mark.parametrize("reduce", ["expectation", "argmax"])
def test_constrained_mode_reads_the_models_distribution(tiny_backend, reduce):
    backend, chat = tiny_backend
    cfg = JudgeConfig(samples=2, mode="constrained", constrained_reduce=reduce, max_new_tokens=10)
    results = score_responses(backend, chat, ITEMS, cfg, seed=0)
    for result in results:
        assert result.mode == f"constrained-{reduce}" and result.failures == 0
        for j in result.judgments:
            assert abs(sum(j.probs) - 1) < 1e-5 and 0 < j.option_mass <= 1
            assert j.score == reduce_probs(j.probs, reduce) and 0 <= j.score <= 5

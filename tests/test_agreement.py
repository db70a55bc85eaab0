import pytest

from selfreward.evaluation.agreement import accuracy, correlation, metrics, paired_metrics
from selfreward.method.ranks import orders_as_humans, pair_outcomes

PERFECT = {"scores": [5, 3, 1], "ranks": [0, 1, 2]}
REVERSED = {"scores": [1, 3, 5], "ranks": [0, 1, 2]}
TIED = {"scores": [4, 4, 2], "ranks": [0, 1, 2]}
ONE_REPLY = {"scores": [5], "ranks": [0]}
UNREADABLE = {"scores": [4, None], "ranks": [0, 1]}


def test_pair_outcomes_by_hand():
    assert pair_outcomes(PERFECT["scores"], PERFECT["ranks"]) == (3, 0, 3)
    assert pair_outcomes(REVERSED["scores"], REVERSED["ranks"]) == (0, 0, 3)
    assert pair_outcomes(TIED["scores"], TIED["ranks"]) == (2, 1, 3)  # (0,1) tied, (0,2) (1,2) right
    assert pair_outcomes(ONE_REPLY["scores"], ONE_REPLY["ranks"]) == (0, 0, 0)
    assert pair_outcomes(UNREADABLE["scores"], UNREADABLE["ranks"]) == (0, 0, 0)
    assert pair_outcomes([3, 1], [1, 1]) == (0, 0, 0)  # equal human ranks: not a pair


def test_exact_match_and_correlations_by_hand():
    assert orders_as_humans(PERFECT["scores"], PERFECT["ranks"]) and not orders_as_humans(TIED["scores"], TIED["ranks"])
    assert not orders_as_humans(UNREADABLE["scores"], UNREADABLE["ranks"])
    assert orders_as_humans([4, 3, 3], [0, 1, 1])  # equal human ranks need no order
    assert not orders_as_humans([4, 3, 3.5], [0, 1, 2])  # one pair out of order
    assert correlation(PERFECT["scores"], PERFECT["ranks"], "spearman") == pytest.approx(1.0)
    assert correlation(REVERSED["scores"], REVERSED["ranks"], "kendall") == pytest.approx(-1.0)
    # scores 4,4,2 vs quality 0,-1,-2: Spearman of ranks (2.5,2.5,1) and (3,2,1) = 0.866
    assert correlation(TIED["scores"], TIED["ranks"], "spearman") == pytest.approx(0.8660254)
    # Kendall tau-b: concordant 2, discordant 0, one tie in x: 2 / sqrt(2 * 3) = 0.8165
    assert correlation(TIED["scores"], TIED["ranks"], "kendall") == pytest.approx(0.8164966)
    assert correlation([3, 3], [0, 1], "spearman") == 0.0  # constant scores: no information
    assert correlation(ONE_REPLY["scores"], ONE_REPLY["ranks"], "spearman") is None


def test_metrics_over_prompts_by_hand():
    m = {k: e.value for k, e in metrics([PERFECT, REVERSED, TIED, ONE_REPLY, UNREADABLE], samples=50).items()}
    assert m["pairwise_accuracy"] == pytest.approx(5 / 9) and m["pair_ties"] == pytest.approx(1 / 9)
    # replies scored 5: PERFECT rank 0 (best), REVERSED rank 2, ONE_REPLY rank 0 -> 2 of 3
    assert m["five_best"] == pytest.approx(2 / 3)
    assert m["exact_match"] == pytest.approx(2 / 5)  # PERFECT and ONE_REPLY (nothing to disagree with)
    assert m["spearman"] == pytest.approx((1 - 1 + 0.8660254) / 3)
    assert m["parse_failure_rate"] == pytest.approx(1 / 12)
    # rounded scores 5 3 1 1 3 5 4 4 2 5 4: three 5s, three 4s -> the most frequent holds 3 of 11
    assert m["top_score_share"] == pytest.approx(3 / 11)
    assert metrics([], samples=10)["pairwise_accuracy"].value is None


def test_intervals_contain_the_estimate_and_are_seeded():
    prompts = [PERFECT, REVERSED, TIED] * 10
    result = metrics(prompts, samples=200, seed=1)["pairwise_accuracy"]
    assert result.low <= result.value <= result.high and result.low < result.high and result.n == 30
    assert metrics(prompts, samples=200, seed=1)["pairwise_accuracy"] == result
    perfect = accuracy([PERFECT] * 5, samples=50)
    assert (perfect.value, perfect.low, perfect.high) == (1.0, 1.0, 1.0)


def test_paired_metrics_of_a_judge_and_its_reversal():
    ids = [{"prompt_id": str(i), **p} for i, p in enumerate([PERFECT, TIED] * 10)]
    worse = [{**p, "scores": list(reversed(p["scores"]))} for p in ids]
    difference = paired_metrics(ids, worse, samples=300, seed=0)["pairwise_accuracy"]
    # PERFECT 3/3 -> 0/3; TIED (4,4,2) 2/3 -> (2,4,4) 0/3: accuracy 5/6 -> 0
    assert difference.value == pytest.approx(-5 / 6) and difference.high < 0 and difference.mde > 0
    with pytest.raises(ValueError, match="same prompts"):
        paired_metrics(ids, list(reversed(worse)))

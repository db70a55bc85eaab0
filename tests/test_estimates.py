"""Paired statistics on constructed data where the answer is known."""
import random

import pytest

from selfreward.evaluation.estimates import (FALLS, RISES, UNDETECTABLE, Estimate, bootstrap, direction, mean,
                                             mean_of, paired)


def test_estimate_formats_and_round_trips():
    e = Estimate(0.712, 0.65, 0.77, n=40, mde=0.05)
    assert e.format(100, 1) == "71.2 [65.0, 77.0]" and Estimate(0.03, -0.01, 0.07).format(100, 1, mde=True) == \
        "+3.0 [-1.0, 7.0]"
    assert Estimate(None).format() == "—" and Estimate.from_dict(e.to_dict()) == e and Estimate.from_dict(None) is None
    assert e.half_width == pytest.approx(0.06)


def test_a_planted_ten_point_shift_is_found():
    rng = random.Random(0)
    before = [float(rng.random() < 0.5) for _ in range(600)]
    # the same items, each flipped to a success with a probability that adds 10 points on average
    after = [1.0 if b or rng.random() < 0.2 else 0.0 for b in before]
    difference = paired(before, after, mean_of, samples=500, seed=1)
    assert difference.value == pytest.approx(sum(after) / 600 - sum(before) / 600)
    assert 0.07 < difference.value < 0.13 and difference.low > 0 and direction(difference) == RISES
    assert difference.mde < 0.05 and difference.n == 600
    assert direction(paired(after, before, mean_of, samples=500, seed=1)) == FALLS


def test_identical_models_give_an_interval_covering_zero():
    rng = random.Random(1)
    scores = [rng.gauss(5, 2) for _ in range(80)]
    same = paired(scores, list(scores), mean_of, samples=300, seed=0)
    assert same.value == 0 and same.low <= 0 <= same.high and direction(same) == UNDETECTABLE
    # two noisy measurements of the same thing: the interval still covers 0, its width is the noise
    noisy = paired([s + rng.gauss(0, 1) for s in scores], [s + rng.gauss(0, 1) for s in scores], mean_of,
                   samples=500, seed=0)
    assert noisy.low <= 0 <= noisy.high and direction(noisy) == UNDETECTABLE and noisy.mde > 0


def test_pairing_sees_what_separate_intervals_cannot():
    rng = random.Random(2)
    base = [rng.gauss(0, 10) for _ in range(100)]  # large spread between items
    shifted = [b + 1 + rng.gauss(0, 0.5) for b in base]  # every item one unit up
    a, b = mean(base, 300, 0), mean(shifted, 300, 0)
    assert a.high > b.low  # each model's own interval overlaps the other's
    assert paired(base, shifted, mean_of, 300, 0).low > 0  # the paired difference does not


def test_bootstrap_is_seeded_and_drops_unreadable_values():
    values = [0.2, 0.4, None, 0.9, 0.5]
    assert mean(values, 200, 3) == mean(values, 200, 3) and mean(values, 200, 3).n == 4
    assert mean([None], 10) is None and bootstrap([], lambda xs: None).value is None
    with pytest.raises(ValueError, match="differ in number"):
        paired([1.0], [1.0, 2.0], mean_of)

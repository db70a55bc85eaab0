"""The findings table's verdicts come from the paired interval, never from the point estimate."""
from selfreward import paper
from selfreward.evaluation import findings
from selfreward.evaluation.estimates import Estimate
from selfreward.evaluation.instrument import Difference

CLAIMS = {c.id: c for c in paper.CLAIMS}


def difference(value, low, high, mde=0.03, claim="rm_rises", blind=None, **kw):
    return Difference("pairwise accuracy", "m1", "m2", Estimate(value, low, high, n=186, mde=mde), claim=claim,
                      blind=blind, **kw)


def test_a_rise_holds_only_when_the_whole_interval_is_above_zero():
    rises = CLAIMS["rm_rises"]
    assert findings.verdict(rises, difference(0.04, 0.01, 0.07)) == "holds"
    assert findings.verdict(rises, difference(-0.04, -0.07, -0.01)) == "opposite"
    # a large point estimate whose interval covers 0 is no finding
    assert findings.verdict(rises, difference(0.09, -0.01, 0.19)) == "not detectable at ±MDE"


def test_a_likeness_holds_when_the_interval_covers_zero():
    same = CLAIMS["eft_like_ift"]
    assert findings.verdict(same, difference(0.02, -0.03, 0.07, claim="eft_like_ift")).startswith("holds")
    assert findings.verdict(same, difference(0.08, 0.03, 0.13, claim="eft_like_ift")) == "differs"


def test_an_instrument_that_cannot_see_says_so_instead_of_a_verdict():
    blind = difference(0.2, 0.1, 0.3, blind="m1: it picks the first slot 100% of the time")
    assert findings.verdict(CLAIMS["rm_rises"], blind).startswith("judge uninformative (m1: it picks")


def test_a_too_small_instrument_is_said_not_silent():
    coarse = difference(0.05, -0.2, 0.3, mde=0.25)
    assert coarse.too_coarse() and "too small an instrument" in findings.verdict(CLAIMS["rm_rises"], coarse)
    lines = findings.coarse({"Reward modeling": [coarse, difference(0.01, -0.02, 0.04)]})
    assert len(lines) == 1 and "MDE ±25.0 points" in lines[0] and "n = 186" in lines[0]
    ratings = Difference("MT-Bench score", "m1", "m2", Estimate(0.1, -1.0, 1.2, n=4, mde=1.5), unit="rating (1-10)",
                         scale=1.0, span=9.0)
    assert not ratings.too_coarse()  # 1.5 of a 9-point range is under a fifth


def test_every_claim_has_a_row_measured_or_not():
    rows = findings.rows({"Reward modeling": [difference(0.04, 0.01, 0.07)]})
    assert {r["claim"] for r in rows} == {c.text for c in paper.CLAIMS}
    unmeasured = [r for r in rows if r["verdict"].startswith("not measured here")]
    assert len(unmeasured) == len(paper.CLAIMS) - 1
    positive = next(r for r in rows if r["claim"] == CLAIMS["positive_only"].text)
    assert "aift.objective: sft_positive" in positive["verdict"]

"""The findings table's verdicts come from the paired interval or a test, never from the point estimate."""
import pytest

from selfreward import paper
from selfreward.evaluation import findings
from selfreward.evaluation import estimates
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


def test_a_likeness_holds_only_inside_its_margin():
    """Equivalence by two one-sided tests: the 90% interval inside ±margin (5 points), never merely covering 0."""
    same = CLAIMS["eft_like_ift"]
    tight = difference(0.005, -0.02, 0.03, mde=0.03, claim="eft_like_ift")  # SE ~1.1 points: 90% within ±2.3
    assert findings.verdict(same, tight) == "holds (within ±5 points)"
    # the two cases: an interval that covers 0 but is wide is no evidence of equivalence
    assert findings.verdict(same, difference(0.10, -0.01, 0.21, mde=0.16, claim="eft_like_ift")) == "not shown equal"
    assert findings.verdict(same, difference(0.0, -0.30, 0.30, mde=0.43, claim="eft_like_ift")) == "not shown equal"
    assert findings.verdict(same, difference(0.08, 0.03, 0.13, claim="eft_like_ift")) == "not shown equal"
    ratings = Difference("MT-Bench score", "sft_baseline", "m1", Estimate(0.1, -0.2, 0.4, n=80, mde=0.4),
                         unit="rating (1-10)", scale=1.0, span=9.0, claim="eft_like_ift")
    assert findings.verdict(same, ratings) == "holds (within ±0.5 rating (1-10))"


def test_an_equivalence_claim_without_a_margin_is_refused():
    with pytest.raises(paper.ClaimError, match="claim x: an equivalence claim needs a margin"):
        paper.Claim("x", "X ≈ Y", "", "same")
    with pytest.raises(paper.ClaimError, match="no equivalence margin for a difference in 'characters'"):
        CLAIMS["eft_like_ift"].margin("characters")


def test_holm_adjusts_every_row_but_the_primary_findings():
    assert estimates.holm([0.01, None, 0.04, 0.03])[1] is None
    assert estimates.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # a difference with p ~0.03 holds alone, but not among four others in the family
    weak = difference(0.04, 0.004, 0.076, mde=0.051)  # SE 1.8 points: p ~0.03
    assert 0.02 < estimates.p_value(weak.estimate) < 0.04
    assert findings.verdict(CLAIMS["rm_rises"], weak) == "holds"
    family = {"Reward modeling": [weak] + [difference(0.0, -0.03, 0.03) for _ in range(4)]}
    row = findings.rows(family)[0 + [r["claim"] for r in findings.rows(family)].index(CLAIMS["rm_rises"].text)]
    assert row["test"].startswith("Holm p ") and row["verdict"] == "not detectable at ±MDE"
    # the headline claims read by IFEval are primary: tested alone
    ifeval = Difference("IFEval prompt-level strict", "m1", "m2", Estimate(0.04, 0.004, 0.076, n=541, mde=0.051),
                        claim="m2_beats_m1")
    rows = findings.rows({"IFEval": [ifeval], "Reward modeling": family["Reward modeling"]})
    headline = next(r for r in rows if r["claim"] == CLAIMS["m2_beats_m1"].text)
    assert headline["test"] == "primary" and headline["verdict"] == "holds"


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

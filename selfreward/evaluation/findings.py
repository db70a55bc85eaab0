"""The findings table: one row per claim of the paper (`paper.CLAIMS`) and instrument, with our paired
difference (Δ [95% CI], n, MDE), a test, and a verdict read from that test, never from the point estimate:
- a claim that something rises (falls): *holds* when the difference is shown to lie above (below) 0,
  *opposite* when it is shown on the other side, else *not detectable at ±MDE*;
- a claim that two models are alike: *holds* only when the difference is shown to lie within the claim's
  margin (two one-sided tests, TOST: the 90% interval inside ±margin), else *not shown equal*: an interval
  that merely covers 0 is absence of evidence, not evidence of equivalence;
- multiplicity: the primary findings (each claim's `primary` metric: the headline claims read by IFEval) are
  tested alone at 5%; every other row is one of a family whose p-values are Holm-adjusted together, and holds
  only when its adjusted p-value is under 5% (the `test` column says which, with the p-values);
- an instrument that cannot see (judge health) says so instead of a verdict, and is left out of the family;
  an MDE over a fifth of the metric's range says the instrument is too small to see any plausible effect.
"""
from __future__ import annotations

import pandas as pd

from selfreward import paper
from selfreward.evaluation.estimates import FALLS, RISES, equivalence_p, holm, interval90, p_value
from selfreward.evaluation.instrument import Difference

HOLDS, OPPOSITE, NOT_DETECTABLE, NOT_SHOWN_EQUAL = "holds", "opposite", "not detectable at ±MDE", "not shown equal"
ALPHA = 0.05


def test_p(claim: paper.Claim, difference: Difference) -> float | None:
    """The p-value of the claim's test on this difference: TOST against the claim's margin for an equivalence,
    'no difference' (two-sided) for a direction."""
    if claim.expect == "same":
        return equivalence_p(difference.estimate, claim.margin(difference.unit) / difference.scale)
    return p_value(difference.estimate)


def is_primary(claim: paper.Claim, difference: Difference) -> bool:
    return claim.primary is not None and difference.metric == claim.primary


def verdict(claim: paper.Claim, difference: Difference, adjusted_p: float | None = None) -> str:
    """The verdict of one row: from its 95% interval (90% against the margin for an equivalence), or, for a row
    of the Holm family, from its adjusted p-value (`adjusted_p`) and the sign of its difference."""
    if difference.blind:
        return f"judge uninformative ({difference.blind})"
    e = difference.estimate
    if e is None or e.low is None or e.high is None:
        return "no interval"
    if claim.expect == "same":
        margin = claim.margin(difference.unit) / difference.scale
        if adjusted_p is not None:
            shown = adjusted_p < ALPHA
        else:
            low, high = interval90(e) or (e.low, e.high)
            shown = -margin < low and high < margin
        return f"{HOLDS} (within ±{margin * difference.scale:g} {difference.unit})" if shown else NOT_SHOWN_EQUAL
    if adjusted_p is not None:
        seen = (RISES if e.value > 0 else FALLS) if adjusted_p < ALPHA else None
    else:
        seen = RISES if e.low > 0 else FALLS if e.high < 0 else None
    expected = RISES if claim.expect == "rises" else FALLS
    text = NOT_DETECTABLE if seen is None else HOLDS if seen == expected else OPPOSITE
    if text == NOT_DETECTABLE and difference.too_coarse():
        text += f" (MDE ±{e.mde * difference.scale:.1f} {difference.unit}: too small an instrument)"
    return text


def _matched(by_instrument: dict[str, list[Difference]]) -> list[tuple[paper.Claim, str, Difference]]:
    claims = {c.id: c for c in paper.CLAIMS}
    return [(claims[d.claim], title, d) for claim in paper.CLAIMS for title, ds in by_instrument.items() for d in ds
            if d.claim == claim.id]


def rows(by_instrument: dict[str, list[Difference]]) -> list[dict]:
    """One row per (claim, instrument difference), and one 'not measured here' row per claim no instrument
    addressed. `by_instrument` maps each instrument's title to its differences."""
    matched = _matched(by_instrument)
    family = [i for i, (c, _, d) in enumerate(matched) if not is_primary(c, d) and not d.blind]
    raw = [test_p(c, d) for c, _, d in matched]
    adjusted = dict(zip(family, holm([raw[i] for i in family]), strict=True))
    found = []
    for claim in paper.CLAIMS:
        mine = [(i, title, d) for i, (c, title, d) in enumerate(matched) if c.id == claim.id]
        for i, title, d in mine:
            digits = 1 if d.scale == 100 else 2
            test = "primary" if is_primary(claim, d) else "—" if d.blind or raw[i] is None else \
                f"Holm p {adjusted[i]:.3f} (raw {raw[i]:.3f})"
            if claim.expect == "same" and not d.blind:
                test += f"; TOST ±{claim.margin(d.unit):g}"
            found.append({"claim": claim.text, "paper": claim.paper, "instrument": f"{title}: {d.metric}",
                          "comparison": d.comparison,
                          "ours: Δ [95% CI]": f"{d.estimate.format(d.scale, digits, mde=True)} {d.unit}",
                          "n": str(d.estimate.n), "seeds": d.note or "1", "MDE ±": "—" if d.estimate.mde is None
                          else f"{d.estimate.mde * d.scale:.{digits}f}", "test": test,
                          "verdict": verdict(claim, d, adjusted.get(i)), "metric": d.metric})
        if not mine:
            found.append({"claim": claim.text, "paper": claim.paper, "instrument": "—", "comparison": "—",
                          "ours: Δ [95% CI]": "—", "n": "—", "seeds": "—", "MDE ±": "—", "test": "—",
                          "verdict": f"not measured here ({claim.unmeasured or 'no instrument of this run measures it'})",
                          "metric": None})
    return found


def table(by_instrument: dict[str, list[Difference]]) -> pd.DataFrame:
    """The findings as the book shows them, four columns that fit its page: the claim, the paper's figures, ours
    (the metric, the comparison, Δ with its interval), the verdict. `details` holds the rest."""
    return pd.DataFrame([{"claim": r["claim"], "paper": r["paper"],
                          "ours": "—" if r["metric"] is None else f"{r['metric']}, {r['comparison']}: {r['ours: Δ [95% CI]']}",
                          "verdict": r["verdict"]} for r in rows(by_instrument)])


def details(by_instrument: dict[str, list[Difference]]) -> pd.DataFrame:
    """Each measured row of the findings: its instrument, comparison, n, seeds, MDE and test."""
    return pd.DataFrame([{k: r[k] for k in ("instrument", "comparison", "ours: Δ [95% CI]", "n", "seeds", "MDE ±",
                                             "test", "verdict")} for r in rows(by_instrument) if r["metric"]])


def coarse(by_instrument: dict[str, list[Difference]]) -> list[str]:
    """Lines for the differences whose MDE is over a fifth of their metric's range: said, not silent."""
    return [f"- {title}, {d.metric}, {d.comparison}: MDE ±{d.estimate.mde * d.scale:.1f} {d.unit} "
            f"(n = {d.estimate.n}) — too few items to detect any plausible effect"
            for title, ds in by_instrument.items() for d in ds if d.too_coarse()]

"""The findings table: one row per claim of the paper (`paper.CLAIMS`) and instrument, with our paired
difference (Δ [95% CI], n, MDE) and a verdict read from the interval, never from the point estimate:
- a claim that something rises (falls): *holds* when the interval lies above (below) 0, *opposite* when it
  lies on the other side, else *not detectable at ±MDE*;
- a claim that two models are alike: *holds (no difference beyond ±MDE)* when the interval covers 0,
  else *differs*;
- an instrument that cannot see (judge health) says so instead of a verdict; an MDE over a fifth of the
  metric's range says the instrument is too small to see any plausible effect.
"""
from __future__ import annotations

import pandas as pd

from selfreward import paper
from selfreward.evaluation.estimates import FALLS, RISES, UNDETECTABLE
from selfreward.evaluation.instrument import Difference

HOLDS, OPPOSITE, NOT_DETECTABLE = "holds", "opposite", "not detectable at ±MDE"


def verdict(claim: paper.Claim, difference: Difference) -> str:
    if difference.blind:
        return f"judge uninformative ({difference.blind})"
    seen = difference.direction()
    if seen is None:
        return "no interval"
    if claim.expect == "same":
        return "holds (no difference beyond ±MDE)" if seen == UNDETECTABLE else "differs"
    expected = RISES if claim.expect == "rises" else FALLS
    text = HOLDS if seen == expected else NOT_DETECTABLE if seen == UNDETECTABLE else OPPOSITE
    if text == NOT_DETECTABLE and difference.too_coarse():
        text += f" (MDE ±{difference.estimate.mde * difference.scale:.1f} {difference.unit}: too small an instrument)"
    return text


def rows(by_instrument: dict[str, list[Difference]]) -> list[dict]:
    """One row per (claim, instrument difference), and one 'not measured here' row per claim no instrument
    addressed. `by_instrument` maps each instrument's title to its differences."""
    found = []
    for claim in paper.CLAIMS:
        matched = [(title, d) for title, ds in by_instrument.items() for d in ds if d.claim == claim.id]
        for title, d in matched:
            digits = 1 if d.scale == 100 else 2
            found.append({"claim": claim.text, "paper": claim.paper, "instrument": f"{title}: {d.metric}",
                          "comparison": d.comparison,
                          "ours: Δ [95% CI]": f"{d.estimate.format(d.scale, digits, mde=True)} {d.unit}",
                          "n": str(d.estimate.n), "MDE ±": "—" if d.estimate.mde is None
                          else f"{d.estimate.mde * d.scale:.{digits}f}", "verdict": verdict(claim, d)})
        if not matched:
            found.append({"claim": claim.text, "paper": claim.paper, "instrument": "—", "comparison": "—",
                          "ours: Δ [95% CI]": "—", "n": "—", "MDE ±": "—",
                          "verdict": f"not measured here ({claim.unmeasured or 'no instrument of this run measures it'})"})
    return found


def table(by_instrument: dict[str, list[Difference]]) -> pd.DataFrame:
    return pd.DataFrame(rows(by_instrument)).set_index(["claim", "paper", "instrument"])


def coarse(by_instrument: dict[str, list[Difference]]) -> list[str]:
    """Lines for the differences whose MDE is over a fifth of their metric's range: said, not silent."""
    return [f"- {title}, {d.metric}, {d.comparison}: MDE ±{d.estimate.mde * d.scale:.1f} {d.unit} "
            f"(n = {d.estimate.n}) — too few items to detect any plausible effect"
            for title, ds in by_instrument.items() for d in ds if d.too_coarse()]

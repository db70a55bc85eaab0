"""One interval type for every estimate, and the bootstrap that makes them.

`Estimate(value, low, high, n)` is a point estimate with its 95% percentile-bootstrap interval over the
items it was computed from (prompts, reply pairs, questions); differences between two models also carry
their minimal detectable effect (`mde`). Every number the book shows with an interval is one of these,
formatted by `Estimate.format`.

A *paired* difference resamples the same items for both models (the same prompts, the same reply pairs),
so that what the two models share cancels out. Its MDE is the smallest true difference that a two-sided
test at the 5% level would detect with 80% power at this n: (1.96 + 0.84) times the bootstrap standard
error of the difference. A difference whose interval covers 0 is "no change detectable beyond ±MDE",
whatever its point estimate.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

LEVEL = 0.95
MDE_FACTOR = 1.96 + 0.8416  # z(0.975) + z(0.80): 5% two-sided, 80% power


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0  # the items it was computed from (prompts, pairs, questions)
    mde: float | None = None  # differences: the minimal detectable effect at this n
    df: int | None = None  # a t-interval's degrees of freedom (pooled over seeds); None: the bootstrap's

    def format(self, scale: float = 1.0, digits: int = 3, mde: bool = False) -> str:
        """'0.712 [0.650, 0.770]' (scale 100: percentages); '—' when there is no value."""
        if self.value is None:
            return "—"
        sign = "+" if mde and self.value > 0 else ""
        text = f"{sign}{self.value * scale:.{digits}f}"
        if self.low is not None and self.high is not None:
            text += f" [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"
        return text

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Estimate | None:
        return None if data is None else cls(**data)


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[int(q * (len(sorted_values) - 1))]


def _estimate(value: float | None, draws: list, n: int, with_mde: bool) -> Estimate:
    """The point value with the percentile interval of its bootstrap draws (and the MDE from their spread)."""
    draws = sorted(d for d in draws if d is not None)
    if value is None or len(draws) < 2:
        return Estimate(value, n=n)
    mde = None
    if with_mde:
        average = sum(draws) / len(draws)
        mde = MDE_FACTOR * math.sqrt(sum((d - average) ** 2 for d in draws) / (len(draws) - 1))
    return Estimate(value, _percentile(draws, (1 - LEVEL) / 2), _percentile(draws, (1 + LEVEL) / 2), n, mde)


def _resampled(n: int, statistics: Callable[[list[int]], dict], samples: int, seed: int) -> tuple[dict, dict]:
    """statistics(indices) on all n items and on `samples` bootstrap resamples of them: (point, draws)."""
    point = statistics(list(range(n)))
    rng = random.Random(seed)
    draws: dict[str, list] = {k: [] for k in point}
    for _ in range(samples if n else 0):
        resampled = statistics([rng.randrange(n) for _ in range(n)])
        for key in draws:
            draws[key].append(resampled[key])
    return point, draws


def bootstrap_many(items: Sequence, statistics: Callable[[Sequence], dict], samples: int = 1000,
                   seed: int = 0, with_mde: bool = False) -> dict[str, Estimate]:
    """Every statistic that `statistics(items)` returns (a dict of floats or None), each with its bootstrap
    interval over the items (one resampling serves them all). `with_mde`: for a statistic that is itself a
    difference (wins minus losses), its MDE too."""
    point, draws = _resampled(len(items), lambda index: statistics([items[i] for i in index]), samples, seed)
    return {key: _estimate(point[key], draws[key], len(items), with_mde) for key in point}


def bootstrap(items: Sequence, statistic: Callable[[Sequence], float | None], samples: int = 1000,
              seed: int = 0, with_mde: bool = False) -> Estimate:
    """One statistic of the items with its bootstrap interval."""
    return bootstrap_many(items, lambda xs: {"s": statistic(xs)}, samples, seed, with_mde)["s"]


def mean(values: Sequence[float | None], samples: int = 1000, seed: int = 0) -> Estimate | None:
    """The mean of the readable values (None dropped) with its interval; None when nothing is readable."""
    values = [v for v in values if v is not None]
    return bootstrap(values, lambda xs: sum(xs) / len(xs), samples, seed) if values else None


def paired_many(items_a: Sequence, items_b: Sequence, statistics: Callable[[Sequence], dict],
                samples: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """statistic(B) - statistic(A) for every statistic, on the same items resampled together: item i of A
    and item i of B are the same prompt (pair, question) measured on two models. With its MDE."""
    if len(items_a) != len(items_b):
        raise ValueError(f"paired items differ in number: {len(items_a)} and {len(items_b)}")

    def difference(index):
        sa, sb = statistics([items_a[i] for i in index]), statistics([items_b[i] for i in index])
        return {k: None if sa[k] is None or sb[k] is None else sb[k] - sa[k] for k in sa}

    point, draws = _resampled(len(items_a), difference, samples, seed)
    return {key: _estimate(point[key], draws[key], len(items_a), True) for key in point}


def paired(items_a: Sequence, items_b: Sequence, statistic: Callable[[Sequence], float | None],
           samples: int = 1000, seed: int = 0) -> Estimate:
    """statistic(B) - statistic(A) on the same items, with its paired interval and MDE."""
    return paired_many(items_a, items_b, lambda xs: {"s": statistic(xs)}, samples, seed)["s"]


def mean_of(xs: Sequence[float | None]) -> float | None:
    """The mean of the readable values, None when there is none (a statistic for `paired`)."""
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


RISES, FALLS, UNDETECTABLE = "rises", "falls", "no change detectable beyond ±MDE"


def direction(difference: Estimate) -> str | None:
    """What the interval says: rises (all above 0), falls (all below), or no change detectable beyond ±MDE
    (it covers 0), never from the point estimate alone; None without an interval."""
    if difference is None or difference.low is None or difference.high is None:
        return None
    if difference.low > 0:
        return RISES
    if difference.high < 0:
        return FALLS
    return UNDETECTABLE


# ---------------------------------------------------------------- tests on a difference
# p-values from the normal approximation with the bootstrap's standard error (the MDE over MDE_FACTOR): the
# intervals stay percentile intervals; the p-values serve the multiplicity adjustment (Holm) and equivalence.

def _cdf(z: float, df: int | None) -> float:
    """The standard normal's CDF, or Student's t with `df` degrees of freedom."""
    if df is None:
        return 0.5 * math.erfc(-z / math.sqrt(2))
    from scipy.stats import t

    return float(t.cdf(z, df))


def quantile(q: float, df: int | None = None) -> float:
    if df is None:
        from statistics import NormalDist

        return NormalDist().inv_cdf(q)
    from scipy.stats import t

    return float(t.ppf(q, df))


def mde_factor(df: int | None = None) -> float:
    """How many standard errors make the MDE: z(0.975) + z(0.80), or the t quantiles with `df`."""
    return MDE_FACTOR if df is None else quantile(0.975, df) + quantile(0.80, df)


def standard_error(difference: Estimate) -> float | None:
    return None if difference is None or difference.mde is None else difference.mde / mde_factor(difference.df)


def p_value(difference: Estimate) -> float | None:
    """Two-sided p-value of 'no difference' (normal approximation, or t with the estimate's df)."""
    se = standard_error(difference)
    if se is None or difference.value is None:
        return None
    if se == 0:
        return 1.0 if difference.value == 0 else 0.0
    return min(1.0, 2 * _cdf(-abs(difference.value) / se, difference.df))


def equivalence_p(difference: Estimate, margin: float) -> float | None:
    """Two one-sided tests (TOST) of |difference| >= margin (in the estimate's own units): the larger of the
    two one-sided p-values. Below 0.05 exactly when the 90% interval lies inside ±margin."""
    se = standard_error(difference)
    if se is None or difference.value is None:
        return None
    if se == 0:
        return 0.0 if abs(difference.value) < margin else 1.0
    return max(_cdf(-(difference.value + margin) / se, difference.df),
               _cdf((difference.value - margin) / se, difference.df))


def interval90(difference: Estimate) -> tuple[float, float] | None:
    """The 90% interval of the normal (or t) approximation: the interval TOST at 5% reads."""
    se = standard_error(difference)
    if se is None or difference.value is None:
        return None
    half = quantile(0.95, difference.df) * se
    return difference.value - half, difference.value + half


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error), in the given order; None stays None."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[i] = running
    return adjusted

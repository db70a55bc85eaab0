"""Seeds as a dimension of a run: every instrument's paired differences read in each seed's chain, and one
pooled estimate per difference whose interval includes the variation between chains.

A run with `seeds: [s0, s1, ...]` trains its chain once per seed (training order, dropout, EFT judgments,
prompts, candidates), with the data split and the evaluation items fixed: the run's folder holds the first
seed's chain, seeds/seed_<s>/ the others (`run.pipeline.run`). Each seed's difference Δ_s already carries both
sources of noise a re-run meets, the sampling of items and the training of the chain, but the seeds share
the evaluation items, so the items' sampling is common to every Δ_s and the spread between seeds does not
hold it (three seeds that score the same 256 IFEval prompts alike would give an interval of width 0). The
pooled estimate is their mean with variance sd(Δ_s)²/k (between chains) plus the mean of the seeds' own
squared standard errors (the items: the variance of a mean of correlated estimates is at most the mean of
their variances, equal when the seeds agree item by item), read with a t quantile at Satterthwaite's degrees
of freedom (k−1 when the spread between chains dominates, normal when it vanishes). We chose it over a
hierarchical bootstrap (seeds, then items within a seed) because with 3 to 5 seeds a bootstrap over seeds
has only a handful of distinct resamples and its percentile interval is too narrow, while the t-interval is
honest about how few chains there are (its MDE uses the same t quantiles). One seed gives that seed's own
interval back unchanged.

A seed that is missing (its chain not run, or an instrument missing in it) is never pooled in silence: the
pooled difference names it in its `note`, and `missing` lists the seeds without results.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from selfreward import evaluation
from selfreward.evaluation.estimates import Estimate, mde_factor, quantile, standard_error
from selfreward.evaluation.instrument import Difference
from selfreward.io import read_json
from selfreward.rundir import RunDir


def pooled(estimates: list[Estimate]) -> Estimate:
    """The mean of per-seed differences; its interval holds the spread between seeds and the shared items'
    sampling (the module's docstring says why). One seed: its own estimate."""
    known = [e for e in estimates if e is not None and e.value is not None]
    if len(known) <= 1:
        return known[0] if known else Estimate(None)
    k = len(known)
    values = [e.value for e in known]
    mean = sum(values) / k
    between = sum((v - mean) ** 2 for v in values) / (k - 1) / k
    errors = [se for se in (standard_error(e) for e in known) if se is not None]
    items = sum(se ** 2 for se in errors) / len(errors) if errors else 0.0
    se = math.sqrt(between + items)
    df = satterthwaite_df(between, items, k)
    half = quantile(0.975, df) * se
    return Estimate(mean, mean - half, mean + half, n=min(e.n for e in known), mde=mde_factor(df) * se, df=df)


def satterthwaite_df(between: float, items: float, k: int) -> int | None:
    """Degrees of freedom of `between + items` when only `between` (from k seeds) is estimated with few df:
    at least k−1; None (the normal quantile) when the spread between seeds vanishes or the df pass 1000."""
    if between == 0:
        return None
    df = max(k - 1, int((between + items) ** 2 / (between ** 2 / (k - 1))))
    return None if df > 1000 else df


def seed_folders(run_dir) -> dict[int, RunDir]:
    """Every seed of a run with the folder of its chain: the run's own for the first, seeds/seed_<s> after."""
    root = RunDir(run_dir)
    config = read_json(root.manifest)["config"]
    seeds = config.get("seeds") or [config["seed"]]
    return {seed: root if i == 0 else RunDir(Path(root.root) / "seeds" / f"seed_{seed}") for i, seed in enumerate(seeds)}


def missing_seeds(run_dir) -> list[int]:
    """The seeds whose chain has no evaluation results (not run, or failed before its instruments)."""
    return [seed for seed, folder in seed_folders(run_dir).items()
            if not any(i.done(folder) for i in evaluation.registered())]


def measuring_seeds(run_dir) -> dict[str, list[int]]:
    """Per instrument title, the seeds whose chain's config runs it (a run may leave some instruments to its
    first seed's chain: `Config.first_seed_only`); a seed not run yet counts for every instrument."""
    from selfreward.config.loading import from_dict

    found: dict[str, list[int]] = {}
    for seed, folder in seed_folders(run_dir).items():
        cfg = from_dict(read_json(folder.manifest)["config"], str(folder.manifest)) \
            if folder.manifest.is_file() else None
        for instrument in evaluation.registered():
            if cfg is None or instrument.enabled(cfg):
                found.setdefault(instrument.title, []).append(seed)
    return found


def by_seed(run_dir, derived: bool = False) -> dict[str, dict[tuple[str, str, str], dict[int, Difference]]]:
    """Per instrument title, per difference (metric, before, after): each seed's difference, as its chain
    recorded it, or `derived` again from the chain's per-item rows (`Instrument.derive`)."""
    from selfreward.config.loading import from_dict

    found: dict[str, dict[tuple[str, str, str], dict[int, Difference]]] = {}
    for seed, folder in seed_folders(run_dir).items():
        if not folder.manifest.is_file():  # a seed not run: `missing_seeds` names it
            continue
        cfg = from_dict(read_json(folder.manifest)["config"], str(folder.manifest)) if derived else None
        for instrument in evaluation.registered():
            if not instrument.done(folder):
                continue
            for d in instrument.derive(cfg, folder) if derived else instrument.differences(folder):
                found.setdefault(instrument.title, {}).setdefault((d.metric, d.before, d.after), {})[seed] = d
    return found


def pooled_differences(run_dir, derived: bool = False) -> dict[str, list[Difference]]:
    """Per instrument title, each difference pooled over the run's seeds (`pool` of `by_seed`)."""
    return pool(by_seed(run_dir, derived), list(seed_folders(run_dir)), measuring_seeds(run_dir))


def pool(per_seed_differences: dict[str, dict[tuple[str, str, str], dict[int, Difference]]],
         seeds: list[int], measuring: dict[str, list[int]] | None = None) -> dict[str, list[Difference]]:
    """Per instrument title, each difference pooled over `seeds` (the first seed's difference with the pooled
    estimate); a seed without it named in its `note`, and a seed whose chain does not run the instrument
    (`measuring`, per title) said so; blind where any seed's judge is blind."""
    result = {}
    for title, differences in per_seed_differences.items():
        rows = []
        expected = [s for s in seeds if measuring is None or s in measuring.get(title, seeds)]
        for per_seed in differences.values():
            first = next(iter(per_seed.values()))
            lacking = [s for s in expected if s not in per_seed]
            blind = "; ".join(f"seed {s}: {d.blind}" for s, d in per_seed.items() if d.blind) if len(seeds) > 1 \
                else first.blind
            note = (f"{len(per_seed)} of {len(seeds)} seeds"
                    + (f" (missing: seed {', '.join(map(str, lacking))})" if lacking else "")
                    + ("; the other seeds' chains do not run it" if len(expected) < len(seeds) else "")) \
                if len(seeds) > 1 else None
            rows.append(dataclasses.replace(first, estimate=pooled([d.estimate for d in per_seed.values()]),
                                            blind=blind or None, note=note))
        result[title] = rows
    return result

"""Seeds as a dimension: each seed's paired difference, pooled with an interval that includes the variation
between chains; verdicts from the pooled interval; a missing seed said, never pooled in silence."""
import pytest

from selfreward import paper
from selfreward.config import load_config
from selfreward.evaluation import findings, pooling
from selfreward.evaluation.estimates import Estimate
from selfreward.evaluation.instrument import Difference
from selfreward.io import write_json

from conftest import REPO

RISES = next(c for c in paper.CLAIMS if c.id == "m2_beats_m1")


def seed_difference(value, half=0.03, n=541):
    return Estimate(value, value - half, value + half, n=n, mde=2.8 * half / 1.96)


def test_an_effect_in_one_seed_only_does_not_hold():
    one = [seed_difference(0.10), seed_difference(0.0), seed_difference(0.0)]
    assert [findings.verdict(RISES, Difference("IFEval prompt-level strict", "m1", "m2", e)) for e in one] == \
        ["holds", "not detectable at ±MDE", "not detectable at ±MDE"]
    pooled = pooling.pooled(one)
    assert pooled.value == pytest.approx(0.10 / 3) and pooled.df == 2 and pooled.low < 0 < pooled.high
    assert findings.verdict(RISES, Difference("IFEval prompt-level strict", "m1", "m2", pooled)) == \
        "not detectable at ±MDE"


def test_a_consistent_planted_shift_is_found():
    pooled = pooling.pooled([seed_difference(v) for v in (0.05, 0.055, 0.045, 0.052, 0.048)])
    assert pooled.value == pytest.approx(0.05) and 0 < pooled.low < 0.05 < pooled.high
    assert findings.verdict(RISES, Difference("IFEval prompt-level strict", "m1", "m2", pooled)) == "holds"


def test_seeds_that_agree_keep_the_interval_of_their_shared_items():
    # the seeds read the same items: identical differences still carry the items' sampling, never a width of 0
    pooled = pooling.pooled([seed_difference(0.02) for _ in range(3)])
    assert pooled.value == pytest.approx(0.02) and pooled.low == pytest.approx(0.02 - 0.03, abs=1e-3)
    assert findings.verdict(RISES, Difference("IFEval prompt-level strict", "m1", "m2", pooled)) == \
        "not detectable at ±MDE"


def test_one_seed_reduces_to_its_own_interval():
    only = seed_difference(0.02)
    assert pooling.pooled([only]) == only


def lengths_result(root, values: dict[tuple[str, str], float]):
    """An evaluation file of the lengths instrument with the given differences (answer length, in points)."""
    differences = [Difference("answers that finish", before, after, seed_difference(v), claim="m2_beats_m1").to_dict()
                   for (before, after), v in values.items()]
    write_json(root / "eval" / "lengths.json", {"prompts": 8, "max_new_tokens": 8, "models": {},
                                                 "differences": differences})


def fake_run(tmp_path, seeds, present, overrides=(), ran=()):
    """A run folder whose seeds in `present` have a lengths result, and those in `ran` a chain without one."""
    cfg = load_config(REPO / "params" / "tiny.yaml", [f"seeds={seeds}", *overrides])
    root = tmp_path / "run"
    write_json(root / "manifest.json", {"config": cfg.to_dict(), "stages": {}})
    for i, seed in enumerate(seeds):
        folder = root if i == 0 else root / "seeds" / f"seed_{seed}"
        if i and (seed in present or seed in ran):
            write_json(folder / "manifest.json", {"config": cfg.for_seed(seed).to_dict(), "stages": {}})
        if seed in present:
            lengths_result(folder, {("m1", "m2"): present[seed]})
    return root


def test_seeds_are_pooled_and_a_missing_seed_is_named(tmp_path):
    root = fake_run(tmp_path, [0, 1, 2], {0: 0.05, 1: 0.06, 2: 0.04})
    (pooled,) = pooling.pooled_differences(root)["Reply lengths"]
    assert pooled.estimate.value == pytest.approx(0.05) and pooled.estimate.df >= 2 and pooled.note == "3 of 3 seeds"
    assert set(pooling.by_seed(root)["Reply lengths"][("answers that finish", "m1", "m2")]) == {0, 1, 2}

    from selfreward.run import report

    assert report.seeds_line(root).startswith("**3 seeds** (0, 1, 2)")
    gap = fake_run(tmp_path / "gap", [0, 1, 2], {0: 0.05, 2: 0.04})
    (pooled,) = pooling.pooled_differences(gap)["Reply lengths"]
    assert pooled.note == "2 of 3 seeds (missing: seed 1)" and pooling.missing_seeds(gap) == [1]
    assert "**Missing from the pool:** seed 1" in report.seeds_line(gap)
    (figure,) = report.forest_plots(gap)  # one panel: seed 0, seed 2, pooled
    (panel, *_) = figure.axes
    assert [t.get_text() for t in panel.get_yticklabels()] == ["seed 0", "seed 2", "pooled"]
    # lengths read the evaluation prompts' answers, which this run gives in the first seed's chain only
    first = fake_run(tmp_path / "first", [0, 1, 2], {0: 0.05}, ["evaluation.answers=first_seed"], ran=[1, 2])
    (pooled,) = pooling.pooled_differences(first)["Reply lengths"]
    assert pooled.note == "1 of 3 seeds; the other seeds' chains do not run it" and pooled.estimate.df is None


def test_a_seed_config_keeps_the_runs_items_and_changes_its_chain():
    cfg = load_config(REPO / "params" / "tiny.yaml", ["seeds=[3,4]"])
    assert cfg.seed == 3 and cfg.chain_seeds == [3, 4] and cfg.item_seed == 3
    other = cfg.for_seed(4)
    assert (other.seed, other.item_seed, other.name, other.seeds) == (4, 3, "seed_4", None)
    # M0's IFEval answers and the ablation's variants: the first seed's chain only
    assert cfg.evaluation.ifeval_floor and not other.evaluation.ifeval_floor and other.ablation.variants == {}
    from selfreward.run.pipeline import seed_overrides

    rebuilt = load_config(REPO / "params" / "tiny.yaml", seed_overrides(cfg, ["seeds=[3,4]"], 4))
    assert rebuilt == other  # what a seed's stage notebook rebuilds from the params file
    from selfreward.run import manifest
    from selfreward.run.stages import plan

    mine, theirs = manifest.fingerprints(cfg, plan(cfg)), manifest.fingerprints(other, plan(other))
    assert mine["data"] == theirs["data"] and mine["sft_baseline"] != theirs["sft_baseline"]


def test_answers_in_the_first_seed_only_leave_the_later_chains_without_them():
    """`evaluation.answers: first_seed`: the evaluation prompts are answered and read (head to head, lengths, ...)
    in the first seed's chain only; the option decides which stages exist, so the first chain's stages keep
    their fingerprints."""
    from selfreward.run import manifest
    from selfreward.run.pipeline import seed_overrides
    from selfreward.run.stages import plan

    cfg = load_config(REPO / "params" / "tiny.yaml", ["seeds=[3,4]"])
    first = load_config(REPO / "params" / "tiny.yaml", ["seeds=[3,4]", "evaluation.answers=first_seed"])
    assert manifest.fingerprints(cfg, plan(cfg)) == manifest.fingerprints(first, plan(first))
    other = first.for_seed(4)
    assert other.evaluation.answers == "off"
    assert load_config(REPO / "params" / "tiny.yaml", seed_overrides(first, ["seeds=[3,4]"], 4)) == other
    names = {s.name for s in plan(other)}
    assert {"responses", "head_to_head", "lengths"} <= {s.name for s in plan(first)}
    assert not names & {"responses", "head_to_head", "reference", "lengths", "mt_bench"}
    assert {"ifeval", "reward_model", "human_preference"} <= names


@pytest.mark.parametrize("seeds,message", [("[]", "seeds: is empty"), ("[1,1]", "seeds: seed 1 is listed twice"),
                                           ("[1,x]", "seeds: expected a list of integers")])
def test_bad_seeds_are_one_line(seeds, message):
    from selfreward.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "params" / "tiny.yaml", [f"seeds={seeds}"])

"""Each small-model fix checked on constructed data where the answer is known, and the ablation end to end."""
import json
import shutil

import pytest
import torch

from conftest import REPO, run_cli
from selfreward.config import AIFTConfig, ConfigError, build, load_config
from selfreward.method import fixes
from selfreward.method.fixes.anchored import anchored
from selfreward.method.fixes.consistency import consistency_weight
from selfreward.method.fixes.implicit_reward import implicit_rewards
from selfreward.method.fixes.length_control import length_controlled
from selfreward.method.fixes.meta_judge import judge_pairs, meta_items, meta_preference
from selfreward.method.self_instruction import best_and_worst
from selfreward.method.lean import dpo_loss


def aift(**options) -> AIFTConfig:
    """An `aift` section with these small-model fix options, as a params file would set them."""
    return build(AIFTConfig, options, "aift")


def candidate(response, score, previous=None, finished=True):
    found = {"response": response, "score": score, "finished": finished}
    if previous is not None:
        found["previous_score"] = previous
    return found


def test_length_control_chooses_the_shortest_near_the_best_and_rejects_the_longest_near_the_worst():
    scored = [candidate("a long but excellent answer", 4.6), candidate("short, good", 4.3),
              candidate("medium answer", 3.0), candidate("bad", 1.2), candidate("a very long bad answer", 1.5)]
    chosen, rejected = length_controlled(scored, rho=0.5)
    assert chosen["response"] == "short, good" and rejected["response"] == "a very long bad answer"
    chosen, rejected = length_controlled(scored, rho=0.0)  # rho 0: the paper's best and worst
    assert (chosen["score"], rejected["score"]) == (4.6, 1.2)
    # a rho so wide that the shortest "best" scores below the longest "worst": no pair comes of it
    record = {"prompt": "p", "candidates": [candidate("x", 3.0), candidate("much longer", 3.1)]}
    assert fixes.pairs_from([record], aift(length_rho=5)) == []
    assert length_controlled([candidate("only", 3.0)], rho=1) is None


def test_anchored_rejection_takes_the_anchor_models_worst():
    chosen, rejected = anchored([candidate("mine, good", 4.0), candidate("mine, poor", 2.0)],
                                         [candidate("base, odd", 1.5), candidate("base, fair", 3.0)])
    assert chosen["response"] == "mine, good" and rejected["response"] == "base, odd"
    assert anchored([candidate("mine", 4.0)], []) is None
    # an anchor whose candidates were all cut by the limit (Gemma-3-270M base): no pair, and the error says why
    records = [{"prompt": "p", "candidates": [candidate("mine", 4.0)],
                "anchor_candidates": [candidate("rambles on", 1.0, finished=False)] * 4}]
    assert fixes.pairs_from(records, aift(anchor="base")) == []
    assert fixes.no_pair_reason(records, aift(anchor="base"), 256) == (
        "no usable preference pair from 1 prompts (of the anchor base's 4 candidates, 0 finished with a score; "
        "a candidate cut at 256 tokens enters no pair)")
    assert fixes.no_pair_reason(records, aift(), 256) == "no usable preference pair from 1 prompts"


def test_consistency_weight_is_the_rankings_kendall_tau_mapped_to_0_1():
    assert consistency_weight([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0  # the same order
    assert consistency_weight([1, 2, 3, 4], [4, 3, 2, 1]) == 0.0  # reversed
    # one swap among 4: 5 concordant, 1 discordant pairs, tau = 4/6
    assert consistency_weight([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx((4 / 6 + 1) / 2)
    assert consistency_weight([2, 2, 2], [1, 2, 3]) == 0.5  # no ranking: tau 0


def test_pairs_follow_the_section_and_carry_consistency_weights():
    records = [{"prompt": "p", "candidates": [candidate("best", 4.0, previous=3.0), candidate("mid", 3.0, previous=4.0),
                                              candidate("worst", 1.0, previous=1.0),
                                              candidate("cut", 5.0, previous=5.0, finished=False)]},
               {"prompt": "tied", "candidates": [candidate("x", 3.0), candidate("y", 3.0)]}]
    paper = fixes.pairs_from(records, aift())
    assert [(p["chosen"], p["rejected"]) for p in paper] == [("best", "worst")] and "weight" not in paper[0]
    weighted = fixes.pairs_from(records, aift(consistency=True))
    # current order best > mid > worst, previous mid > best > worst: tau = 1/3 over the usable three
    assert weighted[0]["weight"] == pytest.approx((1 / 3 + 1) / 2)


def test_implicit_rewards_rank_by_the_log_ratio_to_the_reference():
    rewards = implicit_rewards([-10.0, -12.0, -30.0], [-11.0, -20.0, -25.0])
    assert rewards == [1.0, 8.0, -5.0]
    scored = [candidate(r, s) for r, s in zip(["a", "b", "c"], rewards, strict=True)]
    chosen, rejected = best_and_worst(scored)
    assert (chosen["response"], rejected["response"]) == ("b", "c")


def test_meta_judge_pairs_from_both_orders():
    assert meta_preference(0.8, 0.3) == "a"  # a preferred in both orders
    assert meta_preference(0.9, 0.9) is None  # always the first slot: a tie, no pair
    assert meta_preference(0.4, 0.7) == "b" and meta_preference(None, 0.5) is None
    records = [{"prompt": "Name a prime.", "candidates": [
        {"response": "Seven.", "score": 4.0, "finished": True,
         "judge": {"judgments": [{"text": "Correct and direct.", "score": 4.6},
                                 {"text": "Unclear.", "score": 2.2}]}},
        {"response": "Nine.", "score": 3.0, "finished": True,
         "judge": {"judgments": [{"text": "Same.", "score": 3.0}, {"text": "Same again.", "score": 3.0}]}}]}]
    items = meta_items(records)
    assert len(items) == 1 and items[0]["a"]["score"] == 4.6  # the second reply's judgments agree: nothing to compare
    (made,) = judge_pairs(items, ["a"], "additive")
    assert made["chosen"] == "Correct and direct.\nScore: 5" and made["rejected"] == "Unclear.\nScore: 2"
    assert "<response>Seven.</response>" in made["prompt"] and made["judge_pair"]
    assert judge_pairs(items, [None], "additive") == []


def test_a_weighted_dpo_loss_mixes_the_pair_and_its_reverse():
    policy, reference = torch.tensor([-1.0, -3.0, -2.0, -1.0]), torch.tensor([-2.0, -2.0, -2.0, -2.0])
    plain, _ = dpo_loss(policy, reference, 0.1)
    assert dpo_loss(policy, reference, 0.1, torch.ones(2))[0] == pytest.approx(plain.item())
    flipped = torch.cat([policy[2:], policy[:2]])  # rejected first: the reverse pairs
    assert dpo_loss(policy, reference, 0.1, torch.zeros(2))[0] == pytest.approx(dpo_loss(flipped, reference, 0.1)[0].item())
    half = dpo_loss(policy, reference, 0.1, torch.full((2,), 0.5))[0]
    assert half == pytest.approx(0.5 * (plain + dpo_loss(flipped, reference, 0.1)[0]).item())


def test_pair_weights_reach_the_trainers_loss(tiny_model_dir, tmp_path):
    """Weight 0 on every pair trains as the reversed pairs with weight 1, and not as weight 1 does. (The losses
    cannot tell: a pair and its reverse start at log 2 and fall alike; the margins and the weights can.)"""
    from safetensors.torch import load_file

    from selfreward.config import DPOConfig, ModelConfig
    from selfreward.method.training import dpo

    model = ModelConfig(spec="tiny", dtype="float32", finetune="full", device="cpu")
    cfg = DPOConfig(max_steps=2, batch_size=2, per_device_batch_size=2, max_length=64, dropout=0.0,
                    learning_rate=1e-3)
    pairs = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": "No."} for i in range(4)]
    dpo(tiny_model_dir, tmp_path / "zero", [{**p, "weight": 0.0} for p in pairs], cfg, model)
    dpo(tiny_model_dir, tmp_path / "one", [{**p, "weight": 1.0} for p in pairs], cfg, model)
    dpo(tiny_model_dir, tmp_path / "reversed", [{**p, "chosen": p["rejected"], "rejected": p["chosen"], "weight": 1.0}
                                                for p in pairs], cfg, model)

    def margins(name):
        state = json.loads((tmp_path / name / "trainer_state.json").read_text())
        return [h["rewards/margins"] for h in state["log_history"] if "rewards/margins" in h]

    def weights(name):
        return load_file(tmp_path / name / "model.safetensors")

    assert margins("one")[-1] > 0 > margins("zero")[-1]  # weight 0 learns the reverse preference
    assert margins("zero")[-1] == pytest.approx(-margins("reversed")[-1], rel=1e-4)
    zero, one, reversed_ = weights("zero"), weights("one"), weights("reversed")
    assert any(not torch.equal(zero[k], one[k]) for k in zero)
    assert all(torch.allclose(zero[k], reversed_[k], atol=1e-6) for k in zero)


@pytest.mark.parametrize("override,message", [
    ("aift.consistency=true", "aift.consistency: needs the previous model's ranking"),
    ("aift.length_rho=6", r"aift.length_rho: must be in \[0, 5\]"),
    ("aift.length_rho=-1", r"aift.length_rho: must be in \[0, 5\]"),
    ("ablation.variants={late: {consistency: true}}", "ablation.variants.late.consistency: needs the previous model"),
    ("ablation.variants={x: {start: m3}}", "ablation.variants.x.start: must be a model with an iteration from it: m1, m2"),
    ("ablation.variants={x: {anchor: nobody}}", "ablation.variants.x.anchor: unknown model 'nobody'"),
])
def test_options_that_cannot_work_are_one_line_errors_on_load(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        fixes.check(load_config(REPO / "params" / "tiny.yaml", [override]))
    assert "\n" not in str(err.value)


def test_a_bad_variant_is_refused_before_any_stage_runs(tmp_path):
    result = run_cli(tmp_path / "runs", tmp_path / "cache", "--set", "ablation.variants={late: {consistency: true}}")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("selfreward: error: ")
    assert "ablation.variants.late.consistency: needs the previous model's ranking" in last
    assert not (tmp_path / "runs" / "tiny").exists()


def test_the_variant_options_are_fingerprinted_only_when_set():
    """An option at the paper's default keeps every earlier run's fingerprints; set, it changes them."""
    from selfreward.config.schema import _plain

    paper = load_config(REPO / "params" / "tiny.yaml")
    assert "reward" not in _plain(paper.aift) and "objective" in _plain(paper.aift)
    assert load_config(REPO / "params" / "tiny.yaml", ["aift.reward=implicit"]).section_hash("aift") != \
        paper.section_hash("aift")


# (the tiny judge's scores differ by hundredths: a rho of 0.5 would leave no pair; the anchor is M1, as in
# params/cpu-ablation.yaml: the random-init M0 rarely ends a candidate, and a cut one enters no pair)
VARIANTS = ("ablation.variants={implicit: {reward: implicit}, length: {length_rho: 0.0005}, meta: {meta_judge: true}, "
            "anchored: {anchor: m1, start: m2}, consistency: {consistency: true, start: m2}, toy: {toy_runner_up: true}}")

TOY_FIX = '''
"""A toy small-model fix, in one module outside the package: a close pair, the best-scored usable candidate
chosen and the next best rejected (the recipe rejects the worst)."""
from selfreward.method.fixes import Fix, Option, register


@register
class RunnerUp(Fix):
    name = "toy_runner_up"
    options = {"toy_runner_up": Option(False, bool)}
    rule = "the best-scored usable candidate is chosen, the next best rejected"
    chooses = True

    def choose(self, scored, record, section):
        ordered = sorted(scored, key=lambda c: -c["score"])
        return (ordered[0], ordered[1]) if len(ordered) >= 2 else None
'''

TOY_INSTRUMENT = '''
"""A toy instrument that measures one model at a time, in one module outside the package: the share of a
model's answers to the evaluation prompts that hold a digit. It joins the ablation by its hooks alone."""
from selfreward.evaluation import register, responses
from selfreward.evaluation.estimates import mean, mean_of, paired
from selfreward.evaluation.instrument import Difference, Instrument
from selfreward.io import write_json


@register
class Digits(Instrument):
    name = "toy_digits"
    title = "Toy: answers with a digit"
    description = "How often each model's answer holds a digit."
    order = 99

    def measure(self, cfg, run, model, backend, chat):
        return [{"digit": float(any(ch.isdigit() for ch in r["response"]))}
                for r in responses.answers(cfg, run, model, backend, chat)]

    def compare(self, cfg, before, after, names):
        return [Difference("answers with a digit", *names, paired([r["digit"] for r in before],
                                                                  [r["digit"] for r in after], mean_of, 100, 0))]

    def run(self, cfg, run):
        rows, tokens = self.measure_models(cfg, run, self.models(cfg))
        write_json(self.file(run), {"models": {n: mean([r["digit"] for r in r_]).to_dict() for n, r_ in rows.items()}})
        return {"tokens_generated": tokens}
'''


def plugins(folder) -> dict:
    """The toy fix and the toy per-model instrument as plugins outside the package, and the environment naming them."""
    folder.mkdir(exist_ok=True)
    (folder / "toy_fix.py").write_text(TOY_FIX)
    (folder / "toy_per_model.py").write_text(TOY_INSTRUMENT)
    return {"SELFREWARD_FIXES": "toy_fix", "SELFREWARD_INSTRUMENTS": "toy_per_model", "PYTHONPATH": str(folder)}


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


@pytest.mark.slow
def test_every_aift_option_shapes_a_whole_runs_pairs_as_its_rule_says(tiny_run, tmp_path):
    """Each fix switched on for a whole run (`--set aift.X=...`), on iteration 1 of the tiny run: the same candidates
    as the paper's recipe, and pairs that follow the fix's rule on them (the rules are the ablation's own)."""
    root, _, _ = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    recipe_dir, aift_dir = root / "runs" / "tiny" / "aift" / "m1", out / "tiny" / "aift" / "m1"
    recipe = rows(recipe_dir / "pairs.jsonl")
    env = plugins(tmp_path / "plugins")
    for option in ("length_rho=0.002", "anchor=m1", "reward=implicit", "meta_judge=true", "toy_runner_up=true"):
        result = run_cli(out, root / "cache", "--set", f"aift.{option}", "--only", "iteration_1", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert rows(aift_dir / "candidates.jsonl") == rows(recipe_dir / "candidates.jsonl"), option  # the same ones
        prepared, made = rows(aift_dir / "prepared.jsonl"), rows(aift_dir / "pairs.jsonl")
        answers, judge_pairs = [p for p in made if not p.get("judge_pair")], [p for p in made if p.get("judge_pair")]
        key, value = option.split("=")
        if key == "toy_runner_up":  # the plugin's rule, written out here
            expected = []
            for record in prepared:
                usable = sorted((c for c in record["candidates"] if c["score"] is not None and c["finished"]
                                 and c["response"].strip()), key=lambda c: -c["score"])
                if len(usable) >= 2 and usable[0]["score"] > usable[1]["score"]:
                    expected.append((record["prompt"], usable[0]["response"], usable[1]["response"]))
            assert [(p["prompt"], p["chosen"], p["rejected"]) for p in answers] == expected
        else:
            assert answers == fixes.pairs_from(prepared, aift(**{key: __import__("yaml").safe_load(value)})), option
        manifest = json.loads((out / "tiny" / "manifest.json").read_text())
        counts = manifest["stages"]["iteration_1"]["counts"]
        assert counts["pairs"] == len(answers) and counts["judge_pairs"] == len(judge_pairs), option
        assert manifest["stages"]["iteration_1"]["config"]["aift"][key] == __import__("yaml").safe_load(value)
        if key == "reward":  # ranked by the implicit reward, the judge's score kept beside it
            assert all(c["judge_score"] is not None for r in prepared for c in r["candidates"])
            assert answers != recipe
        if key == "anchor":  # every rejected reply is one of M1's own candidates for the prompt
            anchors = {r["prompt"]: {c["response"] for c in r["anchor_candidates"]} for r in prepared}
            assert answers and all(p["rejected"] in anchors[p["prompt"]] for p in answers)
        if key == "meta_judge":  # the answer pairs are the recipe's; judge pairs come beside them
            assert answers == recipe and counts["meta_judgments"] >= len(judge_pairs)
        if key == "length_rho":
            assert answers != recipe


def test_a_toy_fix_from_outside_the_package_is_one_class(tmp_path, monkeypatch):
    """A fix plugin registers by SELFREWARD_FIXES, its option is a key of `aift`, and its rule picks the pairs;
    a plugin that is missing is one line naming it."""
    import sys

    env = plugins(tmp_path)
    monkeypatch.setenv("SELFREWARD_FIXES", env["SELFREWARD_FIXES"])
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(REPO / "params" / "tiny.yaml", ["aift.toy_runner_up=true"])
    fixes.check(cfg)
    assert [f.name for f in fixes.on(cfg.aift)] == ["toy_runner_up"]
    records = [{"prompt": "p", "candidates": [candidate("a long and good answer", 4.0), candidate("short", 1.0),
                                              candidate("mid answer", 2.0)]}]
    (made,) = fixes.pairs_from(records, cfg.aift)
    assert (made["chosen"], made["rejected"]) == ("a long and good answer", "mid answer")
    monkeypatch.setenv("SELFREWARD_FIXES", "no_such_fix_module")
    with pytest.raises(ConfigError, match=r"^SELFREWARD_FIXES: plugin module 'no_such_fix_module' cannot be imported "
                                          r"\(ModuleNotFoundError: No module named 'no_such_fix_module'\)$"):
        fixes.check(cfg)
    sys.modules.pop("toy_fix", None)


@pytest.mark.slow
def test_the_ablation_runs_every_variant_from_the_same_models_and_compares_them(tiny_run, tmp_path):
    root, _, _ = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    result = run_cli(out, root / "cache", "--set", VARIANTS, env=plugins(tmp_path / "plugins"))
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("iteration_2", "responses", "head_to_head", "reward_model", "human_preference"):
        assert f"[{stage}] unchanged, skipped" in result.stdout  # the run's own stages are reused as they are
    run = out / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    for name in ("implicit", "length", "meta", "anchored", "consistency", "toy"):
        assert manifest["stages"][f"variant_{name}"]["status"] == "done"
        assert (run / "models" / f"variant_{name}" / "config.json").is_file()
    assert manifest["stages"]["variant_consistency"]["counts"]["start"] == "m2"
    pairs = [json.loads(line) for line in (run / "aift" / "variant_consistency" / "pairs.jsonl").open()]
    assert all(0 <= p["weight"] <= 1 for p in pairs)
    implicit = [json.loads(line) for line in (run / "aift" / "variant_implicit" / "prepared.jsonl").open()]
    assert all("judge_score" in c for r in implicit for c in r["candidates"])
    ablation = json.loads((run / "eval" / "ablation.json").read_text())
    assert set(ablation["variants"]) == {"implicit", "length", "meta", "anchored", "consistency", "toy"}
    assert ablation["variants"]["toy"]["fixes"] == ["toy_runner_up"]
    assert ablation["variants"]["consistency"]["recipe"] == "m3" and ablation["variants"]["implicit"]["recipe"] == "m2"
    # every per-model instrument's differences (reward model, IFEval's four, judge-free, length and finished
    # answers, and the toy plugin's, which joined by its hooks alone) and the usable pairs, for each of six variants
    assert ablation["instruments"] == ["reward_model", "ifeval", "human_preference", "lengths", "toy_digits"]
    assert len(ablation["differences"]) == 6 * 10
    assert {d["metric"] for d in ablation["differences"]} >= {"answers with a digit", "prompts with a usable pair"}
    assert all(d["estimate"]["n"] > 0 for d in ablation["differences"])
    results = (run / "book" / "_build" / "html" / "run" / "results.html").read_text()
    assert "Ablation: the small-model fixes" in results and "helps" in results
    chapter = (run / "book" / "_build" / "html" / "run" / "variant_meta.html").read_text()
    assert "Ablation variant meta" in chapter and "judge pair" in chapter


def test_a_variant_model_equal_to_the_recipes_is_recognised(tmp_path):
    """The instrument would read such a variant as exactly 'no difference'; it must say what it is instead."""
    from selfreward.evaluation.instruments.ablation import same_weights

    for name, data in (("recipe", b"weights"), ("copy", b"weights"), ("other", b"weightz"), ("empty", None)):
        (tmp_path / name).mkdir()
        if data is not None:
            (tmp_path / name / "model.safetensors").write_bytes(data)
    assert same_weights(tmp_path / "copy", tmp_path / "recipe")
    assert not same_weights(tmp_path / "other", tmp_path / "recipe")
    assert not same_weights(tmp_path / "empty", tmp_path / "empty")  # nothing saved: nothing to compare

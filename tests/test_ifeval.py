"""IFEval by program (`evaluation.verifiable`, the reference checkers) and the reward-model judge, on
hand-written answers and tiny models built here."""
import json
import math

import pytest

from selfreward.evaluation import verifiable
from selfreward.evaluation.instruments.ifeval import accuracies, by_kind


def row(kinds, kwargs, prompt="Write something.", key=1):
    return {"key": key, "prompt": prompt, "instruction_id_list": kinds, "kwargs": kwargs}


def test_no_commas_strict_and_loose():
    item = row(["punctuation:no_comma"], [{}])
    assert verifiable.check(item, "A plain answer without any pause marks.") == {"strict": [True], "loose": [True]}
    assert verifiable.check(item, "Well, this has one.") == {"strict": [False], "loose": [False]}
    # loose also reads the answer without its first line (a preamble the reference forgives)
    assert verifiable.check(item, "Sure, here it is:\nA plain answer.") == {"strict": [False], "loose": [True]}


def test_word_counts_endings_and_json():
    long = " ".join(["word"] * 320)
    item = row(["length_constraints:number_words", "startend:end_checker"],
               [{"relation": "at least", "num_words": 300}, {"end_phrase": "Is there anything else I can help with?"}])
    assert verifiable.check(item, long + " Is there anything else I can help with?")["strict"] == [True, True]
    assert verifiable.check(item, "too short. Is there anything else I can help with?")["strict"] == [False, True]
    assert verifiable.check(item, long)["strict"] == [True, False]
    wrapped = row(["detectable_format:json_format"], [{}])
    assert verifiable.check(wrapped, '{"answer": 42}')["strict"] == [True]
    assert verifiable.check(wrapped, "The answer is 42.")["strict"] == [False]
    # loose forgives markdown's asterisks and a closing line
    assert verifiable.check(wrapped, '{"answer": 42}\nHope this helps!') == {"strict": [False], "loose": [True]}


def test_sentences_need_punkt_from_its_package_and_no_download(monkeypatch):
    import nltk

    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("a download was attempted"))
    item = row(["length_constraints:number_sentences"], [{"relation": "less than", "num_sentences": 3}])
    assert verifiable.check(item, "One sentence. Two sentences.")["strict"] == [True]
    assert verifiable.check(item, "One. Two. Three. Four.")["strict"] == [False]
    assert (verifiable.punkt_root() / "tokenizers" / "punkt_tab" / "english" / "sent_starters.txt").is_file()


def test_an_unknown_instruction_kind_is_counted_never_a_crash():
    item = row(["punctuation:no_comma", "nobody:knows_this"], [{}, {}])
    checked = verifiable.check(item, "fine")
    assert checked == {"strict": [True, None], "loose": [True, None]}
    rows = [{"kinds": item["instruction_id_list"], **checked}]
    assert accuracies(rows)["instruction_strict"] == 1.0 and accuracies(rows)["prompt_strict"] == 1.0
    assert by_kind(rows) == {"punctuation:no_comma": (1, 1)}


def test_checks_are_the_same_every_time():
    """The reference draws a random letter for an invalid argument; seeded per prompt, a check repeats."""
    item = row(["keywords:letter_frequency"], [{"letter": "#", "let_frequency": 2, "let_relation": "at least"}], key=7)
    answers = {json.dumps(verifiable.check(item, "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2))
               for _ in range(5)}
    assert len(answers) == 1


def test_accuracy_prompt_and_instruction_level():
    rows = [{"kinds": ["a", "b"], "strict": [True, False], "loose": [True, True]},
            {"kinds": ["a"], "strict": [True], "loose": [True]}]
    found = accuracies(rows)
    assert found == {"prompt_strict": 0.5, "instruction_strict": 2 / 3, "prompt_loose": 1.0, "instruction_loose": 1.0}


def test_the_mirror_file_loads_and_a_malformed_one_is_one_line(tmp_path):
    from conftest import shared_data_dir
    from selfreward.config import DataConfig
    from selfreward.method import data

    if shared_data_dir():
        rows = data.load_ifeval(DataConfig(local_dir=shared_data_dir()))
        assert len(rows) == 541 and sum(len(r["instruction_id_list"]) for r in rows) == 834
        assert {k for r in rows for k in r["instruction_id_list"]} <= verifiable.known_kinds()
    (tmp_path / "eval").mkdir()
    (tmp_path / "oasst").mkdir()
    path = tmp_path / "eval" / "ifeval.jsonl"
    path.write_text('{"key": 1, "prompt": "x", "instruction_id_list": ["a"], "kwargs": [{}]}\n{"key": 2, "prompt"\n')
    with pytest.raises(data.DataError, match=r"ifeval.jsonl line 2: not valid JSON"):
        data.load_ifeval(DataConfig(local_dir=str(tmp_path)))
    path.write_text('{"key": 1, "prompt": "x", "instruction_id_list": ["a", "b"], "kwargs": [{}]}\n')
    with pytest.raises(data.DataError, match=r"row 1 \(key 1\): instruction_id_list and kwargs must be lists"):
        data.load_ifeval(DataConfig(local_dir=str(tmp_path)))


# ---------------------------------------------------------------- a reward model as the evaluation judge

def tiny_reward_model(folder, tiny_model_dir):
    """A tiny random sequence-classification model (one label) with the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from selfreward.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=1, num_attention_heads=2, num_labels=1,
                                                       pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_reward_judge_compares_by_reward_in_both_orders(tiny_model_dir, tmp_path):
    from selfreward.config import load_config
    from selfreward.method.evaluation_judge import JudgeError, both_orders, load_reward_judge

    from conftest import REPO

    spec = tiny_reward_model(tmp_path / "rm", tiny_model_dir)
    cfg = load_config(REPO / "params" / "tiny.yaml", ["model.dtype=float32", f"evaluation.judge_model=reward:{spec}"])
    judge = load_reward_judge(spec, cfg)
    answers = {"x": ["Paris is the capital.", "Use sorted()."], "y": ["No idea.", "Use sorted()."]}
    records = both_orders(judge, ["Capital of France?", "Sort a list?"], answers, [("x", "y")])["x vs y"]
    r_x, r_y = judge.rewards([("Capital of France?", answers["x"][0]), ("Capital of France?", answers["y"][0])])
    expected = "win" if r_x > r_y else "loss"
    assert records[0]["outcome"] == expected  # the higher reward wins, whichever slot it sat in
    assert records[1]["outcome"] == "tie"  # the same answer: the same reward
    assert records[0]["soft_preference"] == pytest.approx(1 / (1 + math.exp(r_y - r_x)))
    with pytest.raises(JudgeError, match="MT-Bench needs a generative judge"):
        judge.ratings([(["q"], ["a"])])


@pytest.mark.slow
def test_a_reward_model_judges_head_to_head_and_the_reference_on_the_tiny_run(tiny_run, tiny_model_dir, tmp_path):
    """`evaluation.judge_model: reward:<folder>`: head-to-head and the reference comparison by reward difference,
    judge health on the reward scale and its ties, no MT-Bench (it needs a generative judge); a causal LM named as
    the reward model is refused in one line before any stage."""
    import shutil

    from conftest import run_cli

    root, _, _ = tiny_run
    spec = tiny_reward_model(tmp_path / "rm", tiny_model_dir)
    out = tmp_path / "runs"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    result = run_cli(out, root / "cache", "--set", f"evaluation.judge_model=reward:{spec}", "--only", "head_to_head",
                     "--only", "reference")
    assert result.returncode == 0, result.stderr[-2000:]
    h2h = json.loads((out / "tiny" / "eval" / "head_to_head.json").read_text())
    assert h2h["judge"].startswith("reward model") and "ties within 0" in h2h["judge"]
    for comparison in h2h["comparisons"].values():
        stats = comparison["health"]["stats"]
        assert stats["first_slot_rate"] is None and 0 <= stats["tie_share"] <= 1 and stats["reward_spread"] > 0
        assert comparison["win"] + comparison["tie"] + comparison["loss"] == comparison["n"]
    reference = json.loads((out / "tiny" / "eval" / "reference.json").read_text())
    assert set(reference["models"]) == {"sft_baseline", "m1", "m2", "m3"}
    dry = run_cli(out, root / "cache", "--set", f"evaluation.judge_model=reward:{spec}", "--dry-run")
    assert "mt_bench" not in dry.stdout and "head_to_head" in dry.stdout
    refused = run_cli(tmp_path / "other", root / "cache", "--set", f"evaluation.judge_model=reward:{tiny_model_dir}")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"selfreward: error: reward model {tiny_model_dir}: not a sequence-classification model (its architectures: ")

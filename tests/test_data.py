import pytest

from selfreward.method import data
from selfreward.config import DataConfig
from conftest import message, write_mirror

TRAIN = [
    message("p1", None, "prompter", "How do plants grow?"),
    message("a1", "p1", "assistant", "With light and water.", rank=0),
    message("a2", "p1", "assistant", "Slowly.", rank=1),
    message("a3", "p1", "assistant", "Deleted reply", rank=2, deleted=True),
    message("p1b", "a1", "prompter", "A follow-up turn is not a first turn"),
    message("a4", "p1b", "assistant", "Second-turn reply", rank=0),
    message("p2", None, "prompter", "Wie spät ist es?", lang="de"),
    message("a5", "p2", "assistant", "Zehn Uhr.", rank=0, lang="de"),
    message("p3", None, "prompter", "Tell me a joke."),
    message("a6", "p3", "assistant", "Synthetic reply", rank=0, synthetic=True),
    message("a7", "p3", "assistant", "Why did the chicken cross the road?", rank=1),
    message("p4", None, "prompter", "Rejected in review", review_result=False),
    message("a8", "p4", "assistant", "Reply to a rejected prompt", rank=0),
    message("p5", None, "prompter", "Name a prime number."),
    message("a9", "p5", "assistant", "Seven.", rank=0),
    message("a10", "p5", "assistant", "Two.", rank=1),
    message("a11", "p5", "assistant", "Unranked.", rank=None),
]


def test_first_turn_threads_apply_the_papers_filters():
    threads = {t["prompt_id"]: t for t in data.first_turn_threads(TRAIN)}
    assert set(threads) == {"p1", "p3", "p5"}  # German and review-rejected prompts dropped
    assert [r["text"] for r in threads["p1"]["replies"]] == ["With light and water.", "Slowly."]
    assert [r["text"] for r in threads["p3"]["replies"]] == ["Why did the chicken cross the road?"]
    assert threads["p5"]["replies"][-1]["rank"] is None  # unranked replies sort last


def test_ift_seed_takes_rank_zero_replies():
    ift = data.ift_seed(data.first_turn_threads(TRAIN), 100, seed=0)
    assert sorted((e["prompt"], e["response"]) for e in ift) == [
        ("How do plants grow?", "With light and water."), ("Name a prime number.", "Seven.")]
    assert len(data.ift_seed(data.first_turn_threads(TRAIN), 1, seed=0)) == 1


def test_ranked_threads_need_two_ranked_replies():
    ranked = data.ranked_threads(data.first_turn_threads(TRAIN), 0, seed=0)
    assert sorted(t["prompt_id"] for t in ranked) == ["p1", "p5"]
    assert all(r["rank"] is not None for t in ranked for r in t["replies"])


def test_length_caps():
    threads = data.first_turn_threads(TRAIN, max_prompt_chars=15, max_response_chars=200)
    assert {t["prompt_id"] for t in threads} == {"p3"}  # the only prompt of at most 15 characters


def test_eval_prompts_exclude_training_prompts():
    alpaca = [{"instruction": "How do  plants GROW?", "dataset": "x", "output": "ref"},
              {"instruction": "Write a limerick.", "dataset": "y", "output": "ref2"}]
    rows = data.eval_prompts(alpaca, 10, seed=0, exclude={"How do plants grow?"})
    assert rows == [{"instruction": "Write a limerick.", "dataset": "y", "reference": "ref2",
                     "reference_generator": None}]


def test_mirror_loading_and_missing_paths(tmp_path):
    root = write_mirror(tmp_path / "mirror", TRAIN, TRAIN[:3], [{"instruction": "x", "output": "y"}])
    cfg = DataConfig(local_dir=str(root))
    assert len(data.load_oasst("train", cfg)) == len(TRAIN)
    assert data.load_alpaca_eval(cfg)[0]["instruction"] == "x"
    with pytest.raises(data.DataError, match="data path not found"):
        data.local_dir(DataConfig(local_dir=str(tmp_path / "nowhere")))
    (root / "oasst" / "validation.jsonl").unlink()
    with pytest.raises(data.DataError, match="data file not found: .*validation.jsonl"):
        data.load_oasst("validation", cfg)


def test_source_order_params_then_env_then_mirror_beside_checkout_then_hub(tmp_path, monkeypatch):
    root = write_mirror(tmp_path / "m", TRAIN, TRAIN, [])
    other = write_mirror(tmp_path / "o", TRAIN, TRAIN, [])
    monkeypatch.setenv("SELFREWARD_DATA_DIR", str(root))
    assert data.local_dir(DataConfig()) == root
    assert data.local_dir(DataConfig(local_dir=str(other))) == other
    monkeypatch.delenv("SELFREWARD_DATA_DIR")
    monkeypatch.setattr(data, "MIRROR_BESIDE_CHECKOUT", other)
    assert data.local_dir(DataConfig()) == other
    monkeypatch.setattr(data, "MIRROR_BESIDE_CHECKOUT", tmp_path / "absent")
    assert data.local_dir(DataConfig()) is None  # then the hub


def test_eft_source_and_ift_seed_never_share_a_prompt():
    threads = data.first_turn_threads(TRAIN)
    duplicate = dict(threads[0], prompt_id="copy")  # the same prompt text in another tree
    eft_source, ift = data.split_eft_ift(threads + [duplicate], eft_size=1, ift_size=100, seed=0)
    assert len(eft_source) == 1 and data.overlap(eft_source, ift) == 0 and data.overlap(ift, eft_source) == 0
    assert {e["prompt_id"] for e in ift} | {eft_source[0]["prompt_id"]} <= {"p1", "p3", "p5", "copy"}
    assert data.split_eft_ift(threads, 1, 100, seed=0) == data.split_eft_ift(threads, 1, 100, seed=0)  # seeded


def test_mt_bench_order_spreads_categories_and_reference_generator_is_checked():
    questions = [{"question_id": i, "category": c, "turns": ["q", "r"]} for i, c in enumerate("aaabbbccc")]
    order = data.mt_bench_order(questions, seed=0)
    assert sorted(q["question_id"] for q in order) == list(range(9))
    assert [q["category"] for q in order[:3]] == ["a", "b", "c"]  # any first N cover the categories evenly
    data.check_reference_generator([{"generator": "gpt4_1106_preview"}], "gpt4_1106_preview", "here")
    with pytest.raises(data.DataError, match="come from gpt4, not gpt4_1106_preview"):
        data.check_reference_generator([{"generator": "gpt4"}], "gpt4_1106_preview", "the hub")


def test_a_corrupt_data_line_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"message_id": "a", "parent_id": null, "role": "prompter", "text": "x"}\n{"message_id": \n')
    with pytest.raises(data.DataError, match=f"{path} line 2: not valid JSON"):
        data.read_jsonl_rows(path, data.OASST_FIELDS)
    path.write_text('{"message_id": "a"}\n')
    with pytest.raises(data.DataError, match="line 1: missing field 'parent_id'"):
        data.read_jsonl_rows(path, data.OASST_FIELDS)


def test_short_reply_threads_keep_or_drop_whole_prompts():
    threads = [{"prompt": "a", "replies": [{"text": "x" * 10, "rank": 0}, {"text": "y" * 30, "rank": 1}]},
               {"prompt": "b", "replies": [{"text": "x" * 10, "rank": 0}, {"text": "y" * 20, "rank": 1}]}]
    assert [t["prompt"] for t in data.short_reply_threads(threads, 20)] == ["b"]  # "a" has one long reply
    assert len(data.short_reply_threads(threads, 30)) == 2
    with pytest.raises(data.DataError, match=r"within 5 characters \(evaluation\.rm_max_reply_chars\)"):
        data.short_reply_threads(threads, 5)


def test_heldout_ranked_threads_leave_out_the_training_prompts():
    threads = data.first_turn_threads(TRAIN)
    duplicate = dict(threads[0], prompt_id="copy")  # p1's text in another tree: still a training prompt
    heldout = data.heldout_ranked_threads(threads + [duplicate], 0, seed=0, exclude=[threads[0]])
    assert [t["prompt_id"] for t in heldout] == ["p5"]  # p1 (and its copy) excluded, p3 has one ranked reply
    assert heldout[0]["split"] == "train" and [r["rank"] for r in heldout[0]["replies"]] == [0, 1]


def test_the_reward_model_set_takes_heldout_training_prompts_when_asked(tmp_path):
    from conftest import shared_data_dir
    from selfreward.config import from_dict
    from selfreward.evaluation.instruments import human_preference, reward_model
    from selfreward.io import read_jsonl
    from selfreward.method import loop
    from selfreward.rundir import RunDir

    if shared_data_dir() is None:
        pytest.skip("needs the OASST data (SELFREWARD_DATA_DIR)")
    sizes = {"local_dir": shared_data_dir(), "ift_size": 16, "eft_source_size": 8, "eval_prompts": 4}
    counts, ift = {}, {}
    for extra in (0, 40):
        run = RunDir(tmp_path / str(extra))
        counts[extra] = loop.run_data(from_dict({"data": {**sizes, "rm_train_size": extra}}), run)
        ift[extra], rm_eval = read_jsonl(run.ift), read_jsonl(run.rm_eval)
    assert counts[40]["rm_eval_prompts"] == counts[0]["rm_eval_prompts"] + 40
    assert counts[40]["rm_eval_train_prompts"] == 40 and counts[0]["rm_eval_train_prompts"] == 0
    train = [t for t in rm_eval if t["split"] == "train"]
    assert all(len(t["replies"]) >= 2 for t in train)
    assert data.overlap(train, read_jsonl(run.ift) + read_jsonl(run.eft_source)) == 0  # never trained on
    assert ift[40] == ift[0]  # the training data do not change
    # the judge-free reading keeps to the validation prompts; the reward-model reading takes both
    cfg = from_dict({"data": {**sizes, "rm_train_size": 40}})
    assert human_preference.threads(cfg, run) == [t for t in rm_eval if t["split"] == "validation"]
    assert len(reward_model.prompts(cfg, run)) == counts[40]["rm_eval_prompts"]

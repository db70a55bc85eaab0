import random

import pytest

from selfreward.method.prompts import (JUDGE_TEMPLATES, NearDuplicateIndex, check_prompt, extract_new_prompt, judge_prompt,
                                       parse_rating, parse_score, rouge_l, sample_shots, self_instruct_prompt)

JUDGE_OUTPUTS = [
    ("The response is relevant and complete.\nScore: 4", 4.0),
    ("Score: 4/5", 4.0),
    ("score: 3.5", 3.5),
    ("The answer is fine but misses details. Score: **3**", 3.0),
    ("Justification: clear and direct.\n\nScore: 5 out of 5", 5.0),
    ("Total score: 2", 2.0),
    ("Score:5", 5.0),
    ("SCORE: 1", 1.0),
    ("Score: 0. The response is empty.", 0.0),
    ("Score: 4. It could be shorter, but it answers the question.", 4.0),
    ("Score: 4\nI am confident. Score: 4", 4.0),
    ("Score: 4.0", 4.0),
    ("Score: 3 points", 3.0),
    ("The response earns four points overall.", None),  # no score line
    ("", None),
    ("Score: 3 ... on reflection, Score: 4", None),  # two different scores
    ("Score: 6", None),  # out of range
    ("Score: 56", None),  # the 270M model's favourite
    ("Score: -1", None),
    ("Score: 4/10", None),  # another scale
    ("Score: 3-4", None),  # a range
    ("Score: 2,5", None),  # decimal comma
    ("Score: <total points>", None),  # the template echoed back
    ("I would give it a 4.", None),  # no label
    ("Score: four", None),
]


@pytest.mark.parametrize("text,expected", JUDGE_OUTPUTS)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_parse_score_never_returns_zero_for_garbage():
    for text in ["Score:", "score: ???", "Score: N/A", "lorem ipsum"]:
        assert parse_score(text) is None


def test_the_cut_rule_and_eft_target_come_from_the_template():
    judge = JUDGE_TEMPLATES["additive"]
    assert judge.reasoning("Good answer.\nScore: 3 and more") == "Good answer."
    assert judge.reasoning("No score here") == "No score here"
    target = judge.target("Clear and relevant. Score: 5", 4)
    assert target == "Clear and relevant.\nScore: 4" and judge.score(target) == 4
    reading = judge.reading()  # constrained judging cuts the same way
    assert reading.kept_text("Good answer.\nScore: 3 and more") == "Good answer."
    assert reading.options == [" 0", " 1", " 2", " 3", " 4", " 5"] and reading.suffix == "\nScore:"


def test_judge_prompt_contains_question_response_and_format():
    text = judge_prompt("  What is 2+2? ", "It is 4.")
    assert "User: What is 2+2?" in text and "<response>It is 4.</response>" in text
    assert 'Score: <total points>' in text
    assert "Score: <option number>" in judge_prompt("q", "r", "multiple_choice")


def test_self_instruct_prompt_and_extraction():
    prompt = self_instruct_prompt(["First task?", "Second task?"])
    assert "Task 1: First task?" in prompt and prompt.endswith("Task 3:")
    assert extract_new_prompt(" How do volcanoes form?\n\nTask 4: other") == "How do volcanoes form?"
    assert extract_new_prompt(" Write a poem\nabout the sea.\nTask 10: x") == "Write a poem\nabout the sea."
    assert extract_new_prompt("  ") == ""
    assert extract_new_prompt(" Write a short poem about the sea.\n\nTask") == "Write a short poem about the sea."


def test_sample_shots_mixes_seed_and_generated():
    rng = random.Random(0)
    seeds = [f"seed {i}" for i in range(20)]
    shots = sample_shots(seeds, ["gen a", "gen b", "gen c"], 6, 2, rng)
    assert len(shots) == 8 and sum(s.startswith("gen") for s in shots) == 2
    early = sample_shots(seeds, [], 6, 2, rng)  # nothing generated yet: all 8 from the seed
    assert len(early) == 8 and all(s.startswith("seed") for s in early)


def test_rouge_l_known_values():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("a b c d", "e f g") == 0.0
    # LCS("a b c d", "a c d e") = 3 -> P = R = 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("", "x") == 0.0


def test_near_duplicate_index_matches_brute_force():
    rng = random.Random(1)
    vocab = "how what why write explain list code python poem the a of to in".split()
    texts = [" ".join(rng.choices(vocab, k=rng.randint(3, 9))) for _ in range(60)]
    index = NearDuplicateIndex(texts[:40], threshold=0.5)
    for text in texts[40:]:
        brute = max(rouge_l(text, other) for other in texts[:40])
        fast = index.most_similar(text)
        assert (fast >= 0.5) == (brute >= 0.5)
        if brute >= 0.5:
            assert fast == pytest.approx(brute)


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("Hi", "too_short"),
    ("word " * 200, "too_long"),
    ("12 34 56 78 90 !! ?? ## $$", "garbled"),
    ("go go go go go go go now", "repetitive"),
    ("Draw a picture of a cat for me", "keyword"),
    ("Summarise the plot of Hamlet in a paragraph", "kept"),  # whole words only
    ("Explain this. Task 9: write a poem", "template"),
    ("What is the capital city of France?", "near_duplicate"),
    ("Explain how vaccines train the immune system.", "kept"),
])
def test_check_prompt_reasons(text, reason):
    index = NearDuplicateIndex(["What is the capital city of France?"], threshold=0.7)
    assert check_prompt(text, index, min_words=3, max_words=150).reason == reason


@pytest.mark.parametrize("text,expected", [
    ("Output (a)", "a"), ("output (B) is better.", "b"), ("I prefer Output (b) because...", "b"),
    ("(a)", "a"), ("b", "b"), ("Output (a) is clear but Output (b) is better", None), ("Neither", None), ("", None),
])
def test_parse_preference(text, expected):
    from selfreward.method.prompts import parse_preference

    assert parse_preference(text) == expected


@pytest.mark.parametrize("text,rating", [
    ("The answer is fine. Rating: [[7]]", 7.0),
    ("Rating: [[ 10 ]]", 10.0),
    ("[[8.5]]", 8.5),
    ("Rating: 7", None),  # no brackets: not the asked form
    ("[[7]] ... on reflection [[6]]", None),  # two different ratings
    ("[[7]] and again [[7]]", 7.0),
    ("Rating: [[0]]", None),  # out of 1-10
    ("Rating: [[11]]", None),
    ("", None),
])
def test_parse_rating_returns_none_when_unsure(text, rating):
    assert parse_rating(text) == rating

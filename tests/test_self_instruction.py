from selfreward.config import CandidatesConfig, JudgeConfig, SelfInstructConfig
from selfreward.method.self_instruction import (candidates_and_judgments, new_prompts, positive_examples,
                                         preference_pairs)


def _record(prompt, *scored):
    return {"prompt": prompt, "candidates": [{"response": r, "score": s} for r, s in scored]}


def test_preference_pairs_take_highest_and_lowest_and_drop_ties():
    records = [
        _record("p1", ("a", 4.0), ("b", 2.0), ("c", 3.0), ("d", None)),
        _record("p2", ("a", 3.0), ("b", 3.0)),  # tie
        _record("p3", ("a", 5.0), ("b", None)),  # one scored candidate
        _record("p4", ("same", 5.0), ("same", 1.0)),  # identical texts
    ]
    assert preference_pairs(records) == [
        {"prompt": "p1", "chosen": "a", "rejected": "b", "chosen_score": 4.0, "rejected_score": 2.0}]


def test_candidates_cut_by_the_length_limit_enter_no_pair_and_no_positive():
    record = {"prompt": "p", "candidates": [{"response": "long and cut", "score": 5.0, "finished": False},
                                            {"response": "whole", "score": 4.0, "finished": True},
                                            {"response": "short", "score": 1.0, "finished": True}]}
    assert preference_pairs([record]) == [
        {"prompt": "p", "chosen": "whole", "rejected": "short", "chosen_score": 4.0, "rejected_score": 1.0}]
    assert positive_examples([record]) == []


def test_positive_examples_are_perfect_scores_only():
    records = [_record("p1", ("a", 5.0), ("b", 4.9), ("c", None))]
    assert positive_examples(records) == [{"prompt": "p1", "response": "a", "score": 5.0}]


def test_new_prompts_records_every_attempt_with_a_verdict(tiny_backend):
    backend, _ = tiny_backend
    seeds = ["What is the capital of France?", "How do I sort a list in Python?", "Write a haiku about rain."]
    cfg = SelfInstructConfig(num_prompts=6, seed_shots=2, generated_shots=1, max_new_tokens=12, min_words=1)
    records = new_prompts(backend, seeds, cfg, seed=0)
    assert len(records) == 6
    assert all(r["reason"] in {"kept", "empty", "too_short", "too_long", "garbled", "repetitive", "keyword",
                               "template", "near_duplicate"} for r in records)
    assert all(r["kept"] == (r["reason"] == "kept") for r in records)
    assert records == new_prompts(backend, seeds, cfg, seed=0)  # seeded


def test_candidates_are_saved_with_their_judgments(tiny_backend):
    backend, chat = tiny_backend
    records = candidates_and_judgments(backend, chat, ["Tell me a joke.", "Name a colour."],
                                       CandidatesConfig(n=3, max_new_tokens=8),
                                       JudgeConfig(samples=2, mode="constrained", max_new_tokens=6), seed=0)
    assert [len(r["candidates"]) for r in records] == [3, 3]
    for c in records[0]["candidates"]:
        assert len(c["judge"]["judgments"]) == 2 and c["score"] == c["judge"]["score"]

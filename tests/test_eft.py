from collections import Counter

from selfreward.eft import build_eft, rebalance
from selfreward.judging import Judgment, JudgeResult
from selfreward.prompts import parse_score


def test_rebalance_caps_the_dominant_score():
    examples = [{"score": 4}] * 80 + [{"score": 3}] * 15 + [{"score": 5}] * 5
    examples = [dict(e, i=i) for i, e in enumerate(examples)]
    kept = rebalance(examples, max_share=0.4, seed=0)
    counts = Counter(e["score"] for e in kept)
    assert counts[3] == 15 and counts[5] == 5
    assert counts[4] / len(kept) <= 0.4 and counts[4] == 13  # 0.4 * 20 / 0.6
    assert rebalance(examples, 0.4, 0) == kept  # seeded
    single = [{"score": 4}] * 5
    assert rebalance(single, 0.4, 0) == single  # nothing to balance against


def _result(*scores):
    return JudgeResult("sampled", [Judgment(f"Reason {s}.\nScore: {s}", s, s) for s in scores])


def test_build_eft_keeps_only_agreeing_prompts():
    threads = [
        {"prompt_id": "a", "prompt": "Q1", "replies": [{"text": "good", "rank": 0}, {"text": "bad", "rank": 1}]},
        {"prompt_id": "b", "prompt": "Q2", "replies": [{"text": "good", "rank": 0}, {"text": "bad", "rank": 1}]},
    ]
    results = [[_result(4, 4), _result(2, 3)], [_result(3), _result(3)]]
    rows = [{"prompt_id": t["prompt_id"], "ranks": [0, 1], "scores": [r.score for r in judged],
             "results": [r.to_dict() for r in judged]} for t, judged in zip(threads, results)]
    examples, records = build_eft(threads, rows, "additive")
    assert [r["agrees"] for r in records] == [True, False]
    assert len(examples) == 2 and {e["prompt_id"] for e in examples} == {"a"}
    assert [parse_score(e["response"]) for e in examples] == [4, 2]
    assert examples[0]["response"].endswith("Score: 4") and "<response>good</response>" in examples[0]["prompt"]

from collections import Counter

from selfreward.method.eft import build_eft, rebalance
from selfreward.method.self_judge import Judgment, JudgeResult
from selfreward.method.prompts import parse_score


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
             "results": [r.to_dict() for r in judged]} for t, judged in zip(threads, results, strict=True)]
    examples, records = build_eft(threads, rows, "additive")
    assert [r["agrees"] for r in records] == [True, False]
    assert len(examples) == 2 and {e["prompt_id"] for e in examples} == {"a"}
    assert [parse_score(e["response"]) for e in examples] == [4, 2]
    assert examples[0]["response"].endswith("Score: 4") and "<response>good</response>" in examples[0]["prompt"]


def _row(prompt_id, ranks, *judged):
    results = [JudgeResult("constrained-expectation", [Judgment(f"Reason {s}.", None, s) for s in scores])
               for scores in judged]
    return {"prompt_id": prompt_id, "ranks": ranks, "scores": [r.score for r in results],
            "results": [r.to_dict() for r in results]}


def test_written_scores_order_the_replies_as_the_humans_do():
    threads = [{"prompt_id": p, "prompt": "Q", "replies": [{"text": "good", "rank": 0}, {"text": "bad", "rank": 1}]}
               for p in ("tied", "apart", "reversed")]
    rows = [_row("tied", [0, 1], [3.4, 2.6], [2.8, 3.1]),  # means 3.0 > 2.95, but every sample rounds to 3
            _row("apart", [0, 1], [4.2, 3.1], [3.0, 3.4]),  # 4 and 3: not the nearest samples, but they agree
            _row("reversed", [0, 1], [2.0], [4.0])]
    examples, records = build_eft(threads, rows, "additive")
    assert [r["agrees"] for r in records] == [False, True, False]
    assert [(e["prompt_id"], e["rank"], e["score"]) for e in examples] == [("apart", 0, 4), ("apart", 1, 3)]
    assert records[1]["taught_scores"] == [4, 3] and examples[0]["response"].endswith("Score: 4")
    for prompt_id in {e["prompt_id"] for e in examples}:  # within every kept prompt: strict human order
        kept = sorted((e["rank"], e["score"]) for e in examples if e["prompt_id"] == prompt_id)
        assert all(a[1] > b[1] for a, b in zip(kept, kept[1:], strict=False) if a[0] < b[0])

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import itertools

import pytest

from selfreward.evaluation import (EndpointJudge, EvaluationError, LocalJudge, head_to_head,
                                   head_to_heads, human_preference, judge_health, length_split, mt_bench_scores,
                                   reply_logprobs, soft_preferences,
                                   tally)
from selfreward.metrics import mean_interval
from selfreward.generation import FastBackend


def test_tally_counts_both_orders_and_position_bias():
    # p1: X preferred in both orders = win; p2: Y in both = loss; p3: "a" twice = inconsistent = tie;
    # p4: win; p5: an unreadable verdict = tie
    result = tally(["a", "b", "a", "a", None], ["b", "a", "a", "b", "b"])
    assert result["outcomes"] == ["win", "loss", "tie", "win", "tie"]
    assert (result["win"], result["tie"], result["loss"]) == (2, 2, 1)
    assert result["win_rate"] == pytest.approx(100 * (2 + 1) / 5)
    assert result["first_slot_rate"] == pytest.approx(5 / 9) and result["unreadable_verdicts"] == 1
    assert tally([], [])["win_pct"] is None


def test_head_to_head_with_a_real_local_judge(tiny_backend):
    backend, chat = tiny_backend
    judge = LocalJudge(backend, chat, "constrained")
    result = head_to_head(judge, ["Name a colour.", "Say hi."], ["Blue.", "Hi!"], ["Seven.", "No."])
    assert result["win"] + result["tie"] + result["loss"] == 2 and len(result["records"]) == 2
    for record in result["records"]:  # the same pair judged in both orders
        assert record["forward"]["verdict"] in ("a", "b") and record["backward"]["verdict"] in ("a", "b")


def test_all_comparisons_in_one_call_equal_one_call_each(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4)
    judge = LocalJudge(fast, chat, "constrained")
    calls = []
    recording = type("Recording", (), {"verdicts": lambda self, triples: calls.append(triples) or judge.verdicts(triples)})()
    instructions = ["Name a colour.", "Say hi.", "Write a haiku about rain please"]
    responses = {"m1": ["Blue.", "Hi!", "Rain falls"], "m2": ["Seven.", "No.", "Soft rain on the roof"],
                 "reference": ["Green is a colour.", "Hello there!", "Grey clouds, green garden"]}
    pairs = [("m2", "m1"), ("m1", "reference"), ("m2", "reference")]
    together = head_to_heads(recording, instructions, responses, pairs)
    assert len(calls) == 1 and len(calls[0]) == 3 * 2 * len(instructions)
    firsts = [t[:2] for t in calls[0]]  # each instruction, and each first output in it, in one run of rows
    assert len(list(itertools.groupby(firsts))) == len(set(firsts)) == 3 * len(instructions)
    for x, y in pairs:
        alone = head_to_head(LocalJudge(backend, chat, "constrained"), instructions, responses[x], responses[y])
        records = together[f"{x} vs {y}"]["records"]
        assert [r["outcome"] for r in records] == [r["outcome"] for r in alone["records"]]
        assert [r["forward"]["p_a"] for r in records] == pytest.approx([r["forward"]["p_a"] for r in alone["records"]])


def test_local_constrained_judge_reads_a_and_b(tiny_backend):
    backend, chat = tiny_backend
    judge = LocalJudge(backend, chat, "constrained")
    verdicts = judge.verdicts([("Name a colour.", "Blue.", "Seven."), ("Name a colour.", "Seven.", "Blue.")])
    assert all(v["verdict"] in ("a", "b") and 0 <= v["p_a"] <= 1 for v in verdicts)


class _ChatCompletions(BaseHTTPRequestHandler):
    seen = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers["Authorization"], body))
        reply = {"choices": [{"message": {"content": "Output (b)"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_judge_speaks_the_openai_protocol_with_the_key_from_the_environment(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _ChatCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = EndpointJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", "TEST_JUDGE_KEY")
        monkeypatch.delenv("TEST_JUDGE_KEY", raising=False)
        with pytest.raises(EvaluationError, match="TEST_JUDGE_KEY"):
            judge.verdicts([("q", "a", "b")])
        monkeypatch.setenv("TEST_JUDGE_KEY", "secret-123")
        verdicts = judge.verdicts([("Name a colour.", "Blue.", "Seven.")])
    finally:
        server.shutdown()
    assert verdicts[0]["verdict"] == "b"
    path, auth, body = _ChatCompletions.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer secret-123"
    assert body["model"] == "judge-model" and "Output (a):\nBlue." in body["messages"][0]["content"]
    assert "secret-123" not in repr(judge)  # the key is never held by the judge object


def test_judge_health_flags_a_judge_that_answers_by_position():
    always_a = judge_health(["a"] * 10, ["a"] * 10)
    assert always_a["first_slot_rate"] == 1.0 and always_a["order_consistency"] == 0.0
    assert not always_a["informative"] and "agree on 0% of prompts" in always_a["why_not"]
    # 3 of 10 prompts consistent (just above the 25% threshold), first slot 14/20 = 70%: informative
    forward, backward = ["a"] * 3 + ["a"] * 7, ["b"] * 3 + ["a"] * 7
    fine = judge_health(forward, backward)
    assert fine["order_consistency"] == pytest.approx(0.3) and fine["first_slot_rate"] == pytest.approx(17 / 20)
    assert fine["informative"] and fine["why_not"] is None
    # 2 of 10 consistent: below the threshold
    low = judge_health(["a", "b"] + ["a"] * 8, ["b", "a"] + ["a"] * 8)
    assert low["order_consistency"] == pytest.approx(0.2) and not low["informative"]
    unreadable = judge_health([None] * 6 + ["a"] * 4, [None] * 6 + ["b"] * 4)
    assert unreadable["unreadable_share"] == pytest.approx(0.6) and not unreadable["informative"]


def test_soft_preference_averages_out_the_position_by_hand():
    # X in slot a forward (P(a) = 0.9), in slot b backward (P(a) = 0.3, so P(X) = 0.7): 1/2 (0.9 + 0.7) = 0.8
    assert soft_preferences([0.9], [0.3]) == [pytest.approx(0.8)]
    # a judge that always picks slot a, however sure: exactly 1/2
    assert soft_preferences([1.0, 0.8, 0.6], [1.0, 0.8, 0.6]) == [0.5, 0.5, 0.5]
    assert soft_preferences([None, 0.5], [0.2, None]) == [None, None]
    interval = mean_interval([0.8, 0.6, 0.7, 0.9], samples=500, seed=0)
    assert interval["value"] == pytest.approx(0.75) and interval["low"] <= 0.75 <= interval["high"]
    assert mean_interval([0.5] * 8, samples=100)["low"] == 0.5 and mean_interval([None]) is None


def test_head_to_heads_reports_the_soft_win_rate_of_a_constrained_judge(tiny_backend):
    backend, chat = tiny_backend
    judge = LocalJudge(backend, chat, "constrained")
    result = head_to_head(judge, ["Name a colour.", "Say hi.", "Count to three."], ["Blue.", "Hi!", "1 2 3"],
                          ["Seven.", "No.", "Four"])
    soft = result["soft_win_rate"]
    expected = [0.5 * (r["forward"]["p_a"] + 1 - r["backward"]["p_a"]) for r in result["records"]]
    assert soft["value"] == pytest.approx(sum(expected) / 3) and soft["n"] == 3
    assert result["judge_health"]["first_slot_rate"] == result["first_slot_rate"]


def test_length_split_of_a_reference_comparison():
    comparison = {"records": [{"outcome": "win"}, {"outcome": "tie"}, {"outcome": "loss"}]}
    split = length_split(comparison, ["a long answer", "short", "x"], ["ref", "a much longer reference", "yy"])
    assert split["longer_than_reference"] == {"prompts": 1, "win_rate": 100.0}
    assert split["not_longer"] == {"prompts": 2, "win_rate": 25.0}


def test_a_constrained_local_judge_rates_from_its_probabilities_over_1_to_10(tiny_backend):
    backend, chat = tiny_backend
    judge = LocalJudge(FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4), chat,
                       "constrained")
    ratings = judge.ratings([(["Name a colour."], ["Blue."]), (["Name a colour.", "Another?"], ["Blue.", "Red."])])
    for r in ratings:
        assert len(r["probs"]) == 10 and sum(r["probs"]) == pytest.approx(1)
        assert r["rating"] == pytest.approx(sum(k * p for k, p in enumerate(r["probs"], start=1)))


def test_mt_bench_scores_by_hand():
    answers = [{"category": "writing"}, {"category": "math"}]
    ratings = [{"rating": r} for r in (8, 6, None, 4)]
    scores = mt_bench_scores(answers, ratings, samples=200, seed=0)
    assert scores["turn_1"] == 8 and scores["turn_2"] == 5 and scores["categories"] == {"math": 4, "writing": 7}
    assert scores["overall"]["value"] == pytest.approx((7 + 4) / 2) and scores["unreadable_share"] == 0.25
    assert scores["judge_health"]["informative"]
    flat = mt_bench_scores(answers, [{"rating": 5}] * 4, samples=50, seed=0)
    assert not flat["judge_health"]["informative"] and "within 0.00" in flat["judge_health"]["why_not"]


def test_judge_free_accuracies_on_two_tiny_models_by_hand(tiny_backend):
    import copy

    import torch

    backend, chat = tiny_backend
    other_model = copy.deepcopy(backend.model)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in other_model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    other = type(backend)(other_model, backend.tokenizer, backend.stop_ids, batch_size=4)
    threads = [{"prompt_id": "p", "prompt": "Name a prime number.",
                "replies": [{"text": "Seven.", "rank": 0}, {"text": "Eight, which is even.", "rank": 1},
                            {"text": "Nine", "rank": 2}]},
               {"prompt_id": "q", "prompt": "Say hi.", "replies": [{"text": "Hi!", "rank": 0},
                                                                   {"text": "No thanks.", "rank": 1}]}]
    rows = {"start": reply_logprobs(backend, chat, threads, 0, "a"), "trained": reply_logprobs(other, chat, threads, 0, "b")}
    result = human_preference(rows, {"trained": "start"}, samples=100, seed=0)

    def accuracy(values):  # pairs with different ranks: the better-ranked reply strictly higher
        pairs = [(v[i], v[j]) for v in values for i in range(len(v)) for j in range(i + 1, len(v))]
        return sum(a > b for a, b in pairs) / len(pairs)

    normalised = [[lp / n for lp, n in zip(r["logps"], r["tokens"])] for r in rows["trained"]]
    implicit = [[a - b for a, b in zip(r["logps"], q["logps"])] for r, q in zip(rows["trained"], rows["start"])]
    assert result["trained"]["length_normalised"]["value"] == pytest.approx(accuracy(normalised))
    assert result["trained"]["implicit_reward"]["value"] == pytest.approx(accuracy(implicit))
    assert result["trained"]["implicit_reward"]["pairs"] == 4 and result["start"]["implicit_reward"] is None

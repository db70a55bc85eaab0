import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import itertools
import math

import random

import pytest

from selfreward.evaluation import health
from selfreward.evaluation.estimates import mean
from selfreward.evaluation.instruments import head_to_head, human_preference, mt_bench, reference
from selfreward.generation import FastBackend
from selfreward.method.evaluation_judge import EndpointJudge, JudgeError, LocalJudge, both_orders, outcome, soft_preference


def head_to_head_of(judge, instructions, x, y):
    """One comparison judged in both orders, summarised as the head-to-head instrument does."""
    records = both_orders(judge, instructions, {"x": x, "y": y}, [("x", "y")])["x vs y"]
    return records, head_to_head.summarise(records, samples=100, seed=0)


def test_outcomes_count_both_orders_and_position_bias():
    # p1: X preferred in both orders = win; p2: Y in both = loss; p3: "a" twice = inconsistent = tie;
    # p4: win; p5: an unreadable verdict = tie
    forward, backward = ["a", "b", "a", "a", None], ["b", "a", "a", "b", "b"]
    assert [outcome(f, b) for f, b in zip(forward, backward, strict=True)] == ["win", "loss", "tie", "win", "tie"]
    records = [{"outcome": outcome(f, b), "soft_preference": None, "forward": {"verdict": f},
                "backward": {"verdict": b}} for f, b in zip(forward, backward, strict=True)]
    result = head_to_head.summarise(records, samples=200, seed=0)
    assert (result["win"], result["tie"], result["loss"]) == (2, 2, 1)
    assert result["win_rate"]["value"] == pytest.approx((2 + 1) / 5)
    assert result["net_wins"]["value"] == pytest.approx((2 - 1) / 5) and result["net_wins"]["mde"] > 0
    assert result["health"]["stats"]["first_slot_rate"] == pytest.approx(5 / 9)
    assert result["soft_win_rate"] is None  # a sampled judge gives no probabilities


def test_head_to_head_with_a_real_local_judge(tiny_backend):
    backend, chat = tiny_backend
    judge = LocalJudge(backend, chat, "constrained")
    records, result = head_to_head_of(judge, ["Name a colour.", "Say hi."], ["Blue.", "Hi!"], ["Seven.", "No."])
    assert result["win"] + result["tie"] + result["loss"] == 2 and len(records) == 2
    for record in records:  # the same pair judged in both orders
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
    together = both_orders(recording, instructions, responses, pairs)
    assert len(calls) == 1 and len(calls[0]) == 3 * 2 * len(instructions)
    firsts = [t[:2] for t in calls[0]]  # each instruction, and each first output in it, in one run of rows
    assert len(list(itertools.groupby(firsts))) == len(set(firsts)) == 3 * len(instructions)
    for x, y in pairs:
        alone, _ = head_to_head_of(LocalJudge(backend, chat, "constrained"), instructions, responses[x], responses[y])
        records = together[f"{x} vs {y}"]
        assert [r["outcome"] for r in records] == [r["outcome"] for r in alone]
        assert [r["forward"]["p_a"] for r in records] == pytest.approx([r["forward"]["p_a"] for r in alone])


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
        with pytest.raises(JudgeError, match="TEST_JUDGE_KEY"):
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
    always_a = health.pairwise(["a"] * 10, ["a"] * 10)
    assert always_a.stats["first_slot_rate"] == 1.0 and always_a.stats["order_consistency"] == 0.0
    assert not always_a.informative and "agree on 0% of prompts, not shown above a blind judge" in always_a.why_not
    # a judge that sees: the better answer in both orders on 40 of 48 prompts (X on 20, Y on 20), slot a otherwise
    forward, backward = ["a"] * 20 + ["b"] * 20 + ["a"] * 8, ["b"] * 20 + ["a"] * 20 + ["a"] * 8
    fine = health.pairwise(forward, backward)
    assert fine.stats["order_consistency"] == pytest.approx(40 / 48) and fine.stats["beyond_blind"]["p"] < 0.001
    assert fine.informative and fine.why_not is None and fine.label() == "informative"
    # 30% agreement, first slot 85%: a fixed 25% threshold passed it, but a blind judge at 85% agrees 26%
    low = health.pairwise(["a"] * 10, ["b"] * 3 + ["a"] * 7)
    assert low.stats["order_consistency"] == pytest.approx(0.3) and not low.informative
    unreadable = health.pairwise([None] * 6 + ["a"] * 4, [None] * 6 + ["b"] * 4)
    assert unreadable.stats["unreadable_share"] == pytest.approx(0.6) and not unreadable.informative
    assert not health.pairwise([None], [None]).informative


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_a_blind_judge_passes_at_most_five_percent_of_the_time(p):
    """Simulated: a judge that ignores content and picks the first slot with probability p, 96 prompts, 400 runs."""
    rng = random.Random(int(p * 100))
    passed = 0
    for run in range(400):
        forward = ["a" if rng.random() < p else "b" for _ in range(96)]
        backward = ["a" if rng.random() < p else "b" for _ in range(96)]
        passed += health.pairwise(forward, backward, samples=20, seed=run).informative
    assert passed <= 20


def test_score_health_one_rule_for_every_scoring_judge():
    constant = health.scores([4.0] * 19 + [3.0], 0, 5)
    assert not constant.informative and "tie on 90% of pairs" in constant.why_not
    assert constant.stats["most_frequent_score"] == 4 and constant.stats["one_score_alarm"]
    varied = health.scores([1, 5, 3, None], 0, 5)
    assert varied.informative and varied.stats["unreadable_share"] == 0.25 and varied.stats["tie_share"] == 0
    assert varied.stats["histogram"] == {"0": 0, "1": 1, "2": 0, "3": 1, "4": 0, "5": 1}
    assert not health.scores([None, None, 3], 0, 5).informative  # mostly unreadable
    # scale-free: a perfect ranker with compressed scores (standard deviation 0.08) is informative
    compressed = [4.0 + 0.01 * i for i in range(20)]
    assert health.scores(compressed, 0, 5).informative
    assert health.scores([x * 10 for x in compressed], 0, 100).stats["tie_share"] == 0
    assert health.Health.from_dict(varied.to_dict()) == varied


def test_soft_preference_removes_the_position_in_logit_space_by_hand():
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    # a true preference of one logit (0.731) under a slot bias of 6 logits: read back exactly, not as 0.503
    assert soft_preference(sigmoid(1 + 6), sigmoid(-1 + 6)) == pytest.approx(sigmoid(1))
    # no bias: the judge's own probability
    assert soft_preference(0.9, 0.1) == pytest.approx(0.9)
    # a judge that always picks slot a, however sure: exactly 1/2
    assert [soft_preference(p, p) for p in (1.0, 0.8, 0.6)] == [0.5, 0.5, 0.5]
    assert soft_preference(None, 0.5) is None and soft_preference(0.2, None) is None
    interval = mean([0.8, 0.6, 0.7, 0.9], samples=500, seed=0)
    assert interval.value == pytest.approx(0.75) and interval.low <= 0.75 <= interval.high
    assert mean([0.5] * 8, samples=100).low == 0.5 and mean([None]) is None


def test_the_soft_win_rate_of_a_constrained_judge(tiny_backend):
    backend, chat = tiny_backend
    judge = LocalJudge(backend, chat, "constrained")
    records, result = head_to_head_of(judge, ["Name a colour.", "Say hi.", "Count to three."],
                                      ["Blue.", "Hi!", "1 2 3"], ["Seven.", "No.", "Four"])
    expected = [soft_preference(r["forward"]["p_a"], r["backward"]["p_a"]) for r in records]
    assert result["soft_win_rate"]["value"] == pytest.approx(sum(expected) / 3) and result["soft_win_rate"]["n"] == 3


def test_length_features_use_the_centred_deviation_and_one_sided_lengths_are_said():
    # every answer 100 characters longer, give or take 10: the scale is the centred standard deviation (10, as
    # AlpacaEval's GLM), not the root mean square of the differences (about 100)
    answers, references = ["x" * (100 + d) for d in (-10, 0, 10)], ["", "", ""]
    features = reference.length_features([len(a) for a in answers], [len(r) for r in references])
    assert features == pytest.approx([math.tanh(x / 10) for x in (90, 100, 110)])
    assert reference.one_sided(["ab"] * 8 + ["abcdef"] * 2, ["abcd"] * 10).startswith("8 of 10 answers are shorter")
    assert reference.one_sided(["ab"] * 5 + ["abcdef"] * 5, ["abcd"] * 10) is None


def test_length_controlled_win_rate_reads_the_fit_at_zero_length_difference():
    features = reference.length_features([len(t) for t in ("a long answer", "short", "x")],
                                         [len(t) for t in ("ref", "a much longer reference", "yy")])
    assert features[0] > 0 > features[1] and features[2] < 0
    # wins only where the model is longer: the length effect explains them, P(win | same length) near 1/2
    items = [(1.0, 0.8)] * 20 + [(0.0, -0.8)] * 20
    assert reference.length_controlled(items) == pytest.approx(0.5, abs=0.02)
    # winning at every length difference: no length effect to correct, well above 1/2
    assert reference.length_controlled([(1.0, x / 10) for x in range(-9, 10)] + [(0.5, 0.0)]) > 0.8
    assert reference.length_controlled([]) is None


def test_a_constrained_local_judge_rates_from_its_probabilities_over_1_to_10(tiny_backend):
    backend, chat = tiny_backend
    judge = LocalJudge(FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4), chat,
                       "constrained")
    ratings = judge.ratings([(["Name a colour."], ["Blue."]), (["Name a colour.", "Another?"], ["Blue.", "Red."])])
    for r in ratings:
        assert len(r["probs"]) == 10 and sum(r["probs"]) == pytest.approx(1)
        assert r["rating"] == pytest.approx(sum(k * p for k, p in enumerate(r["probs"], start=1)))


def test_mt_bench_scores_by_hand():
    rows = [{"category": "writing", "ratings": [{"rating": 8}, {"rating": 6}]},
            {"category": "math", "ratings": [{"rating": None}, {"rating": 4}]}]
    scores = mt_bench.scores(rows, samples=200, seed=0)
    assert scores["turn_1"] == 8 and scores["turn_2"] == 5 and scores["categories"] == {"math": 4, "writing": 7}
    assert scores["overall"]["value"] == pytest.approx((7 + 4) / 2)
    assert scores["health"]["stats"]["unreadable_share"] == 0.25 and scores["health"]["informative"]
    flat = mt_bench.scores([{"category": "x", "ratings": [{"rating": 5}, {"rating": 5}]}] * 2, samples=50, seed=0)
    assert not flat["health"]["informative"] and "tie on 100% of pairs" in flat["health"]["why_not"]


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
    rows = {"start": human_preference.reply_logprobs(backend, chat, threads, 0, "a"),
            "trained": human_preference.reply_logprobs(other, chat, threads, 0, "b")}

    def accuracy(values):  # pairs with different ranks: the better-ranked reply strictly higher
        pairs = [(v[i], v[j]) for v in values for i in range(len(v)) for j in range(i + 1, len(v))]
        return sum(a > b for a, b in pairs) / len(pairs)

    normalised = [[lp / n for lp, n in zip(r["logps"], r["tokens"], strict=True)] for r in rows["trained"]]
    implicit = [[a - b for a, b in zip(r["logps"], q["logps"], strict=True)] for r, q in zip(rows["trained"], rows["start"], strict=True)]
    from selfreward.evaluation.agreement import accuracy as agreement, pair_count

    by_length = human_preference.normalised(rows["trained"])
    by_reward = human_preference.implicit(rows["trained"], rows["start"])
    assert agreement(by_length, 100, 0).value == pytest.approx(accuracy(normalised))
    assert agreement(by_reward, 100, 0).value == pytest.approx(accuracy(implicit)) and pair_count(by_reward) == 4

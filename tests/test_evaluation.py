import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import itertools

import pytest

from selfreward.evaluation import (EndpointPairwiseJudge, EvaluationError, LocalPairwiseJudge, head_to_head,
                                   head_to_heads, tally)
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
    judge = LocalPairwiseJudge(backend, chat, "constrained")
    result = head_to_head(judge, ["Name a colour.", "Say hi."], ["Blue.", "Hi!"], ["Seven.", "No."])
    assert result["win"] + result["tie"] + result["loss"] == 2 and len(result["records"]) == 2
    for record in result["records"]:  # the same pair judged in both orders
        assert record["forward"]["verdict"] in ("a", "b") and record["backward"]["verdict"] in ("a", "b")


def test_all_comparisons_in_one_call_equal_one_call_each(tiny_backend):
    backend, chat = tiny_backend
    fast = FastBackend(backend.model, backend.tokenizer, backend.stop_ids, batch_size=4)
    judge = LocalPairwiseJudge(fast, chat, "constrained")
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
        alone = head_to_head(LocalPairwiseJudge(backend, chat, "constrained"), instructions, responses[x], responses[y])
        records = together[f"{x} vs {y}"]["records"]
        assert [r["outcome"] for r in records] == [r["outcome"] for r in alone["records"]]
        assert [r["forward"]["p_a"] for r in records] == pytest.approx([r["forward"]["p_a"] for r in alone["records"]])


def test_local_constrained_judge_reads_a_and_b(tiny_backend):
    backend, chat = tiny_backend
    judge = LocalPairwiseJudge(backend, chat, "constrained")
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
        judge = EndpointPairwiseJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", "TEST_JUDGE_KEY")
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

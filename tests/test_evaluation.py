import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from selfreward.evaluation import EndpointPairwiseJudge, EvaluationError, LocalPairwiseJudge, head_to_head, tally


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

"""Evaluation: head-to-head instruction following, and each model as a reward model.

Head to head (as in the paper, after AlpacaEval): a judge compares two models' responses to the
same prompt in both orders; a model wins a prompt when the judge prefers it in both orders, loses
when the judge prefers the other in both, and anything else (inconsistent or unreadable) is a tie.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from selfreward.prompts import PAIRWISE_PREFIX, pairwise_prompt, parse_preference

COMPARISONS = [("m1", "sft_baseline"), ("m2", "sft_baseline"), ("m3", "sft_baseline"),
               ("m2", "m1"), ("m3", "m2"), ("m3", "m1")]


class EvaluationError(ValueError):
    """An evaluation that cannot run as configured; the message is one line."""


def generate_responses(backend, chat, instructions: list[str], evaluation_cfg, seed: int, desc: str) -> list[dict]:
    outputs = backend.generate([chat.prompt(i) for i in instructions], n=1, temperature=evaluation_cfg.temperature,
                               top_p=evaluation_cfg.top_p, max_new_tokens=evaluation_cfg.max_new_tokens, seed=seed,
                               desc=desc)
    return [{"instruction": i, "response": c.text, "num_tokens": c.num_tokens, "finished": c.finished}
            for i, (c,) in zip(instructions, outputs)]


@dataclass
class LocalPairwiseJudge:
    """A local model as the pairwise judge: parse its verdict, or read P(a) vs P(b) (constrained)."""

    backend: object
    chat: object
    mode: str = "constrained"
    max_new_tokens: int = 64

    def verdicts(self, triples: list[tuple[str, str, str]]) -> list[dict]:
        prompts = [self.chat.prompt(pairwise_prompt(*t)) for t in triples]
        if self.mode == "constrained":
            probs = self.backend.option_probs([p + PAIRWISE_PREFIX for p in prompts], ["a", "b"])
            return [{"verdict": None if p is None else "a" if p[0] >= p[1] else "b",
                     "p_a": None if p is None else p[0], "text": None} for p, _ in probs]
        outputs = self.backend.generate(prompts, n=1, temperature=0, max_new_tokens=self.max_new_tokens,
                                        desc="pairwise verdicts")
        return [{"verdict": parse_preference(c.text), "p_a": None, "text": c.text} for (c,) in outputs]


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect anywhere and send the Authorization header along: refuse any
    redirect that leaves the endpoint's scheme, host and port."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            raise EvaluationError(f"judge endpoint redirected to {new.scheme}://{new.hostname}: not following it "
                                  "with the API key")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameOriginRedirects)


@dataclass
class EndpointPairwiseJudge:
    """Any OpenAI-compatible chat endpoint. The key is read from the environment, never stored."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry, doubling

    def _ask(self, prompt: str) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EvaluationError(f"judge endpoint needs an API key in the environment variable {self.api_key_env}")
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 16,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        request = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {key}"})
        for attempt in range(self.retries + 1):
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:
                    return json.loads(response.read())["choices"][0]["message"]["content"]
            except EvaluationError:  # a refused redirect: retrying would not change it
                raise
            # rate limits, hiccups and garbled answers: back off and retry, then say so in one line
            except (urllib.error.URLError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as err:
                if attempt == self.retries:
                    reason = "an answer that is not the expected JSON" if isinstance(
                        err, (ValueError, KeyError, IndexError, TypeError)) else str(err)
                    raise EvaluationError(f"judge endpoint {self.base_url} failed after {self.retries + 1} "
                                          f"tries: {reason}") from None
                time.sleep(self.backoff * 2 ** attempt)

    def verdicts(self, triples):
        texts = [self._ask(pairwise_prompt(*t)) for t in triples]
        return [{"verdict": parse_preference(t), "p_a": None, "text": t} for t in texts]


def head_to_head(pairwise_judge, instructions: list[str], responses_x: list[str], responses_y: list[str]) -> dict:
    """Win/tie/loss of X against Y, judged in both orders; plus the judge's first-slot rate."""
    return head_to_heads(pairwise_judge, instructions, {"x": responses_x, "y": responses_y}, [("x", "y")])["x vs y"]


def head_to_heads(pairwise_judge, instructions: list[str], responses: dict[str, list[str]],
                  pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """`head_to_head` for several pairs of response sets at once. All verdicts go to the judge in one
    call, ordered by instruction and first output, so that a local judge prefills each instruction and
    each first output once for all the comparisons that share them."""
    wanted = sorted({(i, a, b) for x, y in pairs for a, b in [(x, y), (y, x)] for i in range(len(instructions))})
    verdicts = dict(zip(wanted, pairwise_judge.verdicts([(instructions[i], responses[a][i], responses[b][i])
                                                 for i, a, b in wanted])))
    results = {}
    for x, y in pairs:
        forward = [verdicts[i, x, y] for i in range(len(instructions))]
        backward = [verdicts[i, y, x] for i in range(len(instructions))]
        result = tally([f["verdict"] for f in forward], [b["verdict"] for b in backward])
        result["records"] = [{"instruction": i, "outcome": o, "forward": f, "backward": b}
                             for i, o, f, b in zip(instructions, result.pop("outcomes"), forward, backward)]
        results[f"{x} vs {y}"] = result
    return results


def tally(forward: list, backward: list) -> dict:
    """Outcomes from verdicts with X in slot a (forward) and in slot b (backward)."""
    outcomes = []
    for f, b in zip(forward, backward):
        if f == "a" and b == "b":
            outcomes.append("win")
        elif f == "b" and b == "a":
            outcomes.append("loss")
        else:  # inconsistent or unreadable
            outcomes.append("tie")
    readable = [v for v in forward + backward if v is not None]
    n = len(outcomes)
    return {
        "n": n, "win": outcomes.count("win"), "tie": outcomes.count("tie"), "loss": outcomes.count("loss"),
        "win_pct": 100 * outcomes.count("win") / n if n else None,
        "tie_pct": 100 * outcomes.count("tie") / n if n else None,
        "loss_pct": 100 * outcomes.count("loss") / n if n else None,
        # AlpacaEval's convention: a tie counts half
        "win_rate": 100 * (outcomes.count("win") + 0.5 * outcomes.count("tie")) / n if n else None,
        "first_slot_rate": readable.count("a") / len(readable) if readable else None,
        "unreadable_verdicts": len(forward) + len(backward) - len(readable),
        "outcomes": outcomes,
    }

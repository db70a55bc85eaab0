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

from selfreward.metrics import mean_interval, pairwise_accuracy
from selfreward.prompts import (PAIRWISE_PREFIX, RATING_PREFIX, mt_bench_prompt, pairwise_prompt, parse_preference,
                                parse_rating)

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
class LocalJudge:
    """A local model as the evaluation judge. Pairwise verdicts: parsed from its text (sampled), or
    P(a) vs P(b) read after "Output (" (constrained). MT-Bench ratings: parsed [[rating]] (sampled), or
    P(rating = 1..10) read after "Rating: [[" (constrained; no explanation is written first)."""

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

    def ratings(self, exchanges: list[tuple[list[str], list[str]]]) -> list[dict]:
        """A rating of the last answer of each (questions, answers) exchange."""
        prompts = [self.chat.prompt(mt_bench_prompt(*e)) for e in exchanges]
        if self.mode == "constrained":
            return [{"rating": None if p is None else sum(r * q for r, q in enumerate(p, start=1)), "probs": p,
                     "text": None} for p in self._rating_probs([p + RATING_PREFIX for p in prompts])]
        outputs = self.backend.generate(prompts, n=1, temperature=0, max_new_tokens=4 * self.max_new_tokens,
                                        desc="MT-Bench ratings")
        return [{"rating": parse_rating(c.text), "probs": None, "text": c.text} for (c,) in outputs]

    def _rating_probs(self, prefixes: list[str]) -> list[list[float] | None]:
        """P(rating = 1..10): the first digit after "[[", and for a 1 whether a 0 follows (10) or "]" (1)."""
        digits = [str(d) for d in range(1, 10)]
        first = self.backend.option_probs(prefixes, digits)
        after_one = self.backend.option_probs([p + "1" for p in prefixes], ["0", "]"])
        result = []
        for (f, _), (a, _) in zip(first, after_one):
            if f is None or a is None:
                result.append(None)
                continue
            probs = [f[0] * a[1]] + f[1:] + [f[0] * a[0]]  # 1, 2..9, 10
            result.append([q / sum(probs) for q in probs])
        return result


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
class EndpointJudge:
    """Any OpenAI-compatible chat endpoint. The key is read from the environment, never stored."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry, doubling

    def _ask(self, prompt: str, max_tokens: int = 16) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EvaluationError(f"judge endpoint needs an API key in the environment variable {self.api_key_env}")
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": max_tokens,
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

    def ratings(self, exchanges):
        texts = [self._ask(mt_bench_prompt(*e), max_tokens=512) for e in exchanges]
        return [{"rating": parse_rating(t), "probs": None, "text": t} for t in texts]


def head_to_head(pairwise_judge, instructions: list[str], responses_x: list[str], responses_y: list[str]) -> dict:
    """Win/tie/loss of X against Y, judged in both orders; plus the judge's first-slot rate."""
    return head_to_heads(pairwise_judge, instructions, {"x": responses_x, "y": responses_y}, [("x", "y")])["x vs y"]


def head_to_heads(pairwise_judge, instructions: list[str], responses: dict[str, list[str]],
                  pairs: list[tuple[str, str]], bootstrap_samples: int = 1000, seed: int = 0) -> dict[str, dict]:
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
        soft = soft_preferences([f["p_a"] for f in forward], [b["p_a"] for b in backward])
        result["soft_win_rate"] = mean_interval(soft, bootstrap_samples, seed)
        result["records"] = [{"instruction": i, "outcome": o, "soft_preference": p, "forward": f, "backward": b}
                             for i, o, p, f, b in zip(instructions, result.pop("outcomes"), soft, forward, backward)]
        results[f"{x} vs {y}"] = result
    return results


# A head-to-head judge is "uninformative" when it mostly answers by position: its two orders of the same
# pair agree on fewer than this share of prompts, or it picks one slot more than MAX_SLOT_SHARE of the
# time, or it leaves most verdicts unreadable. Its verdicts then say nothing about the models.
MIN_ORDER_CONSISTENCY = 0.25
MAX_SLOT_SHARE = 0.9
MAX_UNREADABLE = 0.5


def judge_health(forward: list, backward: list) -> dict:
    """How much a pairwise judge's verdicts can say: its first-slot rate, its order consistency (the share
    of prompts whose two orders prefer the same output) and its unreadable verdicts."""
    readable = [v for v in forward + backward if v is not None]
    consistent = sum((f, b) in (("a", "b"), ("b", "a")) for f, b in zip(forward, backward))
    first_slot = readable.count("a") / len(readable) if readable else None
    consistency = consistent / len(forward) if forward else None
    unreadable = 1 - len(readable) / (len(forward) + len(backward)) if forward else None
    reasons = []
    if consistency is not None and consistency < MIN_ORDER_CONSISTENCY:
        reasons.append(f"its two orders agree on {consistency:.0%} of prompts (< {MIN_ORDER_CONSISTENCY:.0%})")
    if first_slot is not None and not 1 - MAX_SLOT_SHARE <= first_slot <= MAX_SLOT_SHARE:
        reasons.append(f"it picks the first slot {first_slot:.0%} of the time")
    if unreadable is not None and unreadable > MAX_UNREADABLE:
        reasons.append(f"{unreadable:.0%} of its verdicts are unreadable")
    return {"first_slot_rate": first_slot, "order_consistency": consistency, "unreadable_share": unreadable,
            "informative": not reasons and bool(readable), "why_not": "; ".join(reasons) or None}


MIN_SCORE_SPREAD = 0.25  # a reward-model judge whose scores' standard deviation is below this is constant


def score_judge_health(rows: list[dict]) -> dict:
    """Whether a judge's scores of the held-out replies can be compared with the humans at all: it must read
    on most replies and not give them all (nearly) the same score."""
    scores = [s for r in rows for s in r["scores"] if s is not None]
    total = sum(len(r["scores"]) for r in rows)
    unreadable = 1 - len(scores) / total if total else None
    spread = (sum((s - sum(scores) / len(scores)) ** 2 for s in scores) / len(scores)) ** 0.5 if scores else 0.0
    reasons = []
    if unreadable is not None and unreadable > MAX_UNREADABLE:
        reasons.append(f"{unreadable:.0%} of its scores are unreadable")
    if scores and spread < MIN_SCORE_SPREAD:
        reasons.append(f"its scores are nearly constant (standard deviation {spread:.2f})")
    return {"score_spread": spread, "unreadable_share": unreadable,
            "informative": not reasons and bool(scores), "why_not": "; ".join(reasons) or None}


def soft_preferences(forward_p_a: list, backward_p_a: list) -> list[float | None]:
    """Per prompt, P(X beats Y) with the judge's position bias averaged out: X sits in slot a in the forward
    verdict and in slot b in the backward one, so P = 1/2 [P(a | forward) + P(b | backward)]. A judge that
    always picks slot a gives exactly 1/2. None where the judge gave no probabilities."""
    return [None if f is None or b is None else 0.5 * (f + (1 - b)) for f, b in zip(forward_p_a, backward_p_a)]


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
    health = judge_health(forward, backward)
    return {
        "n": n, "win": outcomes.count("win"), "tie": outcomes.count("tie"), "loss": outcomes.count("loss"),
        "win_pct": 100 * outcomes.count("win") / n if n else None,
        "tie_pct": 100 * outcomes.count("tie") / n if n else None,
        "loss_pct": 100 * outcomes.count("loss") / n if n else None,
        # AlpacaEval's convention: a tie counts half
        "win_rate": 100 * (outcomes.count("win") + 0.5 * outcomes.count("tie")) / n if n else None,
        "unreadable_verdicts": len(forward) + len(backward) - len(readable),
        "judge_health": health,
        "first_slot_rate": health["first_slot_rate"],
        "outcomes": outcomes,
    }


def length_split(comparison: dict, answers: list[str], references: list[str]) -> dict:
    """For a comparison against the reference outputs: the answers' and references' mean lengths, and the
    win rate (ties 1/2) where the model's answer is longer than the reference and where it is not (the length
    effect that AlpacaEval 2.0's length-controlled win rate corrects for)."""
    def win_rate(outcomes):
        return 100 * (outcomes.count("win") + 0.5 * outcomes.count("tie")) / len(outcomes) if outcomes else None

    outcomes = [r["outcome"] for r in comparison["records"]]
    longer = [o for o, a, r in zip(outcomes, answers, references) if len(a) > len(r)]
    shorter = [o for o, a, r in zip(outcomes, answers, references) if len(a) <= len(r)]
    return {"model_mean_chars": sum(map(len, answers)) / len(answers),
            "reference_mean_chars": sum(map(len, references)) / len(references),
            "longer_than_reference": {"prompts": len(longer), "win_rate": win_rate(longer)},
            "not_longer": {"prompts": len(shorter), "win_rate": win_rate(shorter)}}


# ---------------------------------------------------------------- MT-Bench

def mt_bench_answers(backend, chat, questions: list[dict], evaluation_cfg, seed: int, desc: str) -> list[dict]:
    """Both turns of each MT-Bench question: the first answer, then the second question asked after it."""
    settings = dict(n=1, temperature=evaluation_cfg.temperature, top_p=evaluation_cfg.top_p,
                    max_new_tokens=evaluation_cfg.max_new_tokens, seed=seed)
    first = [c for (c,) in backend.generate([chat.prompt(q["turns"][0]) for q in questions], desc=f"{desc} turn 1",
                                            **settings)]
    second = [c for (c,) in backend.generate([chat.conversation([(q["turns"][0], a.text)], q["turns"][1])
                                              for q, a in zip(questions, first)], desc=f"{desc} turn 2", **settings)]
    return [{"question_id": q["question_id"], "category": q["category"], "turns": q["turns"][:2],
             "answers": [a.text, b.text], "num_tokens": [a.num_tokens, b.num_tokens]}
            for q, a, b in zip(questions, first, second)]


def mt_bench_scores(answers: list[dict], ratings: list[dict], samples: int, seed: int) -> dict:
    """Per-category, per-turn and overall scores (overall with a bootstrap interval over questions) from
    one rating per turn, in the order (question 1 turn 1, question 1 turn 2, ...); and the judge's health."""
    rated = [(a, ratings[2 * i]["rating"], ratings[2 * i + 1]["rating"]) for i, a in enumerate(answers)]
    per_question = [[r for r in (r1, r2) if r is not None] for _, r1, r2 in rated]
    values = [r for rs in per_question for r in rs]
    categories = sorted({a["category"] for a in answers})
    spread = (max(values) - min(values)) if values else 0.0
    unreadable = sum(r["rating"] is None for r in ratings) / len(ratings) if ratings else None
    reasons = []
    if unreadable is not None and unreadable > MAX_UNREADABLE:
        reasons.append(f"{unreadable:.0%} of its ratings are unreadable")
    if values and spread < 0.5:
        reasons.append(f"its ratings all lie within {spread:.2f} of each other")

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    return {"overall": mean_interval([sum(rs) / len(rs) if rs else None for rs in per_question], samples, seed),
            "turn_1": mean([r1 for _, r1, _ in rated]), "turn_2": mean([r2 for _, _, r2 in rated]),
            "categories": {c: mean([r for a, r1, r2 in rated if a["category"] == c for r in (r1, r2)])
                           for c in categories},
            "unreadable_share": unreadable,
            "judge_health": {"informative": not reasons and bool(values), "why_not": "; ".join(reasons) or None}}


# ---------------------------------------------------------------- judge-free: human preference

def reply_logprobs(backend, chat, threads: list[dict], max_tokens: int, desc: str) -> list[dict]:
    """Each ranked reply's log-likelihood under the model, given its prompt (the first `max_tokens` of
    the reply when > 0): one row per prompt, beside the human ranks."""
    items = [(chat.prompt(t["prompt"]), chat.completion(r["text"])) for t in threads for r in t["replies"]]
    flat = iter(backend.continuation_logprobs(items, max_tokens, desc=desc))
    rows = []
    for t in threads:
        scored = [next(flat) for _ in t["replies"]]
        rows.append({"prompt_id": t["prompt_id"], "ranks": [r["rank"] for r in t["replies"]],
                     "logps": [lp for lp, _ in scored], "tokens": [n for _, n in scored]})
    return rows


def human_preference(per_model: dict[str, list[dict]], references: dict[str, str], samples: int,
                     seed: int) -> dict:
    """Judge-free accuracy against the humans, per model: the share of reply pairs with different human
    ranks where the preferred reply has the higher length-normalised log-likelihood, and for models with a
    reference (the model they were trained from by DPO) the higher implicit reward log pi - log pi_ref."""
    result = {}
    for name, rows in per_model.items():
        normalised = [{"ranks": r["ranks"], "scores": [lp / max(n, 1) for lp, n in zip(r["logps"], r["tokens"])]}
                      for r in rows]
        entry = {"length_normalised": pairwise_accuracy(normalised, samples, seed), "reference": references.get(name),
                 "implicit_reward": None,
                 "mean_logp_per_token": sum(sum(r["logps"]) for r in rows) / max(sum(sum(r["tokens"]) for r in rows), 1)}
        if references.get(name) in per_model:
            implicit = [{"ranks": r["ranks"], "scores": [a - b for a, b in zip(r["logps"], q["logps"])]}
                        for r, q in zip(rows, per_model[references[name]], strict=True)]
            entry["implicit_reward"] = pairwise_accuracy(implicit, samples, seed)
        result[name] = entry
    return result

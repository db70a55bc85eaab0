"""The evaluation judge (`evaluation.judge_model`): a local model, any OpenAI-compatible endpoint, or a
reward model (`reward:<hub id or folder>`, a sequence-classification model that scores each answer alone). It
gives pairwise verdicts (which of two outputs follows an instruction better) and, when generative,
single-answer ratings (MT-Bench, 1-10). `both_orders` asks for every verdict with each output in each slot, as the paper does:
a model wins a prompt when the judge prefers it in both orders, loses when the judge prefers the other in
both, and anything else (inconsistent or unreadable) is a tie. Checkpoint selection (the method) and the
evaluation instruments use it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from selfreward.method.prompts import MT_BENCH_RATING, PAIRWISE


class JudgeError(ValueError):
    """An evaluation judge that cannot be asked as configured; the message is one line."""


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
        prompts = [self.chat.prompt(PAIRWISE.prompt(*t)) for t in triples]
        if self.mode == "constrained":
            probs = self.backend.option_probs([p + PAIRWISE.answer_prefix for p in prompts], list(PAIRWISE.options))
            return [{"verdict": None if p is None else "a" if p[0] >= p[1] else "b",
                     "p_a": None if p is None else p[0], "text": None} for p, _ in probs]
        outputs = self.backend.generate(prompts, n=1, temperature=0, max_new_tokens=self.max_new_tokens,
                                        desc="pairwise verdicts")
        return [{"verdict": PAIRWISE.parse(c.text), "p_a": None, "text": c.text} for (c,) in outputs]

    def ratings(self, exchanges: list[tuple[list[str], list[str]]]) -> list[dict]:
        """A rating of the last answer of each (questions, answers) exchange."""
        prompts = [self.chat.prompt(MT_BENCH_RATING.prompt(*e)) for e in exchanges]
        if self.mode == "constrained":
            return [{"rating": None if p is None else sum(r * q for r, q in enumerate(p, start=1)), "probs": p,
                     "text": None} for p in self._rating_probs([p + MT_BENCH_RATING.answer_prefix for p in prompts])]
        outputs = self.backend.generate(prompts, n=1, temperature=0, max_new_tokens=4 * self.max_new_tokens,
                                        desc="MT-Bench ratings")
        return [{"rating": MT_BENCH_RATING.parse(c.text), "probs": None, "text": c.text} for (c,) in outputs]

    def _rating_probs(self, prefixes: list[str]) -> list[list[float] | None]:
        """P(rating = 1..10): the first digit after "[[", and for a 1 whether a 0 follows (10) or "]" (1)."""
        digits = [str(d) for d in range(1, 10)]
        first = self.backend.option_probs(prefixes, digits)
        after_one = self.backend.option_probs([p + "1" for p in prefixes], ["0", "]"])
        result = []
        for (f, _), (a, _) in zip(first, after_one, strict=True):
            if f is None or a is None:
                result.append(None)
                continue
            probs = [f[0] * a[1]] + f[1:] + [f[0] * a[0]]  # 1, 2..9, 10
            result.append([q / sum(probs) for q in probs])
        return result


REWARD = "reward:"  # evaluation.judge_model: reward:<hub id or folder of a sequence-classification model>


def is_reward_model(judge_model: str) -> bool:
    return judge_model.startswith(REWARD)


@dataclass
class RewardJudge:
    """A reward model as the evaluation judge: each (instruction, answer) gets a scalar reward from a
    sequence-classification model, in its own chat format, and a comparison is won by the higher reward (a tie
    when the two differ by at most `tolerance`): there is no slot to be biased toward, and its two orders agree by
    construction. `p_a` is the Bradley-Terry probability sigmoid(r_a - r_b). It rates nothing on MT-Bench's scale
    (a generative judge does that)."""

    model: object
    tokenizer: object
    tolerance: float = 0.0
    batch_size: int = 8

    def __post_init__(self):
        self.cache: dict[tuple[str, str], float] = {}

    def text(self, instruction: str, answer: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": instruction},
                                                       {"role": "assistant", "content": answer}], tokenize=False)
        return f"{instruction}\n\n{answer}"

    def rewards(self, items: list[tuple[str, str]]) -> list[float]:
        """The reward of each (instruction, answer), each scored once however often it is asked for."""
        import torch

        wanted = [item for item in dict.fromkeys(items) if item not in self.cache]
        wanted.sort(key=lambda item: len(item[0]) + len(item[1]))  # batches of similar length pad little
        device = next(self.model.parameters()).device
        for start in range(0, len(wanted), self.batch_size):
            batch = wanted[start:start + self.batch_size]
            longest = min(getattr(self.tokenizer, "model_max_length", 8192), 8192)  # (some say 10**30: no limit)
            encoded = self.tokenizer([self.text(*item) for item in batch], return_tensors="pt", padding=True,
                                     truncation=True, max_length=longest).to(device)
            with torch.no_grad():
                scores = self.model(**encoded).logits[:, 0].float().tolist()
            self.cache.update(zip(batch, scores, strict=True))
        return [self.cache[item] for item in items]

    def verdicts(self, triples: list[tuple[str, str, str]]) -> list[dict]:
        rewards = self.rewards([(i, a) for i, a, _ in triples] + [(i, b) for i, _, b in triples])
        found = []
        for r_a, r_b in zip(rewards[:len(triples)], rewards[len(triples):], strict=True):
            verdict = None if abs(r_a - r_b) <= self.tolerance else "a" if r_a > r_b else "b"
            found.append({"verdict": verdict, "p_a": 1 / (1 + math.exp(r_b - r_a)), "text": None,
                          "rewards": [r_a, r_b]})
        return found

    def ratings(self, exchanges):
        raise JudgeError("a reward model scores answers against each other, not on MT-Bench's 1-10 scale: MT-Bench "
                         "needs a generative judge")


def load_reward_judge(spec: str, cfg) -> RewardJudge:
    """A sequence-classification reward model (`reward:<hub id or folder>`) in the run's dtype and device."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from selfreward import models

    path = models.resolve(spec)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=models.DTYPES[models.resolve_dtype(cfg.model.dtype, cfg.model.device)]).eval()
    model.to(models.pick_device(cfg.model.device))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None \
        else tokenizer.pad_token_id
    return RewardJudge(model, tokenizer, cfg.evaluation.reward_tie_tolerance)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect anywhere and send the Authorization header along: refuse any
    redirect that leaves the endpoint's scheme, host and port."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            raise JudgeError(f"judge endpoint redirected to {new.scheme}://{new.hostname}: not following it "
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
            raise JudgeError(f"judge endpoint needs an API key in the environment variable {self.api_key_env}")
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": max_tokens,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        request = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {key}"})
        for attempt in range(self.retries + 1):
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:
                    return json.loads(response.read())["choices"][0]["message"]["content"]
            except JudgeError:  # a refused redirect: retrying would not change it
                raise
            # rate limits, hiccups and garbled answers: back off and retry, then say so in one line
            except (urllib.error.URLError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as err:
                if attempt == self.retries:
                    reason = "an answer that is not the expected JSON" if isinstance(
                        err, (ValueError, KeyError, IndexError, TypeError)) else str(err)
                    raise JudgeError(f"judge endpoint {self.base_url} failed after {self.retries + 1} "
                                          f"tries: {reason}") from None
                time.sleep(self.backoff * 2 ** attempt)

    def verdicts(self, triples):
        texts = [self._ask(PAIRWISE.prompt(*t)) for t in triples]
        return [{"verdict": PAIRWISE.parse(t), "p_a": None, "text": t} for t in texts]

    def ratings(self, exchanges):
        texts = [self._ask(MT_BENCH_RATING.prompt(*e), max_tokens=512) for e in exchanges]
        return [{"rating": MT_BENCH_RATING.parse(t), "probs": None, "text": t} for t in texts]


def outcome(forward: str | None, backward: str | None) -> str:
    """X's outcome on a prompt from the verdict with X in slot a (forward) and in slot b (backward)."""
    if forward == "a" and backward == "b":
        return "win"
    if forward == "b" and backward == "a":
        return "loss"
    return "tie"  # inconsistent or unreadable


LOGIT_CLIP = 1e-6  # a probability of exactly 0 or 1 read as 1e-6 or 1 - 1e-6: a finite logit


def _logit(p: float) -> float:
    p = min(max(p, LOGIT_CLIP), 1 - LOGIT_CLIP)
    return math.log(p / (1 - p))


def soft_preference(forward_p_a: float | None, backward_p_a: float | None) -> float | None:
    """P(X beats Y) with the judge's position bias removed in logit space, where a slot bias adds to the
    preference (logit P(a) = s + b with X in slot a, −s + b with X in slot b): s is half the difference of the
    two logits, and P = sigmoid(s). Averaging the two probabilities instead shrinks a real preference toward 1/2
    under a strong bias (true 0.731 with a 6-logit slot bias reads 0.503). A judge that always picks slot a,
    however sure, gives exactly 1/2. None where the judge gave no probabilities."""
    if forward_p_a is None or backward_p_a is None:
        return None
    return 1 / (1 + math.exp(-(_logit(forward_p_a) - _logit(backward_p_a)) / 2))


def both_orders(judge, instructions: list[str], responses: dict[str, list[str]],
                pairs: list[tuple[str, str]]) -> dict[str, list[dict]]:
    """For each (X, Y) of `pairs`, one record per instruction: both verdicts, X's outcome and its soft
    preference. All verdicts go to the judge in one call, ordered by instruction and first output, so that
    a local judge prefills each instruction and each first output once for all the pairs that share them."""
    wanted = sorted({(i, a, b) for x, y in pairs for a, b in [(x, y), (y, x)] for i in range(len(instructions))})
    verdicts = dict(zip(wanted, judge.verdicts([(instructions[i], responses[a][i], responses[b][i])
                                                for i, a, b in wanted]), strict=True))
    results = {}
    for x, y in pairs:
        records = []
        for i, instruction in enumerate(instructions):
            forward, backward = verdicts[i, x, y], verdicts[i, y, x]
            records.append({"instruction": instruction, "outcome": outcome(forward["verdict"], backward["verdict"]),
                            "soft_preference": soft_preference(forward["p_a"], backward["p_a"]),
                            "forward": forward, "backward": backward})
        results[f"{x} vs {y}"] = records
    return results


POINTS = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # AlpacaEval's convention: a tie counts half


def win_rate(records: list[dict]) -> float | None:
    """The share of prompts won, ties counting half."""
    return sum(POINTS[r["outcome"]] for r in records) / len(records) if records else None


def soft_win_rate(records: list[dict]) -> float | None:
    """The mean position-debiased preference, where the judge gave probabilities."""
    soft = [r["soft_preference"] for r in records if r["soft_preference"] is not None]
    return sum(soft) / len(soft) if soft else None


@contextlib.contextmanager
def evaluation_judge(cfg, run):
    """The configured evaluation judge for the length of a block, and its name for the report."""
    from selfreward.generation import loaded_backend
    from selfreward.method.model_refs import model_path

    e = cfg.evaluation
    if e.judge_model == "endpoint":
        yield EndpointJudge(e.endpoint_base_url, e.endpoint_model, e.endpoint_api_key_env), f"endpoint:{e.endpoint_model}"
        return
    if is_reward_model(e.judge_model):  # loaded after the answers are generated, freed before anything else
        from selfreward.models import free_memory

        judge = load_reward_judge(e.judge_model[len(REWARD):], cfg)
        try:
            yield judge, f"reward model {e.judge_model[len(REWARD):]} (ties within {judge.tolerance:g})"
        finally:
            del judge.model
            free_memory()
        return
    name = f"base ({cfg.model.spec})" if e.judge_model == "base" else e.judge_model
    with loaded_backend(model_path(cfg, run, e.judge_model), cfg) as (backend, chat):
        yield LocalJudge(backend, chat, e.judge_mode), f"{name}, {e.judge_mode}"

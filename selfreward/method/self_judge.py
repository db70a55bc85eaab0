"""LLM-as-a-Judge: score (prompt, response) pairs k times and average.

Two scoring modes, recorded on every result:
- `sampled` (the paper): the judge writes its reasoning and a "Score: n" line; we parse it.
- `constrained`: after the judge's reasoning we append "Score:" and read the model's own
  probabilities over 0-5 (expectation or argmax). Small models rarely follow the format, so
  this still yields scores; nothing is invented, the number is the model's distribution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from selfreward.method.prompts import JUDGE_TEMPLATES

# constrained mode: the judge's reasoning, cut before any score it wrote itself, then "Score:" and P(0..5)
SCORE_READING = JUDGE_TEMPLATES["additive"].reading()
SCORE_OPTIONS = SCORE_READING.options


@dataclass
class Judgment:
    text: str  # the judge's raw output
    parsed: float | None  # the score written in the text, if readable
    score: float | None  # the score this mode uses
    probs: list[float] | None = None  # constrained mode: P(score = 0..5)
    option_mass: float | None = None  # constrained mode: raw probability mass on the six options


@dataclass
class JudgeResult:
    mode: str
    judgments: list[Judgment] = field(default_factory=list)

    @property
    def scores(self) -> list[float]:
        return [j.score for j in self.judgments if j.score is not None]

    @property
    def score(self) -> float | None:
        """The mean over readable judgments; None when none was readable."""
        scores = self.scores
        return sum(scores) / len(scores) if scores else None

    @property
    def failures(self) -> int:
        return sum(j.score is None for j in self.judgments)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "score": self.score, "failures": self.failures,
                "judgments": [asdict(j) for j in self.judgments]}


def reduce_probs(probs: list[float], how: str) -> float:
    if how == "argmax":
        return float(max(range(len(probs)), key=probs.__getitem__))
    return float(sum(score * p for score, p in enumerate(probs)))


def score_responses(backend, chat, items: list[tuple[str, str]], judge_cfg, seed: int = 0,
                    desc: str = "judging") -> list[JudgeResult]:
    """Judge each (prompt, response) judge_cfg.samples times."""
    template = JUDGE_TEMPLATES[judge_cfg.prompt]
    prompts = [chat.prompt(template.prompt(p, r)) for p, r in items]
    constrained = judge_cfg.mode == "constrained"
    outputs = backend.generate(prompts, n=judge_cfg.samples, temperature=judge_cfg.temperature,
                               top_p=judge_cfg.top_p, max_new_tokens=judge_cfg.max_new_tokens, seed=seed, desc=desc,
                               reading=template.reading() if constrained else None)
    results = []
    for completions in outputs:
        judgments = [Judgment(text=c.text, parsed=template.score(c.text), score=None) for c in completions]
        for j, c in zip(judgments, completions, strict=True):
            if constrained:
                j.probs, j.option_mass = c.probs, c.option_mass
                j.score = None if c.probs is None else reduce_probs(c.probs, judge_cfg.constrained_reduce)
            else:
                j.score = j.parsed
        results.append(JudgeResult(mode=_mode_name(judge_cfg), judgments=judgments))
    return results


def score_groups(backend, chat, groups: list[tuple[str, list[str]]], judge_cfg, seed: int = 0,
                 desc: str = "judging") -> list[list[JudgeResult]]:
    """`score_responses` for several responses per prompt, in one call (one batch stream, shared
    prefills); the results come back grouped as the responses were."""
    flat = iter(score_responses(backend, chat, [(prompt, r) for prompt, responses in groups for r in responses],
                                judge_cfg, seed=seed, desc=desc))
    return [[next(flat) for _ in responses] for _, responses in groups]


def ranked_rows(backend, chat, threads: list[dict], judge_cfg, seed: int = 0, desc: str = "judging") -> list[dict]:
    """Every ranked reply of each thread judged; one row per prompt with the human ranks beside the
    scores. The reward-model metrics and the EFT agreement filter both read these rows."""
    judged = score_groups(backend, chat, [(t["prompt"], [r["text"] for r in t["replies"]]) for t in threads],
                          judge_cfg, seed=seed, desc=desc)
    return [{"prompt_id": t["prompt_id"], "ranks": [r["rank"] for r in t["replies"]],
             "scores": [j.score for j in results], "judgments": sum(len(j.judgments) for j in results),
             "failures": sum(j.failures for j in results), "mode": results[0].mode,
             "results": [j.to_dict() for j in results]} for t, results in zip(threads, judged, strict=True)]


def _mode_name(judge_cfg) -> str:
    return "sampled" if judge_cfg.mode == "sampled" else f"constrained-{judge_cfg.constrained_reduce}"

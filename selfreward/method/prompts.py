"""Prompt templates as data, their parsers, the self-instruction prompt and the prompt filters.

A judge template holds its text (a plain format string, read and diffed by name), its score range, the
rule that cuts a judgment's reasoning from its score line, and its parser. Parsers are small pure
functions that return None when they cannot read their input unambiguously: a failed parse is never a
score of 0. This module may import `generation.contract` (the `Reading` a constrained judge asks for).
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from selfreward.generation.contract import Reading, cut_before

# ---------------------------------------------------------------- judge prompts

ADDITIVE_JUDGE = """\
Review the user's question and the response below, and grade the response with the additive \
5-point system described here. Points add up: give each point only when its condition holds.

- Add 1 point if the response is relevant to the question and offers some related information, \
even if it is incomplete or contains some irrelevant content.
- Add a 2nd point if the response covers a substantial part of the question, but does not fully \
resolve it or give a direct answer.
- Add a 3rd point if the response answers the basic elements of the question in a useful way, \
whether or not it reads like an AI assistant or has the polish of a blog or search result.
- Add a 4th point if the response is clearly written from an AI assistant's perspective, \
addresses the question directly and comprehensively, and is well organised and helpful, even \
if clarity, concision or focus could still improve.
- Add a 5th point if the response is impeccably tailored to the question, free of extraneous \
content, and reflects expert knowledge in a high-quality, engaging and insightful answer.

User: {prompt}

<response>{response}</response>

After examining the question and the response:
- Briefly justify your total score, in at most 100 words.
- Finish with the score in the format: "Score: <total points>"
"""

# The paper compares its additive prompt with a multiple-choice style prompt (worse).
MULTIPLE_CHOICE_JUDGE = """\
Read the user's question and the response below, then choose the option that best describes \
the response.

User: {prompt}

<response>{response}</response>

Options:
0. The response is irrelevant or empty.
1. The response is related to the question but gives little useful information.
2. The response covers part of the question but misses important parts.
3. The response answers the basic elements of the question.
4. The response is direct, complete, well organised and helpful.
5. The response is excellent: expert, precise and perfectly tailored to the question.

Explain your choice in at most 100 words, then finish with "Score: <option number>".
"""

SCORE_PREFIX = "Score: "
MAX_SCORE = 5


# "Score: 4", "score: 3.5", "Score: **4**/5", "Score: 5 out of 5"; the label is required.
_SCORE = re.compile(
    r"score\s*[:=]\s*\**\s*(?P<value>-?\d+(?:\.\d+)?)(?P<tail>\s*\**\s*(?:/|out\s+of)\s*(?P<scale>\d+))?",
    re.IGNORECASE,
)
# A number that continues as a range ("3-4") or a decimal comma ("2,5") is not read.
_AMBIGUOUS_CONTINUATION = re.compile(r"^\s*(?:[-–]\s*\d|,\d)")


def parse_score(text: str, max_score: int = MAX_SCORE) -> float | None:
    """The judge's score from free text, or None if absent, out of range or contradictory."""
    if not text:
        return None
    values = []
    for match in _SCORE.finditer(text):
        rest = text[match.end("value"):]
        if match.group("tail") is None and _AMBIGUOUS_CONTINUATION.match(rest):
            return None
        scale = match.group("scale")
        if scale is not None and int(scale) != max_score:
            return None  # "4/10" is on another scale: not ours to convert
        value = float(match.group("value"))
        if not 0 <= value <= max_score:
            return None
        values.append(value)
    if not values or len(set(values)) > 1:
        return None
    return values[0]


SCORE_CUT = r"score\s*[:=]"  # where a judgment's reasoning ends and its score line begins


@dataclass(frozen=True)
class ScoreTemplate:
    """A pointwise judge prompt as data: its text (with {prompt} and {response}), its integer score range,
    the line that ends a judgment with its score, where the reasoning ends (`cut`) and the score parser."""

    name: str
    text: str
    parse: Callable[[str, int], float | None] = parse_score
    low: int = 0
    high: int = MAX_SCORE
    score_line: str = SCORE_PREFIX
    cut: str = SCORE_CUT

    def prompt(self, prompt: str, response: str) -> str:
        return self.text.format(prompt=prompt.strip(), response=response.strip())

    def score(self, judgment: str) -> float | None:
        """The score the judge wrote, or None."""
        return self.parse(judgment, self.high)

    def reasoning(self, judgment: str) -> str:
        """The judgment without any score line it wrote (the cut rule, `generation.contract.cut_before`)."""
        return cut_before(judgment, self.cut)

    def target(self, judgment: str, score: int) -> str:
        """An EFT training target: the reasoning followed by the canonical score line."""
        return f"{self.reasoning(judgment)}\n{self.score_line}{score}"

    @property
    def options(self) -> list[str]:
        """The score tokens a constrained judge reads, as they follow the score line."""
        return [f" {d}" for d in range(self.low, self.high + 1)]

    def reading(self) -> Reading:
        """Constrained judging: the reasoning cut before any score it wrote, then the score line, then
        P(low..high); writing stops once the judge has written a score digit itself."""
        return Reading(suffix="\n" + self.score_line.rstrip(), options=self.options, cut=self.cut,
                       stop=self.cut + r"\s*\**\s*\d")


JUDGE_TEMPLATES = {"additive": ScoreTemplate("additive", ADDITIVE_JUDGE),
                   "multiple_choice": ScoreTemplate("multiple_choice", MULTIPLE_CHOICE_JUDGE)}


def judge_prompt(prompt: str, response: str, template: str = "additive") -> str:
    return JUDGE_TEMPLATES[template].prompt(prompt, response)


# ---------------------------------------------------------------- self-instruction

SELF_INSTRUCT_HEADER = (
    "Below are tasks that people have asked an AI assistant. Each task is a complete request "
    "written by a user. Write one new task, different from the others.\n\n"
)
TASK_MARKER = "Task {n}:"


def self_instruct_prompt(examples: list[str]) -> str:
    """A few-shot prompt that ends where the model should write task number len(examples)+1."""
    lines = [SELF_INSTRUCT_HEADER]
    for i, example in enumerate(examples, start=1):
        lines.append(f"{TASK_MARKER.format(n=i)} {example.strip()}\n\n")
    lines.append(TASK_MARKER.format(n=len(examples) + 1))
    return "".join(lines)


def sample_shots(seed_prompts: list[str], generated: list[str], seed_shots: int, generated_shots: int,
                 rng: random.Random) -> list[str]:
    """6 seed + 2 previously generated examples in the paper; fewer generated ones early on."""
    from_generated = rng.sample(generated, min(generated_shots, len(generated)))
    from_seed = rng.sample(seed_prompts, min(seed_shots + generated_shots - len(from_generated), len(seed_prompts)))
    shots = from_seed + from_generated
    rng.shuffle(shots)
    return shots


# the next "Task N:" marker, a bare "Task" where generation stopped on it, or a run of blank lines
_NEXT_TASK = re.compile(r"\n\s*Task\s*\d+\s*:|\n\s*Task\s*$|\n\s*\n\s*\n")


def extract_new_prompt(generated: str) -> str:
    """The new task text: everything up to the next 'Task N:' marker (or a run of blank lines)."""
    match = _NEXT_TASK.search(generated)
    text = generated[: match.start()] if match else generated
    return text.strip()


# ---------------------------------------------------------------- prompt filters

# whole words only: a text model cannot see or make pictures, sounds or videos (as in Self-Instruct)
BLOCKED_KEYWORDS = ("image", "images", "picture", "pictures", "photo", "photos", "draw", "video", "videos",
                    "audio", "diagram", "flowchart")
_TEMPLATE_RESIDUE = re.compile(r"\btask\s*\d+\s*:", re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(a: str | list[str], b: str | list[str]) -> float:
    """ROUGE-L F1 between two texts (word level, lowercase)."""
    wa = words(a) if isinstance(a, str) else a
    wb = words(b) if isinstance(b, str) else b
    if not wa or not wb:
        return 0.0
    lcs = _lcs_length(wa, wb)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(wa), lcs / len(wb)
    return 2 * precision * recall / (precision + recall)


def _unigram_f1(ca: Counter, na: int, cb: Counter, nb: int) -> float:
    overlap = sum((ca & cb).values())
    return 0.0 if overlap == 0 else 2 * overlap / (na + nb)


class NearDuplicateIndex:
    """Texts seen so far; ROUGE-L is bounded by unigram overlap, which prunes most comparisons."""

    def __init__(self, texts=(), threshold: float = 0.7):
        self.threshold = threshold
        self._items: list[tuple[list[str], Counter]] = []
        for text in texts:
            self.add(text)

    def add(self, text: str):
        tokens = words(text)
        self._items.append((tokens, Counter(tokens)))

    def most_similar(self, text: str) -> float:
        tokens = words(text)
        counts, best = Counter(tokens), 0.0
        for other, other_counts in self._items:
            if _unigram_f1(counts, len(tokens), other_counts, len(other)) < max(best, self.threshold):
                continue
            best = max(best, rouge_l(tokens, other))
        return best


@dataclass
class PromptCheck:
    kept: bool
    reason: str  # "kept" or why it was dropped
    similarity: float = 0.0


def check_prompt(text: str, index: NearDuplicateIndex, min_words: int, max_words: int) -> PromptCheck:
    """Self-Instruct-style filters: empty, length, garbled, keywords, near-duplicates."""
    tokens = words(text)
    if not text.strip():
        return PromptCheck(False, "empty")
    if len(tokens) < min_words:
        return PromptCheck(False, "too_short")
    if len(tokens) > max_words:
        return PromptCheck(False, "too_long")
    visible = [c for c in text if not c.isspace()]
    if sum(c.isalpha() for c in visible) < 0.6 * len(visible):
        return PromptCheck(False, "garbled")
    if Counter(tokens).most_common(1)[0][1] > max(3, len(tokens) // 3):
        return PromptCheck(False, "repetitive")
    lowered = text.lower()
    if any(re.search(rf"\b{re.escape(keyword)}\b", lowered) for keyword in BLOCKED_KEYWORDS):
        return PromptCheck(False, "keyword")
    if _TEMPLATE_RESIDUE.search(text):
        return PromptCheck(False, "template")
    similarity = index.most_similar(text)
    if similarity >= index.threshold:
        return PromptCheck(False, "near_duplicate", similarity)
    return PromptCheck(True, "kept", similarity)


# ---------------------------------------------------------------- pairwise (head-to-head) judging

PAIRWISE_JUDGE = """\
You are comparing two responses that AI assistants wrote for the same user instruction. Decide \
which response follows the instruction better: more helpful, accurate, relevant and complete. \
The order in which they appear and their length are not reasons to prefer one.

Instruction:
{instruction}

Output (a):
{output_a}

Output (b):
{output_b}

Which output is better? Answer with exactly "Output (a)" or "Output (b)".
"""
_VERDICT = re.compile(r"output\s*\(\s*([ab])\s*\)", re.IGNORECASE)


def parse_preference(text: str) -> str | None:
    """'a' or 'b' from a pairwise verdict; None when absent or when both are named."""
    found = {m.lower() for m in _VERDICT.findall(text or "")}
    if len(found) == 1:
        return found.pop()
    bare = (text or "").strip().strip(".()\"' ").lower()
    return bare if bare in ("a", "b") else None


@dataclass(frozen=True)
class PairwiseTemplate:
    """A pairwise judge prompt as data: its text, its two options, the answer prefix after which a
    constrained judge's P(a) vs P(b) is read, and the verdict parser."""

    text: str
    options: tuple[str, str] = ("a", "b")
    answer_prefix: str = "Output ("
    parse: Callable[[str], str | None] = parse_preference

    def prompt(self, instruction: str, output_a: str, output_b: str) -> str:
        return self.text.format(instruction=instruction.strip(), output_a=output_a.strip(), output_b=output_b.strip())


PAIRWISE = PairwiseTemplate(PAIRWISE_JUDGE)

# the meta-judge (Meta-Rewarding, Wu et al., 2024): the model compares two of its own judgments of one reply
META_JUDGE_TEXT = """\
Below are a user's question, a response to it, and two judgments of that response, each written by a judge \
that graded the response with an additive 5-point system (a point each for relevance, for covering a \
substantial part of the question, for answering its basic elements usefully, for a direct and well \
organised answer, and for an impeccably tailored, expert one). Decide which judgment is more accurate: \
which reasons more faithfully from the response to its score. The order of the judgments is not a reason \
to prefer one.

User: {prompt}

<response>{response}</response>

Judgment (a):
{judgment_a}

Judgment (b):
{judgment_b}

Which judgment is more accurate? Answer with exactly "Judgment (a)" or "Judgment (b)".
"""


@dataclass(frozen=True)
class MetaJudgeTemplate:
    """The meta-judge's prompt as data: its text, its two options and the answer prefix to read after."""

    text: str
    options: tuple[str, str] = ("a", "b")
    answer_prefix: str = "Judgment ("

    def prompt(self, prompt: str, response: str, judgment_a: str, judgment_b: str) -> str:
        return self.text.format(prompt=prompt.strip(), response=response.strip(), judgment_a=judgment_a.strip(),
                                judgment_b=judgment_b.strip())


META_JUDGE = MetaJudgeTemplate(META_JUDGE_TEXT)


# ---------------------------------------------------------------- MT-Bench single-answer grading

MT_BENCH_JUDGE = """\
You are an impartial judge of an AI assistant's answer to a user's question. Consider how helpful, \
relevant, accurate, deep, creative and detailed the answer is{reference_note}. Begin with a short \
explanation, as objective as you can make it, then rate the answer on a scale of 1 to 10, written \
exactly in this form: "Rating: [[5]]".

[Question]
{question}

[The assistant's answer]
{answer}
"""

MT_BENCH_JUDGE_SECOND_TURN = """\
You are an impartial judge of an AI assistant's answers in a conversation with a user. Rate only the \
assistant's answer to the user's SECOND question, in the light of the whole conversation. Consider how \
helpful, relevant, accurate, deep, creative and detailed it is. Begin with a short explanation, as \
objective as you can make it, then rate that answer on a scale of 1 to 10, written exactly in this \
form: "Rating: [[5]]".

[First question]
{question_1}

[The assistant's first answer]
{answer_1}

[Second question]
{question_2}

[The assistant's second answer]
{answer_2}
"""
MAX_RATING = 10
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_rating(text: str) -> float | None:
    """The judge's [[rating]] (1-10), or None when absent, out of range, or when it gave different ones."""
    values = {float(v) for v in _RATING.findall(text or "")}
    if len(values) != 1:
        return None
    value = values.pop()
    return value if 1 <= value <= MAX_RATING else None


@dataclass(frozen=True)
class RatingTemplate:
    """Single-answer grading as data (MT-Bench): the first- and second-turn texts, the rating range, the
    answer prefix after which a constrained judge's rating digits are read, and the rating parser."""

    first_turn: str
    second_turn: str
    low: int = 1
    high: int = MAX_RATING
    answer_prefix: str = "Rating: [["
    parse: Callable[[str], float | None] = parse_rating

    def prompt(self, questions: list[str], answers: list[str]) -> str:
        """The grading prompt for the last turn of a one- or two-turn exchange."""
        if len(questions) == 1:
            return self.first_turn.format(question=questions[0].strip(), answer=answers[0].strip(), reference_note="")
        return self.second_turn.format(question_1=questions[0].strip(), answer_1=answers[0].strip(),
                                       question_2=questions[1].strip(), answer_2=answers[1].strip())


MT_BENCH_RATING = RatingTemplate(MT_BENCH_JUDGE, MT_BENCH_JUDGE_SECOND_TURN)

"""The backend contract: everything the rest of selfreward asks of a generation engine.

A backend turns prompt strings into completions (`generate`, optionally with a constrained `Reading`),
reads next-token probabilities over a few options (`option_probs`), and scores continuations
(`continuation_logprobs`). Callers also read `batch_size` and `tokens_generated` and call `release()`
when done. `Backend` implements what all engines share (tokenisation of options and continuations, the
second-pass reading); each engine (`plain`, `fast`, `vllm`) subclasses it and fills in the rest.
`CONTRACT` names every member a caller may use: tests check that each engine has all of them and that
no caller uses anything else. Each engine's module registers it (`register_engine`: its name, how it loads a
model folder, why it cannot run here), and `generation.load_backend` looks it up by `generation.backend`.

This module imports nothing of selfreward: engines import it, never the other way round.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

# every attribute and method that code outside selfreward.generation uses on a backend
CONTRACT = ("batch_size", "tokens_generated", "tokenizer", "generate", "option_probs", "continuation_logprobs",
            "release")


@dataclass
class Completion:
    text: str
    num_tokens: int
    finished: bool  # ended at a stop token or stop pattern rather than at the length limit
    probs: list[float] | None = None  # with a `Reading`: P(option) after the text and the suffix, renormalised
    option_mass: float | None = None  # with a `Reading`: the raw probability mass on the options
    kept_ids: list[int] | None = None  # with a `Reading` in the fast engine: the written tokens it read after


def cut_before(text: str, pattern: str) -> str:
    """`text` up to the first match of `pattern` (case-insensitive), without trailing spaces: a judgment's
    reasoning without the score line it may have written. The one definition of the cut."""
    match = re.search(pattern, text, re.IGNORECASE)
    return (text[:match.start()] if match else text).rstrip()


@dataclass(frozen=True)
class Reading:
    """What constrained judging asks of `generate`: after the text, cut where `cut` first matches (a score
    the judge wrote itself) and stripped of trailing spaces, append `suffix` and read the probabilities of
    the next token over `options`. Writing stops once `stop` matches: what follows cannot change the
    reading."""

    suffix: str
    options: list[str]
    cut: str  # regular expression, case-insensitive
    stop: str | None = None  # regular expression, case-insensitive

    def kept_text(self, text: str) -> str:
        return cut_before(text, self.cut)


class Backend:
    """What every engine shares. Subclasses implement `_generate`, `option_probs`, `continuation_logprobs`
    and `release`, and set `reads_while_generating` when `_generate` fills in a `Reading` itself."""

    reads_while_generating = False  # False: a `Reading` is a second pass over prompt + kept text + suffix

    def __init__(self, tokenizer, stop_ids: list[int], batch_size: int = 16, tokens_per_row: int = 512):
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.batch_size = batch_size  # rows generated together (prompts x samples)
        self.tokens_per_row = tokens_per_row  # a batch holds at most batch_size x this many padded tokens
        self.tokens_generated = 0  # for stage statistics
        self.tokenizer.padding_side = "left"  # decoder-only generation needs left padding

    def generate(self, prompts, *, n=1, temperature=0.7, top_p=0.9, max_new_tokens=256, seed=0,
                 desc="generating", stop_strings=None, reading: Reading | None = None) -> list[list[Completion]]:
        """n completions of each prompt; with a `Reading`, each also carries its option probabilities."""
        results = self._generate(prompts, n, temperature, top_p, max_new_tokens, seed, desc, stop_strings, reading)
        if reading is not None and not self.reads_while_generating:
            flat = [(prompt, c) for prompt, cs in zip(prompts, results, strict=True) for c in cs]
            prefixes = [f"{prompt}{reading.kept_text(c.text)}{reading.suffix}" for prompt, c in flat]
            for (_, c), (probs, mass) in zip(flat, self.option_probs(prefixes, reading.options), strict=True):
                c.probs, c.option_mass = probs, mass
        return results

    def _generate(self, prompts, n, temperature, top_p, max_new_tokens, seed, desc, stop_strings, reading):
        raise NotImplementedError

    def option_probs(self, prefixes: list[str], options: list[str]) -> list[tuple[list[float] | None, float]]:
        """For each prefix: the probabilities of the options (renormalised) and their total raw mass."""
        raise NotImplementedError

    def continuation_logprobs(self, items: list[tuple[str, str]], max_tokens: int = 0,
                              desc: str = "log-likelihoods") -> list[tuple[float, int]]:
        """For each (prefix, continuation): the summed log-probability of the continuation's tokens given
        the prefix, and how many tokens that is (the first `max_tokens` of the continuation when > 0)."""
        raise NotImplementedError

    def release(self):
        """Free the model (and its memory) before the next model or training needs it."""
        raise NotImplementedError

    def option_token_ids(self, prefix: str, options: list[str]) -> tuple[list[int], list[int]]:
        """Token ids of the shared prefix and of the one token each option adds after it."""
        encoded = [self.tokenizer(prefix + option).input_ids for option in options]
        common = 0
        while all(len(e) > common for e in encoded) and len({e[common] for e in encoded}) == 1:
            common += 1
        if any(len(e) != common + 1 for e in encoded):
            raise ValueError(f"options {options} are not single tokens after the prefix for this tokenizer")
        return encoded[0][:common], [e[common] for e in encoded]

    def continuation_rows(self, items: list[tuple[str, str]], max_tokens: int = 0) -> list[tuple[list[int], int]]:
        """Each (prefix, continuation) as its token ids (the continuation cut to `max_tokens` when > 0) and
        the position where the continuation's tokens begin."""
        rows = []
        for prefix, continuation in items:
            start = self.tokenizer(prefix).input_ids
            full = self.tokenizer(prefix + continuation).input_ids
            boundary = common_prefix_length([start + [-1], full + [-2]])  # where the two tokenisations part
            end = len(full) if not max_tokens else min(len(full), boundary + max_tokens)
            rows.append((full[:end], boundary))
        return rows


def normalised_options(probabilities: list[float]) -> tuple[list[float] | None, float]:
    """The options' probabilities renormalised, and their raw mass; no mass at all (underflow, or options
    the engine did not return) reads as nothing (None), never as a uniform guess."""
    mass = float(sum(probabilities))
    return ([p / mass for p in probabilities] if mass > 0 else None), mass


def common_prefix_length(rows: list[list[int]]) -> int:
    """Tokens all rows begin with, leaving each row at least one token of its own."""
    shortest = min(len(r) for r in rows) - 1
    length = 0
    while length < shortest and all(r[length] == rows[0][length] for r in rows):
        length += 1
    return length


def similar_lengths(lengths: list[int], slack: float = 1.25) -> list[list[int]]:
    """Positions grouped by length so that right-padding a group to its longest member costs at most
    `slack` times its real tokens."""
    groups: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and lengths[index] * (len(current) + 1) > slack * (sum(lengths[i] for i in current) + lengths[index]):
            groups.append(current)
            current = []
        current.append(index)
    return groups + [current] if current else groups


def length_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Positions in batches of at most `size` whose lengths are similar (`similar_lengths`): one long text
    neither pads nor is padded by texts of half its length."""
    return [group[start:start + size] for group in similar_lengths(lengths) for start in range(0, len(group), size)]


BATCH_TOKENS_PER_PROMPT = 512  # a batch of generation.batch_size prompts is sized for prompts of this length
# (generation.tokens_per_row changes it: its memory, the KV cache and a prefill's activations, scales with it)


def budget_batches(lengths: list[int], size: int, tokens_per_prompt: int = BATCH_TOKENS_PER_PROMPT) -> list[list[int]]:
    """Positions in order of length, in batches of at most `size` whose padded tokens (each row padded to the
    batch's longest) stay within `size` x `tokens_per_prompt`: short prompts fill whole batches (a decode step
    costs about as much for a few rows as for many), long ones go in fewer rows, so that a long judge prompt
    pads few others and a batch's memory stays bounded."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) == size or (len(current) + 1) * lengths[index] > size * tokens_per_prompt):
            batches.append(current)
            current = []
        current.append(index)
    return batches + [current] if current else batches


# ---------------------------------------------------------------- the engines, registered by their modules

@dataclass(frozen=True)
class Engine:
    """A generation engine as `generation.backend` names it: how it loads a model folder as a `Backend`, and
    why it cannot run on this machine (one line), if it cannot."""
    name: str
    load: Callable  # (model folder, config, tokenizer, stop token ids) -> Backend
    unavailable: Callable[[], str | None] = lambda: None


ENGINES: dict[str, Engine] = {}


def register_engine(engine: Engine) -> Engine:
    ENGINES[engine.name] = engine
    return engine

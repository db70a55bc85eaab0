"""Batched sampling behind a small backend interface.

A backend turns prompt strings into completions (`generate`) and reads next-token probabilities
over a few options (`option_probs`, for constrained judging). `TransformersBackend` is plain
`model.generate`; `FastBackend` is selfreward's own decode loop with the same outputs.
`loaded_backend` loads one for a model folder and frees it when the block ends.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import gc
import inspect
import re
from dataclasses import dataclass

import torch
from tqdm import tqdm  # text bars: papermill streams them to the log

from selfreward import models
from selfreward.models import head_logits, selected_logprobs


@dataclass
class Completion:
    text: str
    num_tokens: int
    finished: bool  # ended at a stop token or stop pattern rather than at the length limit
    probs: list[float] | None = None  # with a `Reading`: P(option) after the text and the suffix, renormalised
    option_mass: float | None = None  # with a `Reading`: the raw probability mass on the options
    kept_ids: list[int] | None = None  # with a `Reading` in the fast engine: the written tokens it read after


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
        match = re.search(self.cut, text, re.IGNORECASE)
        return (text[:match.start()] if match else text).rstrip()


class TransformersBackend:
    reads_while_generating = False  # a `Reading` is a second pass over the text

    def __init__(self, model, tokenizer, stop_ids: list[int], batch_size: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.batch_size = batch_size
        self.tokens_generated = 0  # for stage statistics
        self.tokenizer.padding_side = "left"  # decoder-only generation needs left padding

    @property
    def device(self):
        return self.model.device

    def release(self):
        """Drop the model so that its memory can be freed (see `loaded_backend`)."""
        self.model = None

    @torch.no_grad()
    def generate(self, prompts, *, n=1, temperature=0.7, top_p=0.9, max_new_tokens=256, seed=0,
                 desc="generating", stop_strings=None, reading: Reading | None = None) -> list[list[Completion]]:
        """n completions of each prompt; with a `Reading`, each also carries its option probabilities."""
        results = self._generate(prompts, n, temperature, top_p, max_new_tokens, seed, desc, stop_strings, reading)
        if reading is not None and not self.reads_while_generating:
            # the plain engine reads in a second pass, from the text: prompt, kept text, suffix
            flat = [(prompt, c) for prompt, cs in zip(prompts, results) for c in cs]
            prefixes = [f"{prompt}{reading.kept_text(c.text)}{reading.suffix}" for prompt, c in flat]
            for (_, c), (probs, mass) in zip(flat, self.option_probs(prefixes, reading.options)):
                c.probs, c.option_mass = probs, mass
        return results

    def _generate(self, prompts, n, temperature, top_p, max_new_tokens, seed, desc, stop_strings, reading):
        results: list[list[Completion] | None] = [None] * len(prompts)
        # similar lengths together waste less padding; results go back in the input order
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_batch = max(1, self.batch_size // n)
        with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
            for batch_no, start in enumerate(range(0, len(order), per_batch)):
                index = order[start:start + per_batch]
                batch = self.tokenizer([prompts[i] for i in index], return_tensors="pt", padding=True).to(self.device)
                rows = self._generate_batch(batch, n, temperature, top_p, max_new_tokens, seed + batch_no,
                                            stop_strings, reading)
                for row, completion in enumerate(rows):
                    self.tokens_generated += completion.num_tokens
                    slot = index[row // n]
                    results[slot] = (results[slot] or []) + [completion]
                bar.update(len(index))
        return results

    def _generate_batch(self, batch, n, temperature, top_p, max_new_tokens, seed, stop_strings,
                        reading) -> list[Completion]:
        """n completions per prompt, with plain `model.generate` (a reading is done afterwards)."""
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 \
            else dict(do_sample=False)
        if stop_strings:  # text-level stops (e.g. the next few-shot marker) save wasted tokens
            sampling.update(stop_strings=stop_strings, tokenizer=self.tokenizer)
        torch.manual_seed(seed)  # reproducible batch by batch
        output = self.model.generate(
            **batch, max_new_tokens=max_new_tokens, num_return_sequences=n,
            eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id, top_k=None, **sampling)
        return [self._completion(tokens) for tokens in output[:, batch["input_ids"].shape[1]:].tolist()]

    def _completion(self, tokens: list[int]) -> Completion:
        stop = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
        kept = tokens if stop is None else tokens[:stop]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(text=text.strip(), num_tokens=len(kept) + (stop is not None), finished=stop is not None)

    def option_token_ids(self, prefix: str, options: list[str]) -> tuple[list[int], list[int]]:
        """Token ids of the shared prefix and of the one token each option adds after it."""
        encoded = [self.tokenizer(prefix + option).input_ids for option in options]
        common = 0
        while all(len(e) > common for e in encoded) and len({e[common] for e in encoded}) == 1:
            common += 1
        if any(len(e) != common + 1 for e in encoded):
            raise ValueError(f"options {options} are not single tokens after the prefix for this tokenizer")
        return encoded[0][:common], [e[common] for e in encoded]

    @torch.no_grad()
    def option_probs(self, prefixes, options):
        """For each prefix: the probabilities of the options (renormalised) and their total raw mass."""
        results = []
        for start in tqdm(range(0, len(prefixes), self.batch_size), desc="reading scores", unit="batch"):
            chunk = [self.option_token_ids(p, options) for p in prefixes[start:start + self.batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in chunk], device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
            logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=1).logits[:, -1]
            probs = logits.float().softmax(-1)
            results += [_read_options(probs[row], option_ids) for row, (_, option_ids) in enumerate(chunk)]
        return results


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

    @torch.no_grad()
    def continuation_logprobs(self, items: list[tuple[str, str]], max_tokens: int = 0,
                              desc: str = "log-likelihoods") -> list[tuple[float, int]]:
        """For each (prefix, continuation): the summed log-probability of the continuation's tokens given the
        prefix, and how many tokens that is (the first `max_tokens` of the continuation when > 0). The
        output layer runs at those tokens only."""
        rows = self.continuation_rows(items, max_tokens)
        results: list = [None] * len(rows)
        # batches of similar length: one long prompt must not pad every other text of its batch to its length
        batches = [group[start:start + self.batch_size] for group in similar_lengths([len(r[0]) for r in rows])
                   for start in range(0, len(group), self.batch_size)]
        pad, decoder = self.tokenizer.pad_token_id, self.model.get_decoder()
        with tqdm(total=len(rows), desc=desc, unit="text") as bar:
            for batch in batches:
                width = max(len(rows[i][0]) for i in batch)
                ids = torch.tensor([rows[i][0] + [pad] * (width - len(rows[i][0])) for i in batch], device=self.device)
                mask = torch.tensor([[1] * len(rows[i][0]) + [0] * (width - len(rows[i][0])) for i in batch],
                                    device=self.device)
                hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                # the token at position p is predicted from the hidden state at p - 1
                where = [(r, p) for r, i in enumerate(batch) for p in range(max(rows[i][1], 1), len(rows[i][0]))]
                if where:
                    row_index = torch.tensor([r for r, _ in where], device=self.device)
                    position = torch.tensor([p for _, p in where], device=self.device)
                    logps = selected_logprobs(self.model, hidden[row_index, position - 1], ids[row_index, position])
                    sums = torch.zeros(len(batch), device=self.device).index_add_(0, row_index, logps)
                else:
                    sums = torch.zeros(len(batch), device=self.device)
                for r, i in enumerate(batch):
                    results[i] = (float(sums[r]), len(rows[i][0]) - max(rows[i][1], 1))
                bar.update(len(batch))
        return results


def _read_options(probs: torch.Tensor, option_ids: list[int]) -> tuple[list[float] | None, float]:
    p = probs[option_ids]
    mass = float(p.sum())
    # no probability on any option (underflow): nothing to read, not a uniform guess
    return ((p / p.sum()).tolist() if mass > 0 else None), mass


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


def shared_prefix_batches(rows: list[list[int]], batch_size: int, min_shared: int = 32) -> list[list[int]]:
    """Consecutive rows packed into batches that share one prefill. A batch is either a group, rows
    sharing at least `min_shared` tokens beyond the start all rows share (the k judgments of one
    candidate), or rows that share only that start (the judge instructions) and belong to no group."""
    common = common_prefix_length(rows)

    def shares(indices: list[int]) -> bool:
        return len(indices) > 1 and common_prefix_length([rows[i] for i in indices]) >= common + min_shared

    batches: list[list[int]] = []
    for index in range(len(rows)):
        batch = batches[-1] if batches else []
        if 0 < len(batch) < batch_size and (
                shares(batch + [index])
                or not (shares(batch) or shares([index, index + 1] if index + 1 < len(rows) else [index]))):
            batch.append(index)
        else:
            batches.append([index])
    return batches


def sample_top_p(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """Temperature then nucleus sampling, exactly as transformers' warpers define them, without
    sorting or normalising the whole vocabulary: the nucleus almost always lies in the top few dozen
    tokens, so we take a top-k window of the logits (their order is the probabilities' order) and widen
    it, for the rows that need it only, until it holds `top_p` of the mass. The vocabulary is passed
    over twice (its maximum, then the softmax normaliser); only the window is sorted."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    if top_p >= 1:
        return torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator).squeeze(-1)
    highest = logits.amax(-1, keepdim=True)
    log_normaliser = torch.sub(logits, highest).mul_(1 / temperature).exp_().sum(-1, keepdim=True).log_()
    vocab, k = logits.shape[-1], min(64, logits.shape[-1])
    choice = torch.empty(len(logits), dtype=torch.long, device=logits.device)
    rows = torch.arange(len(logits), device=logits.device)
    while True:
        every = len(rows) == len(logits)  # (no copy of the logits while every row is still in)
        top, index = (logits if every else logits[rows]).topk(k, dim=-1)
        top = ((top - highest[rows]) / temperature - log_normaliser[rows]).exp_()  # the window's probabilities
        ready = (top.sum(-1) >= top_p) | (k == vocab)
        if bool(ready.any()):
            # keep a token while the mass strictly above it is below top_p (the most likely is always kept)
            top, index = top[ready], index[ready]
            keep = (top.cumsum(-1) - top) < top_p
            choice[rows[ready]] = index.gather(-1, torch.multinomial(top * keep, 1, generator=generator)).squeeze(-1)
        rows = rows[~ready]
        if len(rows) == 0:
            return choice
        k = min(4 * k, vocab)


MIN_SHARED_PREFIX = 16  # tokens all prompts of a batch must share before their prefill is shared


@functools.cache
def _growing_layer_class():
    """A KV-cache layer that appends each step's keys and values into a buffer with room to spare (its
    capacity doubles when full), where transformers' DynamicLayer concatenates the whole cache anew on
    every decode step: a third of a decode step on a CPU once the judge prompt is 500 tokens long.
    Sliding-window layers keep every token too; their masks still apply the window (by position)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.length, self.key_buffer, self.value_buffer = 0, None, None
            end = self.length + key_states.shape[-2]
            if self.key_buffer is None or end > self.key_buffer.shape[-2]:
                capacity = max(end, 2 * self.length, 64)
                self.key_buffer, self.value_buffer = (
                    torch.cat([old[..., :self.length, :], new.new_empty(*new.shape[:-2], capacity - self.length,
                                                                        new.shape[-1])], dim=-2)
                    if old is not None else new.new_empty(*new.shape[:-2], capacity, new.shape[-1])
                    for old, new in ((self.key_buffer, key_states), (self.value_buffer, value_states)))
            self.key_buffer[..., self.length:end, :] = key_states
            self.value_buffer[..., self.length:end, :] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int):
            if self.is_initialized and self.length:
                self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
                self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
                self.keys, self.values = self.key_buffer[..., :self.length, :], self.value_buffer[..., :self.length, :]

        def batch_select_indices(self, indices: torch.Tensor):
            if self.is_initialized and self.length:
                self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
                self.keys, self.values = self.key_buffer[..., :self.length, :], self.value_buffer[..., :self.length, :]

    return GrowingLayer


@functools.cache
def _cache_argument(module_class) -> str:
    """transformers 5.x renamed forward's `past_key_values` to `cache` (the old name still works there,
    with a warning); read once per class, not on every decode step."""
    return "cache" if "cache" in inspect.signature(module_class.forward).parameters else "past_key_values"


class FastBackend(TransformersBackend):
    """A decode loop of our own around the model's forward pass. Same outputs as `generate` for
    greedy decoding and the same sampling distribution, but it
    - prefills each prompt once and shares that cache among its n samples (k judgments, N candidates),
    - samples the nucleus from a top-k window instead of sorting the 262k-token vocabulary,
    - drops finished sequences from the batch instead of decoding padding until the longest ends,
    - prefills the prefix all prompts of a batch share once (the judge instructions),
    - reads a `Reading` in the same pass, after the text it keeps, instead of prefilling again,
    - on a CPU in float32, computes a decode step's linear layers weight-major (`models.weight_major_linears`)."""

    reads_while_generating = True

    def _generate(self, *args):
        with models.weight_major_linears(self.model):
            return super()._generate(*args)

    def _forward(self, module, **inputs):
        """`module(**inputs)` with the KV cache passed under the name this transformers version uses."""
        inputs[_cache_argument(type(module))] = inputs.pop("kv_cache")
        return module(**inputs)

    def _generate_batch(self, batch, n, temperature, top_p, max_new_tokens, seed, stop_strings, reading):
        generator = torch.Generator(device=self.device).manual_seed(seed)
        rows = [ids[mask == 1].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        stops = [re.escape(s) for s in stop_strings or []] + ([reading.stop] if reading and reading.stop else [])
        stop = re.compile("|".join(stops), re.IGNORECASE) if stops else None
        # rows that a sliding window would see past their prompts go apart, so that one long prompt does not
        # stop the others from sharing their prefix (see `_prefill`)
        parts = self.window_parts(rows, max_new_tokens)
        results: list = [None] * (len(rows) * n)
        for part in parts:
            for j, completion in enumerate(self._decode([rows[i] for i in part], n, temperature, top_p,
                                                        max_new_tokens, generator, stop, reading)):
                results[part[j // n] * n + j % n] = completion
        return results

    def window_parts(self, rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Row indices in at most two parts: those within the sliding window (prompt and new tokens), and the
        longer ones, when both kinds are present; else one part."""
        window = self._sliding_window()
        within = [i for i, r in enumerate(rows) if not window or len(r) + max_new_tokens <= window]
        beyond = [i for i, r in enumerate(rows) if window and len(r) + max_new_tokens > window]
        return [within, beyond] if len(within) > 1 and beyond else [list(range(len(rows)))]

    def _sliding_window(self) -> int | None:
        return getattr(self.model.config.get_text_config(), "sliding_window", None)

    @torch.no_grad()
    def _prefill(self, rows: list[list[int]], budget: int):
        """Prefill a batch of prompts, the prefix they all share (judge instructions, a few-shot header)
        once. Returns the cache, the last logits, the attention mask and each row's next position.

        The rows' own tails are left-padded after the shared prefix, so a short row has a run of padding
        between its prefix and its tail. Attention masks it out, but a sliding-window layer counts its
        window in cache slots: the prefix is shared only when no row's window (`budget` more tokens
        included) can reach past that padding, else the batch is prefilled whole, padding first."""
        common = common_prefix_length(rows) if len(rows) > 1 else 0
        window = self._sliding_window()
        longest = max(len(r) for r in rows)
        if common < MIN_SHARED_PREFIX or (window and longest + budget > window
                                          and len({len(r) for r in rows}) > 1):
            common = 0
        cache = self._new_cache()
        if common:
            self._extend(cache, rows[0][:common], 0)
            cache.batch_repeat_interleave(len(rows))
        tails = [r[common:] for r in rows]
        width, pad = max(len(t) for t in tails), self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(t)) + t for t in tails], device=self.device)
        tail_mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in tails], device=self.device)
        mask = torch.cat([tail_mask.new_ones(len(rows), common), tail_mask], dim=1)
        positions = common + (tail_mask.cumsum(-1) - 1).clamp(min=0)  # padding must not shift positions
        hidden = self._forward(self.model.get_decoder(), input_ids=ids, attention_mask=mask, position_ids=positions,
                               cache_position=torch.arange(common, common + width, device=self.device),
                               kv_cache=cache, use_cache=True).last_hidden_state[:, -1]
        return cache, head_logits(self.model, hidden), mask, positions[:, -1] + 1

    @torch.no_grad()
    def _decode(self, rows, n, temperature, top_p, max_new_tokens, generator, stop, reading):
        """Sample up to `max_new_tokens` per row, n rows per prompt. With a `reading`, a row that has
        finished writing does not leave the batch yet: the tokens its text loses to the cut are masked
        out, the suffix is fed after the kept tokens, and the option probabilities are read from the
        logits that follow; no prompt is prefilled a second time. (Past a sliding window, the few masked
        tokens still count in its slots: there the reading sees a window as many tokens shorter.)"""
        cache, logits, mask, next_position = self._prefill(rows, max_new_tokens)
        if n > 1:  # one prefill, n continuations
            cache.batch_repeat_interleave(n)
            mask, logits, next_position = (t.repeat_interleave(n, dim=0) for t in (mask, logits, next_position))
        width, count = mask.shape[1], mask.shape[0]
        start_position = next_position.clone()
        alive = list(range(count))
        generated: list[list[int]] = [[] for _ in range(count)]
        finished = [False] * count
        forced: list[list[int] | None] = [None] * count  # tokens a reading row still has to feed
        readings: list[tuple | None] = [None] * count
        kept_ids: list[list[int] | None] = [None] * count
        if reading is not None:
            suffix = self.tokenizer(reading.suffix, add_special_tokens=False).input_ids
            option_ids = self.option_token_ids(reading.suffix, reading.options)[1]
        for step in range(max_new_tokens + (len(suffix) + 1 if reading else 0)):
            sampled = sample_top_p(logits, temperature, top_p, generator).tolist()
            inputs, keep = [], []
            for i, row in enumerate(alive):
                if forced[row] is None:  # still writing
                    token = sampled[i]
                    generated[row].append(token)
                    at_stop_token = token in self.stop_ids
                    done = at_stop_token or (stop is not None and self._matches(generated[row], stop))
                    finished[row] = done
                    if not done and len(generated[row]) < max_new_tokens:
                        inputs.append(token)
                        keep.append(i)
                        continue
                    if reading is None:
                        continue
                    text_tokens = generated[row][:-1] if at_stop_token else generated[row]
                    kept = self._kept_length(text_tokens, reading)
                    kept_ids[row] = text_tokens[:kept]
                    fed = len(generated[row]) - 1  # the token sampled now has not been fed yet
                    mask[i, width + kept:width + fed] = 0  # what the cut removed, as if never written
                    next_position[i] = start_position[row] + min(kept, fed)
                    forced[row] = text_tokens[fed:kept] + suffix
                if forced[row]:
                    inputs.append(forced[row].pop(0))
                    keep.append(i)
                else:  # the suffix is in: these logits are the reading
                    readings[row] = _read_options(logits[i].float().softmax(-1), option_ids)
            if not keep:
                break
            if len(keep) < len(alive):  # finished rows leave the batch
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, next_position = mask[index], next_position[index]
                alive = [alive[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            hidden = self._forward(self.model.get_decoder(), input_ids=torch.tensor(inputs, device=self.device)[:, None],
                                   attention_mask=mask, position_ids=next_position[:, None], kv_cache=cache,
                                   use_cache=True,
                                   cache_position=torch.tensor([width + step], device=self.device)).last_hidden_state
            logits = head_logits(self.model, hidden[:, -1])
            next_position = next_position + 1
        completions = []
        for row, tokens in enumerate(generated):
            completion = self._completion(tokens)
            completion.finished = finished[row]
            if readings[row] is not None:
                completion.probs, completion.option_mass = readings[row]
                completion.kept_ids = kept_ids[row]
            completions.append(completion)
        return completions

    def _matches(self, tokens: list[int], stop: re.Pattern) -> bool:
        """Whether the end of the text matches a stop pattern (patterns are a few tokens long)."""
        return stop.search(self.tokenizer.decode(tokens[-12:], skip_special_tokens=True)) is not None

    def _kept_length(self, tokens: list[int], reading: Reading) -> int:
        """How many of the written tokens the reading keeps: the fewest whose text, stripped, is the
        kept text (the cut and trailing spaces removed)."""
        kept_text = reading.kept_text(self.tokenizer.decode(tokens, skip_special_tokens=True))
        for length in range(len(tokens) + 1):
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True).rstrip()
            if len(text) >= len(kept_text):
                return length
        return len(tokens)

    @torch.no_grad()
    def option_probs(self, prefixes, options):
        """As `TransformersBackend.option_probs`, but without prefilling the same tokens twice: the judge
        instructions all prefixes begin with are prefilled once per call, and the k judgments of one
        candidate share the prefill of its judge prompt. Only each row's own tail is computed per row,
        and the output layer runs on its last token only."""
        with models.weight_major_linears(self.model):
            return self._option_probs(prefixes, options)

    def _option_probs(self, prefixes, options):
        encoded = [self.option_token_ids(p, options) for p in prefixes]
        rows = [ids for ids, _ in encoded]
        common = common_prefix_length(rows)
        start = self._extend(self._new_cache(), rows[0][:common], 0)
        results: list = [None] * len(rows)
        with tqdm(total=len(rows), desc="reading scores", unit="judgment") as bar:
            for batch in shared_prefix_batches(rows, self.batch_size):
                shared = common_prefix_length([rows[i] for i in batch]) if len(batch) > 1 else common
                cache = self._extend(copy.deepcopy(start), rows[batch[0]][common:shared], common)
                tails = [rows[i][shared:] for i in batch]
                groups = similar_lengths([len(t) for t in tails])
                for group in groups:  # a short tail is not padded to a long one's length
                    group_cache = copy.deepcopy(cache) if len(groups) > 1 else cache
                    group_cache.batch_repeat_interleave(len(group))
                    last_hidden = self._last_hidden([tails[g] for g in group], group_cache, shared)
                    probs = head_logits(self.model, last_hidden).float().softmax(-1)
                    for row, g in enumerate(group):
                        results[batch[g]] = _read_options(probs[row], encoded[batch[g]][1])
                bar.update(len(batch))
        return results

    def _new_cache(self):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if hasattr(cache, "layers"):  # transformers' layered caches (4.56+): append in place instead of concatenating
            cache.layers = [_growing_layer_class()() for _ in cache.layers]
        return cache

    def _extend(self, cache, tokens: list[int], past: int):
        """Prefill `tokens` (one row) after `past` cached tokens; the output layer is not run."""
        if tokens:
            ids = torch.tensor([tokens], device=self.device)
            positions = torch.arange(past, past + len(tokens), device=self.device)
            mask = torch.ones(1, past + len(tokens), dtype=torch.long, device=self.device)
            self._forward(self.model.get_decoder(), input_ids=ids, attention_mask=mask, position_ids=positions[None],
                          cache_position=positions, kv_cache=cache, use_cache=True)
        return cache

    def _last_hidden(self, tails: list[list[int]], cache, past: int) -> torch.Tensor:
        """Each row's tail after the shared cache, right-padded; the hidden state of its last token."""
        width = max(len(t) for t in tails)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=self.device)
        tail_mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tails], device=self.device)
        mask = torch.cat([tail_mask.new_ones(len(tails), past), tail_mask], dim=1)
        positions = torch.arange(past, past + width, device=self.device)
        hidden = self._forward(self.model.get_decoder(), input_ids=ids, attention_mask=mask,
                               position_ids=positions.expand(len(tails), -1), cache_position=positions,
                               kv_cache=cache, use_cache=True).last_hidden_state
        last = torch.tensor([len(t) - 1 for t in tails], device=self.device)
        return hidden[torch.arange(len(tails), device=self.device), last]



def load_backend(path: str, cfg) -> tuple[TransformersBackend, models.ChatFormat]:
    """The generation engine of `cfg.generation.backend` for the model folder `path`, and its chat format."""
    tokenizer = models.load_tokenizer(path)
    chat = models.chat_format_for(tokenizer, cfg.model.chat_format)
    if cfg.generation.backend == "vllm":
        from selfreward.vllm_backend import VLLMBackend
        dtype = models.resolve_dtype(cfg.model.dtype, cfg.model.device)
        return VLLMBackend(path, tokenizer, models.stop_token_ids(tokenizer, chat), cfg.generation, dtype,
                           cfg.seed), chat
    model = models.load_model(path, dtype=cfg.model.dtype, device=cfg.model.device)
    engine = FastBackend if cfg.generation.backend == "fast" else TransformersBackend
    return engine(model, tokenizer, models.stop_token_ids(tokenizer, chat), cfg.generation.batch_size), chat


@contextlib.contextmanager
def loaded_backend(path: str, cfg):
    """`load_backend` for the length of a block; the model's memory is freed when it ends, before the
    next model (or training) needs it."""
    backend, chat = load_backend(path, cfg)
    try:
        yield backend, chat
    finally:
        backend.release()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

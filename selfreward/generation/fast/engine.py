"""The fast engine: selfreward's own decode loop around the model's forward pass, with the same outputs
as `generate` (greedy: token for token; sampling: the same law)."""
from __future__ import annotations

import contextlib
import copy
import re

import torch
from tqdm import tqdm  # text bars: papermill streams them to the log

from selfreward import models
from selfreward.memory import give_back_free_pages
from selfreward.generation.contract import Engine, Reading, common_prefix_length, register_engine, similar_lengths
from selfreward.generation.fast.cache import cache_argument, new_cache
from selfreward.generation.fast.kernels import (blocked_attention_for, head_logits, head_logprobs, sample_top_p,
                                                shared_prefix_batches, weight_major_linears)
from selfreward.generation.plain import TransformersBackend, read_options

MIN_SHARED_PREFIX = 16  # tokens all prompts of a batch must share before their prefill is shared


class FastBackend(TransformersBackend):
    """A decode loop of our own around the model's forward pass. Same outputs as `generate` for
    greedy decoding and the same sampling distribution, but it
    - prefills each prompt once and shares that cache among its n samples (k judgments, N candidates),
    - samples the nucleus from a top-k window instead of sorting the 262k-token vocabulary,
    - drops finished sequences from the batch instead of decoding padding until the longest ends,
    - prefills the prefix all prompts of a batch share once (the judge instructions),
    - reads a `Reading` in the same pass, after the text it keeps, instead of prefilling again,
    - on a CPU in float32, computes a decode step's linear layers weight-major (`weight_major_linears`),
    - on a CPU, attends block by block of queries in long prefills (`blocked_attention_for`),
    - reads log-likelihoods with the output layer a vocabulary block at a time (`head_logprobs`)."""

    reads_while_generating = True

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return head_logits(self.model, hidden)

    def _chunk_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(target) of a chunk of rows, the output layer a vocabulary block at a time (`head_logprobs`)."""
        return head_logprobs(self.model, hidden, targets)

    @contextlib.contextmanager
    def _kernels(self):
        """The CPU kernels this engine computes with, for the length of a call."""
        with weight_major_linears(self.model), blocked_attention_for(self.model):
            yield

    def _generate(self, *args):
        with self._kernels():
            return super()._generate(*args)

    def continuation_logprobs(self, items, max_tokens=0, desc="log-likelihoods"):
        with self._kernels():
            return super().continuation_logprobs(items, max_tokens, desc)

    def _forward(self, module, **inputs):
        """`module(**inputs)` with the KV cache passed under the name this transformers version uses."""
        inputs[cache_argument(type(module))] = inputs.pop("kv_cache")
        return module(**inputs)

    def _generate_batch(self, batch, n, temperature, top_p, max_new_tokens, seed, stop_strings, reading):
        generator = torch.Generator(device=self.device).manual_seed(seed)
        rows = [ids[mask == 1].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
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
        cache = new_cache(self.model.config)
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
        return cache, self.head_logits(hidden), mask, positions[:, -1] + 1

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
                    readings[row] = read_options(logits[i].float().softmax(-1), option_ids)
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
            logits = self.head_logits(hidden[:, -1])
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
        with self._kernels():
            return self._option_probs(prefixes, options)

    def _option_probs(self, prefixes, options):
        encoded = [self.option_token_ids(p, options) for p in prefixes]
        rows = [ids for ids, _ in encoded]
        common = common_prefix_length(rows)
        start = self._extend(new_cache(self.model.config), rows[0][:common], 0)
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
                    probs = self.head_logits(last_hidden).float().softmax(-1)
                    for row, g in enumerate(group):
                        results[batch[g]] = read_options(probs[row], encoded[batch[g]][1])
                give_back_free_pages()  # as after a generation batch (`TransformersBackend._generate`)
                bar.update(len(batch))
        return results

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


def load(path: str, cfg, tokenizer, stop_ids: list[int]) -> FastBackend:
    model = models.load_model(path, dtype=cfg.model.dtype, device=cfg.model.device)
    return FastBackend(model, tokenizer, stop_ids, cfg.generation.batch_size, cfg.generation.tokens_per_row)


register_engine(Engine("fast", load))

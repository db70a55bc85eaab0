"""The plain engine: transformers' own `model.generate`, batched; the reference the other engines match."""
from __future__ import annotations

import torch
from tqdm import tqdm  # text bars: papermill streams them to the log

from selfreward import models
from selfreward.memory import give_back_free_pages
from selfreward.generation.contract import (Backend, Completion, Engine, budget_batches, normalised_options,
                                           register_engine)


class TransformersBackend(Backend):
    """`model.generate` over batches of similar-length prompts; a `Reading` is a second pass."""

    def __init__(self, model, tokenizer, stop_ids: list[int], batch_size: int = 16, tokens_per_row: int = 512):
        super().__init__(tokenizer, stop_ids, batch_size, tokens_per_row)
        self.model = model.eval()

    @property
    def device(self):
        return self.model.device

    def release(self):
        """Drop the model so that its memory can be freed (see `generation.loaded_backend`)."""
        self.model = None

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of chosen hidden states only (the fast engine computes them by its own kernel)."""
        return models.head_logits(self.model, hidden)

    def _generate(self, prompts, n, temperature, top_p, max_new_tokens, seed, desc, stop_strings, reading):
        results: list[list[Completion] | None] = [None] * len(prompts)
        # batches in order of length (a prompt and its new tokens), fewer rows for long prompts; results go back
        # in the input order
        encoded = self.tokenizer(prompts).input_ids
        batches = budget_batches([len(ids) + max_new_tokens for ids in encoded], max(1, self.batch_size // n),
                                 self.tokens_per_row)
        with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
            for batch_no, index in enumerate(batches):
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in index]},
                                           return_tensors="pt").to(self.device)
                rows = self._generate_batch(batch, n, temperature, top_p, max_new_tokens, seed + batch_no,
                                            stop_strings, reading)
                for row, completion in enumerate(rows):
                    self.tokens_generated += completion.num_tokens
                    slot = index[row // n]
                    results[slot] = (results[slot] or []) + [completion]
                give_back_free_pages()  # the batch's transient tensors leave holes the next batch would stack on
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

    @torch.no_grad()
    def option_probs(self, prefixes, options):
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
            results += [read_options(probs[row], option_ids) for row, (_, option_ids) in enumerate(chunk)]
            give_back_free_pages()
        return results

    @torch.no_grad()
    def continuation_logprobs(self, items: list[tuple[str, str]], max_tokens: int = 0,
                              desc: str = "log-likelihoods") -> list[tuple[float, int]]:
        """The output layer runs at the continuation's tokens only."""
        rows = self.continuation_rows(items, max_tokens)
        results: list = [None] * len(rows)
        # long texts in fewer rows, as generation batches them: a batch's activations stay bounded
        batches = budget_batches([len(r[0]) for r in rows], self.batch_size, self.tokens_per_row)
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
                sums = torch.zeros(len(batch), device=self.device)
                if where:
                    row_index = torch.tensor([r for r, _ in where], device=self.device)
                    position = torch.tensor([p for _, p in where], device=self.device)
                    logps = self.selected_logprobs(hidden[row_index, position - 1], ids[row_index, position])
                    sums.index_add_(0, row_index, logps)
                for r, i in enumerate(batch):
                    results[i] = (float(sums[r]), len(rows[i][0]) - max(rows[i][1], 1))
                give_back_free_pages()
                bar.update(len(batch))
        return results

    def selected_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """log p(target) of each row of `hidden` (the positions before the targets), chunk by chunk so that
        only [chunk, vocabulary] logits exist at a time; float32."""
        out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
        for start in range(0, len(targets), chunk):
            out[start:start + chunk] = self._chunk_logprobs(hidden[start:start + chunk], targets[start:start + chunk])
        return out

    def _chunk_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(target) of a chunk of rows, from the chunk's whole logits in float32."""
        logits = self.head_logits(hidden).float()
        return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)


def read_options(probs: torch.Tensor, option_ids: list[int]) -> tuple[list[float] | None, float]:
    """The options' share of a next-token distribution (see `contract.normalised_options`)."""
    return normalised_options(probs[option_ids].tolist())


def load(path: str, cfg, tokenizer, stop_ids: list[int]) -> TransformersBackend:
    model = models.load_model(path, dtype=cfg.model.dtype, device=cfg.model.device)
    return TransformersBackend(model, tokenizer, stop_ids, cfg.generation.batch_size, cfg.generation.tokens_per_row)


register_engine(Engine("transformers", load))

"""The fast engine's CPU kernels: products computed weight-major for a few rows, the output layer in
vocabulary blocks, attention of long inputs block by block of queries, nucleus sampling without a full sort,
and the packing of rows that share a prefill. Each is a pure function of tensors (or token lists) and is
checked against the plain computation in tests.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from selfreward.generation.contract import common_prefix_length
from selfreward.models import final_logit_cap, soft_cap

WEIGHT_MAJOR_MAX_ROWS = 256  # inputs up to this many rows (a decode step, a batch of readings) go weight-major
WEIGHT_MAJOR_BLOCK = 1024  # output rows per product: a [1024, hidden] block of weights stays in cache
ATTENTION_BLOCK = 128  # queries per block when a long input attends block by block (`blocked_attention`)


def weight_major(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
    """rows @ weight.T computed as weight @ rows.T, block by block of the output rows, on a CPU for few
    rows with gradients off: 1.1-2x faster there than the usual product (the BLAS blocks the long side
    better), with the same sums in another order. None where it does not apply (the caller's usual path)."""
    if rows.device.type != "cpu" or rows.dim() != 2 or len(rows) > WEIGHT_MAJOR_MAX_ROWS \
            or torch.is_grad_enabled():  # (mm's out= has no backward)
        return None
    transposed = torch.empty(len(weight), len(rows), dtype=weight.dtype, device=weight.device)
    for start in range(0, len(weight), WEIGHT_MAJOR_BLOCK):
        torch.mm(weight[start:start + WEIGHT_MAJOR_BLOCK], rows.to(weight.dtype).T,
                 out=transposed[start:start + WEIGHT_MAJOR_BLOCK])
    return transposed.T



def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """`models.head_logits`, weight-major (`weight_major`) where that applies."""
    head = model.get_output_embeddings()
    logits = weight_major(head.weight, hidden) if head.bias is None else None
    logits = head(hidden) if logits is None else logits.contiguous()
    return soft_cap(logits, final_logit_cap(model))


def head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """log p(target) of each row of `hidden` under the output layer, float32, a block of the vocabulary at a
    time: each block's logits are computed (as `head_logits` computes them), cast to float32 and folded into a
    running log-sum-exp while they are in cache, where the whole [rows, 262k] logits in float32 would be
    written and read over several times (half of a judge-free reading's time on a CPU)."""
    head = model.get_output_embeddings()
    weight, cap = head.weight, final_logit_cap(model)
    rows = hidden.to(weight.dtype)
    top = torch.full((len(rows),), float("-inf"), device=rows.device)
    total = torch.zeros(len(rows), device=rows.device)
    chosen = torch.empty(len(rows), device=rows.device)
    for start in range(0, len(weight), block):
        logits = soft_cap((rows @ weight[start:start + block].T).float(), cap)  # [rows, block]
        if head.bias is not None:
            logits = logits + head.bias[start:start + block].float()
        new_top = torch.maximum(top, logits.amax(-1))
        total = total * (top - new_top).exp() + (logits - new_top[:, None]).exp().sum(-1)
        top = new_top
        inside = (targets >= start) & (targets < start + block)
        if bool(inside.any()):
            chosen[inside] = logits[inside].gather(-1, (targets[inside] - start)[:, None]).squeeze(-1)
    return chosen - top - total.log()


def _weight_major_linear(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = weight_major(linear.weight, x.reshape(-1, x.shape[-1]))
    if out is None:
        return torch.nn.functional.linear(x, linear.weight, linear.bias)
    if linear.bias is not None:
        out = out + linear.bias
    return out.reshape(*x.shape[:-1], len(linear.weight))


@contextlib.contextmanager
def weight_major_linears(model):
    """Inside the block, the model's float32 linear layers on a CPU compute a few rows (a decode step)
    with `weight_major`: 1.1-2x faster per layer on an AVX2 CPU. Larger inputs (prefills, training) and
    inputs that need gradients take the usual path; outside the block nothing changes."""
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear
               and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]
    saved = [m.__dict__.get("forward") for m in linears]  # an instance forward (a hook) is put back
    for module in linears:
        module.forward = functools.partial(_weight_major_linear, module)
    try:
        yield model
    finally:
        for module, forward in zip(linears, saved, strict=True):
            if forward is None:
                del module.forward
            else:
                module.forward = forward



def blocked_attention(module, query, key, value, attention_mask, *args, block: int = ATTENTION_BLOCK, **kwargs):
    """transformers' sdpa attention, `block` queries at a time for a long input on a CPU with gradients off:
    each block attends only to the span of keys its mask lets some row see (causal: none after its last
    query; a sliding layer: none before its first query's window), where one call over every key computes
    the masked scores too. The mask still applies inside the span, so the values are sdpa's (summed in
    another order). Prefills of Gemma-3-270M on 2 bf16 CPU cores: 1.2x faster at 512 tokens, 1.6x at 2,048,
    2.7x at 4,096 (`benchmarks/bench_reading.py`)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    if (attention_mask is None or attention_mask.dtype != torch.bool or length < 2 * block
            or query.device.type != "cpu" or torch.is_grad_enabled()):
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    seen = attention_mask.any(0).any(0)  # [queries, keys]: whether some row's query attends to the key
    outputs = []
    for start in range(0, length, block):
        end = min(start + block, length)
        keys = seen[start:end].any(0).nonzero()
        low, high = (int(keys[0]), int(keys[-1]) + 1) if len(keys) else (0, 1)  # (nothing seen: masked as before)
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, low:high], value[:, :, low:high],
                                        attention_mask[:, :, start:end, low:high], *args, **kwargs)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None  # sdpa's layout: [batch, queries, heads, head_dim]


@contextlib.contextmanager
def blocked_attention_for(model, block: int = ATTENTION_BLOCK):
    """Inside the block, a model on a CPU that attends with sdpa attends with `blocked_attention` (known to
    transformers under a name of its own, with sdpa's masks, for the length of the block only); any other model
    (a GPU, eager or flash attention) is left as it is. Outside the block nothing changes."""
    before = getattr(model.config, "_attn_implementation", None)
    if model.device.type != "cpu" or before != "sdpa" or not hasattr(model, "set_attn_implementation"):
        yield model
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    name = f"selfreward_blocked_sdpa_{block}"
    # transformers reads masks from its class-wide registry only, so the name is registered there, and taken
    # out again when the block ends (a block inside another leaves the outer one's in place)
    added = name not in AttentionInterface._global_mapping
    if added:
        AttentionInterface.register(name, functools.partial(blocked_attention, block=block))
        AttentionMaskInterface.register(name, sdpa_mask)
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)
        if added:
            AttentionInterface._global_mapping.pop(name, None)
            AttentionMaskInterface._global_mapping.pop(name, None)


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


"""What a training step holds beyond the weights, as rules: the lean output layer (`lean.SelectedLogProbs`:
one chunk of positions at a time, and what it keeps for the backward) and the decoder's activations (all of
them, or with recomputation each layer's input plus one layer's). `selfreward plan` sizes a stage by these
rules and the code runs by them (a test counts what the output layer keeps). Plain arithmetic: no torch.
"""
from __future__ import annotations

HEAD_CHUNK = 64  # positions per chunk of the lean output layer: 64 x 262k x (4 + 2 + 2) bytes = 0.13 GB for Gemma


def head_bytes(positions: int, vocab: int, hidden: int, dtype_bytes: int, trains_head: bool,
               recompute: bool) -> dict[str, int]:
    """What the lean output layer holds at its peak for `positions` scored tokens, in bytes: the chunk's fp32
    buffer, its logits in the compute dtype (and their low-precision copy for the product), and what it keeps
    for the backward ([positions, hidden] gradient rows when the head is frozen; the logits of every position
    when the head trains without `recompute`)."""
    rows = min(positions, HEAD_CHUNK)
    exact = max(dtype_bytes, 4)
    chunk = rows * vocab * (exact + dtype_bytes + (0 if dtype_bytes == exact else dtype_bytes))
    if not trains_head:
        kept = positions * hidden * exact
    else:
        kept = 0 if recompute else positions * vocab * dtype_bytes
    return {"chunk": chunk, "kept_for_backward": kept}


def layer_values(hidden: int, heads: int, head_dim: int, intermediate: int) -> int:
    """Values per token one decoder layer keeps for its backward (norms, attention, the gated MLP)."""
    return 6 * hidden + 2 * heads * head_dim + 4 * intermediate


def activation_values(layers: int, hidden: int, heads: int, head_dim: int, intermediate: int,
                      recompute: bool) -> int:
    """Values per token the decoder keeps for the backward: every layer's, or with recomputation each layer's
    input and the one layer being recomputed."""
    layer = layer_values(hidden, heads, head_dim, intermediate)
    return layers * hidden + layer if recompute else layers * layer


def trl_head_bytes(positions: int, vocab: int, dtype_bytes: int) -> int:
    """TRL's default head: every position's logits, with an fp32 log-softmax and its gradient."""
    return positions * vocab * (4 + 4 + dtype_bytes)

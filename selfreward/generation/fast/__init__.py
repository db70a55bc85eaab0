"""The fast CPU engine (`generation.backend: fast`): `engine` (the decode loop), `cache` (a KV cache that
grows in place) and `kernels` (weight-major products, block-wise output layer, nucleus sampling from a
top-k window, shared-prefill packing). It may import `generation.contract` and `generation.plain`."""
from selfreward.generation.fast.engine import MIN_SHARED_PREFIX, FastBackend

__all__ = ["FastBackend", "MIN_SHARED_PREFIX"]

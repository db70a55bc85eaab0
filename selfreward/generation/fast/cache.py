"""The fast engine's KV cache: a transformers cache whose layers append in place."""
from __future__ import annotations

import functools
import inspect

import torch

@functools.cache
def growing_layer_class():
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
def cache_argument(module_class) -> str:
    """transformers 5.x renamed forward's `past_key_values` to `cache` (the old name still works there,
    with a warning); read once per class, not on every decode step."""
    return "cache" if "cache" in inspect.signature(module_class.forward).parameters else "past_key_values"



def new_cache(config):
    """A transformers DynamicCache for `config` whose layers grow in place (`growing_layer_class`)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    if hasattr(cache, "layers"):  # transformers' layered caches (4.56+): append in place instead of concatenating
        cache.layers = [growing_layer_class()() for _ in cache.layers]
    return cache

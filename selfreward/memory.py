"""Peak memory of a stretch of work in this process: the resident set on the CPU (Linux's high-water mark where
the stretch raised it, else sampled) and, on a GPU, what torch allocated and reserved at most. Each stage records
it (`run.stages.run_stage`), the manifest keeps it, and the book's stage table and `selfreward compare` show it.
Training launched in other processes (`launch.num_processes > 1`) is not in it. And what keeps the resident set
near what the work holds: glibc's free pages given back (`give_back_free_pages`), its heap kept lean while a model
trains (`lean_heap`).

This module is foundation: it imports nothing of selfreward.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from pathlib import Path

GB = 1e9


def resident_peak_gb() -> float | None:
    """This process's peak resident set since it started or since `reset_resident_peak` (Linux), in GB."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) * 1024 / GB if found else None  # kB in /proc are KiB


def reset_resident_peak() -> bool:
    """Start the high-water mark again from the current resident set (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def resident_gb() -> float | None:
    """This process's resident set now, in GB (Linux)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GB
    except (OSError, ValueError, IndexError):
        return None


class Peak:
    """What `peak` measured: a mapping of readings in GB (rss_gb; cuda_allocated_gb, cuda_reserved_gb)."""

    def __init__(self):
        self.reading: dict[str, float] = {}


@contextlib.contextmanager
def peak(interval: float = 0.02):
    """Measure the peak memory of a block: `with peak() as p: ...`, then `p.reading`.

    The process's own high-water mark is left alone (so that `/usr/bin/time -v` still reports a whole run's
    peak): where the block raised it, the block's peak is that mark, exactly; otherwise it is the largest
    resident set sampled every `interval` seconds while it ran."""
    found = Peak()
    before, sampled, stop = resident_peak_gb(), [resident_gb() or 0.0], threading.Event()

    def sample():
        while not stop.wait(interval):
            sampled[0] = max(sampled[0], resident_gb() or 0.0)

    thread = threading.Thread(target=sample, name="selfreward-memory", daemon=True)
    thread.start()
    cuda = _cuda()
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    try:
        yield found
    finally:
        stop.set()
        thread.join()
        after = resident_peak_gb()
        rss = after if after is not None and before is not None and after > before else max(sampled[0],
                                                                                           resident_gb() or 0.0)
        if rss:
            found.reading["rss_gb"] = round(rss, 3)
        if cuda:
            import torch

            found.reading["cuda_allocated_gb"] = round(torch.cuda.max_memory_allocated() / GB, 3)
            found.reading["cuda_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GB, 3)


def give_back_free_pages() -> bool:
    """Return the C allocator's free pages to the system (glibc's malloc_trim), where there is glibc."""
    trim = _libc("malloc_trim")
    return bool(trim and trim(0))


# glibc serves a block of at least this size from a mapping of its own, given back to the system when freed.
# Its default threshold moves: each freed mapped block raises it to that block's size, up to 32 MiB, so that a
# training step's activations soon all come from the heap, where the long-lived ones (the layer inputs kept for
# recomputation, 2.6 MB each at 4 x 512 tokens of Gemma-3-270M) pin the pages around the transient ones.
TRAINING_MMAP_THRESHOLD = 3 * 2**20  # benchmarks/bench_heap.json: what 4, 3 and 2 MiB cost and save
DYNAMIC_MMAP_THRESHOLD_MAX = 32 * 2**20  # where glibc's own threshold ends up in a long-lived process
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


@contextlib.contextmanager
def lean_heap(mmap_threshold: int = TRAINING_MMAP_THRESHOLD):
    """For the length of a block (a training: its trainer built, the reference log-probabilities read, its
    steps), glibc maps blocks of `mmap_threshold` bytes or more on their own; then the threshold goes to 32 MiB,
    where glibc's own ends up, so that generation afterwards allocates as before, and the free pages go back.
    Results are the same, bit for bit (benchmarks/bench_heap.py)."""
    set_mmap_threshold(mmap_threshold)
    give_back_free_pages()  # glibc maps a block only where the heap's free space cannot hold it
    try:
        yield
    finally:
        set_mmap_threshold(DYNAMIC_MMAP_THRESHOLD_MAX)
        give_back_free_pages()


def set_mmap_threshold(size: int) -> bool:
    """Have glibc map blocks of `size` bytes or more on their own (a fixed threshold: glibc stops moving it).
    False where there is no glibc."""
    mallopt = _libc("mallopt")
    return bool(mallopt and mallopt(_M_MMAP_THRESHOLD, int(size)))


@functools.cache
def _libc(name: str):
    """A glibc function, looked up once (find_library runs ldconfig; trims come after every training step and
    generation batch); None without glibc."""
    import ctypes
    import ctypes.util

    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def _cuda() -> bool:
    import sys

    torch = sys.modules.get("torch")  # a stage that never imported torch used no GPU
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())

"""Peak memory of a stretch of work in this process: the resident set on the CPU (Linux's high-water mark,
reset when the stretch starts) and, on a GPU, what torch allocated and reserved at most. Each stage records
it (`run.stages.run_stage`), the manifest keeps it, and the book's stage table and `selfreward compare` show it.
Training launched in other processes (`launch.num_processes > 1`) is not in it.

This module is foundation: it imports nothing of selfreward.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

GB = 1e9


def resident_peak_gb() -> float | None:
    """This process's peak resident set since it started or since `reset_resident_peak` (Linux), in GB."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) * 1e3 / GB if found else None


def reset_resident_peak() -> bool:
    """Start the high-water mark again from the current resident set (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Peak:
    """What `peak` measured: a mapping of readings in GB (rss_gb; cuda_allocated_gb, cuda_reserved_gb)."""

    def __init__(self):
        self.reading: dict[str, float] = {}


@contextlib.contextmanager
def peak():
    """Measure the peak memory of a block: `with peak() as p: ...`, then `p.reading`."""
    found = Peak()
    reset = reset_resident_peak()
    cuda = _cuda()
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    try:
        yield found
    finally:
        rss = resident_peak_gb() if reset else None
        if rss is not None:
            found.reading["rss_gb"] = round(rss, 3)
        if cuda:
            import torch

            found.reading["cuda_allocated_gb"] = round(torch.cuda.max_memory_allocated() / GB, 3)
            found.reading["cuda_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GB, 3)


def _cuda() -> bool:
    import sys

    torch = sys.modules.get("torch")  # a stage that never imported torch used no GPU
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())

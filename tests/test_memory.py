"""Peak memory of a stretch of work (`selfreward.memory`): what each stage records."""
import torch

from selfreward import memory


def test_a_block_that_raises_the_high_water_mark_reads_it_exactly_and_leaves_it_alone():
    before = memory.resident_peak_gb()
    with memory.peak() as measured:
        block = torch.ones(int(0.4e9), dtype=torch.uint8)  # 0.4 GB, touched
        del block
    assert measured.reading["rss_gb"] >= before + 0.35 or measured.reading["rss_gb"] >= 0.4
    assert memory.resident_peak_gb() >= measured.reading["rss_gb"] - 0.01  # the process's own mark is kept


def test_a_block_below_the_high_water_mark_is_sampled():
    """In a fresh process (a long-lived one may place the block in pages it already holds, so that its resident
    set never grows): after a 0.4 GB peak, a 0.2 GB block below that high-water mark is seen by the sampler."""
    import subprocess
    import sys

    script = """
import time, torch
from selfreward import memory
block = torch.ones(int(0.4e9), dtype=torch.uint8); del block; memory.give_back_free_pages()
with memory.peak(interval=0.01) as measured:
    block = torch.ones(int(0.2e9), dtype=torch.uint8)
    time.sleep(0.2)
    del block
memory.give_back_free_pages()
print(measured.reading["rss_gb"], memory.resident_gb(), memory.resident_peak_gb())
"""
    seen, now, high = map(float, subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                check=True).stdout.split())
    assert high >= seen + 0.1  # below the process's own high-water mark: only sampling can see it
    assert seen >= now + 0.15  # it saw the 0.2 GB while it lived


def test_a_fixed_mmap_threshold_decides_which_blocks_glibc_maps_on_their_own():
    """`set_mmap_threshold` (what `memory.lean_heap` sets while a model trains). glibc's own threshold moves: once an
    8 MiB mapped block is freed, a 4 MiB tensor comes from the heap; under a fixed 3 MiB threshold it gets a
    mapping of its own again, and under 32 MiB it comes from the heap (glibc's mallinfo2 counts the mapped
    bytes). In a fresh process: a fixed threshold stays for the rest of a process's life."""
    import subprocess
    import sys

    script = """
import ctypes, torch
from selfreward import memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
def mapped_by(nbytes):
    memory.give_back_free_pages()  # glibc maps a block only when the heap's free space cannot hold it
    before = mallinfo2().hblkhd
    block = torch.empty(nbytes, dtype=torch.uint8)
    return mallinfo2().hblkhd - before
mapped_by(8 * 2**20)
print(mapped_by(4 * 2**20))
for size in (memory.TRAINING_MMAP_THRESHOLD, memory.DYNAMIC_MMAP_THRESHOLD_MAX):
    assert memory.set_mmap_threshold(size)
    print(mapped_by(4 * 2**20))
"""
    glibc_moved, fixed_training, fixed_dynamic_max = map(int, subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split())
    assert glibc_moved == 0
    assert fixed_training >= 4 * 2**20
    assert fixed_dynamic_max == 0

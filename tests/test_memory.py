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

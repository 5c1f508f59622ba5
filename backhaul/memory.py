"""What both programs do at start to keep their memory, and its upkeep, small (issue 16).

:func:`return_large_blocks` keeps glibc's malloc from holding on to large freed blocks. glibc serves
a block of 128 KiB or more with its own mmap and unmaps it when freed, but only until the first such
block is freed: from then on it raises that threshold to the freed block's size (up to 32 MiB), and
later blocks of that size come from the heap, where a freed one is kept for reuse unless it happens
to sit at the heap's top. A scrape of 10k series allocates several blocks of 1 MB and more (the
page, its text, the series tables), so the heap grew by what one scrape and one merge needed at
once and stayed there: 117.7 MB RSS at 10k series, 94.6 MB with the threshold fixed at its default
(``MALLOC_MMAP_THRESHOLD_=131072`` in the environment did the same). Fixing it costs an mmap and a
munmap per large block, a few dozen per scrape. An operator's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` wins, and a C library without ``mallopt`` (musl answers 0 to every
option) is left as it is.
"""

from __future__ import annotations

import ctypes
import gc
import os

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 128 * 1024  # glibc's own default for both; setting it stops the adjustment


def return_large_blocks(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds at ``threshold`` bytes; whether it took effect."""
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))


def freeze_imports() -> None:
    """Move every object alive now (modules, classes, functions: ~20 MB of them once aiohttp and
    pydantic are in) out of the garbage collector's sight. A full collection walked them all, every
    time: 0.28 of 2.3 CPU-seconds in a minute at 10k series, 0.05 with them frozen. They live as
    long as the process anyway."""
    gc.freeze()


# Allocations of tracked objects (net of those freed) between two young collections; CPython's
# default is 700. See :func:`collect_less_often`.
YOUNG_THRESHOLD = 50_000


def collect_less_often(young: int = YOUNG_THRESHOLD) -> None:
    """Run the cycle collector after ``young`` new container objects instead of 700.

    Decoding a remote-write request of 10k series and encoding its chunk leaves ~44,000 container
    objects alive for a while (label tuples, sample lists, the maps that hold them), nearly all freed
    by their reference counts once the commit is done. At 700 the collector ran 63 times for each
    such request and went through every generation every second one: 0.53 µs a sample, 0.03 at
    50,000 (bench/decode_floor.py prints both). Cycles are rare here (a traceback, an aiohttp
    transport); they wait a little longer, and the older generations keep their default ratios."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)

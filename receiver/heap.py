"""Garbage-collector and allocator settings for a serving process, applied once the app is built.

Everything built at start-up (modules, settings, compiled schemas, the parser, prometheus
metrics) lives as long as the process, yet CPython's full collections walk all of it again and
again: in profiles under load, 30 ms per full collection and 15% of the CPU. ``gc.freeze()``
moves what exists after start-up out of the collector's generations. A higher first-generation
threshold then lets request garbage, which reference counting frees on its own, go by without
hundreds of young collections per second; cycles are still collected, only in larger steps.

Large buffers (request bodies of megabytes, their decoded text, recording lines) are given pages
of their own, returned to the system when freed. glibc's default does that only until the first
such buffer is freed: it then raises its threshold to that size, and later buffers come from the
heap, whose holes between long-lived small objects are never returned. Under a flood of 2 to
4 MB bodies that left a worker's peak anywhere from 380 to 600 MiB; with the threshold held at
1 MiB it stays near 270 MiB (``tests/test_hostile_corpus.py``). ``MALLOC_MMAP_THRESHOLD_`` in
the environment still wins.

Only the ``serve`` command calls this: tests build many apps in one process and rely on the
collector finding what they leave behind.
"""

from __future__ import annotations

import ctypes
import gc
import os
from typing import Final

#: Allocations between young collections (CPython's default is 700).
YOUNG_GENERATION_THRESHOLD: Final = 10_000
#: Allocations at least this large get pages of their own (glibc's default starts at 128 KiB).
LARGE_ALLOCATION_BYTES: Final = 1 << 20
_M_MMAP_THRESHOLD: Final = -3  # malloc.h


def settle_heap() -> None:
    """Collect once, freeze what survives, space out young collections, return large buffers."""
    return_large_buffers()
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)


def return_large_buffers() -> bool:
    """Hold glibc's mmap threshold at ``LARGE_ALLOCATION_BYTES``; False where nothing changed
    (another C library, or ``MALLOC_MMAP_THRESHOLD_`` set by the operator)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES))

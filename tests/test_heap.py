"""settle_heap: what the serve command does to the collector and the allocator once the app is built."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
from collections.abc import Iterator

import pytest

from receiver.heap import YOUNG_GENERATION_THRESHOLD, settle_heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_start_up_objects_are_frozen_and_young_collections_spaced_out() -> None:
    """After settle_heap, live objects sit in the permanent generation and gen0 waits longer."""
    survivor = [object() for _ in range(10)]
    settle_heap()
    assert gc.get_freeze_count() >= len(survivor)
    assert gc.get_threshold()[0] == YOUNG_GENERATION_THRESHOLD


_FRAGMENTING = """
import sys
from receiver.heap import return_large_buffers

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

changed = return_large_buffers() if sys.argv[1] == "settled" else False
warm = bytes(8 << 20)  # freed at once: glibc's own threshold then rises past 2 MiB
del warm
large, kept = [], []
for _ in range(64):  # 128 MiB of large buffers between small objects that stay
    large.append(bytes(range(256)) * (8 << 10))
    kept.append(bytes(range(256)) * 3)
before = rss_mib()
del large
print(changed, before - rss_mib())
"""


def _returned_mib(mode: str, **environment: str) -> tuple[bool, int]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")} | environment
    result = subprocess.run(
        [sys.executable, "-c", _FRAGMENTING, mode], capture_output=True, text=True, check=True, env=env
    )
    changed, returned = result.stdout.split()
    return changed == "True", int(returned)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_large_buffers_go_back_to_the_system_once_freed() -> None:
    """Freed large buffers between long-lived small objects: kept by glibc's default, returned once settled."""
    assert _returned_mib("default") == (False, 0)
    changed, returned = _returned_mib("settled")
    assert changed
    assert returned >= 120


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_the_operators_threshold_is_left_alone() -> None:
    """With MALLOC_MMAP_THRESHOLD_ set, return_large_buffers changes nothing."""
    changed, _ = _returned_mib("settled", MALLOC_MMAP_THRESHOLD_="131072")
    assert not changed

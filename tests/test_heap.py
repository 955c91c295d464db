"""settle_heap: what the serve command does to the collector once the app is built."""

from __future__ import annotations

import gc
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

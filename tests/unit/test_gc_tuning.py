"""Services freeze their startup heap and measure collector pauses."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from services.common import gc_tuning


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if gc_tuning._measure in gc.callbacks:
        gc.callbacks.remove(gc_tuning._measure)


def pauses(generation: str) -> float:
    total = REGISTRY.get_sample_value("cx_gc_pause_seconds_sum", {"generation": generation})
    return total or 0.0


@pytest.mark.usefixtures("restored_gc")
def test_startup_heap_is_frozen_and_full_collections_are_measured() -> None:
    gc_tuning.freeze_startup_heap()
    gc_tuning.freeze_startup_heap()  # idempotent: one callback

    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == gc_tuning.YOUNG_THRESHOLD
    assert gc.callbacks.count(gc_tuning._measure) == 1
    before = pauses("2")
    gc.collect()
    assert pauses("2") > before

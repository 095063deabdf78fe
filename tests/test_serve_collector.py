"""``loyalty serve`` tunes the garbage collector once started (processor.runtime.serve)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from processor.runtime import serve
from processor.runtime.settings import Settings


@pytest.fixture
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(
    collector_restored: None,
) -> None:
    made_at_start_up = [object() for _ in range(100)]
    serve.tune_collector()
    assert gc.get_freeze_count() >= len(made_at_start_up)
    assert gc.get_threshold() == serve.GC_THRESHOLDS
    assert serve.GC_THRESHOLDS[0] > 700  # CPython's default young-generation threshold


def test_the_tuning_is_on_by_default_and_can_be_turned_off() -> None:
    assert Settings().gc_tuning is True
    assert Settings(gc_tuning=False).gc_tuning is False

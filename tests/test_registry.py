"""The program registry against a real PostgreSQL.

- an activation made anywhere is served after ``refresh_if_changed`` (and, with the
  refresher running, within a second or two), looked up by the card's serial prefix;
- a card whose prefix no active program serves is UNKNOWN_PROGRAM;
- each version is compiled once, and an unchanged catalog costs no refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from processor.errors import NotFoundError
from processor.flow.registry import ProgramRegistry
from processor.store import Store
from processor.store.catalog import Catalog

pytestmark = pytest.mark.integration

DEMO = (Path(__file__).resolve().parent.parent / "examples/programs/demo.yaml").read_text()
NORTHWIND_CARD = "6001200000000010"


def version(number: int) -> str:
    return DEMO.replace("version: 1\n", f"version: {number}\n", 1)


@pytest_asyncio.fixture
async def catalog(store: Store) -> AsyncIterator[Catalog]:
    yield Catalog(store)


async def test_an_activation_is_served_after_refresh_if_changed(catalog: Catalog) -> None:
    registry = ProgramRegistry(catalog)
    await registry.refresh()
    assert registry.programs() == []
    with pytest.raises(NotFoundError) as unknown:
        registry.for_card(NORTHWIND_CARD)
    assert unknown.value.reason == "UNKNOWN_PROGRAM"

    await catalog.create_program(DEMO, "demo.yaml")
    assert await registry.refresh_if_changed() is False, "storing a file activates nothing"
    await catalog.activate("northwind", 1)
    assert await registry.refresh_if_changed() is True
    program = registry.for_card(NORTHWIND_CARD)
    assert (program.id, program.version) == ("northwind", 1)
    assert registry.program("northwind", 1) is program
    assert [p.id for p in registry.programs()] == ["northwind"]
    with pytest.raises(NotFoundError):
        registry.for_card("6001300000000010")
    assert await registry.refresh_if_changed() is False
    assert registry.compiles_total == 1

    await catalog.update_program(version(2), "demo.yaml")
    await catalog.activate("northwind", 2)
    assert await registry.refresh_if_changed() is True
    assert registry.for_card(NORTHWIND_CARD).version == 2
    assert registry.program("northwind", 1).version == 1, "a recent version stays compiled"

    await catalog.activate("northwind", 1)
    await registry.refresh_if_changed()
    assert registry.for_card(NORTHWIND_CARD).version == 1
    assert registry.compiles_total == 2, "going back to a compiled version compiles nothing"

    await catalog.deactivate("northwind", 1)
    assert await registry.refresh_if_changed() is True
    with pytest.raises(NotFoundError):
        registry.for_card(NORTHWIND_CARD)


async def test_any_stored_version_loads_on_demand(catalog: Catalog) -> None:
    await catalog.create_program(DEMO, "demo.yaml")
    registry = ProgramRegistry(catalog)
    with pytest.raises(NotFoundError):
        registry.program("northwind", 1)
    loaded = await registry.load("northwind", 1)
    assert registry.program("northwind", 1) is loaded
    with pytest.raises(NotFoundError):
        await registry.load("northwind", 9)


async def test_the_refresher_spreads_an_activation_to_every_process(catalog: Catalog) -> None:
    processes = [ProgramRegistry(catalog) for _ in range(2)]
    for registry in processes:
        await registry.refresh()
    tasks = [registry.start_refresher(0.1) for registry in processes]
    try:
        await catalog.create_program(DEMO, "demo.yaml")
        await catalog.activate("northwind", 1)
        for _ in range(50):
            await asyncio.sleep(0.05)
            if all(registry.programs() for registry in processes):
                break
        assert [registry.for_card(NORTHWIND_CARD).version for registry in processes] == [1, 1]
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_refresher_refuses_a_silly_interval(catalog: Catalog) -> None:
    with pytest.raises(ValueError):
        await ProgramRegistry(catalog).run_refresher(0)

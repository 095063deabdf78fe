"""Seeding for load tests (processor.seed): numbering, exact rows, resuming, warming."""

from __future__ import annotations

import asyncio
import random

import psycopg
import pytest

from processor import seed
from processor.cache import AccountCache
from processor.cards import card_number
from processor.server import load_demo
from processor.settings import Settings
from processor.store import Store
from processor.store.codec import decode_state

pytestmark = pytest.mark.integration

DEMO_CARDS = 20


def _rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as connection:
        return connection.execute(query).fetchall()


def _count(url: str, query: str) -> int:
    return int(_rows(url, query)[0][0])


def _indexes(url: str) -> dict[str, str]:
    rows = _rows(
        url,
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'cards'"
        " AND schemaname = current_schema()",
    )
    return dict(rows)


@pytest.fixture
def demo_url(schema_url: str) -> str:
    asyncio.run(load_demo(Settings(demo_cards=DEMO_CARDS), schema_url))
    return schema_url


def test_card_numbers_equal_the_generated_ones() -> None:
    for first in (1, 998, 20_001, 9_999_000):
        expected = [card_number("60012", first + index, 16) for index in range(2_100)]
        assert seed.card_numbers("60012", first, 2_100, 16) == expected


def test_templates_are_valid_states_at_version_1() -> None:
    from processor.store.catalog import parse_program_text

    with open("examples/programs/demo.yaml", encoding="utf-8") as file:
        program = parse_program_text(file.read(), "demo.yaml")
    states = seed.account_templates(program, 1, 20_500, random.Random(1), 300)
    levels = [next(iter(state.loyalty.values())).level for state in states]
    assert {"silver", "gold", "platinum"} <= set(levels)
    assert levels.count("silver") > levels.count("gold") > levels.count("platinum")
    assert any(state.tender is not None for state in states)
    for state in states:
        loyalty = next(iter(state.loyalty.values()))
        assert state.version == 1 and loyalty.lots
        assert loyalty.earned_ltd >= loyalty.earned_ytd >= 0
        assert seed.opening_postings(state, program)


def test_seeding_loads_exact_rows_that_decode_and_reconcile(demo_url: str) -> None:
    report = seed.seed(demo_url, 2_000, chunk_accounts=700, progress=None)
    assert (report.loaded, report.present_before, report.wanted) == (2_000, 0, 2_000)
    cards = _rows(
        demo_url,
        "SELECT card_number, status, sequence, customer_id FROM cards WHERE batch = 'seed'"
        " ORDER BY sequence",
    )
    assert len(cards) == 2_000
    # Numbering continues the demo series after its highest sequence.
    demo_highest = _count(demo_url, "SELECT max(sequence) FROM cards WHERE batch <> 'seed'")
    assert cards[0][2] == demo_highest + 1
    assert [row[2] for row in cards] == list(range(demo_highest + 1, demo_highest + 2_001))
    assert all(row[0] == card_number("60012", row[2], 16) for row in cards)
    assert {row[1] for row in cards} == {"active"}
    assert all(row[3] == "C" + row[0] for row in cards)
    assert _count(demo_url, "SELECT count(*) FROM customers WHERE customer_id LIKE 'C%'") == 2_000
    accounts = _rows(demo_url, "SELECT account_id, version, state FROM accounts")
    assert len(accounts) == 2_000
    ledger = _count(demo_url, "SELECT count(*) FROM ledger")
    assert report.rows == 3 * 2_000 + ledger
    for account_id, version, blob in accounts:
        state = decode_state(bytes(blob), account_id)
        assert version == state.version == 1
    assert (report.first_card, report.last_card) == (cards[0][0], cards[-1][0])

    async def reconcile() -> list:
        async with Store(demo_url) as store:
            return await store.reconcile()

    assert asyncio.run(reconcile()) == []


def test_seeding_resumes_after_a_failure(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    indexes = _indexes(demo_url)
    original = seed._RowMaker.chunk
    calls = []

    def failing(self: seed._RowMaker, first: int, count: int) -> tuple:
        calls.append(first)
        if len(calls) == 3:
            raise RuntimeError("the load was interrupted")
        return original(self, first, count)

    monkeypatch.setattr(seed._RowMaker, "chunk", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        seed.seed(demo_url, 2_000, chunk_accounts=500, defer_indexes=True, jobs=1, progress=None)
    done = _count(demo_url, "SELECT count(*) FROM cards WHERE batch = 'seed'")
    assert done in (500, 1_000)  # whole chunks only
    assert _count(demo_url, "SELECT count(*) FROM accounts") == done
    monkeypatch.setattr(seed._RowMaker, "chunk", original)

    report = seed.seed(demo_url, 2_000, chunk_accounts=500, progress=None)
    assert (report.present_before, report.loaded) == (done, 2_000 - done)
    assert _count(demo_url, "SELECT count(*) FROM cards WHERE batch = 'seed'") == 2_000
    assert _count(demo_url, "SELECT count(DISTINCT sequence) FROM cards") == 2_000 + DEMO_CARDS
    assert _count(demo_url, "SELECT count(*) FROM accounts") == 2_000
    assert _indexes(demo_url) == indexes  # deferred indexes are back, as migrated

    again = seed.seed(demo_url, 2_000, progress=None)
    assert (again.present_before, again.loaded) == (2_000, 0)


def test_warm_puts_seeded_states_in_the_cache(
    demo_url: str, redis_url: str, redis_key_prefix: str
) -> None:
    report = seed.seed(demo_url, 2_000, chunk_accounts=1_000, progress=None)

    async def warm_and_read() -> tuple[int, dict[str, tuple[int, bytes]]]:
        async with AccountCache.from_url(redis_url, key_prefix=redis_key_prefix) as cache:
            try:
                written = await seed.warm(demo_url, cache, report.first_card, report.last_card)
                numbers = [row[0] for row in _rows(demo_url, "SELECT account_id FROM accounts")]
                return written, await cache.get_many(numbers)
            finally:
                await cache.flush()

    written, cached = asyncio.run(warm_and_read())
    assert written == 2_000 and len(cached) == 2_000
    stored = {
        account: (version, bytes(blob))
        for account, version, blob in _rows(
            demo_url, "SELECT account_id, version, state FROM accounts"
        )
    }
    assert cached == stored

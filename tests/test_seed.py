"""Seeding for load tests (processor.tools.seed): numbering, exact rows, resuming, warming."""

from __future__ import annotations

import asyncio
import datetime
import random
from typing import Any

import psycopg
import pytest

from processor import calendar
from processor.cache.accounts import AccountCache
from processor.cards import card_number
from processor.engine import samples
from processor.runtime.serve import load_demo
from processor.runtime.settings import Settings
from processor.store import Store
from processor.store.codec import decode_state
from processor.store.ledger import ledger_month
from processor.tools import seed

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


_TABLES = "('customers', 'cards', 'accounts', 'ledger')"


def _catalog(url: str) -> dict[str, list[tuple]]:
    """The indexes, constraints and partitions of the tables a load fills, the ledger's
    partitions included: what a deferring load drops and must put back as it was."""
    tables = (
        f"(SELECT oid FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
        f" AND (relname IN {_TABLES} OR relname ~ '^ledger_[0-9]{{6}}$'))"
    )
    return {
        "indexes": _rows(
            url,
            "SELECT indrelid::regclass::text, indexrelid::regclass::text,"
            " pg_get_indexdef(indexrelid), indisvalid, indisprimary, indisunique"
            f" FROM pg_index WHERE indrelid IN {tables} ORDER BY 1, 2",
        ),
        "constraints": _rows(
            url,
            "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid),"
            " conislocal, coninhcount, conparentid <> 0"
            f" FROM pg_constraint WHERE conrelid IN {tables} ORDER BY 1, 2",
        ),
        "partitions": _rows(
            url,
            "SELECT oid::regclass::text, relispartition, pg_get_expr(relpartbound, oid)"
            f" FROM pg_class WHERE oid IN {tables} ORDER BY 1",
        ),
        "index partitions": _rows(
            url,
            "SELECT inhrelid::regclass::text, inhparent::regclass::text FROM pg_inherits"
            f" WHERE inhparent IN {tables} OR inhparent IN"
            f" (SELECT indexrelid FROM pg_index WHERE indrelid IN {tables}) ORDER BY 1",
        ),
    }


def _partition(url: str) -> str:
    """The ledger partition of this month, which a load writes into (created if new)."""
    month = ledger_month(calendar.to_day(datetime.date.today()))
    with psycopg.connect(url) as connection:
        name = connection.execute("SELECT ensure_ledger_partition(%s)", (month,)).fetchone()
        connection.commit()
    assert name is not None
    return str(name[0])


def _reconciles(url: str) -> bool:
    async def reconcile() -> list:
        async with Store(url) as store:
            return await store.reconcile()

    return asyncio.run(reconcile()) == []


@pytest.fixture
def demo_url(schema_url: str) -> str:
    asyncio.run(load_demo(Settings(demo_cards=DEMO_CARDS), schema_url))
    return schema_url


def test_card_numbers_equal_the_generated_ones() -> None:
    for first in (1, 998, 20_001, 9_999_000):
        expected = [card_number("60012", first + index, 16) for index in range(2_100)]
        assert seed.card_numbers("60012", first, 2_100, 16) == expected
        assert seed.card_number_bytes("60012", first, 2_100, 16) == [
            number.encode() for number in expected
        ]
    # Numbers too short to share a head: each one on its own.
    assert seed.card_numbers("600", 0, 1_000, 8) == [card_number("600", n, 8) for n in range(1_000)]


def test_templates_are_valid_states_at_version_1() -> None:
    from processor.program.loader import parse_program_text

    with open("examples/programs/demo.yaml", encoding="utf-8") as file:
        program = parse_program_text(file.read(), "demo.yaml")
    states = samples.account_templates(program, 1, 20_500, random.Random(1), 300)
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
    # Columns the COPY leaves to their defaults, and the drawn ones, in their ranges.
    today = calendar.to_day(datetime.date.today())
    assert _rows(
        demo_url,
        "SELECT DISTINCT attributes::text, pin_hash IS NULL, definition, program, series"
        " FROM cards WHERE batch = 'seed'",
    ) == [("{}", True, "northwind", "northwind", cards_series(demo_url))]
    customers = _rows(
        demo_url,
        "SELECT birth_day, signup_day, audiences FROM customers WHERE customer_id LIKE 'C%'",
    )
    assert all(today - 80 * 365 <= row[0] <= today - 18 * 365 for row in customers)
    assert all(today - 6 * 365 <= row[1] <= today - 30 for row in customers)
    audiences = [tuple(row[2]) for row in customers]
    assert set(audiences) <= {(), ("newsletter",), ("newsletter", "vip:A")}
    assert audiences.count(()) > audiences.count(("newsletter",)) > 0
    assert _rows(demo_url, "SELECT DISTINCT rule, request_id, kind FROM ledger") == [
        ("", seed.OPENING_REQUEST_ID, seed.OPENING_KIND)
    ]
    assert _reconciles(demo_url)


def cards_series(url: str) -> str:
    return str(_rows(url, "SELECT series FROM cards WHERE batch <> 'seed' LIMIT 1")[0][0])


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


def test_a_deferring_load_drops_every_key_and_index_and_puts_them_back_as_migrated(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition = _partition(demo_url)
    migrated = _catalog(demo_url)
    during: list[dict[str, list[tuple]]] = []
    load = seed._load

    def watched(*args: Any) -> None:
        during.append(_catalog(demo_url))
        load(*args)

    monkeypatch.setattr(seed, "_load", watched)
    report = seed.seed(demo_url, 3_000, chunk_accounts=700, defer_indexes=True, progress=None)

    assert report.deferred_indexes and report.loaded == 3_000 and report.index_seconds > 0
    # While loading: no index on customers, cards or accounts, and the month's partition
    # out of the ledger with no key, marked with its bound.
    (loading,) = during
    assert [row for row in loading["indexes"] if row[0] != "ledger"] == []
    assert (partition, False, None) in loading["partitions"]
    assert (partition, seed.DETACHED_MARK) in {row[:2] for row in loading["constraints"]}
    # After: every index, primary key, constraint and partition exactly as migrated.
    assert _catalog(demo_url) == migrated
    assert len(migrated["indexes"]) == 8  # 3 keys, 3 on cards, the ledger's and its part
    assert _count(demo_url, "SELECT count(*) FROM accounts") == 3_000
    assert _count(demo_url, f"SELECT count(*) FROM {partition}") == _count(
        demo_url, "SELECT count(*) FROM ledger"
    )
    assert _reconciles(demo_url)


def test_a_load_stopped_after_dropping_indexes_is_repaired_by_the_next_run(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition = _partition(demo_url)
    migrated = _catalog(demo_url)
    build = seed._build_missing_indexes
    chunk = seed._RowMaker.chunk
    calls: list[int] = []

    def killed_after_two_chunks(self: seed._RowMaker, first: int, count: int) -> tuple:
        calls.append(first)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed: nothing after this runs (below)
        return chunk(self, first, count)

    def only_before_the_load(*args: Any) -> None:
        if not calls:
            build(*args)

    monkeypatch.setattr(seed._RowMaker, "chunk", killed_after_two_chunks)
    monkeypatch.setattr(seed, "_build_missing_indexes", only_before_the_load)
    with pytest.raises(KeyboardInterrupt):
        seed.seed(demo_url, 3_000, chunk_accounts=500, defer_indexes=True, jobs=1, progress=None)
    monkeypatch.undo()

    stopped = _catalog(demo_url)
    assert [row for row in stopped["indexes"] if row[0] != "ledger"] == []
    assert (partition, False, None) in stopped["partitions"]
    done = _count(demo_url, "SELECT count(*) FROM cards WHERE batch = 'seed'")
    assert done in (500, 1_000)
    assert _count(demo_url, f"SELECT count(DISTINCT account_id) FROM {partition}") == done

    # The next run repairs before anything else: with nothing to load, it only repairs.
    report = seed.seed(demo_url, done, progress=None)
    assert (report.present_before, report.loaded) == (done, 0)
    assert _catalog(demo_url) == migrated
    assert _reconciles(demo_url)
    # And then it loads the rest, as a resumed run does.
    report = seed.seed(demo_url, 3_000, chunk_accounts=500, defer_indexes=True, progress=None)
    assert (report.present_before, report.loaded) == (done, 3_000 - done)
    assert _catalog(demo_url) == migrated
    assert _count(demo_url, "SELECT count(DISTINCT sequence) FROM cards") == 3_000 + DEMO_CARDS


def test_a_rebuild_over_duplicate_rows_fails_naming_the_index_and_loads_nothing(
    demo_url: str,
) -> None:
    _partition(demo_url)
    migrated = _catalog(demo_url)
    key = next(index for index in seed.DEFERRABLE_INDEXES if index.name == "customers_pkey")
    with psycopg.connect(demo_url, autocommit=True) as connection:
        seed._drop_indexes(connection, [key], None)
        connection.execute("INSERT INTO customers SELECT * FROM customers LIMIT 1")

    with pytest.raises(seed.SeedError, match=r"unique index customers_pkey of table customers"):
        seed.seed(demo_url, 2_000, progress=None)
    assert _count(demo_url, "SELECT count(*) FROM cards WHERE batch = 'seed'") == 0
    # Every other index is there; the key is not, and the next run says so again.
    left = _catalog(demo_url)
    assert [row for row in migrated["indexes"] if row not in left["indexes"]] == [
        row for row in migrated["indexes"] if row[1] == "customers_pkey"
    ]
    with pytest.raises(seed.SeedError, match="customers_pkey"):
        seed.seed(demo_url, 2_000, progress=None)

    with psycopg.connect(demo_url) as connection:
        connection.execute(
            "DELETE FROM customers WHERE ctid IN (SELECT max(ctid) FROM customers"
            " GROUP BY customer_id HAVING count(*) > 1)"
        )
    report = seed.seed(demo_url, 2_000, progress=None)
    assert report.loaded == 2_000
    assert _catalog(demo_url) == migrated


def test_a_detached_partition_over_duplicate_rows_stays_detached_and_fails_loudly(
    demo_url: str,
) -> None:
    partition = _partition(demo_url)
    migrated = _catalog(demo_url)
    month = int(partition.removeprefix("ledger_"))
    with psycopg.connect(demo_url, autocommit=True) as connection:
        seed._drop_indexes(connection, [], partition)
        for _ in range(2):
            connection.execute(
                f"INSERT INTO {partition} (account_id, month, request_id, seq, program,"
                " program_version, balance, kind, amount, day)"
                " VALUES ('X1', %s, 'r1', 0, 'p', 1, 'points', 'earn', 5, %s)",
                (month, calendar.to_day(datetime.date(month // 100, month % 100, 1))),
            )

    with pytest.raises(seed.SeedError) as raised:
        seed.seed(demo_url, 2_000, progress=None)
    message = str(raised.value)
    assert f"unique index {partition}_pkey of table {partition}" in message
    assert "stays detached" in message and "X1" in message
    assert _count(demo_url, "SELECT count(*) FROM cards WHERE batch = 'seed'") == 0
    assert (partition, False, None) in _catalog(demo_url)["partitions"]

    with psycopg.connect(demo_url) as connection:
        connection.execute(f"DELETE FROM {partition} WHERE account_id = 'X1' AND amount = 5")
    seed.seed(demo_url, 0, progress=None)
    assert _catalog(demo_url) == migrated


def test_a_small_load_into_a_big_table_keeps_its_indexes(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _partition(demo_url)
    migrated = _catalog(demo_url)
    monkeypatch.setattr(seed, "DEFER_INDEXES_MIN_ACCOUNTS", 100)
    # 1,000 accounts into 20 cards: deferred, by size.
    assert seed.seed(demo_url, 1_000, chunk_accounts=400, progress=None).deferred_indexes
    during: list[dict[str, list[tuple]]] = []
    load = seed._load

    def watched(*args: Any) -> None:
        during.append(_catalog(demo_url))
        load(*args)

    monkeypatch.setattr(seed, "_load", watched)
    # 500 more into 1,020 cards (and as many customers, accounts, ledger rows): kept.
    report = seed.seed(demo_url, 1_500, chunk_accounts=400, progress=None)
    assert (report.loaded, report.deferred_indexes, report.index_seconds) == (500, False, 0.0)
    assert during == [migrated]
    assert _catalog(demo_url) == migrated


def test_the_seed_warms_the_cache_compressed_with_the_servers_dictionary(
    demo_url: str, redis_url: str, redis_key_prefix: str
) -> None:
    import redis.asyncio as aioredis

    from processor.cache.entries import FORMAT_ZSTD
    from processor.runtime.settings import Settings

    report = seed.seed(demo_url, 300, progress=None)
    settings = Settings(cache_key_prefix=redis_key_prefix)
    warmed, _ = asyncio.run(seed._warm_all(settings, demo_url, redis_url, report, None))

    async def stored_formats() -> set[int]:
        numbers = [row[0] for row in _rows(demo_url, "SELECT account_id FROM accounts")]
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with AccountCache.from_url(redis_url, key_prefix=redis_key_prefix) as cache:
                try:
                    assert len(await cache.get_many(numbers)) == len(numbers)
                    formats: set[int] = set()
                    for number in numbers[:20]:
                        value = await client.hget(*cache.location(number))
                        assert isinstance(value, bytes)
                        formats.add(value[1 + value[0]])  # after the length-prefixed version
                    return formats
                finally:
                    await cache.flush()
        finally:
            await client.aclose()

    assert warmed == 300
    assert asyncio.run(stored_formats()) == {FORMAT_ZSTD}

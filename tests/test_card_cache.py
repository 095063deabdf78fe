"""Cards held in a serving process's memory (processor.store.card_cache), and what keeps them
current: PostgreSQL's notifications of every change to a card or a customer.

The cache's rules are checked alone (a fake clock and day, no database); then against
PostgreSQL (a change made by another connection is told and forgotten); then through a
running server: a card changed behind its back is refused once the change is told, and a
replay on a held card (no lookup before evaluation) is answered from the stored answer
and posted once.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import grpc  # type: ignore[import-untyped]
import psycopg
import pytest
from plugins.server import Served, StartServed, line, purchase, transaction
from plugins.waiting import eventually

from processor import proto
from processor.engine.types import Customer
from processor.runtime import metrics
from processor.service import errors
from processor.store import card_cache
from processor.store.card_cache import CardCache
from processor.store.cards import CardRecord

CARD = "6001200000000010"
OTHER = "6001200000000028"
DAY = 20_000


def record(number: str = CARD, *, customer: str | None = None, status: str = "active") -> Any:
    return CardRecord(number, "points", "S1", "B1", status, None, customer, None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.day = DAY

    def time(self) -> float:
        return self.now

    def today(self) -> int:
        return self.day


def listening_cache(clock: Clock, **options: Any) -> CardCache:
    cache = CardCache(clock=clock.time, day=clock.today, **options)
    cache.listening_started()
    return cache


# --------------------------------------------------------------------------- the rules


def test_nothing_is_held_while_no_connection_listens() -> None:
    clock = Clock()
    cache = CardCache(clock=clock.time, day=clock.today)
    cache.put({CARD: record()}, {}, cache.changes())
    assert cache.get([CARD]) is None and len(cache) == 0


def test_a_batch_whose_cards_are_all_held_gets_them_with_their_customers() -> None:
    clock = Clock()
    cache = listening_cache(clock)
    alice = Customer("alice", audiences=frozenset({"vip"}))
    cache.put(
        {CARD: record(customer="alice"), OTHER: record(OTHER)}, {"alice": alice}, cache.changes()
    )
    held = cache.get([CARD, OTHER])
    assert held is not None
    assert held[0] == {CARD: record(customer="alice"), OTHER: record(OTHER)}
    assert held[1] == {"alice": alice}
    assert cache.get([CARD, "6001200000000036"]) is None  # one not held: all are read


def test_a_lookup_overtaken_by_a_change_is_not_held() -> None:
    cache = listening_cache(Clock())
    since = cache.changes()
    cache.told(f"card:{OTHER}")  # committed after the lookup read, told before it is kept
    cache.put({CARD: record()}, {}, since)
    assert cache.get([CARD]) is None


@pytest.mark.parametrize(
    ("payload", "forgotten"),
    [
        (f"card:{CARD}", {CARD}),
        ("customer:alice", {CARD}),
        ("customer:bob", set()),
        ("*", {CARD, OTHER}),
        ("something:new", {CARD, OTHER}),  # a payload this release does not know: all
    ],
)
def test_a_told_change_forgets_what_it_names(payload: str, forgotten: set[str]) -> None:
    cache = listening_cache(Clock())
    cache.put(
        {CARD: record(customer="alice"), OTHER: record(OTHER)},
        {"alice": Customer("alice")},
        cache.changes(),
    )
    cache.told(payload)
    for number in (CARD, OTHER):
        assert (cache.get([number]) is None) == (number in forgotten), number


def test_a_card_whose_customer_row_is_missing_is_not_held() -> None:
    cache = listening_cache(Clock())
    cache.put({CARD: record(customer="alice")}, {}, cache.changes())
    assert cache.get([CARD]) is None


def test_a_held_card_is_read_again_after_its_time() -> None:
    clock = Clock()
    cache = listening_cache(clock, seconds=60.0)
    cache.put({CARD: record()}, {}, cache.changes())
    clock.now += 59.0
    assert cache.get([CARD]) is not None
    clock.now += 1.0
    assert cache.get([CARD]) is None


def test_everything_is_let_go_when_the_business_day_turns() -> None:
    # A card's status becomes "expired" on the day after its last: read it again.
    clock = Clock()
    cache = listening_cache(clock)
    cache.put({CARD: record()}, {}, cache.changes())
    clock.day += 1
    assert cache.get([CARD]) is None and len(cache) == 0


def test_the_oldest_card_is_let_go_beyond_the_limit() -> None:
    cache = listening_cache(Clock(), cards_max=2)
    numbers = ["6001200000000010", "6001200000000028", "6001200000000036"]
    for number in numbers:
        cache.put({number: record(number)}, {}, cache.changes())
    assert len(cache) == 2
    assert cache.get([numbers[0]]) is None
    assert cache.get(numbers[1:]) is not None


def test_losing_the_connection_forgets_everything() -> None:
    cache = listening_cache(Clock())
    cache.put({CARD: record()}, {}, cache.changes())
    cache.listening_stopped()
    assert cache.get([CARD]) is None and len(cache) == 0
    cache.listening_started()
    assert cache.get([CARD]) is None


def test_a_cache_of_no_cards_is_refused() -> None:
    with pytest.raises(ValueError, match="cards_max 0 is not positive"):
        CardCache(cards_max=0)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.integration
async def test_postgresql_tells_every_kind_of_change_to_cards_and_customers(
    schema_url: str,
) -> None:
    cache = CardCache()
    listener = asyncio.get_running_loop().create_task(card_cache.listen(schema_url, cache))
    try:
        await eventually(lambda: cache.listening, "listening")
        async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as db:
            await db.execute("INSERT INTO customers (customer_id) VALUES ('alice')")
            await db.execute(
                "INSERT INTO cards (card_number, definition, program, customer_id)"
                " VALUES (%s, 'demo', 'points', 'alice'), (%s, 'demo', 'points', NULL)",
                (CARD, OTHER),
            )

            def hold_both() -> None:
                cache.put(
                    {CARD: record(customer="alice"), OTHER: record(OTHER)},
                    {"alice": Customer("alice")},
                    cache.changes(),
                )
                assert cache.get([CARD, OTHER]) is not None

            changes: list[tuple[str, set[str]]] = [
                (f"UPDATE cards SET status = 'active' WHERE card_number = '{OTHER}'", {OTHER}),
                ("UPDATE customers SET audiences = '{vip}' WHERE customer_id = 'alice'", {CARD}),
                (f"DELETE FROM cards WHERE card_number = '{OTHER}'", {OTHER}),
                ("TRUNCATE cards, customers", {CARD, OTHER}),
            ]
            for statement, forgotten in changes:
                hold_both()
                await db.execute(statement)
                await eventually(
                    lambda f=forgotten: all(cache.get([n]) is None for n in f),
                    statement,
                )
                kept = {CARD, OTHER} - forgotten
                assert all(cache.get([n]) is not None for n in kept), statement
            # A rolled-back change is never told.
            hold_both()
            async with db.transaction(force_rollback=True):
                await db.execute("UPDATE cards SET status = 'closed'")
            marker = cache.changes() + 1
            await db.execute("NOTIFY loyalty_catalog, 'card:0'")  # a marker after it
            await eventually(lambda: cache.changes() >= marker, "the marker")
            assert cache.get([CARD, OTHER]) is not None
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    assert not cache.listening


@pytest.mark.integration
async def test_a_lost_listening_connection_forgets_everything_and_listens_again(
    schema_url: str,
) -> None:
    cache = CardCache()
    listener = asyncio.get_running_loop().create_task(
        card_cache.listen(schema_url, cache, retry_seconds=0.05)
    )
    try:
        await eventually(lambda: cache.listening, "listening")
        cache.put({CARD: record()}, {}, cache.changes())
        assert cache.get([CARD]) is not None
        async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as db:
            # As a PostgreSQL restart or a network cut ends the listener's session.
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query = %s AND pid <> pg_backend_pid()",
                (f"LISTEN {card_cache.CHANNEL}",),
            )
        await eventually(lambda: len(cache) == 0, "everything forgotten")
        await eventually(lambda: cache.listening, "listening again")
        cache.put({CARD: record()}, {}, cache.changes())
        assert cache.get([CARD]) is not None
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


@pytest.mark.integration
async def test_a_statement_changing_many_cards_is_told_once_as_everything(
    schema_url: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as db:
        await db.execute(
            "INSERT INTO cards (card_number, definition, program)"
            " SELECT 'N' || n, 'demo', 'points' FROM generate_series(1, 1001) AS n"
        )
        await db.execute("LISTEN loyalty_catalog")
        await db.execute("UPDATE cards SET status = 'active'")
        told = [n.payload async for n in db.notifies(timeout=5.0, stop_after=2)]
    assert told == ["*"]


# --------------------------------------------------------------------------- through a server


def card_cache_of(served: Served) -> CardCache:
    held = served.running.pipeline.card_cache
    assert held is not None
    return held


async def posted_and_held(served: Served, request: Any) -> Any:
    """Post ``request`` once the server listens for changes, and check its card is then
    held (so the next batch on it is not looked up); the answer."""
    cache = card_cache_of(served)
    await eventually(lambda: cache.listening, "listening")
    answer = await served.transactions.PostTransaction(request, timeout=10)
    assert cache.get([request.transaction.context.account]) is not None
    return answer


async def test_a_card_closed_behind_the_servers_back_is_refused_once_told(
    served: Served, cards: list[str]
) -> None:
    card = cards[3]
    await posted_and_held(served, purchase(card, "held-1"))
    async with await psycopg.AsyncConnection.connect(
        served.database_url, autocommit=True
    ) as db:  # as another server or an operator would
        await db.execute("UPDATE cards SET status = 'closed' WHERE card_number = %s", (card,))
    await eventually(
        lambda: card_cache_of(served).get([card]) is None,
        "the closed card forgotten",
    )
    answer = await served.transactions.PostTransaction(purchase(card, "held-2"), timeout=10)
    assert answer.result.status == proto.common.RESULT_STATUS_DECLINED
    assert answer.result.reason == "CARD_INACTIVE"


async def test_a_replay_on_a_held_card_is_answered_as_stored_and_posted_once(
    served: Served, cards: list[str]
) -> None:
    card = cards[4]
    pipeline = served.running.pipeline
    first = await posted_and_held(served, purchase(card, "once-1"))
    conflicts = pipeline.conflicts_total
    again = await served.transactions.PostTransaction(purchase(card, "once-1"), timeout=10)
    assert again.result.replayed and not first.result.replayed
    assert again.result.postings == first.result.postings
    assert pipeline.conflicts_total == conflicts  # a replay is no conflict
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.transactions.PostTransaction(
            purchase(card, "once-1", lines=[line(1, 500)]),
            timeout=10,
        )
    assert errors.reason_of(refused.value) == "IDEMPOTENCY_MISMATCH"
    points = (await served.store.ledger_sums(card)).get((card, "points", "points"), 0)
    assert points == sum(
        p.amount for p in first.result.postings if p.balance_name.startswith("points:")
    )


async def test_a_call_holding_a_mismatched_replay_posts_nothing_on_held_cards(
    served: Served, cards: list[str]
) -> None:
    card, other = cards[5], cards[6]
    await posted_and_held(served, purchase(card, "call-1"))
    await posted_and_held(served, purchase(other, "warm-1"))
    before = await served.store.ledger_sums(other)
    call = proto.transactions.PostTransactionsRequest(
        transactions=[
            transaction(other, "call-new"),
            transaction(card, "call-1", lines=[line(1, 700)]),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.transactions.PostTransactions(call, timeout=10)
    assert errors.reason_of(refused.value) == "IDEMPOTENCY_MISMATCH"
    assert await served.store.ledger_sums(other) == before


async def test_without_the_setting_no_card_is_held(start_served: StartServed) -> None:
    served = await start_served(card_cache=False)
    assert served.running.pipeline.card_cache is None


async def test_a_replay_on_a_held_card_is_answered_before_its_pin_is_checked(
    served: Served,
) -> None:
    # As with a looked-up batch: the stored answer, whatever PIN the retry carries.
    card, pin = served.demo.first_card, served.demo.first_pin
    assert pin is not None
    wrong = str((int(pin) + 1) % 10_000).zfill(4)
    first = await posted_and_held(served, purchase(card, "pinned-1", context_fields={"pin": pin}))
    again = await served.transactions.PostTransaction(
        purchase(card, "pinned-1", context_fields={"pin": wrong}), timeout=10
    )
    assert again.result.replayed and again.result.postings == first.result.postings
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.transactions.PostTransaction(
            purchase(card, "pinned-2", context_fields={"pin": wrong}), timeout=10
        )
    assert errors.reason_of(refused.value) == "PIN_INVALID"


def test_the_sampler_counts_batches_given_their_cards_and_says_whether_it_listens() -> None:
    def value(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name) or 0.0

    cache = CardCache()
    sampler = metrics.Sampler(
        batcher=SimpleNamespace(depth=0), store=None, cache=None, card_cache=cache
    )
    hits = value("loyalty_catalog_memory_hits_total")
    misses = value("loyalty_catalog_memory_misses_total")
    cache.get([CARD])  # not listening: a miss
    sampler.sample()
    assert value("loyalty_catalog_memory_listening") == 0
    cache.listening_started()
    cache.put({CARD: record()}, {}, cache.changes())
    cache.get([CARD])
    cache.get([CARD])
    cache.get([OTHER])
    sampler.sample()
    assert value("loyalty_catalog_memory_hits_total") - hits == 2
    assert value("loyalty_catalog_memory_misses_total") - misses == 2
    assert value("loyalty_catalog_memory_listening") == 1

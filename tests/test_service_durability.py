"""Durability and concurrency: what must hold whatever the cache holds and however many
servers post.

- An acknowledged purchase survives a restart with an empty cache, and so does its
  idempotency record (a retry after the restart is a replay).
- The cache is only ever an optimization: flushing it while posting, or putting an older
  account state back into it behind the server's back, costs a retry, never a balance.
- ``Store.reconcile`` finds every balance equal to the sum of its ledger rows after a run
  mixing purchases, returns, voids, engagements, stored value and awards.
- Two servers (two pipelines, two caches of one Redis, one PostgreSQL schema) posting to
  one card at once lose no update: optimistic concurrency re-evaluates the loser.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc  # type: ignore[import-untyped]
import msgpack  # type: ignore[import-untyped, unused-ignore]
import psycopg
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from plugins.proxy import Proxy
from plugins.server import Served, StartServed, context, flush_prefix, line, purchase, transaction

from processor import proto
from processor.cache.accounts import AccountCache
from processor.errors import DatabaseUnavailableError
from processor.flow import pipeline
from processor.runtime import metrics
from processor.service import errors
from processor.store import Store, codec, ledger
from processor.store.event_log import EventLog

pytestmark = pytest.mark.integration

common = proto.common
transactions = proto.transactions
tender = proto.tender
awards = proto.awards

APPROVED = common.RESULT_STATUS_APPROVED
POINTS = "points:points"


async def ledger_points(served: Served, card: str) -> int:
    return (await served.store.ledger_sums(card)).get((card, "points", "points"), 0)


async def stream(served: Served, requests: Iterable[Any], timeout: float = 60) -> list[Any]:
    """Post ``requests`` (Transactions) on one stream; the results, in order."""

    async def messages() -> Any:
        for message in requests:
            yield transactions.StreamTransactionsRequest(transaction=message)

    call = served.transactions.StreamTransactions(messages(), timeout=timeout)
    return [response.result async for response in call]


def dollars(card: str, prefix: str, count: int) -> list[Any]:
    """``count`` purchases of one $1.00 line (one star each at S002 on a Tuesday)."""
    return [transaction(card, f"{prefix}-{n}", lines=[line(1, 100)]) for n in range(count)]


async def cache_keys(redis_url: str, prefix: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return len([key async for key in client.scan_iter(match=f"{prefix}*")])
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- restarts


async def test_an_acknowledged_purchase_survives_a_restart_with_an_empty_cache(
    start_served: StartServed, cards: list[str]
) -> None:
    card = cards[40]
    first = await start_served()
    prefix = first.settings.cache_key_prefix
    request = purchase(card, "dur-1", lines=[line(1, 12_300)])  # $123.00: 123 stars
    acknowledged = (await first.transactions.PostTransaction(request, timeout=10)).result
    assert (acknowledged.status, acknowledged.balances[POINTS]) == (APPROVED, 123)
    assert await cache_keys(first.redis_url, prefix) >= 1  # the state was cached...

    await first.stop()
    await flush_prefix(first.redis_url, prefix)
    assert await cache_keys(first.redis_url, prefix) == 0  # ...and is gone

    second = await start_served(cache_key_prefix=prefix)
    after = (
        await second.transactions.PostTransaction(
            purchase(card, "dur-2", lines=[line(1, 4_500)]), timeout=10
        )
    ).result
    assert (after.status, after.balances[POINTS]) == (APPROVED, 123 + 45)
    assert second.running.pipeline.cache_hits_total == 0  # the state came from PostgreSQL
    # A client that never got the first answer retries it: the original answer, no posting.
    retried = (await second.transactions.PostTransaction(request, timeout=10)).result
    assert retried.replayed
    retried.replayed = False
    assert retried == acknowledged
    assert await ledger_points(second, card) == 168
    assert await second.store.reconcile() == []


async def test_flushing_the_cache_while_posting_keeps_every_balance_exact(
    served: Served, cards: list[str]
) -> None:
    hot = cards[41:44]
    per_card = 150
    flushing = True

    async def flush_repeatedly() -> int:
        flushes = 0
        while flushing:
            await flush_prefix(served.redis_url, served.settings.cache_key_prefix)
            flushes += 1
            await asyncio.sleep(0.005)
        return flushes

    flusher = asyncio.create_task(flush_repeatedly())
    try:
        answered = await asyncio.gather(
            *(stream(served, dollars(card, f"f{n}", per_card)) for n, card in enumerate(hot)),
            *(stream(served, dollars(card, f"g{n}", per_card)) for n, card in enumerate(hot)),
        )
    finally:
        flushing = False
    assert await flusher > 1
    results = [result for one in answered for result in one]
    assert len(results) == 2 * per_card * len(hot)
    assert all(r.status == APPROVED for r in results)
    for card in hot:
        # 300 stars each, below coupon-5's 500: every star is still there, and the running
        # balances are 1..300, each once.
        assert await ledger_points(served, card) == 2 * per_card
        mine = sorted(r.balances[POINTS] for r in results if r.account == card)
        assert mine == list(range(1, 2 * per_card + 1))
    assert await served.store.reconcile() == []


@contextlib.asynccontextmanager
async def cache_entry(served: Served, card: str) -> AsyncIterator[tuple[Any, str, str]]:
    """A raw Redis client, and the bucket and field that hold ``card``'s cached state."""
    async with AccountCache.from_url(
        served.redis_url, key_prefix=served.settings.cache_key_prefix
    ) as cache:
        key, field = cache.location(card)
    client = aioredis.Redis.from_url(served.redis_url)
    try:
        yield client, key, field
    finally:
        await client.aclose()


async def test_a_stale_cache_entry_costs_a_retry_never_a_balance(
    served: Served, cards: list[str]
) -> None:
    card = cards[44]
    post = served.transactions.PostTransaction
    await post(purchase(card, "st-1", lines=[line(1, 1_000)]), timeout=10)
    async with cache_entry(served, card) as (client, key, field):
        old = await client.hget(key, field)
        assert old is not None
        await post(purchase(card, "st-2", lines=[line(1, 2_000)]), timeout=10)
        # Put version 1 back, as a lagging writer or a failed-over replica might.
        await client.hset(key, field, old)
        conflicts = served.running.pipeline.conflicts_total
        third = (await post(purchase(card, "st-3", lines=[line(1, 4_000)]), timeout=10)).result
    # 10 + 20 + 40: evaluated on the committed state, not on the stale one (10 + 40).
    assert (third.status, third.balances[POINTS]) == (APPROVED, 70)
    assert served.running.pipeline.conflicts_total == conflicts + 1
    assert await ledger_points(served, card) == 70
    assert await served.store.reconcile() == []


async def test_a_cached_state_damaged_inside_a_loyalty_account_is_read_from_postgresql(
    served: Served, cards: list[str]
) -> None:
    # A state's loyalty accounts are decoded only when the engine reads them
    # (codec.DeferredState), so damage there is found then, not when the cache is read.
    card = cards[43]
    post = served.transactions.PostTransaction
    await post(purchase(card, "dm-1", lines=[line(1, 1_000)]), timeout=10)
    version, state = (await served.store.load([card]))[card]
    fields = msgpack.unpackb(codec.encode_state(state), raw=False, strict_map_key=False)
    fields[3][0][6][0][0] = "not a day"  # the first lot of the first loyalty account
    async with AccountCache.from_url(
        served.redis_url, key_prefix=served.settings.cache_key_prefix
    ) as cache:
        await cache.put_many({card: (version, msgpack.packb(fields))})
        second = (await post(purchase(card, "dm-2", lines=[line(1, 2_000)]), timeout=10)).result
        assert (second.status, second.balances[POINTS]) == (APPROVED, 30)
        cached = (await cache.get_many([card]))[card]
    assert codec.decode_state(cached[1], card).loyalty == (
        (await served.store.load([card]))[card][1].loyalty
    )
    assert await served.store.reconcile() == []


async def test_a_looked_up_batch_reads_its_states_in_the_same_statement_not_the_cache(
    served: Served, cards: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One round trip for a batch whose cards are not held: the lookup brings the stored
    # states, the cache is not asked and no state is loaded after it. PostgreSQL's states
    # win over a cache that holds an older one.
    running = served.running.pipeline
    assert running.cache is not None and running.card_cache is not None
    card = cards[45]
    first = await served.transactions.PostTransaction(
        purchase(card, "stored-1", lines=[line(1, 1_000)]), timeout=10
    )
    assert first.result.balances[POINTS] == 10
    stale = await running.cache.get_many([card])
    second = await served.transactions.PostTransaction(
        purchase(card, "stored-2", lines=[line(1, 1_000)]), timeout=10
    )
    assert second.result.balances[POINTS] == 20
    await running.cache.put_many({card: stale[card]})  # the cache one version behind
    running.card_cache.told("*")  # the card must be looked up again
    read: list[Any] = []

    async def not_asked(accounts: Any) -> Any:
        read.append(list(accounts))
        return {}

    monkeypatch.setattr(running.cache, "get_many", not_asked)
    monkeypatch.setattr(running.store, "load_encoded", not_asked)
    conflicts = running.conflicts_total
    third = await served.transactions.PostTransaction(
        purchase(card, "stored-3", lines=[line(1, 1_000)]), timeout=10
    )
    assert (third.result.status, third.result.balances[POINTS]) == (APPROVED, 30)
    assert read == [] and running.conflicts_total == conflicts


def test_conflict_pauses_are_random_double_with_each_conflict_and_stay_capped() -> None:
    ceilings = []
    for attempt in range(pipeline.CONFLICT_RETRIES_MAX):
        pauses = [pipeline.conflict_pause(attempt) for _ in range(200)]
        assert all(0 <= pause <= pipeline.CONFLICT_BACKOFF_SECONDS_MAX for pause in pauses)
        assert len(set(pauses)) > 1  # jittered: two racing processes do not wait alike
        ceilings.append(max(pauses))
    assert ceilings[0] <= pipeline.CONFLICT_BACKOFF_SECONDS < ceilings[2]
    assert ceilings[-1] > pipeline.CONFLICT_BACKOFF_SECONDS_MAX / 2


async def test_a_cached_state_that_cannot_be_decoded_is_read_from_postgresql(
    served: Served, cards: list[str]
) -> None:
    card = cards[49]
    post = served.transactions.PostTransaction
    await post(purchase(card, "ud-1", lines=[line(1, 1_000)]), timeout=10)
    async with cache_entry(served, card) as (client, key, field):
        stored = await client.hget(key, field)
        assert stored is not None
        version_prefix = stored[: 1 + stored[0]]
        # The same version, a raw state of a format this release does not know (as a newer
        # release might write): it must cost a read from PostgreSQL, not the batch.
        await client.hset(key, field, version_prefix + b"\x00" + msgpack.packb([99, "?"]))
        second = (await post(purchase(card, "ud-2", lines=[line(1, 2_000)]), timeout=10)).result
        rewritten = await client.hget(key, field)
    assert (second.status, second.balances[POINTS]) == (APPROVED, 30)
    assert rewritten is not None and rewritten[: 1 + rewritten[0]] != version_prefix
    assert await ledger_points(served, card) == 30
    assert await served.store.reconcile() == []


# --------------------------------------------------------------------------- reconcile


async def test_reconcile_finds_no_mismatch_after_a_mixed_run(
    served: Served, cards: list[str]
) -> None:
    buyer, shopper, gift, walker = cards[45], cards[46], cards[47], cards[48]
    answers: list[tuple[str, Any]] = []

    async def call(method: Any, request: Any) -> Any:
        result = (await method(request, timeout=10)).result
        answers.append((result.request_id, result.status))
        return result

    post = served.transactions.PostTransaction
    money = common.Money

    # Purchases, one big enough for a coupon, then its redemption and a second try.
    big = await call(post, purchase(buyer, "m-1", lines=[line(1, 52_000)]))
    (coupon,) = big.awards
    await call(post, purchase(buyer, "m-2", lines=[line(1, 3_000), line(2, 7_000, quantity=2)]))
    for request_id in ("m-3", "m-4"):
        await call(
            served.awards.RedeemAward,
            awards.RedeemAwardRequest(context=context(buyer, request_id), code=coupon.code),
        )
    # A partial return, and a purchase voided.
    await call(
        post,
        transactions.PostTransactionRequest(
            transaction=transactions.Transaction(
                context=context(buyer, "m-5", "2026-03-04T10:00:00"),
                sale_return=transactions.Return(
                    original_id="m-2", lines=[transactions.ReturnLine(number=2, quantity=1)]
                ),
            )
        ),
    )
    await call(post, purchase(shopper, "m-6", lines=[line(1, 9_900)]))
    await call(
        post,
        transactions.PostTransactionRequest(
            transaction=transactions.Transaction(
                context=context(shopper, "m-7"), void=transactions.Void(original_id="m-6")
            )
        ),
    )
    # Engagements.
    for number in range(3):
        await call(
            post,
            transactions.PostTransactionRequest(
                transaction=transactions.Transaction(
                    context=context(walker, f"m-e{number}"),
                    engagement=transactions.Engagement(kind="video", count=1),
                )
            ),
        )
    # Stored value: activate, redeem, hold and capture, a purchase paid with stored value.
    await call(
        served.tender.Activate,
        tender.ActivateRequest(context=context(gift, "m-t1"), amount=money(units=20_000)),
    )
    await call(
        served.tender.Redeem,
        tender.RedeemRequest(context=context(gift, "m-t2"), amount=money(units=1_234)),
    )
    await call(
        served.tender.PreAuthorize,
        tender.PreAuthorizeRequest(context=context(gift, "m-t3"), amount=money(units=5_000)),
    )
    await call(
        served.tender.Capture,
        tender.CaptureRequest(
            context=context(gift, "m-t4"), preauthorization_id="m-t3", amount=money(units=4_321)
        ),
    )
    await call(
        post, purchase(gift, "m-t5", lines=[line(1, 2_500)], stored_value=money(units=2_500))
    )
    declined = common.RESULT_STATUS_DECLINED
    assert answers == [
        ("m-1", APPROVED),
        ("m-2", APPROVED),
        ("m-3", APPROVED),
        ("m-4", declined),
        ("m-5", APPROVED),
        ("m-6", APPROVED),
        ("m-7", APPROVED),
        ("m-e0", APPROVED),
        ("m-e1", APPROVED),
        ("m-e2", APPROVED),
        ("m-t1", APPROVED),
        ("m-t2", APPROVED),
        ("m-t3", APPROVED),
        ("m-t4", APPROVED),
        ("m-t5", APPROVED),
    ]
    # And a concurrent burst over all of them.
    everyone = [buyer, shopper, gift, walker]
    await asyncio.gather(
        *(stream(served, dollars(card, f"m-b{n}", 40)) for n, card in enumerate(everyone))
    )

    assert await served.store.reconcile() == []
    sums = await served.store.ledger_sums()
    assert {account for account, _, _ in sums} == set(everyone)
    assert sum(total for (_, _, kind), total in sums.items() if kind == "tender") == (
        20_000 - 1_234 - 4_321 - 2_500
    )
    # The void took back everything the voided purchase earned: only the burst is left.
    assert sums[shopper, "points", "points"] == 40


# --------------------------------------------------------------------------- two servers


async def test_two_servers_posting_to_one_card_lose_no_update(
    start_served: StartServed, cards: list[str]
) -> None:
    # Each server has its own pipeline, batcher, pools and cache client, as two processes
    # would, over one schema and one Redis (one key prefix, as a deployment shares it).
    # Small batches make many commits, so the two interleave often.
    # Points events on: each committed request writes one, whatever conflicts it met.
    one = await start_served(batch_requests_max=25, events_points_issued=True)
    two = await start_served(batch_requests_max=25, events_points_issued=True)
    card = cards[49]
    streams, per_stream = 3, 100

    answered = await asyncio.gather(
        *(
            stream(server, dollars(card, f"{name}{n}", per_stream))
            for name, server in (("a", one), ("b", two))
            for n in range(streams)
        )
    )
    results = [result for one_stream in answered for result in one_stream]
    total = 2 * streams * per_stream
    assert len(results) == total
    assert all(r.status == APPROVED and not r.replayed for r in results)
    # 600 stars, one each: at 500 coupon-5 takes 500, leaving 100 (ytd 600 < 1,000: silver).
    assert sum(1 for r in results for a in r.awards if a.rule == "coupon-5") == 1
    history = [*range(1, 500), 0, *range(1, 101)]
    assert sorted(r.balances[POINTS] for r in results) == sorted(history)
    assert await ledger_points(one, card) == 100
    sums = await one.store.ledger_sums(card)
    assert sums == {(card, "points", "points"): 100}
    account = await two.admin.GetAccount(proto.admin.GetAccountRequest(account=card), timeout=10)
    (loyalty,) = account.loyalty
    assert (loyalty.level, loyalty.earned_ltd.units) == ("silver", total)
    assert await one.store.reconcile() == []
    # The servers did get in each other's way (about one conflict per batch here), and
    # every conflicting batch was evaluated again on fresh state.
    assert one.running.pipeline.conflicts_total + two.running.pipeline.conflicts_total >= 1
    # Every request's events once: its points, and the one coupon.
    log = EventLog(one.store)
    await log.position()
    events = [row.event for row in await log.after(0, 10_000)]
    assert Counter(event.kind for event in events) == {"points_issued": total, "award_issued": 1}
    assert sorted(e.request_id for e in events if e.kind == "points_issued") == sorted(
        r.request_id for r in results
    )


# --------------------------------------------------------------------------- graceful stop


async def test_a_graceful_stop_answers_every_transaction_it_commits(
    served: Served, cards: list[str]
) -> None:
    # What SIGTERM does in `loyalty serve`: Running.stop(grace). A stream that keeps sending
    # should be told to stop (UNAVAILABLE) after the answers of all it had submitted, so
    # that the client's acknowledgements and the ledger agree exactly.
    card = cards[2]
    sent: list[str] = []
    acknowledged: list[str] = []
    ended: list[grpc.aio.AioRpcError] = []

    async def messages() -> Any:
        for number in range(5_000):
            sent.append(f"g-{number}")
            yield transactions.StreamTransactionsRequest(
                transaction=transaction(card, sent[-1], lines=[line(1, 100)])
            )
            if number % 20 == 19:
                await asyncio.sleep(0.002)

    async def read() -> None:
        call = served.transactions.StreamTransactions(messages(), timeout=60)
        try:
            async for response in call:
                acknowledged.append(response.result.request_id)
        except grpc.aio.AioRpcError as error:
            ended.append(error)

    reader = asyncio.create_task(read())
    while len(acknowledged) < 50:
        await asyncio.sleep(0.005)
    await served.stop_server(0.5)
    await reader
    committed = await posted_ids(served.database_url, card)
    assert set(acknowledged) <= committed  # what must always hold (it does)
    assert committed == set(acknowledged), (
        f"{len(committed - set(acknowledged))} committed transactions were never answered"
    )
    # The server ends the stream with UNAVAILABLE (SHUTTING_DOWN); now and then grpc core,
    # shutting down around the abort, reports it as INTERNAL instead. Either way the client
    # retries what it was not answered, and what it was answered is posted.
    assert len(ended) == 1
    assert ended[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)


async def posted_ids(database_url: str, card: str) -> set[str]:
    """The request ids PostgreSQL holds as posted on one card."""
    async with await psycopg.AsyncConnection.connect(database_url) as connection:
        cursor = await connection.execute(
            "SELECT request_id FROM idempotency WHERE account_id = %s", (card,)
        )
        return {request_id for (request_id,) in await cursor.fetchall()}


# --------------------------------------------------------------------------- outages


async def test_the_probes_see_postgres_and_redis_down_without_any_traffic(
    postgres_proxy: Proxy, redis_url: str
) -> None:
    async with (
        Store(postgres_proxy.url, pool_size_max=2) as store,
        AccountCache.from_url(redis_url, key_prefix="probe-test:") as cache,
    ):
        await metrics.probe_once(store, cache)
        assert (metrics.DATABASE_UP._value.get(), metrics.CACHE_UP._value.get()) == (1, 1)
        await postgres_proxy.cut()
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            dead_url = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
        async with AccountCache.from_url(dead_url, key_prefix="probe-test:") as dead:
            await metrics.probe_once(store, dead)
        assert (metrics.DATABASE_UP._value.get(), metrics.CACHE_UP._value.get()) == (0, 0)


async def test_postgres_down_fails_fast_with_1001_and_service_resumes_by_itself(
    start_served: StartServed, schema_url: str, postgres_proxy: Proxy, cards: list[str]
) -> None:
    served = await start_served(
        database_url=postgres_proxy.url,
        registry_refresh_seconds=0.2,
    )
    card = cards[1]
    post = served.transactions.PostTransaction
    before = (await post(purchase(card, "pg-1", lines=[line(1, 1_000)]), timeout=10)).result
    assert before.status == APPROVED

    await postgres_proxy.cut()
    # Failing fast: UNAVAILABLE with 1001, not the 30 s deadline running out.
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await post(purchase(card, "pg-2", lines=[line(1, 2_000)]), timeout=30)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    info = errors.error_info_of(failure.value)
    assert info is not None and info.metadata["code"] == "1001"
    # Another call while it is still down fails the same way.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await post(purchase(card, "pg-3", lines=[line(1, 4_000)]), timeout=30)
    assert again.value.code() == grpc.StatusCode.UNAVAILABLE

    await postgres_proxy.open()  # PostgreSQL is back, on the same address
    deadline = time.monotonic() + 30
    while True:
        try:
            retried = (
                await post(purchase(card, "pg-2", lines=[line(1, 2_000)]), timeout=10)
            ).result
            break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() < deadline, "the service did not resume by itself"
            await asyncio.sleep(0.2)
    # The failed calls posted nothing: the retry is fresh, and the balance is 10 + 20.
    assert (retried.status, retried.replayed, retried.balances[POINTS]) == (APPROVED, False, 30)
    async with Store(schema_url, pool_size_max=1) as store:
        assert (await store.ledger_sums(card)) == {(card, "points", "points"): 30}
        assert await store.reconcile() == []
    await served.stop()


async def test_after_an_outage_longer_than_a_reconnection_attempt_the_service_resumes(
    start_served: StartServed, postgres_proxy: Proxy, cards: list[str]
) -> None:
    # The old failure: the pool gave a connection up after one long attempt (300 s), the
    # callers that timed out meanwhile filled its waiting list, and it never connected
    # again. Attempts of 0.5 s and more failed callers than the list holds reproduce it.
    served = await start_served(
        database_url=postgres_proxy.url,
        database_reconnect_seconds=0.5,
    )
    card = cards[5]
    post = served.transactions.PostTransaction
    before = (await post(purchase(card, "lo-1", lines=[line(1, 1_000)]), timeout=10)).result
    assert before.status == APPROVED

    await postgres_proxy.cut()
    failed = await asyncio.gather(
        *(served.store.load([card]) for _ in range(ledger.POOL_WAITING_MAX + 20)),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, DatabaseUnavailableError) for outcome in failed)
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await post(purchase(card, "lo-2", lines=[line(1, 2_000)]), timeout=30)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.sleep(2.0)  # several reconnection attempts begin and are given up

    await postgres_proxy.open()  # PostgreSQL is back, on the same address
    while True:  # a hang guard only: pytest-timeout fails a service that never resumes
        try:
            retried = (
                await post(purchase(card, "lo-2", lines=[line(1, 2_000)]), timeout=10)
            ).result
            break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            await asyncio.sleep(0.2)
    assert (retried.status, retried.replayed, retried.balances[POINTS]) == (APPROVED, False, 30)
    await served.stop()


async def test_while_postgres_is_known_down_calls_fail_at_once_and_health_says_so(
    start_served: StartServed, postgres_proxy: Proxy, cards: list[str]
) -> None:
    served = await start_served(
        database_url=postgres_proxy.url,
    )
    card = cards[6]
    post = served.transactions.PostTransaction
    health = health_pb2_grpc.HealthStub(served.channel)

    async def status() -> int:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(answer.status)

    assert (await post(purchase(card, "kd-1"), timeout=10)).result.status == APPROVED
    assert served.store.reachable and await status() == health_pb2.HealthCheckResponse.SERVING

    await postgres_proxy.cut()
    # The first calls learn it: they wait for a connection that cannot come, and fail.
    while served.store.reachable:  # hang guard: pytest-timeout
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await post(purchase(card, "kd-2"), timeout=30)
        assert first.value.code() == grpc.StatusCode.UNAVAILABLE
    # From then on a call does not wait for the pool at all: nothing more is queued there.
    queued = served.store.pool.get_stats().get("requests_queued", 0)
    for attempt in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as fast:
            await post(purchase(card, f"kd-3-{attempt}"), timeout=30)
        info = errors.error_info_of(fast.value)
        assert fast.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info is not None and info.metadata["code"] == "1001"
    assert served.store.pool.get_stats().get("requests_queued", 0) == queued
    while await status() != health_pb2.HealthCheckResponse.NOT_SERVING:
        await asyncio.sleep(0.1)

    await postgres_proxy.open()
    while await status() != health_pb2.HealthCheckResponse.SERVING:
        await asyncio.sleep(0.1)
    again = (await post(purchase(card, "kd-2"), timeout=10)).result
    assert (again.status, again.replayed) == (APPROVED, False)
    await served.stop()


async def test_a_slow_then_cut_then_restored_redis_never_changes_an_answer(
    start_served: StartServed, redis_url: str, cards: list[str]
) -> None:
    host, port = redis_url.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    proxy = Proxy(host, int(port))
    await proxy.open()
    served = await start_served(cache_url=f"redis://127.0.0.1:{proxy.port}")
    cache = served.running.cache
    assert cache is not None
    card = cards[7]
    post = served.transactions.PostTransaction
    balances = []
    try:
        for phase, delay in (("fast", 0.0), ("slow", 1.0), ("fast-again", 0.0)):
            proxy.delay_seconds = delay  # slower than the cache's 0.5 s operation deadline
            for n in range(5):
                answer = await post(purchase(card, f"sl-{phase}-{n}"), timeout=30)
                balances.append(answer.result.balances[POINTS])
        errors_when_slow = cache.errors_total
        await proxy.cut()
        for n in range(5):
            answer = await post(purchase(card, f"sl-cut-{n}"), timeout=30)
            balances.append(answer.result.balances[POINTS])
        await proxy.open()  # Redis is back, on the same address
        for n in range(5):
            answer = await post(purchase(card, f"sl-back-{n}"), timeout=30)
            balances.append(answer.result.balances[POINTS])
    finally:
        await proxy.cut()
    # Every answer exact, one purchase after the other, whatever Redis did meanwhile.
    assert balances == list(range(10, 10 * 26, 10))
    assert errors_when_slow >= 1 and cache.errors_total >= errors_when_slow
    assert await ledger_points(served, card) == 250
    assert await served.store.reconcile() == []


async def test_redis_down_keeps_answering_correctly_from_postgres(
    start_served: StartServed, cards: list[str]
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        nowhere = f"redis://127.0.0.1:{sock.getsockname()[1]}"
    served = await start_served(cache_url=nowhere)
    card, other = cards[3], cards[4]
    post = served.transactions.PostTransaction
    first = (await post(purchase(card, "nr-1", lines=[line(1, 2_500)]), timeout=10)).result
    assert (first.status, first.balances[POINTS]) == (APPROVED, 25)
    answered = await asyncio.gather(
        stream(served, dollars(card, "nr-a", 100)), stream(served, dollars(other, "nr-b", 100))
    )
    assert [r.balances[POINTS] for r in answered[0]] == list(range(26, 126))
    assert [r.balances[POINTS] for r in answered[1]] == list(range(1, 101))
    replay = (await post(purchase(card, "nr-1", lines=[line(1, 2_500)]), timeout=10)).result
    assert replay.replayed and replay.balances[POINTS] == 25
    assert served.running.cache is not None and served.running.cache.errors_total >= 1
    assert await ledger_points(served, card) == 125
    assert await ledger_points(served, other) == 100
    assert await served.store.reconcile() == []

"""Events on real PostgreSQL: a committed batch's level moves and awards written in its own
commit, once per request, numbered by the relay in the order readers follow; nothing from
a replay, a dry run, a call that failed or a batch the store refused; the jobs' moves too."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from plugins.posting import post, registry_of, run_job
from plugins.server import Served, StartServed, demo_cards, line, purchase, transaction

from processor import calendar, proto
from processor.engine.types import AccountState, Line, Purchase
from processor.errors import InvalidBatchError
from processor.service import errors
from processor.service import events as service_events
from processor.store.event_log import EventLog, EventRow
from processor.store.events import AWARD_ISSUED, LEVEL_MOVED, Event
from processor.store.ledger import AccountWrite, CommitBatch, Store

pytestmark = pytest.mark.integration

transactions = proto.transactions
admin = proto.admin

GOLD_SPEND = 120_000  # $1,200.00 at the demo's one star per dollar: 1,200 ytd moves silver -> gold


def summary(rows: list[EventRow]) -> list[tuple[int, str, str, str]]:
    """(position, key, kind, program) of each row."""
    return [(row.position, row.event.key, row.event.kind, row.event.program) for row in rows]


async def all_events(store: Store) -> list[EventRow]:
    log = EventLog(store)
    await log.position()
    return await log.after(0, 1_000)


# --------------------------------------------------------------------------- through the service


async def test_a_purchase_that_moves_a_level_writes_the_move_and_its_coupons_as_events(
    served: Served, cards: list[str]
) -> None:
    card = cards[10]
    request = purchase(card, "gold-1", lines=[line(1, GOLD_SPEND)])
    result = (await served.transactions.PostTransaction(request, timeout=10)).result
    assert [(m.from_level, m.to_level) for m in result.moves] == [("silver", "gold")]
    assert result.awards  # coupon-5 at 500 available stars

    rows = await all_events(served.store)
    # The move first, then the awards, in the result's order, positioned from 1.
    expected = [(1, f"{card}/gold-1/0", LEVEL_MOVED, "points")] + [
        (2 + index, f"{card}/gold-1/{1 + index}", AWARD_ISSUED, award.program)
        for index, award in enumerate(result.awards)
    ]
    assert summary(rows) == expected
    move = rows[0].event
    assert dict(move.data) == {
        "move": "advancement",
        "rule": result.moves[0].rule,
        "from_level": "silver",
        "to_level": "gold",
    }
    assert move.day == calendar.parse_day("2026-03-03")
    awarded = [row.event.data for row in rows[1:]]
    assert [(a["code"], a["rule"], a["award_kind"]) for a in awarded] == [
        (a.code, a.rule, "coupon") for a in result.awards
    ]
    assert all(a["points_cost"] == 500 for a in awarded)


async def test_a_replay_a_dry_run_and_a_failed_call_write_no_events(
    served: Served, cards: list[str]
) -> None:
    card, dry_card, failing = cards[11], cards[12], cards[13]
    request = purchase(card, "gold-2", lines=[line(1, GOLD_SPEND)])
    await served.transactions.PostTransaction(request, timeout=10)
    written = await all_events(served.store)
    assert written and {row.event.account_id for row in written} == {card}

    replayed = (await served.transactions.PostTransaction(request, timeout=10)).result
    assert replayed.replayed
    dry = purchase(
        dry_card, "gold-dry", lines=[line(1, GOLD_SPEND)], context_fields={"dry_run": True}
    )
    assert (await served.transactions.PostTransaction(dry, timeout=10)).result.moves
    # One unknown card fails the whole call: the card that would have moved posts nothing.
    call = transactions.PostTransactionsRequest(
        transactions=[
            transaction(failing, "gold-3", lines=[line(1, GOLD_SPEND)]),
            transaction("6001209999999999", "gold-4"),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await served.transactions.PostTransactions(call, timeout=10)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND

    assert await all_events(served.store) == written


# ------------------------------------------------------------------ ListEvents and WatchEvents


async def test_list_events_shows_the_moves_and_awards_as_the_answer_did_page_after_page(
    served: Served, cards: list[str]
) -> None:
    card, other = cards[14], cards[15]
    first = await served.transactions.PostTransaction(
        purchase(card, "gold-5", lines=[line(1, GOLD_SPEND)]), timeout=10
    )
    await served.transactions.PostTransaction(
        purchase(other, "gold-6", lines=[line(1, GOLD_SPEND)]), timeout=10
    )
    result = first.result
    page = await served.admin.ListEvents(admin.ListEventsRequest(), timeout=10)
    mine = [event for event in page.events if event.account == card]
    assert [event.level_moved for event in mine[:1]] == list(result.moves)
    assert [event.award_issued for event in mine[1:]] == list(result.awards)
    assert [(e.position, e.key, e.request_id, e.date) for e in mine] == [
        (n + 1, f"{card}/gold-5/{n}", "gold-5", "2026-03-03") for n in range(len(mine))
    ]
    assert [e.kind for e in mine] == [admin.EVENT_KIND_LEVEL_MOVED] + [
        admin.EVENT_KIND_AWARD_ISSUED
    ] * len(result.awards)
    assert page.last_position == len(page.events) == 2 * len(mine)

    # One at a time, each page going on from the last: the same events, in order.
    seen, after = [], 0
    while True:
        one = await served.admin.ListEvents(
            admin.ListEventsRequest(after_position=after, page_size=1), timeout=10
        )
        if not one.events:
            assert one.last_position == after
            break
        seen.extend(one.events)
        after = one.last_position
    assert seen == list(page.events)
    awards_of_other = await served.admin.ListEvents(
        admin.ListEventsRequest(kinds=[admin.EVENT_KIND_AWARD_ISSUED], account=other),
        timeout=10,
    )
    assert {(e.account, e.kind) for e in awards_of_other.events} == {
        (other, admin.EVENT_KIND_AWARD_ISSUED)
    }
    # The events a filter leaves out are passed over: the page covers every position.
    assert awards_of_other.last_position == page.last_position
    nothing = await served.admin.ListEvents(
        admin.ListEventsRequest(kinds=[admin.EVENT_KIND_POINTS_ISSUED]), timeout=10
    )
    assert (list(nothing.events), nothing.last_position) == ([], page.last_position)


async def test_watch_events_sends_what_is_committed_from_now_on_and_from_a_position(
    served: Served, cards: list[str]
) -> None:
    before, card = cards[16], cards[17]
    await served.transactions.PostTransaction(
        purchase(before, "gold-7", lines=[line(1, GOLD_SPEND)]), timeout=10
    )
    stored = (await served.admin.ListEvents(admin.ListEventsRequest(), timeout=10)).events
    watching = served.admin.WatchEvents(admin.WatchEventsRequest(from_now=True), timeout=30)
    replaying = served.admin.WatchEvents(admin.WatchEventsRequest(after_position=1), timeout=30)
    await asyncio.sleep(0.3)  # the from-now watch has begun after what is stored
    posted = await served.transactions.PostTransaction(
        purchase(card, "gold-8", lines=[line(1, GOLD_SPEND)]), timeout=10
    )
    expected = 1 + len(posted.result.awards)
    received: list[Any] = []
    while len(received) < expected:
        message = await watching.read()
        received.extend(message.events)
        assert message.last_position == received[-1].position
    assert {event.account for event in received} == {card}
    assert received[0].level_moved == posted.result.moves[0]
    watching.cancel()
    # From position 1: the stored events after the first, then the new ones.
    replayed: list[Any] = []
    while len(replayed) < len(stored) - 1 + expected:
        replayed.extend((await replaying.read()).events)
    assert replayed == list(stored[1:]) + received
    replaying.cancel()


async def test_a_server_set_to_writes_each_purchases_earned_points_as_an_event(
    start_served: StartServed, cards: list[str]
) -> None:
    plain = await start_served()
    card = cards[18]
    await plain.transactions.PostTransaction(purchase(card, "ten-1"), timeout=10)
    assert await all_events(plain.store) == []  # off by default: moves and awards only
    pointed = await start_served(events_points_issued=True)
    answer = await pointed.transactions.PostTransaction(purchase(card, "ten-2"), timeout=10)
    assert [(p.rule, p.amount) for p in answer.result.postings] == [("base", 10)]
    page = await pointed.admin.ListEvents(admin.ListEventsRequest(), timeout=10)
    (event,) = page.events
    assert (event.key, event.kind, event.request_id) == (
        f"{card}/ten-2/0", admin.EVENT_KIND_POINTS_ISSUED, "ten-2",
    )  # fmt: skip
    assert event.points_issued == admin.PointsIssued(
        program="points", points=proto.common.Points(units=10, precision=0)
    )
    # A return takes points back: no event.
    back = transactions.Transaction(
        context=transaction(card, "ten-3").context,
        sale_return=transactions.Return(original_id="ten-2"),
    )
    returned = await pointed.transactions.PostTransaction(
        transactions.PostTransactionRequest(transaction=back), timeout=10
    )
    assert [p.amount for p in returned.result.postings] == [-10]
    assert len(await all_events(pointed.store)) == 1


async def test_watches_beyond_the_most_one_process_serves_are_refused_resource_exhausted(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_events, "EVENTS_WATCHERS_MAX", 1)
    first = served.admin.WatchEvents(admin.WatchEventsRequest(from_now=True), timeout=30)
    await asyncio.sleep(0.3)  # the first watch is open
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async for _ in served.admin.WatchEvents(admin.WatchEventsRequest(), timeout=10):
            pass
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    first.cancel()


async def test_a_reader_whose_place_is_older_than_the_events_kept_is_told_so(
    served: Served, cards: list[str]
) -> None:
    card = cards[19]
    await served.transactions.PostTransaction(
        purchase(card, "gold-old", lines=[line(1, GOLD_SPEND)]), timeout=10
    )
    rows = await all_events(served.store)
    last = rows[-1].position
    assert last >= 2
    async with served.store.pool.connection() as connection:
        await connection.execute(
            "UPDATE events SET created_at = now() - interval '500 days' WHERE position < %s",
            (last,),
        )
        await connection.execute("UPDATE event_deliveries SET last_position = %s", (last,))
    assert await EventLog(served.store).prune(400) == last - 1
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await served.admin.ListEvents(admin.ListEventsRequest(after_position=1), timeout=10)
    assert failure.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert errors.reason_of(failure.value) == "EVENTS_REMOVED"
    assert f"go on after {last - 1}" in failure.value.details()
    kept = await served.admin.ListEvents(
        admin.ListEventsRequest(after_position=last - 1), timeout=10
    )
    assert [event.position for event in kept.events] == [last]
    from_start = await served.admin.ListEvents(admin.ListEventsRequest(), timeout=10)
    assert [event.position for event in from_start.events] == [last]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (admin.ListEventsRequest(after_position=-1), "after_position"),
        (admin.ListEventsRequest(kinds=[admin.EVENT_KIND_UNSPECIFIED]), "kinds[0]"),
        (admin.ListEventsRequest(kinds=[admin.EVENT_KIND_LEVEL_MOVED, 7]), "kinds[1]"),
        (admin.ListEventsRequest(account="60012x"), "account"),
        (admin.WatchEventsRequest(from_now=True, after_position=4), "from_now"),
        (admin.WatchEventsRequest(kinds=[9]), "kinds[0]"),
    ],
)
async def test_a_bad_events_request_is_refused_naming_its_field(
    served: Served, request_: Any, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        if isinstance(request_, admin.ListEventsRequest):
            await served.admin.ListEvents(request_, timeout=10)
        else:
            async for _ in served.admin.WatchEvents(request_, timeout=10):
                pass
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.reason_of(failure.value) == "INVALID_ARGUMENT"
    assert failure.value.details().startswith(f"{field}:"), failure.value.details()


# ------------------------------------------------------------------ the store and the relay


def moved(account: str, request_id: str, seq: int = 0, kind: str = LEVEL_MOVED) -> Event:
    data = {"move": "advancement", "rule": "r", "from_level": "a", "to_level": "b"}
    return Event(account, request_id, seq, kind, "points", 20_000, data)


async def commit_events(store: Store, account: str, events: list[Event]) -> Any:
    """Commit a new state of ``account`` with ``events``."""
    loaded = await store.load([account])
    version = loaded[account][0] if account in loaded else 0
    write = AccountWrite(AccountState(account), version)
    return await store.commit(CommitBatch(accounts=[write], events=events))


async def test_the_relay_numbers_events_in_the_order_they_were_committed_once_each(
    store: Store,
) -> None:
    log = EventLog(store)
    await commit_events(store, "7000000000000001", [moved("7000000000000001", "a")])
    assert await log.position() == 1
    assert await log.position() == 0  # nothing new
    # Events committed by concurrent batches, numbered by relays running at once: each gets
    # one position, the positions follow on from 1 with no gap and no repeat.
    accounts = [f"70000000000001{n:02d}" for n in range(20)]
    await asyncio.gather(
        *(commit_events(store, a, [moved(a, "b"), moved(a, "b", 1)]) for a in accounts)
    )
    numbered = await asyncio.gather(*(log.position() for _ in range(4)))
    assert sum(numbered) == 40
    rows = await log.after(0, 1_000)
    assert [row.position for row in rows] == list(range(1, 42))
    assert len({row.event.key for row in rows}) == 41
    assert await log.last_position() == 41
    # A reader resumes after the last position it handled, and may filter.
    assert [row.position for row in await log.after(39, 10)] == [40, 41]
    only = await log.after(0, 1_000, account=accounts[3])
    assert [row.event.key for row in only] == [f"{accounts[3]}/b/0", f"{accounts[3]}/b/1"]
    assert await log.after(0, 10, kinds=[AWARD_ISSUED]) == []


@pytest.mark.parametrize(
    ("events", "why"),
    [
        ([moved("7000000000000099", "x")], "does not write that account's state"),
        ([moved("7000000000000002", "x", kind="exploded")], "is not one of"),
        ([moved("7000000000000002", "x"), moved("7000000000000002", "x")], "appears twice"),
    ],
)
async def test_a_batch_with_a_bad_event_is_refused_and_writes_nothing(
    store: Store, events: list[Event], why: str
) -> None:
    with pytest.raises(InvalidBatchError, match=why):
        await commit_events(store, "7000000000000002", events)
    assert await store.load(["7000000000000002"]) == {}
    assert await all_events(store) == []


async def test_the_movement_job_writes_its_demotion_as_an_event_once(
    store: Store, cards: list[str]
) -> None:
    registry = await registry_of(store)
    card = cards[0]
    day = calendar.parse_day("2026-03-04")
    sale = Purchase(
        "s1", card, day, 13 * 3600, "S003", card_present=True, pin_verified=True,
        lines=(Line(1, "JACKET", GOLD_SPEND, 1, ("OUTERWEAR",)),),
    )  # fmt: skip
    await post(store, registry, [sale])  # posted straight to the store: no events of its own
    await run_job(store, registry, "movement", "2027-03-05")
    await run_job(store, registry, "movement", "2027-03-05")  # again: nothing new
    rows = await all_events(store)
    run = "job:movement:2027-03-05"
    assert summary(rows) == [(1, f"{card}/{run}:{card}/0", LEVEL_MOVED, "points")]
    assert rows[0].event.day == calendar.parse_day("2027-03-05")
    assert (rows[0].event.data["from_level"], rows[0].event.data["to_level"]) == ("gold", "silver")


# --------------------------------------------------------------------------- the relay's turns


async def last_position_becomes(store: Store, at_least: int) -> None:
    """Wait, only reading, until the server's own relay has numbered ``at_least`` events."""
    log, give_up = EventLog(store), asyncio.get_running_loop().time() + 20.0
    while await log.last_position() < at_least:
        assert asyncio.get_running_loop().time() < give_up, "the relay numbered nothing"
        await asyncio.sleep(0.05)


async def test_a_served_relay_numbers_a_commit_s_events_when_its_process_commits_them(
    served: Served, cards: list[str]
) -> None:
    # Listening, the relay polls only every 30 s: within the wait below, only the commit's
    # own call (Store.on_events_written) can have woken it.
    card_cache = served.running.pipeline.card_cache
    assert card_cache is not None
    while not card_cache.listening:
        await asyncio.sleep(0.01)
    request = purchase(cards[10], "told-1", lines=[line(1, GOLD_SPEND)])
    await served.transactions.PostTransaction(request, timeout=10)
    await last_position_becomes(served.store, 1)


async def test_a_server_that_does_not_listen_polls_for_events_and_holds_no_card(
    start_served: StartServed,
) -> None:
    served = await start_served(notifications=False)  # behind a pooler in transaction mode
    assert served.running.pipeline.card_cache is None
    card = demo_cards(served.demo)[10]
    request = purchase(card, "polled-1", lines=[line(1, GOLD_SPEND)])
    await served.transactions.PostTransaction(request, timeout=10)
    await last_position_becomes(served.store, 1)

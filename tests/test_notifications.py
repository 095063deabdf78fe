"""What PostgreSQL tells a serving process (processor.store.notifications), and the loops it
wakes: the event relay, the senders, the program registry and the API keys each act on a
change as soon as it commits, where each used to poll for it.

Every loop under test is given a polling interval far longer than the test may run, so only
a notification can have woken it; the waits below are limits on a failure, not timings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import psycopg
import pytest
import pytest_asyncio
from plugins.posting import registry_of
from plugins.waiting import WAIT_SECONDS, eventually

from processor.engine.types import AccountState
from processor.errors import AuthenticationError
from processor.limits import NOTIFIED_POLL_SECONDS
from processor.outbox.delivery import Deliveries, run_sender
from processor.service import auth
from processor.store import notifications
from processor.store.credentials import Credentials
from processor.store.event_log import EventLog, EventRow
from processor.store.events import LEVEL_MOVED, Event
from processor.store.ledger import AccountWrite, CommitBatch, Store
from processor.store.notifications import Notifications

NEVER = 3_600.0  # a polling interval no test outlives


@contextlib.asynccontextmanager
async def running(*loops: object) -> AsyncIterator[None]:
    tasks = [asyncio.ensure_future(loop) for loop in loops]  # type: ignore[call-overload]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest_asyncio.fixture
async def hub() -> Notifications:
    return Notifications()


async def insert_event(schema_url: str, request_id: str) -> None:
    """An event row as a batch's commit writes one, from a connection of its own."""
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as db:
        await db.execute(
            "INSERT INTO events (account_id, request_id, seq, kind, program, day, data)"
            " VALUES ('7000000000000001', %s, 0, 'level_moved', 'points', 20000, '{}')",
            (request_id,),
        )


async def numbered(store: Store) -> list[str]:
    """The request ids of the events the relay has numbered, in position order."""
    return [row.event.request_id for row in await EventLog(store).after(0, 100)]


# --------------------------------------------------------------------------- the rules


async def test_a_change_told_while_its_loop_was_busy_ends_the_next_sleep_at_once(
    hub: Notifications,
) -> None:
    waiter = hub.signal("changes").waiter()
    hub.dispatch("changes", "")
    await asyncio.wait_for(waiter.sleep(NEVER), WAIT_SECONDS)
    assert not waiter.told.is_set()  # taken: the sleep after it waits again


async def test_a_signal_for_one_payload_is_not_told_by_another(hub: Notifications) -> None:
    written = hub.signal(notifications.EVENTS, "written").waiter()
    positioned = hub.signal(notifications.EVENTS, "positioned").waiter()
    anything = hub.signal(notifications.EVENTS).waiter()
    hub.dispatch(notifications.EVENTS, "positioned")
    assert (written.told.is_set(), positioned.told.is_set(), anything.told.is_set()) == (
        False,
        True,
        True,
    )


async def test_a_subscriber_that_fails_leaves_the_others_told(hub: Notifications) -> None:
    told: list[str] = []

    def failing(payload: str) -> None:
        raise RuntimeError("a bug")

    hub.subscribe("changes", failing)
    hub.subscribe("changes", told.append)
    waiter = hub.signal("changes").waiter()
    hub.dispatch("changes", "x")
    assert told == ["x"] and waiter.told.is_set()


async def test_a_loop_polls_at_its_own_interval_unless_it_is_told(hub: Notifications) -> None:
    # The interval a sleep is given (a pure choice of the hub's state), not time measured.
    waiter = hub.signal("changes").waiter()
    assert waiter.seconds(0.2) == 0.2  # nothing listens: as if there were no notifications
    hub._started()
    assert waiter.seconds(0.2) == NOTIFIED_POLL_SECONDS
    assert waiter.seconds(NEVER) == NEVER


async def test_listening_starting_or_stopping_wakes_every_loop(hub: Notifications) -> None:
    waiters = [hub.signal("a").waiter(), hub.signal("b", "x").waiter()]
    hub._started()  # what changed while nobody listened is looked for at once
    assert all(waiter.told.is_set() for waiter in waiters)
    for waiter in waiters:
        waiter.told.clear()
    hub._stopped()  # and a loop asleep for the long interval goes back to its own
    assert all(waiter.told.is_set() for waiter in waiters)


# --------------------------------------------------------------------------- PostgreSQL


async def commit_event(store: Store, request_id: str) -> None:
    """A batch's commit writing one event, as the pipeline's and the jobs' do."""
    account = "7000000000000001"
    loaded = await store.load([account])
    version = loaded[account][0] if account in loaded else 0
    event = Event(account, request_id, 0, LEVEL_MOVED, "points", 20_000, {"move": "m"})
    batch = CommitBatch(accounts=[AccountWrite(AccountState(account), version)], events=[event])
    assert (await store.commit(batch)).committed


@pytest.mark.integration
async def test_events_a_process_commits_wake_its_relay(
    schema_url: str, store: Store, hub: Notifications
) -> None:
    # In-process, not a NOTIFY (migration 0014): the committing process's relay numbers them.
    written = hub.signal(notifications.EVENTS, "written")
    store.on_events_written = written.tell
    async with running(
        hub.run(schema_url), EventLog(store).run_relay(NEVER, written=written.waiter())
    ):
        await eventually(lambda: hub.listening, "listening")
        for request_id in ("first", "second"):
            await commit_event(store, request_id)
            await eventually_numbered(store, request_id)
    assert await numbered(store) == ["first", "second"]


async def eventually_numbered(store: Store, request_id: str) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT_SECONDS
    while request_id not in await numbered(store):
        if loop.time() > give_up:
            raise AssertionError(f"event {request_id} not numbered within {WAIT_SECONDS} s")
        await asyncio.sleep(0.05)


class Recording:
    name = "recording"

    def __init__(self) -> None:
        self.received: list[str] = []

    async def send(self, rows: Sequence[EventRow]) -> None:
        self.received.extend(row.event.request_id for row in rows)


@pytest.mark.integration
async def test_a_sender_delivers_when_events_are_numbered_by_any_process(
    schema_url: str, store: Store, hub: Notifications
) -> None:
    sender = Recording()
    positioned = hub.signal(notifications.EVENTS, "positioned")
    async with running(
        hub.run(schema_url), run_sender(Deliveries(store), sender, NEVER, positioned.waiter())
    ):
        await eventually(lambda: hub.listening, "listening")
        for request_id in ("first", "second"):  # the second only a notification can send
            await insert_event(schema_url, request_id)
            assert await EventLog(store).position() == 1  # another process's relay, say
            await eventually(lambda r=request_id: sender.received[-1:] == [r], request_id)
    assert sender.received == ["first", "second"]


@pytest.mark.integration
async def test_an_event_written_while_nobody_listens_is_numbered_at_the_relay_interval(
    schema_url: str, store: Store, hub: Notifications
) -> None:
    written = hub.signal(notifications.EVENTS, "written")
    async with running(
        hub.run(schema_url, retry_seconds=NEVER),
        EventLog(store).run_relay(0.05, written=written.waiter()),
    ):
        await eventually(lambda: hub.listening, "listening")
        async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as db:
            # As a PostgreSQL restart or a network cut ends the listener's session.
            await db.execute("SELECT pg_terminate_backend(%s)", (hub.backend_pid,))
        await eventually(lambda: not hub.listening, "not listening")
        await insert_event(schema_url, "unheard")
        await eventually_numbered(store, "unheard")


@pytest.mark.integration
async def test_an_activation_anywhere_is_told_to_the_registry(
    schema_url: str, store: Store, hub: Notifications
) -> None:
    registry = await registry_of(store)
    before = registry.refreshes_total
    activated = hub.signal(notifications.PROGRAMS)
    async with running(hub.run(schema_url), registry.run_refresher(600.0, activated.waiter())):
        await eventually(lambda: hub.listening, "listening")
        await eventually(lambda: registry.refreshes_total == before, "settled")
        async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as db:
            await db.execute("UPDATE program_activations SET generation = generation + 1")
        await eventually(lambda: registry.refreshes_total == before + 1, "refreshed")


@pytest.mark.integration
async def test_a_revoked_key_is_refused_once_the_revocation_is_told(
    schema_url: str, store: Store, hub: Notifications
) -> None:
    credentials = Credentials(store)
    record, key = await credentials.create_key("notified", ["viewer"])
    keys = auth.KeyTable(credentials, demo_allowed=False)
    await keys.refresh()
    assert (await keys.principal(key)).name == f"key:{record.key_id}"
    changed = hub.signal(notifications.KEYS)
    async with running(hub.run(schema_url), keys.run_refresher(600.0, changed.waiter())):
        await eventually(lambda: hub.listening, "listening")
        assert await credentials.revoke_key(record.key_id)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + WAIT_SECONDS
        while True:
            try:
                await keys.principal(key)
            except AuthenticationError:
                break
            assert loop.time() < give_up, "the revoked key still accepted"
            await asyncio.sleep(0.05)


@pytest.mark.integration
async def test_a_rolled_back_change_is_never_told(schema_url: str, hub: Notifications) -> None:
    seen: list[str] = []
    hub.subscribe(notifications.PROGRAMS, lambda payload: seen.append("activation"))
    hub.subscribe("loyalty_test_marker", seen.append)
    async with running(hub.run(schema_url)):
        await eventually(lambda: hub.listening, "listening")
        async with await psycopg.AsyncConnection.connect(schema_url) as db:
            async with db.transaction(force_rollback=True):
                await db.execute("UPDATE program_activations SET generation = generation + 1")
            await db.execute("NOTIFY loyalty_test_marker, 'marker'")
            await db.commit()
        await eventually(lambda: "marker" in seen, "the marker")
    assert seen == ["marker"]

"""Delivering events to a webhook and to the log, on real PostgreSQL: every event once and in
order when all goes well, again (never lost) when a delivery fails or its answer is lost,
a page at a time, one process at a time; and a server that delivers the events of its own
transactions to a webhook it is configured with."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import json
import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pydantic
import pytest
from plugins.server import StartServed, line, purchase

from processor import calendar
from processor.engine.types import AccountState
from processor.errors import InvalidFieldError
from processor.outbox import plugins
from processor.outbox.delivery import Deliveries, run_sender, senders_of
from processor.outbox.senders import (
    EVENT_LOGGER,
    DeliveryError,
    LogSender,
    WebhookSender,
    event_json,
)
from processor.runtime import metrics
from processor.runtime.logs import mask_cards
from processor.runtime.settings import Settings
from processor.store.event_log import EventLog, EventRow
from processor.store.events import LEVEL_MOVED, POINTS_RELEASED, Event
from processor.store.ledger import AccountWrite, CommitBatch, Store

pytestmark = pytest.mark.integration


class Receiver:
    """A webhook on a free local port: records each POSTed body; answers ``failing`` 500s
    first."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.failing = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failing:
                    receiver.failing -= 1
                    self.send_response(500)
                else:
                    receiver.bodies.append(json.loads(body))
                    receiver.headers.append(dict(self.headers))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys(self) -> list[str]:
        return [event["key"] for body in self.bodies for event in body["events"]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.server.shutdown()
    made.server.server_close()


async def committed(store: Store, count: int, account: str = "7100000000000001") -> list[str]:
    """``count`` level-moved events of one new request on ``account``, committed and
    numbered; their keys."""
    loaded = await store.load([account])
    version = loaded[account][0] if account in loaded else 0
    request_id = f"r{version}"
    data = {"move": "advancement", "rule": "up", "from_level": "silver", "to_level": "gold"}
    events = [
        Event(account, request_id, n, LEVEL_MOVED, "points", 20_000, data) for n in range(count)
    ]
    batch = CommitBatch(accounts=[AccountWrite(AccountState(account), version)], events=events)
    assert (await store.commit(batch)).committed
    await EventLog(store).position()
    return [event.key for event in events]


async def test_a_webhook_gets_every_event_once_in_order_a_page_at_a_time(
    store: Store, receiver: Receiver
) -> None:
    keys = await committed(store, 5)
    deliveries, webhook = Deliveries(store), WebhookSender(receiver.url)
    assert [await deliveries.deliver_once(webhook, most=2) for _ in range(4)] == [2, 2, 1, 0]
    assert receiver.keys() == keys
    assert [h["X-Loyalty-Last-Position"] for h in receiver.headers] == ["2", "4", "5"]
    first = receiver.bodies[0]["events"][0]
    assert first == {
        "position": 1, "key": keys[0], "kind": "level_moved", "account": "7100000000000001",
        "request_id": "r0", "program": "points", "date": "2024-10-04",
        "committed_at": first["committed_at"], "move": "advancement", "rule": "up",
        "from_level": "silver", "to_level": "gold",
    }  # fmt: skip
    assert await deliveries.positions() == {"webhook": 5}


async def test_a_failed_delivery_is_recorded_and_sent_again_until_received(
    store: Store, receiver: Receiver
) -> None:
    keys = await committed(store, 3)
    deliveries, webhook = Deliveries(store), WebhookSender(receiver.url)
    receiver.failing = 2
    for _ in range(2):
        with pytest.raises(DeliveryError, match="HTTP 500"):
            await deliveries.deliver_once(webhook)
    async with store.pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT last_position, failures, last_error FROM event_deliveries"
        )
        assert await cursor.fetchall() == [(0, 2, "the webhook answered HTTP 500")]
    assert await deliveries.deliver_once(webhook) == 3
    assert receiver.keys() == keys
    # A webhook that cannot be reached at all fails the same way, and loses nothing.
    more = await committed(store, 1)
    with pytest.raises(DeliveryError, match="could not be reached"):
        await deliveries.deliver_once(WebhookSender("http://127.0.0.1:9/events", 2.0))
    assert await deliveries.deliver_once(webhook) == 1
    assert receiver.keys() == keys + more


async def test_a_webhook_whose_answer_is_not_http_fails_the_delivery_and_loses_nothing(
    store: Store, receiver: Receiver
) -> None:
    keys = await committed(store, 1)
    garbled = socket.create_server(("127.0.0.1", 0))

    def answer_garbage() -> None:
        connection, _ = garbled.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"this is not HTTP\r\n\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    url = f"http://127.0.0.1:{garbled.getsockname()[1]}/events"
    deliveries = Deliveries(store)
    try:
        with pytest.raises(DeliveryError, match="could not be read"):
            await deliveries.deliver_once(WebhookSender(url))
    finally:
        garbled.close()
    assert await deliveries.deliver_once(WebhookSender(receiver.url)) == 1
    assert receiver.keys() == keys


class Forgetful:
    """A sender whose receiver gets the events but whose answer is lost, once."""

    name = "forgetful"

    def __init__(self) -> None:
        self.received: list[str] = []
        self.lose_answer = True

    async def send(self, rows: Sequence[EventRow]) -> None:
        self.received.extend(row.event.key for row in rows)
        if self.lose_answer:
            self.lose_answer = False
            raise DeliveryError("the answer was lost")


async def test_events_whose_answer_was_lost_come_again_with_the_same_keys(store: Store) -> None:
    keys = await committed(store, 2)
    deliveries, sender = Deliveries(store), Forgetful()
    with pytest.raises(DeliveryError):
        await deliveries.deliver_once(sender)
    assert await deliveries.deliver_once(sender) == 2
    assert sender.received == keys + keys  # at least once: the receiver drops repeats by key


class Slow:
    """A sender that holds its first delivery until ``go`` is set."""

    name = "slow"

    def __init__(self) -> None:
        self.received: list[str] = []
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    async def send(self, rows: Sequence[EventRow]) -> None:
        self.started.set()
        await self.go.wait()
        self.received.extend(row.event.key for row in rows)


async def test_two_processes_delivering_for_one_sender_take_turns_and_send_each_event_once(
    store: Store,
) -> None:
    keys = await committed(store, 3)
    sender = Slow()
    first = asyncio.create_task(Deliveries(store).deliver_once(sender))
    await sender.started.wait()
    # The other process finds the sender's row held: it passes its turn, sending nothing.
    assert await Deliveries(store).deliver_once(sender) == 0
    sender.go.set()
    assert await first == 3
    assert await Deliveries(store).deliver_once(sender) == 0
    assert sender.received == keys


async def test_the_log_sender_writes_each_event_as_a_line_of_json(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    keys = await committed(store, 2)
    with caplog.at_level(logging.INFO, logger=EVENT_LOGGER):
        assert await Deliveries(store).deliver_once(LogSender()) == 2
    # The handler `loyalty serve` installs masks card numbers in these lines as in every
    # line (processor.runtime.logs); whether a test before this one installed it or not,
    # the lines are compared masked.
    lines = [
        json.loads(mask_cards(r.getMessage())) for r in caplog.records if r.name == EVENT_LOGGER
    ]
    masked = [key.replace("7100000000000001", "710000******0001") for key in keys]
    assert [(line["key"], line["kind"]) for line in lines] == [(k, "level_moved") for k in masked]
    assert {line["account"] for line in lines} == {"710000******0001"}


def test_a_webhook_url_that_is_not_http_is_refused_and_the_url_is_shown_redacted() -> None:
    with pytest.raises(pydantic.ValidationError, match="events_webhook_url"):
        Settings(events_webhook_url="ftp://example.com/hook")
    shown = Settings(events_webhook_url="https://hooks.example.com/T0K3N").redacted()
    assert shown["events_webhook_url"] == "**********"


async def test_a_server_delivers_its_transactions_events_to_its_webhook(
    start_served: StartServed, cards: list[str], receiver: Receiver
) -> None:
    served = await start_served(events_webhook_url=receiver.url)
    card = cards[20]
    answer = await served.transactions.PostTransaction(
        purchase(card, "hook-1", lines=[line(1, 120_000)]), timeout=10
    )
    expected = 1 + len(answer.result.awards)
    for _ in range(300):  # the relay and the sender look every 0.2 s
        if len(receiver.keys()) >= expected:
            break
        await asyncio.sleep(0.05)
    assert receiver.keys() == [f"{card}/hook-1/{n}" for n in range(expected)]
    moved = receiver.bodies[0]["events"][0]
    assert (moved["kind"], moved["from_level"], moved["to_level"]) == (
        "level_moved", "silver", "gold",
    )  # fmt: skip


class Refusing:
    """A sender that refuses every delivery, and says when it was first tried."""

    name = "refusing"

    def __init__(self) -> None:
        self.tried = asyncio.Event()

    async def send(self, rows: Sequence[EventRow]) -> None:
        self.tried.set()
        raise DeliveryError("the receiver is down")


async def test_a_sender_that_never_delivered_shows_zero_delivered_beside_its_failures(
    store: Store,
) -> None:
    await committed(store, 1)
    sender = Refusing()
    loop = asyncio.create_task(run_sender(Deliveries(store), sender))
    await sender.tried.wait()
    sample = metrics.REGISTRY.get_sample_value
    for _ in range(500):  # the failure is recorded, then counted, then the pause begins
        if sample("loyalty_event_delivery_failures_total", {"sender": "refusing"}):
            break
        await asyncio.sleep(0.01)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert sample("loyalty_events_delivered_total", {"sender": "refusing"}) == 0
    assert sample("loyalty_event_delivery_failures_total", {"sender": "refusing"}) == 1
    assert await Deliveries(store).positions() == {"refusing": 0}


async def test_old_events_every_sender_had_are_removed_and_no_others(store: Store) -> None:
    keys = await committed(store, 3) + await committed(store, 2)  # positions 1 to 5
    async with store.pool.connection() as connection:
        await connection.execute(
            "UPDATE events SET created_at = now() - interval '500 days' WHERE position <= 4"
        )
        await connection.execute(
            "INSERT INTO event_deliveries (sender, last_position) VALUES ('a', 4), ('b', 2)"
        )
    log = EventLog(store)
    # Sender b has had positions 1 and 2 only: those go, one statement at a time.
    assert await log.prune(400, most=1) == 2
    assert [row.event.key for row in await log.after(0, 10)] == keys[2:]
    async with store.pool.connection() as connection:
        await connection.execute("UPDATE event_deliveries SET last_position = 5")
    # Every sender has had all: the old ones go; the one of today stays.
    assert await log.prune(400) == 2
    assert [row.event.key for row in await log.after(0, 10)] == keys[4:]
    assert await log.prune(600) == 0


class Memo:
    """A sender a package might install: remembers the keys it is given."""

    name = "memo"

    def __init__(self) -> None:
        self.received: list[str] = []

    async def send(self, rows: Sequence[EventRow]) -> None:
        self.received.extend(row.event.key for row in rows)


class Point:
    """An entry point of the loyalty.event_senders group, as importlib.metadata gives one."""

    def __init__(self, name: str, factory: Any) -> None:
        self.name = name
        self.factory = factory

    def load(self) -> Any:
        return self.factory


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A package installed with three senders: ``memo``; ``liar``, which makes a sender
    named otherwise; ``broken``, which does not import."""

    def broken() -> Any:
        raise ImportError("No module named 'kafka_sender'")

    points = [Point("memo", Memo), Point("liar", lambda: Forgetful()), Point("broken", broken)]
    monkeypatch.setattr(
        plugins, "entry_points", lambda group: points if group == plugins.GROUP else []
    )


async def test_an_installed_sender_the_settings_name_gets_the_events(
    store: Store, installed: None
) -> None:
    keys = await committed(store, 2)
    settings = Settings(events_senders=" memo ")
    (sender,) = senders_of(None, False, settings.events_senders)
    assert await Deliveries(store).deliver_once(sender) == 2
    assert isinstance(sender, Memo) and sender.received == keys


@pytest.mark.parametrize(
    ("names", "why"),
    [
        ("kafka", "no sender 'kafka' is installed (installed: broken, liar, memo)"),
        ("webhook", "'webhook' is a built-in sender"),
        ("memo,memo", "more than once"),
    ],
)
def test_the_settings_refuse_a_sender_that_is_not_installed_naming_it(
    installed: None, names: str, why: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match="events_senders") as error:
        Settings(events_senders=names)
    assert why in str(error.value)


def test_an_installed_sender_that_makes_a_sender_of_another_name_or_none_is_refused(
    installed: None,
) -> None:
    with pytest.raises(InvalidFieldError, match="did not make a sender named 'liar'"):
        senders_of(None, False, "liar")
    with pytest.raises(InvalidFieldError, match=r"'broken' entry point failed .*kafka_sender"):
        senders_of(None, False, "broken")


class Buggy:
    """A sender with a bug: it raises what no sender should."""

    name = "buggy"

    async def send(self, rows: Sequence[EventRow]) -> None:
        raise RuntimeError("a bug in the sender")


async def test_any_error_of_a_sender_is_recorded_as_its_last_error(store: Store) -> None:
    await committed(store, 1)
    with pytest.raises(RuntimeError):
        await Deliveries(store).deliver_once(Buggy())
    async with store.pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT last_position, failures, last_error FROM event_deliveries"
        )
        assert await cursor.fetchall() == [(0, 1, "RuntimeError('a bug in the sender')")]


class Interrupted:
    """A sender whose cancel reaches its caller as a DeliveryError (as a database call cut
    short can turn one into another error)."""

    name = "interrupted"

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def send(self, rows: Sequence[EventRow]) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            raise DeliveryError("interrupted") from None


async def test_a_sender_loop_stops_when_cancelled_even_if_the_cancel_became_an_error(
    store: Store,
) -> None:
    await committed(store, 1)
    sender = Interrupted()
    loop = asyncio.create_task(run_sender(Deliveries(store), sender))
    await sender.started.wait()
    loop.cancel()
    # Without the check it would pause and send again, and never end.
    done, _ = await asyncio.wait([loop], timeout=30)
    assert done and loop.cancelled()


def test_the_senders_write_the_days_of_reminders_as_dates() -> None:
    committed = datetime.datetime(2026, 3, 5, 2, 15, tzinfo=datetime.UTC)
    day = calendar.parse_day("2026-03-05")
    released = Event(
        "6001200000000010", f"released:points:{day}", 0, POINTS_RELEASED, "points", day,
        {"points": 150, "released_day": day},
    )  # fmt: skip
    written = event_json(EventRow(7, released, committed))
    assert (written["released_date"], written["points"]) == ("2026-03-05", 150)
    assert "released_day" not in written

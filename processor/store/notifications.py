"""What PostgreSQL tells a serving process, over one listening connection of its own.

A server's background loops wait for changes made by any process: events committed (the
relay numbers them), events numbered (the senders and WatchEvents deliver them), program
versions activated (the registry compiles them), API keys added or revoked (the key table
reads them again), cards and customers changed (the card cache forgets them). Polled,
each is a statement every fraction of a second in every process whether anything changed
or not; told, a loop sleeps until the change commits. Migrations 0005 and 0013 notify on
these channels; a notification is sent when the changing transaction commits, and never
for one rolled back.

One connection listens on every channel (``Notifications.run``). While it listens, a loop
waiting on a ``Signal`` wakes when told and otherwise looks only every
``NOTIFIED_POLL_SECONDS`` (a guard, not the path); while nothing listens (before the first
connection, and from a lost connection until the next) it looks at its own short interval,
as it would without notifications. Every signal is told when listening starts or stops:
what changed while nothing listened is looked for at once, and a loop asleep for the long
interval goes back to its short one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import psycopg

from processor.limits import NOTIFIED_POLL_SECONDS
from processor.store.ledger import CONNECT_TIMEOUT_SECONDS

log = logging.getLogger(__name__)

EVENTS: Final = "loyalty_events"
"""Payload ``positioned`` when a relay numbered events. (``written``, events committed, is
told in-process by the committing process: Store.on_events_written; migration 0014.)"""
PROGRAMS: Final = "loyalty_programs"
"""Told when the active program versions change (program_activations' generation moves)."""
KEYS: Final = "loyalty_keys"
"""Told when an API key is added, changed or revoked."""
CATALOG: Final = "loyalty_catalog"
"""Changes to cards and customers (migration 0005; processor.store.card_cache)."""

APPLICATION_NAME: Final = "loyalty-notifications"
"""The listening session's name in pg_stat_activity."""

LISTEN_RETRY_SECONDS: Final = 1.0
"""Pause before listening again after the connection was lost."""


class Signal:
    """One kind of change, for the loops that wait for it. Each loop takes a ``waiter``: a
    change told while the loop was busy is not lost, its next sleep ends at once."""

    def __init__(self, hub: Notifications) -> None:
        self._hub = hub
        self._waiters: list[Waiter] = []

    def waiter(self) -> Waiter:
        waiter = Waiter(self._hub)
        self._waiters.append(waiter)
        return waiter

    def tell(self) -> None:
        for waiter in self._waiters:
            waiter.told.set()

    def forget(self, waiter: Waiter) -> None:
        """Stop telling ``waiter`` (a loop that ended: a WatchEvents call)."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)


@dataclass(eq=False)
class Waiter:
    """A loop's place on a signal."""

    hub: Notifications
    told: asyncio.Event = field(default_factory=asyncio.Event)

    def seconds(self, interval_seconds: float) -> float:
        """How long a sleep of a loop polling every ``interval_seconds`` may last: that
        while nothing listens, at least NOTIFIED_POLL_SECONDS while the hub listens."""
        if self.hub.listening:
            return max(interval_seconds, NOTIFIED_POLL_SECONDS)
        return interval_seconds

    async def sleep(self, interval_seconds: float) -> None:
        """Until the change is told (or was, since the last sleep), or ``seconds`` pass."""
        if not self.told.is_set():
            try:
                async with asyncio.timeout(self.seconds(interval_seconds)):
                    await self.told.wait()
            except TimeoutError:
                pass
        self.told.clear()


async def sleep(waiter: Waiter | None, seconds: float) -> None:
    """``waiter.sleep(seconds)``, or a plain sleep for a loop nobody tells."""
    if waiter is None:
        await asyncio.sleep(seconds)
    else:
        await waiter.sleep(seconds)


@dataclass
class _Subscriber:
    told: Callable[[str], None]
    started: Callable[[], None] | None
    stopped: Callable[[], None] | None


class Notifications:
    """The channels one process listens to, and who is told what arrives on each."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[_Subscriber]] = {}
        self._signals: dict[tuple[str, str | None], Signal] = {}
        self._listening = False
        self.received_total = 0
        self.backend_pid: int | None = None  # the listening session's, while there is one

    @property
    def listening(self) -> bool:
        return self._listening

    def signal(self, channel: str, payload: str | None = None) -> Signal:
        """The signal told by notifications on ``channel`` (with ``payload`` only, if given)."""
        key = (channel, payload)
        if key not in self._signals:
            self._signals[key] = Signal(self)
            self._subscribers.setdefault(channel, [])
        return self._signals[key]

    def subscribe(
        self,
        channel: str,
        told: Callable[[str], None],
        *,
        started: Callable[[], None] | None = None,
        stopped: Callable[[], None] | None = None,
    ) -> None:
        """Call ``told(payload)`` for each notification on ``channel``, ``started()`` when
        listening begins and ``stopped()`` when it ends."""
        self._subscribers.setdefault(channel, []).append(_Subscriber(told, started, stopped))

    def dispatch(self, channel: str, payload: str) -> None:
        self.received_total += 1
        for subscriber in self._subscribers.get(channel, ()):
            try:
                subscriber.told(payload)
            except Exception:  # a bug in one must not end the listening for every other
                log.exception("a subscriber of %s failed on %r", channel, payload)
        for (on, wanted), signal in self._signals.items():
            if on == channel and (wanted is None or wanted == payload):
                signal.tell()

    def _started(self) -> None:
        self._listening = True
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                if subscriber.started is not None:
                    subscriber.started()
        self._tell_all()

    def _stopped(self) -> None:
        was = self._listening
        self._listening = False
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                if subscriber.stopped is not None:
                    subscriber.stopped()
        if was:
            self._tell_all()

    def _tell_all(self) -> None:
        for signal in self._signals.values():
            signal.tell()

    async def run(self, conninfo: str, *, retry_seconds: float = LISTEN_RETRY_SECONDS) -> None:
        """Listen on every channel subscribed to, over a connection of its own (a pooled
        one would be held for good), until cancelled; connect again after a lost
        connection."""
        channels = sorted(self._subscribers)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    application_name=APPLICATION_NAME,
                ) as connection:
                    for channel in channels:
                        await connection.execute(f"LISTEN {channel}")
                    self.backend_pid = connection.info.backend_pid
                    self._started()
                    log.info("listening for changes on %s", ", ".join(channels))
                    async for notification in connection.notifies():
                        self.dispatch(notification.channel, notification.payload)
            except (psycopg.Error, OSError) as error:
                if self._listening:
                    log.warning("stopped listening for changes (%s); polling meanwhile", error)
            finally:
                self.backend_pid = None
                self._stopped()
            await asyncio.sleep(retry_seconds)

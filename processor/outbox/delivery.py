"""The delivery loop: each configured sender's events, a page at a time, from where it was.

``event_deliveries`` (migrations/0011_events.sql) holds, per sender, the last position it
was told was received. Every serving process runs a loop per sender; a turn locks the
sender's row (``FOR UPDATE SKIP LOCKED``: a turn another process holds is passed over, so
one delivers at a time and in order), reads the positioned events after it, sends them and
moves the row on, in one transaction. A send that fails leaves the row where it was (its
``failures`` and ``last_error`` say why) and is tried again after a pause that doubles from
1 s to ``EVENTS_DELIVERY_RETRY_SECONDS_MAX``. A process that dies after sending and before
its commit sends the page again: at least once, never a gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final

import psycopg

from processor.errors import InvalidFieldError, LoyaltyError
from processor.limits import (
    EVENTS_DELIVERY_PAGE_MAX,
    EVENTS_DELIVERY_RETRY_SECONDS_MAX,
    EVENTS_RELAY_SECONDS,
)
from processor.outbox.plugins import load as load_plugins
from processor.outbox.senders import DeliveryError, LogSender, Sender, WebhookSender
from processor.runtime import metrics
from processor.store import notifications
from processor.store.catalog_base import CatalogBase, one_row
from processor.store.event_log import AFTER, POSITION_MAX, event_rows
from processor.store.ledger import database_error
from processor.store.notifications import Waiter

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS: Final = 1.0
"""The pause after a delivery's first failure; it doubles with each further one."""

_BEHIND = """
SELECT d.sender IS NOT NULL, coalesce(d.last_position, 0) < r.last_position
FROM event_relay AS r LEFT JOIN event_deliveries AS d ON d.sender = %s
"""
_ENROL = "INSERT INTO event_deliveries (sender) VALUES (%s) ON CONFLICT DO NOTHING"
_TAKE = "SELECT last_position FROM event_deliveries WHERE sender = %s FOR UPDATE SKIP LOCKED"
_DELIVERED = """
UPDATE event_deliveries SET last_position = %s, delivered_at = now(), failures = 0,
                            last_error = ''
WHERE sender = %s
"""
_FAILED = """
UPDATE event_deliveries SET failures = failures + 1, last_error = left(%s, 500)
WHERE sender = %s
"""
_POSITIONS = "SELECT sender, last_position FROM event_deliveries"


class Deliveries(CatalogBase):
    """Where each sender's deliveries have reached, and one turn of delivering."""

    async def deliver_once(self, sender: Sender, most: int = EVENTS_DELIVERY_PAGE_MAX) -> int:
        """Send ``sender`` the next page of events and move its position on: how many were
        sent (0 when none waited, or another process is delivering for it now). A send that
        failed is recorded (``failures``, ``last_error``) and its error raised."""
        failure: Exception | None = None
        try:
            async with self._pool.connection() as connection:
                # Most turns find the sender caught up: they end here, having locked and
                # written nothing.
                cursor = await connection.execute(_BEHIND, (sender.name,))
                enrolled, behind = await one_row(cursor)
                if not enrolled:
                    await connection.execute(_ENROL, (sender.name,))
                elif not behind:
                    return 0
                async with connection.transaction():
                    cursor = connection.cursor()
                    await cursor.execute(_TAKE, (sender.name,))
                    held = await cursor.fetchone()
                    if held is None:
                        return 0
                    params = {
                        "after": held[0], "until": POSITION_MAX, "kinds": [], "account": "",
                        "limit": most,
                    }  # fmt: skip
                    await cursor.execute(AFTER, params)
                    rows = event_rows(await cursor.fetchall())
                    if not rows:
                        return 0
                    try:
                        await sender.send(rows)
                    except Exception as error:  # a plugin's bug too: recorded, then raised
                        failure = error
                        why = str(error) if isinstance(error, DeliveryError) else repr(error)
                        await cursor.execute(_FAILED, (why, sender.name))
                    else:
                        await cursor.execute(_DELIVERED, (rows[-1].position, sender.name))
        except psycopg.Error as error:
            raise database_error(error, "deliver events", self._pool.timeout) from error
        if failure is not None:
            raise failure
        return len(rows)

    async def positions(self) -> dict[str, int]:
        """The last position delivered, by sender."""
        async with self._reading("read event deliveries") as cursor:
            await cursor.execute(_POSITIONS)
            return {sender: int(position) for sender, position in await cursor.fetchall()}


async def run_sender(
    deliveries: Deliveries,
    sender: Sender,
    interval_seconds: float = EVENTS_RELAY_SECONDS,
    positioned: Waiter | None = None,
) -> None:
    """Deliver to ``sender`` until cancelled: a page as soon as one is waiting (looked for
    when ``positioned`` is told events were numbered, or every ``interval_seconds`` while
    it cannot be), after a failure a pause that doubles up to
    EVENTS_DELIVERY_RETRY_SECONDS_MAX."""
    # Both series exist from the start, at zero: EventDeliveryFailing compares them, and a
    # sender that never delivered would otherwise have no delivered series to compare.
    delivered = metrics.EVENTS_DELIVERED.labels(sender.name)
    failed = metrics.EVENT_DELIVERY_FAILURES.labels(sender.name)
    pause = 0.0
    while True:
        try:
            sent = await deliveries.deliver_once(sender)
        except Exception as error:  # the send failed, or PostgreSQL did, or a bug: never stop
            stopping(error)
            pause = min(max(pause * 2, FIRST_RETRY_SECONDS), EVENTS_DELIVERY_RETRY_SECONDS_MAX)
            failed.inc()
            log.warning(
                "delivering events to %s failed; trying again in %.0f s: %s",
                sender.name, pause, error, exc_info=not isinstance(error, LoyaltyError),
            )  # fmt: skip
            await asyncio.sleep(pause)
            continue
        pause = 0.0
        delivered.inc(sent)
        if sent < EVENTS_DELIVERY_PAGE_MAX:
            await notifications.sleep(positioned, interval_seconds)


def stopping(error: BaseException) -> None:
    """Raise CancelledError if the running task is being cancelled: a loop that carries on
    after errors must still stop when its server does, even when the cancel reached it as
    another error (a database call interrupted mid-way, a pool wait cut short)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error


def senders_of(webhook_url: str | None, log_events: bool, plugins: str = "") -> Sequence[Sender]:
    """The senders the settings configure (``events_webhook_url``, ``events_log``, and the
    installed ones ``events_senders`` names: processor.outbox.plugins)."""
    chosen: list[Sender] = []
    if webhook_url:
        chosen.append(WebhookSender(webhook_url))
    if log_events:
        chosen.append(LogSender())
    if plugins:
        try:
            chosen.extend(load_plugins(plugins))
        except ValueError as error:
            raise InvalidFieldError("events_senders", str(error)) from None
    return chosen

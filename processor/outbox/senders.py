"""Where events go: a webhook (an HTTP POST of JSON) or the log. A sender is told a page of
events, in position order, and returns once they were received, or raises DeliveryError;
the same events are then sent again (processor.outbox.delivery), so a receiver sees each at
least once and drops repeats by their ``key``."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Final, Protocol

from processor import calendar
from processor.errors import LoyaltyError
from processor.store.event_log import EventRow
from processor.store.events import AWARD_EXPIRING, AWARD_ISSUED, POINTS_RELEASED

WEBHOOK_TIMEOUT_SECONDS: Final = 10.0
"""Longest a webhook may take to answer one delivery before it counts as failed."""

EVENT_LOGGER: Final = "processor.events"
"""The logger the log sender writes each event to, one line of JSON each."""


class DeliveryError(LoyaltyError):
    """A sender could not deliver: the events are sent again after a pause."""

    reason = "EVENT_DELIVERY_FAILED"


class Sender(Protocol):
    """Somewhere events are delivered; ``name`` keys where its deliveries have reached."""

    name: str

    async def send(self, rows: Sequence[EventRow]) -> None:
        """Deliver ``rows`` (in position order); DeliveryError when they were not received."""
        ...


def event_json(row: EventRow) -> dict[str, Any]:
    """An event as the senders write it: its place, identity and what it tells, in units
    (points, or minor units of money) as the ledger keeps them."""
    event = row.event
    fields: dict[str, Any] = {
        "position": row.position,
        "key": event.key,
        "kind": event.kind,
        "account": event.account_id,
        "request_id": event.request_id,
        "program": event.program,
        "date": calendar.format_day(event.day),
        "committed_at": row.committed_at.isoformat(),
    }
    data = dict(event.data)
    if event.kind in (AWARD_ISSUED, AWARD_EXPIRING):
        # The last day it can be used, as the API's expires_date says (the engine keeps the
        # first day it cannot).
        expires_day = data.pop("expires_day")
        data["expires_date"] = "" if expires_day is None else calendar.format_day(expires_day - 1)
    if event.kind == POINTS_RELEASED:
        data["released_date"] = calendar.format_day(data.pop("released_day"))
    fields.update(data)
    return fields


class LogSender:
    """Each event as a line of JSON on the ``processor.events`` logger, at INFO."""

    name = "log"

    def __init__(self) -> None:
        self._log = logging.getLogger(EVENT_LOGGER)

    async def send(self, rows: Sequence[EventRow]) -> None:
        for row in rows:
            self._log.info("%s", json.dumps(event_json(row), sort_keys=True))


class WebhookSender:
    """A POST of ``{"events": [...]}`` to ``url`` per page; any 2xx answer is received."""

    name = "webhook"

    def __init__(self, url: str, timeout_seconds: float = WEBHOOK_TIMEOUT_SECONDS) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds

    async def send(self, rows: Sequence[EventRow]) -> None:
        body = json.dumps({"events": [event_json(row) for row in rows]}).encode()
        # urllib blocks: the post runs on a thread, never on the event loop. Its timeout is
        # per read, so a receiver that answers a byte at a time is cut off here as a whole,
        # well before PostgreSQL ends the delivery's idle transaction (30 s).
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._post, body, rows[-1].position),
                self.timeout_seconds + 1.0,
            )
        except TimeoutError:
            raise DeliveryError(
                f"the webhook did not answer within {self.timeout_seconds:.0f} s"
            ) from None

    def _post(self, body: bytes, last_position: int) -> None:
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-Loyalty-Last-Position": str(last_position),
            },
        )
        # Raised after the handlers, so the error keeps no frame (and no socket) alive.
        failure = ""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as answer:
                answer.read()
        except urllib.error.HTTPError as error:
            error.close()  # it holds the answer's connection
            failure = f"the webhook answered HTTP {error.code}"
        except urllib.error.URLError as error:
            failure = f"the webhook could not be reached: {error.reason}"
        except OSError as error:
            failure = f"the webhook could not be reached: {error}"
        except (http.client.HTTPException, ValueError) as error:  # a broken answer, a bad URL
            failure = f"the webhook's answer could not be read: {type(error).__name__}: {error}"
        if failure:
            raise DeliveryError(failure)

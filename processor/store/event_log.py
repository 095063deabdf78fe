"""The relay that numbers committed events, and the readers that follow them.

``position_events`` (migrations/0011_events.sql) gives each committed event without one the
next position, one relay at a time; every serving process calls :meth:`EventLog.position`
every ``EVENTS_RELAY_SECONDS`` (processor.runtime.serve), and a reader may call it before
reading. Readers follow positions (:meth:`EventLog.after`): see processor.store.events for
what they are promised.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from processor.errors import LoyaltyError
from processor.limits import (
    EVENTS_PRUNED_PER_STATEMENT,
    EVENTS_RELAY_ROWS_MAX,
    EVENTS_RELAY_SECONDS,
)
from processor.runtime import metrics
from processor.store import notifications
from processor.store.catalog_base import CatalogBase, one_row
from processor.store.events import Event
from processor.store.notifications import Waiter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EventRow:
    """A positioned event, as readers see it."""

    position: int
    event: Event
    committed_at: datetime.datetime


POSITION_MAX: Final = 2**63 - 1
"""Beyond every position (a bigint)."""

_POSITION: Final = "SELECT position_events(%s)"
_ADD: Final = """
INSERT INTO events (account_id, request_id, seq, kind, program, day, data)
SELECT e.account_id, e.request_id, e.seq, e.kind, e.program, e.day, e.data::jsonb
FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[], %s::text[], %s::int[], %s::text[])
     AS e(account_id, request_id, seq, kind, program, day, data)
ON CONFLICT DO NOTHING
"""
AFTER: Final = """
-- Positioned events after a position (and up to one), of some kinds and one account or all.
SELECT position, account_id, request_id, seq, kind, program, day, data, created_at
FROM events
WHERE position > %(after)s AND position <= %(until)s
  AND (cardinality(%(kinds)s::text[]) = 0 OR kind = ANY(%(kinds)s::text[]))
  AND (%(account)s = '' OR account_id = %(account)s)
ORDER BY position
LIMIT %(limit)s
"""


_MOVES: Final = """
SELECT program, to_char(date '1970-01-01' + day, 'YYYY-MM') AS month, data->>'move',
       data->>'from_level', data->>'to_level', count(*), count(DISTINCT account_id)
FROM events
WHERE kind = 'level_moved' AND program = ANY(%s::text[]) AND day BETWEEN %s AND %s
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 2, 3, 4, 5
"""


_MEMBERS_MOVED: Final = """
SELECT program, to_char(date '1970-01-01' + day, 'YYYY-MM') AS month,
       CASE data->>'move' WHEN 'advancement' THEN 'up' WHEN 'demotion' THEN 'down'
                          ELSE 'kept' END AS direction,
       count(DISTINCT account_id)
FROM events
WHERE kind = 'level_moved' AND program = ANY(%s::text[]) AND day BETWEEN %s AND %s
GROUP BY 1, 2, 3
"""


_PRUNE: Final = """
DELETE FROM events WHERE id IN (
    SELECT id FROM events
    WHERE position <= (SELECT coalesce(min(d.last_position), r.last_position)
                       FROM event_relay AS r LEFT JOIN event_deliveries AS d ON true
                       GROUP BY r.last_position)
    ORDER BY position
    LIMIT %(most)s
) AND created_at < now() - make_interval(days => %(days)s)
"""


@dataclass(frozen=True, slots=True)
class MoveCount:
    """The level moves of one kind between two levels of a program in a month."""

    program: str
    month: str  # YYYY-MM
    move: str  # advancement, sustain, demotion or extension
    from_level: str
    to_level: str
    moves: int
    members: int  # distinct cards


def event_rows(records: Iterable[Any]) -> list[EventRow]:
    """The rows of :data:`AFTER` as EventRows."""
    return [
        EventRow(
            position, Event(account_id, request_id, seq, kind, program, day, data), committed_at
        )
        for (
            position, account_id, request_id, seq, kind, program, day, data, committed_at
        ) in records
    ]  # fmt: skip


class EventLog(CatalogBase):
    """The relay and the readers of ``events``, over the store's pool."""

    async def add(self, events: Sequence[Event]) -> int:
        """Write events that tell of no change of state (AWARD_EXPIRING reminders), each
        once by its key: one already written is left as it is. How many were new."""
        if not events:
            return 0
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        for event in events:
            for column, value in zip(
                columns,
                (event.account_id, event.request_id, event.seq, event.kind, event.program,
                 event.day, json.dumps(dict(event.data), separators=(",", ":"), sort_keys=True)),
                strict=True,
            ):  # fmt: skip
                column.append(value)
        async with self._reading("write events") as cursor:
            await cursor.execute(_ADD, columns)
            return cursor.rowcount

    async def position(self, most: int = EVENTS_RELAY_ROWS_MAX) -> int:
        """Give the committed events still without one a position (at most ``most``);
        how many were numbered."""
        async with self._reading("number events") as cursor:
            await cursor.execute(_POSITION, (most,))
            numbered = int((await one_row(cursor))[0])
        metrics.EVENTS_POSITIONED.inc(numbered)
        return numbered

    async def after(
        self,
        after: int,
        limit: int,
        *,
        until: int = POSITION_MAX,
        kinds: Iterable[str] = (),
        account: str = "",
    ) -> list[EventRow]:
        """The positioned events after position ``after`` (and up to ``until``), in position
        order, at most ``limit``; only of ``kinds`` and of ``account`` when given."""
        params = {
            "after": after, "until": until, "kinds": list(kinds), "account": account,
            "limit": limit,
        }  # fmt: skip
        async with self._reading("list events") as cursor:
            await cursor.execute(AFTER, params)
            return event_rows(await cursor.fetchall())

    async def moves(
        self, programs: Sequence[str], first_day: int, last_day: int
    ) -> list[MoveCount]:
        """The level moves of ``programs`` (loyalty program ids) on the days from
        ``first_day`` to ``last_day``, counted by month, kind and levels."""
        async with self._reading("count level moves") as cursor:
            await cursor.execute(_MOVES, (list(programs), first_day, last_day))
            return [MoveCount(*row) for row in await cursor.fetchall()]

    async def members_moved(
        self, programs: Sequence[str], first_day: int, last_day: int
    ) -> dict[tuple[str, str, str], int]:
        """Distinct cards moved ``up`` (advancements), ``down`` (demotions) or ``kept``
        (sustains, extensions) by (program, month YYYY-MM, direction), however many moves
        of that direction each made."""
        async with self._reading("count members moved") as cursor:
            await cursor.execute(_MEMBERS_MOVED, (list(programs), first_day, last_day))
            return {(p, m, d): int(n) for p, m, d, n in await cursor.fetchall()}

    async def prune(self, kept_days: int, most: int = EVENTS_PRUNED_PER_STATEMENT) -> int:
        """Remove the events older than ``kept_days`` that every sender has had (oldest
        first, ``most`` per statement, until none is left to remove); how many."""
        removed = 0
        while True:
            async with self._reading("remove old events") as cursor:
                await cursor.execute(_PRUNE, {"most": most, "days": kept_days})
                removed += cursor.rowcount
                if cursor.rowcount < most:
                    return removed

    async def oldest_position(self) -> int:
        """The position of the oldest event kept (the one after the last numbered when none
        is): a reader after an earlier position missed events that were removed."""
        async with self._reading("read the oldest event position") as cursor:
            await cursor.execute(
                "SELECT coalesce((SELECT min(position) FROM events),"
                " (SELECT last_position + 1 FROM event_relay))"
            )
            return int((await one_row(cursor))[0])

    async def last_position(self) -> int:
        """The position of the newest numbered event (0 before any): where a reader that
        wants only what happens from now on starts."""
        async with self._reading("read the last event position") as cursor:
            await cursor.execute("SELECT last_position FROM event_relay")
            return int((await one_row(cursor))[0])

    async def run_relay(
        self, interval_seconds: float = EVENTS_RELAY_SECONDS, written: Waiter | None = None
    ) -> None:
        """Number committed events until cancelled: when ``written`` is told they were (or
        every ``interval_seconds`` while it cannot be; processor.store.notifications), and
        at once again while a turn finds more than it may number. A failure (PostgreSQL
        away) is logged when it begins and tried again ``interval_seconds`` later."""
        failing = False
        while True:
            try:
                numbered = await self.position()
            except LoyaltyError as error:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # stopping: the error is the cancel's
                    raise asyncio.CancelledError from error
                if not failing:
                    log.warning("numbering events failed; trying again: %s", error)
                failing = True
                numbered = 0
            else:
                failing = False
            if numbered < EVENTS_RELAY_ROWS_MAX:
                # After a failure, the events told of are still waiting: look again at the
                # short interval, not when the next commit is told.
                await notifications.sleep(None if failing else written, interval_seconds)

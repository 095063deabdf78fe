"""ListEvents and WatchEvents: the events of committed batches, as AdminService serves them.

Both read the relay's positions (processor.store.event_log): ListEvents a page after a
position, WatchEvents the same over and over, a message whenever events were committed
since the last, until the caller goes. Each numbers what is committed first (the relay's
turn, at once), so a reader does not wait out the relay's interval for its own events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

from processor import calendar, proto
from processor.errors import InvalidFieldError, NotFoundError, OverloadedError
from processor.flow.registry import ProgramRegistry
from processor.limits import (
    CARD_DIGITS_MAX,
    EVENTS_PAGE_SIZE_MAX,
    EVENTS_RELAY_SECONDS,
    EVENTS_WATCHERS_MAX,
)
from processor.store import notifications
from processor.store.event_log import EventLog, EventRow
from processor.store.events import (
    AWARD_EXPIRING,
    AWARD_ISSUED,
    LEVEL_MOVED,
    POINTS_ISSUED,
    POINTS_RELEASED,
    TASK_CREATED,
)
from processor.store.notifications import Signal
from processor.wire import answers

admin = proto.admin
common = proto.common

EVENTS_PAGE_SIZE_DEFAULT: Final = 100
"""Events of a ListEvents answer when the request leaves page_size at zero."""

WATCH_POLL_SECONDS: Final = EVENTS_RELAY_SECONDS
"""How often a WatchEvents call looks for events committed since its last message."""

_KIND_NUMBERS: Final = {
    LEVEL_MOVED: admin.EVENT_KIND_LEVEL_MOVED,
    AWARD_ISSUED: admin.EVENT_KIND_AWARD_ISSUED,
    POINTS_ISSUED: admin.EVENT_KIND_POINTS_ISSUED,
    TASK_CREATED: admin.EVENT_KIND_TASK_CREATED,
    AWARD_EXPIRING: admin.EVENT_KIND_AWARD_EXPIRING,
    POINTS_RELEASED: admin.EVENT_KIND_POINTS_RELEASED,
}
KINDS: Final[dict[int, str]] = {int(number): name for name, number in _KIND_NUMBERS.items()}
"""The event kinds by their number in the contract."""


class EventReader:
    """The two RPCs' work, over the event log and the program registry (for the currency
    and points precision an award is shown in)."""

    def __init__(
        self, log: EventLog, registry: ProgramRegistry, positioned: Signal | None = None
    ) -> None:
        self.log = log
        self.registry = registry
        # Told when events are numbered: a watcher looks then (else every WATCH_POLL_SECONDS).
        self.positioned = positioned
        self.watching = 0  # WatchEvents calls open now

    async def list_events(self, request: admin.ListEventsRequest) -> admin.ListEventsResponse:
        after = await self._kept_after(_position(request.after_position))
        kinds, account = _filters(request.kinds, request.account)
        size = min(EVENTS_PAGE_SIZE_DEFAULT if request.page_size == 0 else request.page_size,
                   EVENTS_PAGE_SIZE_MAX)  # fmt: skip
        await self.log.position()
        rows, reached = await self._page(after, size, kinds, account)
        return admin.ListEventsResponse(
            events=[self._message(row) for row in rows], last_position=max(after, reached)
        )

    async def _kept_after(self, after: int) -> int:
        """``after`` when no event after it was removed (older than the retention);
        refused (EVENTS_REMOVED, OUT_OF_RANGE) naming where the kept events begin."""
        if after:
            oldest = await self.log.oldest_position()
            if after < oldest - 1:
                raise InvalidFieldError(
                    "after_position",
                    f"the events after {after} up to {oldest - 1} were removed (older than "
                    f"the retention); the oldest kept is {oldest}: go on after {oldest - 1}",
                    reason="EVENTS_REMOVED",
                )
        return after

    async def _page(
        self, after: int, size: int, kinds: list[str], account: str
    ) -> tuple[list[EventRow], int]:
        """Up to ``size`` events after ``after`` and the position the page covers: its last
        event's when full; else every position numbered so far (events the filters leave
        out are passed over, and not read again)."""
        # Every position up to `last` is committed and visible once `last` is read.
        last = await self.log.last_position()
        rows = await self.log.after(after, size, until=last, kinds=kinds, account=account)
        return rows, rows[-1].position if len(rows) == size else last

    async def watch(
        self, request: admin.WatchEventsRequest
    ) -> AsyncIterator[admin.WatchEventsResponse]:
        after = _position(request.after_position)
        kinds, account = _filters(request.kinds, request.account)
        if request.from_now and after:
            raise InvalidFieldError("from_now", "cannot be given with after_position")
        if self.watching >= EVENTS_WATCHERS_MAX:
            raise OverloadedError(
                f"{self.watching} WatchEvents calls are open in this process already; "
                "retry later, or read with ListEvents"
            )
        self.watching += 1
        told = self.positioned.waiter() if self.positioned is not None else None
        try:
            after = await self._kept_after(after)
            await self.log.position()  # then the relay's turns: each look reads only
            if request.from_now:
                after = await self.log.last_position()
            while True:
                rows, reached = await self._page(after, EVENTS_PAGE_SIZE_MAX, kinds, account)
                if rows:
                    yield admin.WatchEventsResponse(
                        events=[self._message(row) for row in rows], last_position=reached
                    )
                after = max(after, reached)
                if len(rows) < EVENTS_PAGE_SIZE_MAX:
                    await notifications.sleep(told, WATCH_POLL_SECONDS)
        finally:
            self.watching -= 1
            if told is not None and self.positioned is not None:
                self.positioned.forget(told)

    def _message(self, row: EventRow) -> admin.Event:
        event = row.event
        message = admin.Event(
            position=row.position,
            key=event.key,
            kind=_KIND_NUMBERS[event.kind],
            account=event.account_id,
            request_id=event.request_id,
            date=calendar.format_day(event.day),
        )
        message.committed_time.FromDatetime(row.committed_at)
        if event.kind == LEVEL_MOVED:
            message.level_moved.CopyFrom(answers.level_move_message(event.level_move()))
            return message
        if event.kind == TASK_CREATED:
            data = event.data
            message.task_created.CopyFrom(
                admin.TaskCreated(
                    task_id=data["task_id"], rule=data["rule"], title=data["title"],
                    team=data["team"], event_key=data["event_key"],
                )
            )  # fmt: skip
            return message
        if event.kind == AWARD_EXPIRING:
            data = event.data
            message.award_expiring.CopyFrom(
                admin.AwardExpiring(
                    program=event.program, code=data["code"], award_kind=data["award_kind"],
                    rule=data["rule"],
                    # The engine keeps the first day it cannot be used.
                    expires_date=calendar.format_day(data["expires_day"] - 1),
                )
            )  # fmt: skip
            return message
        try:
            program = self.registry.for_card(event.account_id)
        except NotFoundError:
            program = None  # no active program: units without their currency or precision
        if event.kind == AWARD_ISSUED:
            message.award_issued.CopyFrom(answers.award_issue_message(event.award_issue(), program))
            return message
        digits = 0 if program is None else program.balance_digits.get(f"points:{event.program}", 0)
        points = common.Points(units=event.data["points"], precision=digits)
        if event.kind == POINTS_RELEASED:
            message.points_released.CopyFrom(
                admin.PointsReleased(
                    program=event.program, points=points,
                    released_date=calendar.format_day(event.data["released_day"]),
                )
            )  # fmt: skip
        else:
            message.points_issued.CopyFrom(admin.PointsIssued(program=event.program, points=points))
        return message


def _position(value: int) -> int:
    if value < 0:
        raise InvalidFieldError("after_position", "must be zero or more")
    return value


def _filters(kinds: Sequence[int], account: str) -> tuple[list[str], str]:
    names = []
    for index, number in enumerate(kinds):
        if number not in KINDS:
            raise InvalidFieldError(
                f"kinds[{index}]", f"{number} is not an event kind (1 to {len(KINDS)})"
            )
        names.append(KINDS[number])
    if account and (
        not account.isdigit() or not account.isascii() or len(account) > CARD_DIGITS_MAX
    ):
        raise InvalidFieldError("account", f"a card number is 1 to {CARD_DIGITS_MAX} digits")
    return names, account

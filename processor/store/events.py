"""Events: what a committed batch tells the world, kept in PostgreSQL beside the ledger.

A level moved or an award issued, by a transaction or by a scheduled job, is written as a
row of ``events`` in the same transaction as the states and ledger rows it describes
(``commit_batch``, migrations/0011_events.sql): a batch that rolls back writes none, and a
request posted once writes its events once (they are keyed by the request and their place
among its events, ``key``). Readers follow them by *position*: a number the relay
(:func:`position_events`) gives each committed row, in the order it saw them, since no
number given at insert time follows commit order. Every serving process runs the relay
every ``EVENTS_RELAY_SECONDS``; the relays of many processes take turns.

What a reader is promised: the events of every committed batch, each once, in position
order; a reader that stops and starts again after the last position it handled misses
nothing and sees nothing twice (a notifier that may fail after sending and before saving
its place sees some again: they carry their ``key`` to be de-duplicated with).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from processor.engine.types import AccountState, AwardIssue, LevelMove, Result
from processor.errors import InvalidBatchError
from processor.limits import AWARD_EXPIRING_NOTICE_DAYS, ESCROW_RELEASED_LOOKBACK_DAYS

LEVEL_MOVED: Final = "level_moved"
AWARD_ISSUED: Final = "award_issued"
POINTS_ISSUED: Final = "points_issued"  # only when the server is set to (events_points_issued)
TASK_CREATED: Final = "task_created"  # written with the task (processor.store.tasks)
AWARD_EXPIRING: Final = "award_expiring"  # a reminder of the award-expiry job (expiring_of)
POINTS_RELEASED: Final = "points_released"  # told by the escrow-release job (released_of)
COMMITTED_KINDS: Final = (LEVEL_MOVED, AWARD_ISSUED, POINTS_ISSUED)
"""The kinds a batch's commit writes (``event_columns``), as the ``kind`` column names them."""
KINDS: Final = (*COMMITTED_KINDS, TASK_CREATED, AWARD_EXPIRING, POINTS_RELEASED)
"""Every kind of event, as the ``kind`` column and the API name them."""


EARNED: Final = frozenset({"regular", "bonus", "escrow"})
"""The postings of points a transaction earned (escrowed ones included: earned, not yet
spendable), which a POINTS_ISSUED event adds up; not returns, awards or expiries."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a committed request: ``data`` holds what its kind tells."""

    account_id: str
    request_id: str
    seq: int  # its place among its request's events, from 0
    kind: str
    program: str
    day: int
    data: Mapping[str, Any]

    @property
    def key(self) -> str:
        """The event's identity, for a receiver to de-duplicate with."""
        return event_key(self.account_id, self.request_id, self.seq)

    def level_move(self) -> LevelMove:
        """A LEVEL_MOVED event's move, as the engine told it."""
        data = self.data
        return LevelMove(
            self.program, data["rule"], data["move"], data["from_level"], data["to_level"]
        )

    def award_issue(self) -> AwardIssue:
        """An AWARD_ISSUED event's award, as the engine told it."""
        data = self.data
        return AwardIssue(
            data["code"], data["award_kind"], data["rule"], self.program, data["value"],
            data["points_cost"], data["expires_day"],
        )  # fmt: skip


def event_key(account_id: str, request_id: str, seq: int) -> str:
    return f"{account_id}/{request_id}/{seq}"


def events_of(result: Result, day: int, *, points: bool = False) -> list[Event]:
    """The events an approved result tells, in order: its level moves, then its awards,
    then (``points``) the points it earned in each loyalty program."""
    if result.status != "approved" or not (
        result.moves or result.awards or (points and result.postings)
    ):
        return []
    events = [
        Event(
            result.account, result.id, seq, LEVEL_MOVED, move.program, day,
            {"move": move.kind, "rule": move.rule, "from_level": move.from_level,
             "to_level": move.to_level},
        )
        for seq, move in enumerate(result.moves)
    ]  # fmt: skip
    for award, source in zip(result.awards, _award_sources(result), strict=True):
        events.append(
            Event(
                result.account, result.id, len(events), AWARD_ISSUED, award.program, day,
                {"code": award.code, "award_kind": award.kind, "rule": award.rule,
                 "value": award.value, "points_cost": award.points_cost,
                 "expires_day": award.expires_day, "source": source},
            )
        )  # fmt: skip
    if points:
        earned: dict[str, int] = {}
        for posting in result.postings:
            if posting.balance == "points" and posting.amount > 0 and posting.kind in EARNED:
                earned[posting.program] = earned.get(posting.program, 0) + posting.amount
        for program, amount in earned.items():
            events.append(
                Event(
                    result.account, result.id, len(events), POINTS_ISSUED, program, day,
                    {"points": amount},
                )
            )  # fmt: skip
    return events


def expiring_of(state: AccountState, day: int) -> list[Event]:
    """The AWARD_EXPIRING events of ``state`` on ``day``: one for each active coupon and
    certificate whose last day is at most AWARD_EXPIRING_NOTICE_DAYS away. Keyed by the
    award's code and expiry day (request id ``expiring:<code>:<expiry day>``), so it is
    written once however many runs see it, and again if its expiry is extended."""
    held = [(program, coupon) for program, account in state.loyalty.items()
            for coupon in account.awards]  # fmt: skip
    held += [(program, certificate) for program, account in state.awards.items()
             for certificate in account.awards]  # fmt: skip
    events = []
    for program, award in held:
        expires_day = award.expires_day
        if award.status != "active" or expires_day is None:
            continue
        if day < expires_day <= day + 1 + AWARD_EXPIRING_NOTICE_DAYS:
            events.append(
                Event(
                    state.account, f"expiring:{award.code}:{expires_day}", 0, AWARD_EXPIRING,
                    program, day,
                    {"code": award.code, "award_kind": award.kind, "rule": award.rule,
                     "expires_day": expires_day},
                )
            )  # fmt: skip
    return events


def released_of(state: AccountState, day: int) -> list[Event]:
    """The POINTS_RELEASED events of ``state`` on ``day``: for each loyalty program, the
    points of its escrowed lots released on each of the last ESCROW_RELEASED_LOOKBACK_DAYS
    days (``day`` included), one event per program and release day. Keyed by both (request
    id ``released:<program>:<release day>``), so it is written once however many runs see
    it. The points are those the lots still hold: spent since, they were released before."""
    events = []
    for program, account in state.loyalty.items():
        released: dict[int, int] = {}
        for lot in account.lots:
            if lot.earned_day < lot.available_day and (
                day - ESCROW_RELEASED_LOOKBACK_DAYS < lot.available_day <= day
            ):
                released[lot.available_day] = released.get(lot.available_day, 0) + lot.points
        for released_day, points in sorted(released.items()):
            events.append(
                Event(
                    state.account, f"released:{program}:{released_day}", 0, POINTS_RELEASED,
                    program, day, {"points": points, "released_day": released_day},
                )
            )  # fmt: skip
    return events


def _award_sources(result: Result) -> list[str]:
    """What issued each of a result's awards: a coupon's or e-award's rule is its award
    rule; a certificate names the certificate, and the trace entry written with it names
    its source (the loyalty award rule, or the award program's own "account_activated" or
    "card_registered"). A result without its trace (the compiled engine's answers) gives
    "" for a certificate."""
    traced = [entry for entry in result.trace if entry.fired]
    sources = []
    for award in result.awards:
        if award.kind != "certificate":
            sources.append(award.rule)
            continue
        found = next(
            (e for e in traced if (e.program, e.rule) == (award.program, award.rule)), None
        )
        if found is not None:
            traced.remove(found)  # two certificates alike pair with their entries in order
        sources.append("" if found is None else found.reason)
    return sources


def event_columns(
    events: Sequence[Event], written: Mapping[str, int]
) -> tuple[list[str], list[str], list[int], list[str]]:
    """The events as the arrays ``commit_batch`` unnests: account, request, seq and the
    data (with its kind, program and day) as JSON. An event must come with a write of its
    account's state, as a ledger row must; InvalidBatchError otherwise."""
    columns: tuple[list[str], list[str], list[int], list[str]] = ([], [], [], [])
    keys: set[tuple[str, str, int]] = set()
    for event in events:
        where = f"event {event.key}"
        if event.account_id not in written:
            raise InvalidBatchError(f"{where}: the batch does not write that account's state")
        if event.kind not in COMMITTED_KINDS:
            raise InvalidBatchError(
                f"{where}: kind {event.kind!r} is not one of {list(COMMITTED_KINDS)}"
            )
        key = (event.account_id, event.request_id, event.seq)
        if key in keys:
            raise InvalidBatchError(f"{where} appears twice in one batch")
        keys.add(key)
        data = {**event.data, "kind": event.kind, "program": event.program, "day": event.day}
        columns[0].append(event.account_id)
        columns[1].append(event.request_id)
        columns[2].append(event.seq)
        columns[3].append(json.dumps(data, separators=(",", ":"), sort_keys=True))
    return columns

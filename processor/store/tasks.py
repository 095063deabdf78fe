"""Tasks: people's work made from events (processor.outbox.tasks), listed, claimed and done
through AdminService (ListTasks, ClaimTask, CompleteTask).

A task is open, then claimed by someone (the caller's principal), then done with an
outcome in words. Claiming takes an open task only, so two people never hold one; doing
takes an open or claimed one (a team may close what nobody claimed). Each change is one
statement that names the state it expects, so two callers at once cannot both win.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from processor.errors import DeclinedError, NotFoundError
from processor.store.catalog_base import CatalogBase

OPEN: Final = "open"
CLAIMED: Final = "claimed"
DONE: Final = "done"
STATUSES: Final = (OPEN, CLAIMED, DONE)


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task an event makes by one rule."""

    event_key: str
    rule: str
    position: int
    program: str
    account_id: str
    title: str
    team: str
    details: Mapping[str, Any]
    day: int  # the business day of the event it is made of


@dataclass(frozen=True, slots=True)
class Task:
    """A task as it stands."""

    id: int
    event_key: str
    rule: str
    position: int
    program: str
    account_id: str
    title: str
    team: str
    details: Mapping[str, Any]
    status: str
    claimed_by: str
    claimed_at: datetime.datetime | None
    done_at: datetime.datetime | None
    outcome: str
    created_at: datetime.datetime


_COLUMNS: Final = (
    "id, event_key, rule, position, program, account_id, title, team, details, status, "
    "claimed_by, claimed_at, done_at, outcome, created_at"
)
_ADD: Final = """
-- The task, and the event that tells it was made, in one statement: a task made again (its
-- event delivered twice) is neither made nor told twice.
WITH added AS (
    INSERT INTO tasks (event_key, rule, position, program, account_id, title, team, details)
    VALUES (%(event_key)s, %(rule)s, %(position)s, %(program)s, %(account_id)s, %(title)s,
            %(team)s, %(details)s::jsonb)
    ON CONFLICT (event_key, rule) DO NOTHING
    RETURNING id, event_key, rule, program, account_id, title, team
)
INSERT INTO events (account_id, request_id, seq, kind, program, day, data)
SELECT account_id, 'task:' || id, 0, 'task_created', program, %(day)s,
       jsonb_build_object('task_id', id, 'rule', rule, 'title', title, 'team', team,
                          'event_key', event_key)
FROM added
"""
_LIST: Final = f"""
SELECT {_COLUMNS} FROM tasks
WHERE id > %(after)s
  AND (cardinality(%(statuses)s::text[]) = 0 OR status = ANY(%(statuses)s::text[]))
  AND (%(team)s = '' OR team = %(team)s)
ORDER BY id
LIMIT %(limit)s
"""
_CLAIM: Final = f"""
UPDATE tasks SET status = 'claimed', claimed_by = %s, claimed_at = now()
WHERE id = %s AND status = 'open'
RETURNING {_COLUMNS}
"""
_COMPLETE: Final = f"""
UPDATE tasks SET status = 'done', done_at = now(), outcome = %s
WHERE id = %s AND status <> 'done'
RETURNING {_COLUMNS}
"""
_STATUS: Final = "SELECT status, claimed_by FROM tasks WHERE id = %s"


class Tasks(CatalogBase):
    """The tasks table, over the store's pool."""

    async def add(self, tasks: Sequence[NewTask]) -> None:
        """Make ``tasks``, each with a TASK_CREATED event (processor.store.events) in the
        same transaction; one an event already made by its rule is left as it is."""
        if not tasks:
            return
        async with self._transaction("make tasks") as cursor:
            await cursor.executemany(
                _ADD,
                [
                    {"event_key": task.event_key, "rule": task.rule, "position": task.position,
                     "program": task.program, "account_id": task.account_id,
                     "title": task.title, "team": task.team, "day": task.day,
                     "details": json.dumps(task.details, sort_keys=True)}
                    for task in tasks
                ],
            )  # fmt: skip

    async def page(
        self, *, statuses: Sequence[str] = (), team: str = "", after: int = 0, limit: int = 100
    ) -> list[Task]:
        """Tasks after id ``after``, oldest first, of ``statuses`` and ``team`` when given."""
        params = {"after": after, "statuses": list(statuses), "team": team, "limit": limit}
        async with self._reading("list tasks") as cursor:
            await cursor.execute(_LIST, params)
            return [Task(*row) for row in await cursor.fetchall()]

    async def claim(self, task_id: int, principal: str) -> Task:
        """Claim an open task for ``principal``."""
        async with self._transaction("claim a task") as cursor:
            await cursor.execute(_CLAIM, (principal, task_id))
            row = await cursor.fetchone()
            if row is None:
                await self._refuse(cursor, task_id, "claimed")
        return Task(*row)

    async def complete(self, task_id: int, outcome: str) -> Task:
        """Mark a task that is not done yet done, with ``outcome``."""
        async with self._transaction("complete a task") as cursor:
            await cursor.execute(_COMPLETE, (outcome, task_id))
            row = await cursor.fetchone()
            if row is None:
                await self._refuse(cursor, task_id, "completed")
        return Task(*row)

    async def _refuse(self, cursor: Any, task_id: int, action: str) -> NoReturn:
        await cursor.execute(_STATUS, (task_id,))
        found = await cursor.fetchone()
        if found is None:
            raise NotFoundError(f"no task {task_id}", reason="UNKNOWN_TASK")
        status, claimed_by = found
        held = f" by {claimed_by}" if status == CLAIMED else ""
        raise DeclinedError(
            f"task {task_id} is {status}{held}: it cannot be {action}",
            reason="TASK_CLAIMED" if status == CLAIMED else "TASK_DONE",
        )

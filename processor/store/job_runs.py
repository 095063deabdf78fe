"""Scheduled job runs in PostgreSQL (migration 0008), and the accounts a run walks.

A run is (job, as-of day). ``begin`` makes its row or finds it: a finished run is not run
again, and a stopped one goes on from the last account it recorded. ``exclusive`` holds a
session advisory lock on the job for the whole run, so two runners of one job (two servers'
schedules, a person at a terminal) take turns: the second finds the run finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from processor import calendar
from processor.errors import InternalError
from processor.store.catalog_base import CatalogBase, one_row
from processor.store.ledger import (
    CONNECT_TIMEOUT_SECONDS,
    SCAN_STATEMENT_TIMEOUT_MS,
    Store,
    database_error,
)

_JOB_LOCK_NAMESPACE: Final = 0x4A42  # "JB": the first key of the jobs' advisory locks

_RESUME = """
UPDATE job_runs SET
    attempts = attempts + CASE WHEN status = 'finished' THEN 0 ELSE 1 END,
    status = CASE WHEN status = 'finished' THEN 'finished' ELSE 'running' END,
    updated_at = now()
WHERE job = %s AND as_of = %s
RETURNING status, after_account, accounts_total, accounts_done, accounts_changed, postings,
          attempts
"""
_BEGIN = """
INSERT INTO job_runs (job, as_of, accounts_total) SELECT %s, %s, count(*) FROM {source}
RETURNING status, after_account, accounts_total, accounts_done, accounts_changed, postings,
          attempts
"""
# A queue's run taken up again the same day: it goes through what was queued since.
_REOPEN = """
UPDATE job_runs SET status = 'running', attempts = attempts + 1, after_account = '',
    accounts_total = accounts_done + (SELECT count(*) FROM {source}), error = '',
    finished_at = NULL, updated_at = now()
WHERE job = %s AND as_of = %s AND status = 'finished' AND EXISTS (SELECT FROM {source})
RETURNING status, after_account, accounts_total, accounts_done, accounts_changed, postings,
          attempts
"""
EVERY_ACCOUNT: Final = "accounts"
"""What a run walks and counts unless told otherwise: every account."""
_PROGRESS = """
UPDATE job_runs SET after_account = %s, accounts_done = accounts_done + %s,
    accounts_changed = accounts_changed + %s, postings = postings + %s, updated_at = now()
WHERE job = %s AND as_of = %s AND status = 'running' AND after_account = %s
"""
_FINISH = """
UPDATE job_runs SET status = %s, error = %s, updated_at = now(),
    finished_at = CASE WHEN %s = 'finished' THEN now() ELSE finished_at END
WHERE job = %s AND as_of = %s AND status = 'running'
"""
_COLUMNS = """job, as_of, status, after_account, accounts_total, accounts_done, accounts_changed,
       postings, attempts, error, started_at, finished_at"""
_RECENT = f"""
SELECT {_COLUMNS}
FROM job_runs WHERE (%s = '' OR job = %s) ORDER BY started_at DESC, job LIMIT %s
"""
LOCK_POLL_SECONDS: Final = 1.0
"""How often a runner waiting for its job's lock asks for it again."""
_LATEST = f"""
SELECT DISTINCT ON (job) {_COLUMNS} FROM job_runs ORDER BY job, started_at DESC
"""
_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(%s))"
_LAST_FINISHED = """
SELECT job, max(finished_at) FROM job_runs WHERE status = 'finished' GROUP BY job
"""
_ACCOUNTS_AFTER = """
SELECT account_id, version, state FROM accounts WHERE account_id > %s
ORDER BY account_id LIMIT %s
"""


@dataclass(frozen=True, slots=True)
class JobRun:
    """A run's row: where it stands and what it did so far."""

    job: str
    as_of: int  # a day number
    status: str  # running, finished or failed
    after_account: str  # the last account finished; "" before the first
    accounts_total: int  # accounts when the run first started
    accounts_done: int
    accounts_changed: int
    postings: int
    attempts: int  # starts and resumes
    error: str = ""
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None


Writes = Callable[[psycopg.AsyncCursor[Any]], Awaitable[None]]
"""More writes for a run's progress or finish transaction (a scorecards chunk's counts)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """A chunk a run finished: where it began and ended, and what it did."""

    previous: str  # the run's last account before the chunk ("" for the first)
    last: str  # the chunk's last account
    done: int  # accounts it went through
    changed: int = 0
    postings: int = 0


class JobRuns(CatalogBase):
    """The job_runs table and the walk over accounts, through the Store's pool."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._conninfo = store.conninfo

    @contextlib.asynccontextmanager
    async def exclusive(self, job: str) -> AsyncIterator[None]:
        """Hold ``job``'s lock until the block ends, waiting for it as long as another
        runner has it (asked again every LOCK_POLL_SECONDS, so no statement waits for it).
        A runner that dies lets go with its connection."""
        key = (_JOB_LOCK_NAMESPACE, job)
        try:
            # A connection of its own, not one of the pool's: a run holds it from start to
            # end, and the pool is the transactions'.
            async with await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
            ) as connection:
                while not await _locked(connection, key):
                    await asyncio.sleep(LOCK_POLL_SECONDS)
                try:
                    yield
                finally:
                    # A lock lost with its session needs no unlock; the run's outcome stands.
                    with contextlib.suppress(psycopg.Error):
                        await connection.execute(_UNLOCK, key)
        except psycopg.Error as error:
            action = f"take the lock of job {job}"
            raise database_error(error, action, self._pool.timeout) from error

    async def begin(
        self, job: str, as_of: int, *, source: str = EVERY_ACCOUNT, reopen: bool = False
    ) -> JobRun:
        """The run of ``job`` as of ``as_of``: made (running), resumed (running again, one
        more attempt) or found finished. ``source`` is the table (and condition) whose rows
        the run goes through, counted for its progress; ``reopen`` takes a finished run up
        again (a queue's: what was queued since its end)."""
        day = calendar.to_date(as_of)
        async with self._transaction(f"begin job {job}") as cursor:
            await cursor.execute(_RESUME, (job, day))
            row = await cursor.fetchone()
            if row is None:  # a new run: its rows counted once, for its progress
                await cursor.execute(f"SET LOCAL statement_timeout = {SCAN_STATEMENT_TIMEOUT_MS}")
                await cursor.execute(_BEGIN.format(source=source), (job, day))
                row = await one_row(cursor)
            elif reopen and row[0] == "finished":
                # Taken up again when rows were queued since it finished; else as it was.
                await cursor.execute(f"SET LOCAL statement_timeout = {SCAN_STATEMENT_TIMEOUT_MS}")
                await cursor.execute(_REOPEN.format(source=source), (job, day))
                row = await cursor.fetchone() or row
        return JobRun(job, as_of, *row)

    async def progress(
        self,
        job: str,
        as_of: int,
        chunk: Chunk,
        *,
        also: Writes | None = None,
    ) -> None:
        """Record a chunk finished: its last account and what it did, with ``also``'s writes
        in the same transaction. The run must still stand where the chunk began (its
        ``previous`` account), so a chunk is recorded, and ``also`` written, once."""
        async with self._transaction(f"record the progress of job {job}") as cursor:
            await cursor.execute(
                _PROGRESS,
                (
                    chunk.last, chunk.done, chunk.changed, chunk.postings,
                    job, calendar.to_date(as_of), chunk.previous,
                ),
            )  # fmt: skip
            if cursor.rowcount != 1:
                raise RunLostError(f"job {job}: its run is no longer running here")
            if also is not None:
                await also(cursor)

    async def finish(
        self, job: str, as_of: int, error: str = "", *, also: Writes | None = None
    ) -> None:
        """The run finished (no ``error``) or failed with ``error``; a failed run is resumed
        by the next start. ``also``'s writes go in the same transaction, when it finished."""
        status = "failed" if error else "finished"
        async with self._transaction(f"finish job {job}") as cursor:
            await cursor.execute(_FINISH, (status, error, status, job, calendar.to_date(as_of)))
            if also is not None and not error and cursor.rowcount == 1:
                await also(cursor)

    async def latest(self) -> dict[str, JobRun]:
        """The latest run of each job that ever ran."""
        async with self._reading("list job runs") as cursor:
            await cursor.execute(_LATEST)
            return {run.job: run for run in map(_run, await cursor.fetchall())}

    async def recent(self, job: str = "", limit: int = 20) -> list[JobRun]:
        """The latest runs, newest first: of ``job``, or of every job."""
        async with self._reading("list job runs") as cursor:
            await cursor.execute(_RECENT, (job, job, limit))
            rows = await cursor.fetchall()
        return [_run(row) for row in rows]

    async def last_finished(self) -> dict[str, datetime.datetime]:
        """When each job last finished a run."""
        async with self._reading("read when jobs last finished") as cursor:
            await cursor.execute(_LAST_FINISHED)
            return {job: finished_at for job, finished_at in await cursor.fetchall()}

    async def accounts_after(self, after: str, limit: int) -> list[tuple[str, int, bytes]]:
        """Up to ``limit`` accounts (id, version, stored state) after ``after``, in order."""
        async with self._reading("read accounts for a job") as cursor:
            await cursor.execute(_ACCOUNTS_AFTER, (after, limit))
            return [(row[0], row[1], bytes(row[2])) for row in await cursor.fetchall()]


class RunLostError(InternalError):
    """The run's row is no longer running: another runner took it over (its lock was lost
    with its connection). This runner stops; what it committed stands, once."""

    reason = "JOB_RUN_LOST"


async def _locked(connection: psycopg.AsyncConnection[Any], key: tuple[int, str]) -> bool:
    cursor = await connection.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", key)
    return bool((await one_row(cursor))[0])


def _run(row: Any) -> JobRun:
    job, as_of, *fields = row
    return JobRun(job, calendar.to_day(as_of), *fields)

"""The jobs' schedule inside ``loyalty serve``, on procrastinate (PostgreSQL-backed jobs).

Every server process runs a :class:`Schedule`: procrastinate's periodic deferrer puts each
job in its queue at each tick of ``jobs_cron``, and PostgreSQL keeps a tick's job to one,
however many processes and hosts defer it (``procrastinate_periodic_defers`` is unique by
task and tick); a queueing lock keeps one of each job waiting at most, and one lock for all
of them runs them one after another. The worker of whichever process fetches a job first
runs it (processor.jobs.runner). A run that fails, or that its server's stop cuts short,
is queued again (RETRY) and goes on after its last recorded chunk; another maintenance
tick sends back to the queue what a killed process was running (procrastinate's stalled
jobs, found by their worker's missing heartbeat).

The schedule is read in UTC; a tick's run is as of the server's local date at the tick.
A tick missed by more than ten minutes (every server down) is not made up: the next run
brings every account up to its own day, which covers the days missed.

procrastinate was chosen over a table of our own because it already does what such a table
would need to grow into: once-only periodic defers across hosts, queueing locks, workers
with heartbeats and the recovery of stalled jobs, LISTEN/NOTIFY wake-ups, on psycopg 3.
What it does not know, the runs themselves (as-of day, progress, resume), is
processor.store.job_runs.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import Any, Final

import procrastinate
from croniter import croniter  # type: ignore[import-untyped]

from processor import calendar
from processor.jobs import runner
from processor.jobs.named import JOBS, Job
from processor.limits import EVENTS_KEPT_DAYS_DEFAULT
from processor.runtime import metrics
from processor.store.cards import today
from processor.store.event_log import EventLog
from processor.store.job_runs import JobRuns

log = logging.getLogger(__name__)

QUEUE: Final = "loyalty-jobs"
"""The procrastinate queue of the processor's jobs."""

STALLED_SECONDS: Final = 60.0
"""A worker silent this long (no heartbeat) is taken for dead, and its job sent back."""

HEARTBEAT_SECONDS: Final = 10.0
"""How often a worker tells PostgreSQL it is alive."""

DATABASE_WAIT_SECONDS: Final = 5.0
"""Longest wait of the schedule's pool for a connection, and to connect."""

RESTART_SECONDS_MIN: Final = 1.0
RESTART_SECONDS_MAX: Final = 60.0
"""The pauses before the schedule starts again after a failure: doubling, up to a minute."""

RETRY: Final = procrastinate.RetryStrategy(max_attempts=24, wait=300)
"""A run that failed, or was stopped by its server stopping, is queued again five minutes
later (for two hours): the same run, going on after its last recorded chunk."""

FINISHED_JOBS_KEPT_HOURS: Final = 24 * 30
"""How long procrastinate's rows of ended jobs are kept (job_runs keeps every run)."""

MAINTENANCE_CRON: Final = "*/5 * * * *"
"""When stalled jobs are looked for."""

PRUNE_EVENTS_CRON: Final = "23 * * * *"
"""When old events are removed (processor.store.event_log ``prune``): hourly."""


def check_cron(cron: str) -> str:
    """``cron`` when it is a five-field cron expression; ValueError saying why otherwise."""
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise ValueError(f"{cron!r} is not a cron expression of five fields (m h dom mon dow)")
    return cron


def task_name(job: Job) -> str:
    return f"loyalty.{job.name}"


class Schedule:
    """The periodic defers and the worker of one server process."""

    def __init__(
        self,
        conninfo: str,
        context: runner.JobContext,
        *,
        cron: str,
        chunk_accounts: int = runner.CHUNK_ACCOUNTS_DEFAULT,
        events_kept_days: int = EVENTS_KEPT_DAYS_DEFAULT,
    ) -> None:
        self._context = context
        self._chunk_accounts = chunk_accounts
        self._events_kept_days = events_kept_days
        # procrastinate logs every defer, start and end at INFO (the five-minute maintenance
        # tick alone, three lines each time); the runner logs each run's start and end. At
        # LOYALTY_LOG_LEVEL=DEBUG, all of procrastinate's lines are kept.
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            logging.getLogger("procrastinate").setLevel(logging.WARNING)
        # Bounded waits: a worker stopping while PostgreSQL is away (its last statements
        # unregister it) must not hold up the server's stop.
        connector = procrastinate.PsycopgConnector(
            conninfo=conninfo,
            min_size=1,
            max_size=3,
            name="loyalty-jobs",
            timeout=DATABASE_WAIT_SECONDS,
            kwargs={"connect_timeout": int(DATABASE_WAIT_SECONDS)},
        )
        self.app = procrastinate.App(connector=connector)
        cron = check_cron(cron)
        for job in JOBS.values():
            # One lock for every job: they run one after another across the deployment, in
            # the order a tick defers them (JOBS'), instead of walking the same accounts at
            # once and meeting in each other's commits.
            task = self.app.task(
                name=task_name(job),
                queue=QUEUE,
                lock=QUEUE,
                queueing_lock=job.name,
                retry=RETRY,
                pass_context=False,
            )(self._performer(job))
            self.app.periodic(cron=cron, periodic_id=job.name)(task)
        stalled = self.app.task(name="loyalty.retry-stalled", queue=QUEUE)(self._retry_stalled)
        self.app.periodic(cron=MAINTENANCE_CRON, periodic_id="retry-stalled")(stalled)
        prune = self.app.task(name="loyalty.prune-events", queue=QUEUE)(self._prune_events)
        self.app.periodic(cron=PRUNE_EVENTS_CRON, periodic_id="prune-events")(prune)

    def _performer(self, job: Job) -> Any:
        async def perform(timestamp: int | None = None, as_of: str | None = None) -> None:
            if as_of is not None:
                day = calendar.parse_day(as_of)
            elif timestamp is not None:
                day = job.as_of(calendar.to_day(datetime.date.fromtimestamp(timestamp)))
            else:
                day = job.as_of(today())
            await runner.run(self._context, job, day, chunk_accounts=self._chunk_accounts)

        perform.__name__ = perform.__qualname__ = job.name.replace("-", "_")
        return perform

    async def _restore_last_successes(self) -> None:
        """Each job's last finished run, for loyalty_job_last_success_timestamp_seconds: a
        restarted process reports it before its own first run."""
        for job, finished_at in (await JobRuns(self._context.store).last_finished()).items():
            metrics.JOB_LAST_SUCCESS.labels(job).set(finished_at.timestamp())

    async def _retry_stalled(self, timestamp: int | None = None) -> None:
        """Send back what dead workers left running, and forget old ended jobs."""
        manager = self.app.job_manager
        await manager.delete_old_jobs(
            FINISHED_JOBS_KEPT_HOURS,
            queue=QUEUE,
            include_failed=True,
            include_cancelled=True,
            include_aborted=True,
        )
        for stalled in await manager.get_stalled_jobs(
            queue=QUEUE, seconds_since_heartbeat=STALLED_SECONDS
        ):
            log.warning("job %s was left running by a dead worker: sent back", stalled.task_name)
            await manager.retry_job(stalled)

    async def _prune_events(self, timestamp: int | None = None) -> None:
        """Remove the events older than events_kept_days that every sender has had."""
        removed = await EventLog(self._context.store).prune(self._events_kept_days)
        if removed:
            log.info("removed %d events older than %d days", removed, self._events_kept_days)

    async def defer(self, job: Job, as_of: int) -> int | None:
        """Put ``job`` as of ``as_of`` in the queue now (None if one is waiting already)."""
        task = self.app.tasks[task_name(job)]
        try:
            return await task.defer_async(as_of=calendar.format_day(as_of))
        except procrastinate.exceptions.AlreadyEnqueued:
            return None

    async def run_forever(self) -> None:
        """``run``, started again after a failure (PostgreSQL away, say) with a growing
        pause, until cancelled: a server serves on while its schedule cannot."""
        pause = RESTART_SECONDS_MIN
        this = asyncio.current_task()
        while True:
            began = time.monotonic()
            try:
                await self.run()
            except Exception:
                log.exception("the job schedule stopped; starting it again in %.0f s", pause)
            if this is not None and this.cancelling():
                # The worker took in a cancel meant for this task while it stopped itself
                # (its listener lost PostgreSQL): the server is stopping, so stop.
                raise asyncio.CancelledError
            if time.monotonic() - began > RESTART_SECONDS_MAX:
                pause = RESTART_SECONDS_MIN  # it ran a good while: a new failure, not the same
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_SECONDS_MAX)

    async def run(self, *, wait: bool = True) -> None:
        """Defer at each tick and run what is queued, until cancelled (or, with ``wait``
        false, until the queue is empty)."""
        await self._restore_last_successes()
        async with self.app.open_async():
            await self.app.run_worker_async(
                queues=[QUEUE],
                name=f"loyalty-{os.getpid()}",
                concurrency=1,
                wait=wait,
                install_signal_handlers=False,
                delete_jobs="successful",
                shutdown_graceful_timeout=1.0,
                update_heartbeat_interval=HEARTBEAT_SECONDS,
                stalled_worker_timeout=STALLED_SECONDS,
            )

"""One run of a job over every account: chunks evaluated, committed and recorded.

``run`` is the whole of it (processor.jobs says where it sits). What holds:

- **Once per run.** A changed account is committed with an idempotency row keyed by its
  card and the run (``job:<job>:<as-of>:<card>``, a prefix clients may not use); a second
  attempt at it (a resumed run, a chunk evaluated again) is refused by the commit as a
  replay and the account left as the first attempt wrote it. An account the job does not
  change is not written at all.
- **Beside live traffic.** The commit is ``commit_batch``'s: an account a transaction
  changed after the chunk read it conflicts, and the chunk reads those accounts again and
  evaluates them again (up to JOB_CONFLICT_RETRIES_MAX times). The event loop is let go
  every JOB_SLICE_ACCOUNTS accounts, so the server's own batches go on.
- **Resumable.** After each chunk the run records its last account (while the next chunk
  is done; each record waits for the one before); a run started again after a crash or a
  stop goes on after the last recorded (each chunk first looking up which of its accounts
  the run changed already), and a finished run is not run again (a queue's run is taken up
  again the same day when cards were queued since).
- **One at a time.** A run holds its job's lock (processor.store.job_runs), so two runners
  of one job take turns, and the second finds the run finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from processor import calendar
from processor.engine import CompiledProgram, open_balances, run_job
from processor.engine.types import AccountState, Result
from processor.errors import NotFoundError, mask_card
from processor.flow.pipeline import Cache, Programs
from processor.jobs import scorecards
from processor.jobs.named import Job
from processor.limits import (
    JOB_CONFLICT_RETRIES_MAX,
    JOB_REQUEST_ID_PREFIX,
    JOB_SLICE_ACCOUNTS,
)
from processor.runtime import metrics
from processor.store import codec, opening_balances
from processor.store.event_log import EventLog
from processor.store.events import Event, events_of
from processor.store.job_runs import EVERY_ACCOUNT, Chunk, JobRuns, Writes
from processor.store.ledger import (
    AccountWrite,
    CommitBatch,
    CommitOutcome,
    IdempotencyRecord,
    Store,
    ledger_entries,
)
from processor.store.opening_balances import QUEUED, OpeningQueue, Queued

log = logging.getLogger(__name__)

CHUNK_ACCOUNTS_DEFAULT = 1_000
"""Accounts per chunk unless the settings say otherwise (jobs_chunk_accounts)."""

Progress = Callable[[int, int], None]
"""Told after each chunk: accounts done so far in the run, and the run's total."""


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a run reads and writes through: the server's, or the command line's own."""

    store: Store
    programs: Programs
    cache: Cache | None = None


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a run did, in all its attempts (``already`` when it had finished before)."""

    job: str
    as_of: int
    accounts_total: int
    accounts_done: int
    accounts_changed: int
    postings: int
    attempts: int
    already: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "as_of": calendar.format_day(self.as_of),
            "status": "finished before" if self.already else "finished",
            "accounts_total": self.accounts_total,
            "accounts_done": self.accounts_done,
            "accounts_changed": self.accounts_changed,
            "postings": self.postings,
            "attempts": self.attempts,
        }


def run_id(job: Job, as_of: int) -> str:
    """The name of the run of ``job`` as of ``as_of``: its request ids begin with it. A
    queue's job changes each card once ever, whichever day's run takes it: its name has no
    day (``job:opening-balances:<card>``)."""
    if job.walks != "accounts":
        return f"{JOB_REQUEST_ID_PREFIX}{job.name}"
    return f"{JOB_REQUEST_ID_PREFIX}{job.name}:{calendar.format_day(as_of)}"


async def run(
    context: JobContext,
    job: Job,
    as_of: int,
    *,
    chunk_accounts: int = CHUNK_ACCOUNTS_DEFAULT,
    progress: Progress | None = None,
) -> RunReport:
    """Run ``job`` as of ``as_of`` over every account, or go on with its stopped run."""
    runs = JobRuns(context.store)
    async with runs.exclusive(job.name):
        queue = job.walks == "opening_balances"
        begun = await runs.begin(
            job.name, as_of, source=QUEUED if queue else EVERY_ACCOUNT, reopen=queue
        )
        if begun.status == "finished":
            return RunReport(
                job.name, as_of, begun.accounts_total, begun.accounts_done,
                begun.accounts_changed, begun.postings, begun.attempts, already=True,
            )  # fmt: skip
        started = time.monotonic()
        total = max(begun.accounts_total, begun.accounts_done)
        done, changed, postings = begun.accounts_done, begun.accounts_changed, begun.postings
        after = begun.after_account
        gauge = metrics.JOB_PROGRESS.labels(job.name)
        gauge.set(_ratio(done, total))
        if after:
            log.info("job %s as of %s: resuming after %d accounts", job.name, _day(as_of), done)
        # A stopped attempt may have committed a chunk it did not record (or, with other
        # chunk sizes, part of several): each chunk of a resumed run looks up which of its
        # accounts the run changed already.
        look_up = begun.attempts > 1
        reader = scorecards.Reader(context, runs, as_of, chunk_accounts) if job.counts else None
        # A chunk is recorded while the next one is done: its record's transaction (and a
        # scorecards chunk's figures) beside the next chunk's work. Each record waits for the
        # one before, whose account it is guarded by.
        recording: asyncio.Task[None] | None = None
        try:
            while True:
                taken = await _next_chunk(
                    context, runs, job, as_of, after, chunk_accounts, look_up, reader
                )
                if recording is not None:
                    await recording
                    recording = None
                if taken is None:
                    break
                chunk, writes = taken
                recording = asyncio.create_task(runs.progress(job.name, as_of, chunk, also=writes))
                after = chunk.last
                done, changed = done + chunk.done, changed + chunk.changed
                postings += chunk.postings
                total = max(total, done)
                gauge.set(_ratio(done, total))
                if progress is not None:
                    progress(done, total)
                await asyncio.sleep(0)  # the server's batches go on between chunks
            closing = scorecards.closing(as_of) if job.counts else None
            await runs.finish(job.name, as_of, also=closing)
        except BaseException as error:
            if recording is not None:  # let a record under way end, as it would have
                await asyncio.gather(recording, return_exceptions=True)
            stopped = isinstance(error, asyncio.CancelledError)
            metrics.JOB_RUNS.labels(job.name, "stopped" if stopped else "failed").inc()
            with contextlib.suppress(Exception):
                await runs.finish(job.name, as_of, error=_described(error))
            raise
        finally:
            if reader is not None:
                await reader.aclose()
            metrics.JOB_DURATION.labels(job.name).observe(time.monotonic() - started)
        gauge.set(1.0)
        metrics.JOB_RUNS.labels(job.name, "finished").inc()
        metrics.JOB_LAST_SUCCESS.labels(job.name).set(time.time())
        log.info(
            "job %s as of %s finished: %d accounts, %d changed, %d postings",
            job.name, _day(as_of), done, changed, postings,
        )  # fmt: skip
        return RunReport(job.name, as_of, total, done, changed, postings, begun.attempts)


async def _next_chunk(
    context: JobContext,
    runs: JobRuns,
    job: Job,
    as_of: int,
    after: str,
    size: int,
    look_up: bool,
    reader: scorecards.Reader | None = None,
) -> tuple[Chunk, Writes | None] | None:
    """The run's next chunk after ``after``, done (evaluated and committed, or counted), with
    what the transaction recording it also writes; None when the run has gone through all."""
    if job.walks == "opening_balances":
        queued = {item.card: item for item in await OpeningQueue(context.store).after(after, size)}
        if not queued:
            return None
        cards = list(queued)  # in the queue's order, which the next chunk goes on after
        rows = await _rows_of(context, cards)
        outcome = await _run_chunk(context, job, as_of, rows, look_up=look_up, opening=queued)
        chunk = Chunk(after, cards[-1], len(cards), outcome.changed, outcome.postings)
        outcomes = outcome.outcomes

        async def close_rows(cursor: Any) -> None:
            await opening_balances.mark(cursor, outcomes)

        return chunk, close_rows
    if reader is not None:  # the scorecards: reads one chunk ahead
        reads = await reader.after(after)
        return await scorecards.count_chunk(context, as_of, after, reads) if reads.rows else None
    rows = await runs.accounts_after(after, size)
    if not rows:
        return None
    outcome = await _run_chunk(context, job, as_of, rows, look_up=look_up)
    return Chunk(after, rows[-1][0], len(rows), outcome.changed, outcome.postings), None


async def _rows_of(context: JobContext, accounts: Sequence[str]) -> list[tuple[str, int, bytes]]:
    """The stored states of ``accounts`` (id, version, state), in the order given; an account
    without a state yet starts from an empty one (version 0)."""
    loaded = await context.store.load_encoded(list(accounts))
    return [
        (account, *loaded[account])
        if account in loaded
        else (account, 0, codec.encode_state(AccountState(account), 0))
        for account in accounts
    ]


async def apply(
    context: JobContext, job: Job, as_of: int, accounts: Sequence[str]
) -> tuple[int, int]:
    """Run ``job`` as of ``as_of`` on ``accounts`` alone, now, for an event such as a card's
    registration: committed as a chunk of a run is (once per account and day under the
    job's request ids), but no run is recorded. An account without a state yet starts from
    an empty one. (accounts changed, postings written)."""
    outcome = await _run_chunk(context, job, as_of, await _rows_of(context, sorted(set(accounts))))
    return outcome.changed, outcome.postings


async def _run_chunk(
    context: JobContext,
    job: Job,
    as_of: int,
    rows: list[tuple[str, int, bytes]],
    *,
    look_up: bool = False,
    opening: Mapping[str, Queued] | None = None,
) -> _ChunkOutcome:
    """Evaluate and commit one chunk (``opening``: post these cards' opening balances). An
    account an earlier attempt of the run committed (looked up first with ``look_up``, or
    found by the commit) counts as changed, and is not evaluated again."""
    read = {account: (version, blob) for account, version, blob in rows}
    name = run_id(job, as_of)
    done_before: set[str] = set()  # accounts an earlier attempt of the run changed
    if look_up:
        found = await context.store.seen([(account, f"{name}:{account}") for account in read])
        done_before.update(account for account, _ in found)
    for _ in range(JOB_CONFLICT_RETRIES_MAX + 1):
        evaluated = await _evaluate(
            context.programs, job, as_of, name, read, done_before, opening or {}
        )
        outcome = (
            await context.store.commit(evaluated.batch)
            if evaluated.batch.accounts
            else CommitOutcome(True)
        )
        if outcome.committed:
            await _committed(context, job, evaluated, outcome)
            changed = len(evaluated.batch.accounts) + len(done_before)
            outcomes = {**evaluated.outcomes, **dict.fromkeys(done_before, POSTED)}
            return _ChunkOutcome(changed, len(evaluated.batch.postings), outcomes)
        done_before.update(_account_of(request_id) for request_id in outcome.replayed)
        if outcome.conflicts:
            metrics.CONCURRENCY_RETRIES.inc()
            read.update(await context.store.load_encoded(list(outcome.conflicts)))
    raise RuntimeError(
        f"job {job.name}: live transactions kept changing the accounts of a chunk "
        f"({JOB_CONFLICT_RETRIES_MAX} tries); the next start goes on from it"
    )


POSTED: Final = "posted"
"""A queued opening balance's outcome when its card's balances were posted."""


@dataclass(frozen=True, slots=True)
class _ChunkOutcome:
    changed: int  # accounts the run changed, by this attempt or an earlier one
    postings: int  # ledger rows written now
    outcomes: dict[str, str]  # opening balances: card -> POSTED or "declined REASON: why"


@dataclass(slots=True)
class _Evaluated:
    batch: CommitBatch
    results: list[tuple[Result, CompiledProgram]]
    states: dict[str, AccountState]
    unchanged: int  # evaluated and left as they were
    skipped: int  # no active program serves the card
    outcomes: dict[str, str] = field(default_factory=dict)
    reminders: list[Event] = field(default_factory=list)  # changed or not (job.reminders)


async def _evaluate(
    programs: Programs,
    job: Job,
    as_of: int,
    name: str,
    read: Mapping[str, tuple[int, bytes]],
    done_before: set[str],
    opening: Mapping[str, Queued],
) -> _Evaluated:
    """The chunk's changed accounts, ready to commit; unchanged ones are left out. The
    event loop is let go every JOB_SLICE_ACCOUNTS accounts, so the server's batches go on."""
    evaluated = _Evaluated(CommitBatch(), [], {}, 0, 0)
    pending = [(account, blob) for account, (_, blob) in read.items() if account not in done_before]
    for start in range(0, len(pending), JOB_SLICE_ACCOUNTS):
        if start:
            await asyncio.sleep(0)
        accounts = pending[start : start + JOB_SLICE_ACCOUNTS]
        if opening:
            _open_slice(programs, as_of, name, read, accounts, opening, evaluated)
        else:
            _evaluate_slice(programs, job, as_of, name, read, accounts, evaluated)
    return evaluated


def _evaluate_slice(
    programs: Programs,
    job: Job,
    as_of: int,
    name: str,
    read: Mapping[str, tuple[int, bytes]],
    accounts: list[tuple[str, bytes]],
    evaluated: _Evaluated,
) -> None:
    """Evaluate ``accounts`` and add the changed ones to ``evaluated``.

    Each state is decoded for the engine to change in place (a copy would cost more than
    the rest of the job), and encoded after: bytes equal to those read tell it unchanged
    (the encoding is canonical; encoding costs less than decoding again). A state stored by
    an older layout reads as changed once, and is written in this one.
    """
    by_program: dict[int, tuple[CompiledProgram, dict[str, AccountState]]] = {}
    for account, blob in accounts:
        try:
            program = programs.for_card(account)
        except NotFoundError:
            evaluated.skipped += 1  # no active program serves the card: nothing runs on it
            continue
        by_program.setdefault(id(program), (program, {}))[1][account] = codec.decode_state(
            blob, account
        )
    for program, states in by_program.values():
        outcome = run_job(program, states, as_of, name, job.steps, in_place=True)
        for result in outcome.results:
            account = result.account
            new = outcome.accounts[account]
            if job.reminders is not None:
                evaluated.reminders.extend(job.reminders(new, as_of))
            if codec.encode_state(new) == read[account][1]:
                evaluated.unchanged += 1
                continue
            _changed(evaluated, result, program, new, read[account][0], as_of)


def _open_slice(
    programs: Programs,
    as_of: int,
    name: str,
    read: Mapping[str, tuple[int, bytes]],
    accounts: list[tuple[str, bytes]],
    opening: Mapping[str, Queued],
    evaluated: _Evaluated,
) -> None:
    """Post the opening balances of ``accounts``; a card declined is left as it was, and
    its outcome says why, as does one the engine failed on (logged). A card no active
    program serves is passed over (its row stays queued for a later run)."""
    for account, blob in accounts:
        try:
            program = programs.for_card(account)
        except NotFoundError:
            evaluated.skipped += 1
            continue
        queued = opening[account]
        state = codec.decode_state(blob, account)
        # The card's status is the catalog's, as a transaction's is (the pipeline's
        # _apply_card_records): a card deactivated since its import is declined.
        status = queued.card_status
        state.status = (
            "active" if status == "active" else ("expired" if status == "expired" else "inactive")
        )
        request_id = f"{name}:{account}"
        try:
            result, new = open_balances(
                program, state, queued.balances, request_id, as_of, in_place=True
            )
        except Exception as error:  # one card's fault must not hold the queue behind it
            log.exception("job opening-balances: card %s failed", mask_card(account))
            evaluated.outcomes[account] = f"failed {type(error).__name__}: {error}"[:500]
            evaluated.unchanged += 1
            continue
        if result.status == "declined":
            why = result.trace[0].reason if result.trace else ""
            evaluated.outcomes[account] = f"declined {result.reason}: {why}"[:500]
            evaluated.unchanged += 1
            continue
        evaluated.outcomes[account] = POSTED
        _changed(evaluated, result, program, new, read[account][0], as_of)


def _changed(
    evaluated: _Evaluated,
    result: Result,
    program: CompiledProgram,
    new: AccountState,
    read_version: int,
    day: int,
) -> None:
    """Add an account a job changed to the chunk's commit: its state, its postings, its
    events and the idempotency row that makes the run change it once."""
    account = result.account
    evaluated.batch.accounts.append(AccountWrite(new, read_version))
    evaluated.batch.postings.extend(ledger_entries(result))
    evaluated.batch.events.extend(events_of(result, day))
    evaluated.batch.idempotency.append(
        IdempotencyRecord(account, result.id, _payload_hash(result.id), b"")
    )
    evaluated.results.append((result, program))
    evaluated.states[account] = new


async def _committed(
    context: JobContext, job: Job, evaluated: _Evaluated, outcome: CommitOutcome
) -> None:
    for outcome_name, count in (
        ("changed", len(evaluated.states)),
        ("unchanged", evaluated.unchanged),
        ("skipped", evaluated.skipped),
    ):
        if count:
            metrics.JOB_STATES.labels(job.name, outcome_name).inc(count)
    metrics.record_results(
        evaluated.results, metrics.StateHoldings(evaluated.states), transactions=False
    )
    # Reminders tell of no change of state: written after the chunk's commit, each once by
    # its key (a chunk tried again, or a run the next night, writes none twice).
    written = await EventLog(context.store).add(evaluated.reminders)
    if written and context.store.on_events_written is not None:
        context.store.on_events_written()
    if context.cache is not None and outcome.versions:
        versions, encoded = outcome.versions, outcome.encoded
        await context.cache.put_many(
            {account: (versions[account], encoded[account]) for account in versions}
        )


def _account_of(request_id: str) -> str:
    """The card of a job's request id (``job:<job>:<as-of>:<card>``)."""
    return request_id.rsplit(":", 1)[-1]


def _payload_hash(request_id: str) -> bytes:
    """What the run's idempotency row holds as its payload: the run is the payload."""
    return hashlib.blake2b(request_id.encode(), digest_size=16).digest()


def _ratio(done: int, total: int) -> float:
    return 1.0 if total <= 0 else min(1.0, done / total)


def _day(day: int) -> str:
    return calendar.format_day(day)


def _described(error: BaseException) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "stopped before it finished (its worker or the server stopped)"
    return f"{type(error).__name__}: {error}"[:500]

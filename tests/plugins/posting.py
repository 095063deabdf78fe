"""Requests evaluated by the reference engine and committed as the pipeline commits them,
straight to a Store: how job and scorecard tests make the accounts they then run over; and
a job run, and a job run's progress that dies after a commit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from processor import calendar
from processor.engine import ReferenceEngine
from processor.engine.types import AccountState, Request
from processor.flow.registry import ProgramRegistry
from processor.jobs import runner
from processor.jobs.named import job_named
from processor.store.catalog import Catalog
from processor.store.job_runs import JobRuns
from processor.store.ledger import AccountWrite, CommitBatch, Store, ledger_entries


async def registry_of(store: Store) -> ProgramRegistry:
    registry = ProgramRegistry(Catalog(store))
    await registry.refresh()
    return registry


async def post(store: Store, registry: ProgramRegistry, requests: list[Request]) -> None:
    """Evaluate ``requests`` with the reference engine and commit them, as the pipeline does."""
    cards = sorted({request.account for request in requests})
    loaded = await store.load(cards)
    program = registry.for_card(cards[0])
    states = {card: state for card, (_, state) in loaded.items()}
    outcome = ReferenceEngine().evaluate(program, states, requests)
    assert all(result.status == "approved" for result in outcome.results), outcome.results
    batch = CommitBatch(
        accounts=[
            AccountWrite(state, loaded.get(card, (0, None))[0])
            for card, state in outcome.accounts.items()
        ],
        postings=[entry for result in outcome.results for entry in ledger_entries(result)],
        receipts=list(outcome.receipts.values()),
    )
    assert (await store.commit(batch)).committed


async def state_of(store: Store, card: str) -> AccountState:
    return (await store.load([card]))[card][1]


def progress_dying_at(call: int) -> Callable[..., Awaitable[None]]:
    """A JobRuns.progress that raises ConnectionError at its ``call``-th call, as a process
    dying after a chunk's commit and before the chunk is recorded; it records the others."""
    recorded = JobRuns.progress
    calls = 0

    async def progress(self: JobRuns, *args: Any, **options: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == call:
            raise ConnectionError("the process died here")  # committed, not yet recorded
        await recorded(self, *args, **options)

    return progress


def run_job(store: Store, registry: ProgramRegistry, name: str, day: str, **options: Any) -> Any:
    """``runner.run`` of the job ``name`` as of ``day`` (YYYY-MM-DD), with the options given
    (``cache`` for its context, the rest for the run)."""
    context = runner.JobContext(store, registry, options.pop("cache", None))
    return runner.run(context, job_named(name), calendar.parse_day(day), **options)

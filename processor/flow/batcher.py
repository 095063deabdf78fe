"""Batching: requests from every connection, gathered while the pipeline is busy.

Handlers put work on a bounded queue and await its future; one flusher task takes up to
``batch_requests_max`` items and hands them to the pipeline as one batch. When no batch is
being processed, the pipeline is idle and the batch starts at once with what is queued (as
PostgreSQL's commit_delay waits only when other transactions are active): a lone caller
would otherwise wait out an interval, and pay a timer and one more sleep and wake-up of
the process, on every request. When as many batches are in flight as may be, the next one
gathers everything that arrives until one of them finishes, and starts then: the more
callers, the larger the batch, and its fixed cost (the round trips) shared by more
requests. Between the two (a batch in flight, room for another), the next batch gathers
what arrives within ``flush_interval_ms`` of its first item (BENCHMARKS.md).

Up to ``batches_in_flight_max`` batches can be processed at once, so that one batch is
evaluated while another waits for its commit's round trips and WAL flush. The default is
one: on a host where the server's own CPU is the limit, overlapping batches only makes
each batch smaller and its fixed cost more frequent (measured against 10 million
accounts at 200 requests/s: p99 81 ms with three in flight, 45 ms with one; see
BENCHMARKS.md). More pays when PostgreSQL is far away or slow and the server has cores
to spare. What keeps an
account's requests in order is the batch's *keys* (the accounts it touches, given by
``keys_of``): a batch that shares a key with a batch still in flight starts only after that
batch has finished, and batches start in arrival order, so an account's requests are
evaluated in arrival order across batches; inside a batch the engine applies them in list
order. Batches on disjoint accounts cannot conflict with each other's commits. Without
``keys_of`` every batch is taken to share keys with every other: one at a time.

A full queue is answered at once with ``OverloadedError`` (RESOURCE_EXHAUSTED) rather than
a growing heap, and an item whose gRPC deadline has passed before its batch starts is
dropped without being evaluated.

Stopping never waits forever: ``drain`` answers what is queued within its time limit, then
cancels the batches still running and answers every request left with SHUTTING_DOWN, so
a batch stuck on a dead database cannot hold a shutdown (or a test) past its grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from processor.errors import OverloadedError, UnavailableError
from processor.runtime import metrics

log = logging.getLogger(__name__)

QUEUE_DEPTH_MAX = 20_000
BATCH_REQUESTS_MAX = 1_000
FLUSH_INTERVAL_MS = 2.0
BATCHES_IN_FLIGHT_MAX = 1
_AVERAGE_WEIGHT = 0.2  # of the newest batch in the moving average of seconds per batch


PayloadT = TypeVar("PayloadT")
"""What a request carries to the batch's processing (the pipeline's Submission)."""
AnswerT = TypeVar("AnswerT")
"""What its future resolves with (the pipeline's Answer)."""


@dataclass(slots=True)
class Item(Generic[PayloadT, AnswerT]):
    """One request waiting for its batch; ``future`` receives its answer."""

    payload: PayloadT
    deadline: float | None  # time.monotonic() after which nobody waits for the answer
    future: asyncio.Future[AnswerT] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    queued_at: float = field(default_factory=time.monotonic)  # for batch_wait_seconds
    # Items submitted together (submit_many) go into one batch: all but the last of such a
    # group say that more of it follows.
    more_follow: bool = False

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


Process = Callable[[list[Item[PayloadT, AnswerT]]], Awaitable[None]]
KeysOf = Callable[[PayloadT], Iterable[str]]


class Batcher(Generic[PayloadT, AnswerT]):
    """Gathers items into batches and runs ``process`` on each, several at a time when
    their keys are disjoint."""

    def __init__(
        self,
        process: Process[PayloadT, AnswerT],
        *,
        queue_depth_max: int = QUEUE_DEPTH_MAX,
        batch_requests_max: int = BATCH_REQUESTS_MAX,
        flush_interval_ms: float = FLUSH_INTERVAL_MS,
        batches_in_flight_max: int = BATCHES_IN_FLIGHT_MAX,
        keys_of: KeysOf[PayloadT] | None = None,
    ) -> None:
        if (
            queue_depth_max < 1
            or batch_requests_max < 1
            or batches_in_flight_max < 1
            or flush_interval_ms < 0
        ):
            raise ValueError(
                "queue_depth_max, batch_requests_max and batches_in_flight_max must be >= 1,"
                " flush_interval_ms >= 0"
            )
        self._process = process
        self._queue: asyncio.Queue[Item[PayloadT, AnswerT]] = asyncio.Queue(maxsize=queue_depth_max)
        self._batch_requests_max = batch_requests_max
        self._flush_interval_seconds = flush_interval_ms / 1000
        self._task: asyncio.Task[None] | None = None
        self._in_flight_max = batches_in_flight_max if keys_of is not None else 1
        self._keys_of = keys_of
        # Each running batch's task and the keys it holds (None: it holds every key).
        self._in_flight: dict[asyncio.Task[None], frozenset[str] | None] = {}
        self._closing = False
        self.rejected_total = 0
        self.expired_total = 0
        # Seconds one batch takes, a moving average over recent batches (0 until one
        # finished): with the batches ahead, what a queued request will wait, roughly.
        self.seconds_per_batch = 0.0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    def submit(self, payload: PayloadT, deadline: float | None = None) -> asyncio.Future[AnswerT]:
        """Queue one request; its future resolves with the answer or the error."""
        return self.submit_many([payload], deadline)[0]

    def submit_many(
        self, payloads: Sequence[PayloadT], deadline: float | None = None
    ) -> list[asyncio.Future[AnswerT]]:
        """Queue requests that stand or fall together (one call's): all of them or, when the
        queue has no room for all, none (OverloadedError); they go into one batch."""
        if self._closing:
            metrics.REJECTED_SHUTTING_DOWN.inc()
            raise UnavailableError("the server is shutting down", reason="SHUTTING_DOWN")
        waiting = self._queue.qsize() + len(payloads)
        if waiting > self._queue.maxsize:
            self.rejected_total += 1
            metrics.REJECTED_QUEUE_FULL.inc()
            raise OverloadedError(
                f"no room for {len(payloads)} more requests: at most {self._queue.maxsize} "
                "may wait; retry with backoff"
            )
        # A request that would wait past its deadline behind the queue is refused now, with
        # a reason, rather than held until the deadline ends it unanswered (a flood then
        # costs the callers one quick refusal each, and the server no work on them). Only
        # behind more than one batch of others: a request the next batch takes is always
        # tried, so one slow batch can never make the estimate refuse everything after it.
        # (One already past its deadline goes on to be dropped as expired, as ever.)
        now = time.monotonic()
        batches_ahead = -(-waiting // self._batch_requests_max)
        wait = batches_ahead * self.seconds_per_batch / self._in_flight_max
        if deadline is not None and batches_ahead > 1 and now < deadline < now + wait:
            self.rejected_total += 1
            metrics.REJECTED_QUEUE_FULL.inc()
            raise OverloadedError(
                f"{waiting} requests are ahead: the call's deadline would pass before its "
                "answer; retry with backoff"
            )
        # One loop lookup and one clock reading for the whole call, not one per request.
        create_future = asyncio.get_running_loop().create_future
        items: list[Item[PayloadT, AnswerT]] = [
            Item(payload, deadline, create_future(), now) for payload in payloads
        ]
        for item in items[:-1]:
            item.more_follow = True
        for item in items:  # room was checked above, and nothing runs between the puts
            self._queue.put_nowait(item)
        return [item.future for item in items]

    def close(self) -> None:
        """Refuse new work from now on (UNAVAILABLE, reason SHUTTING_DOWN)."""
        self._closing = True

    async def drain(self, timeout_seconds: float | None = None) -> bool:
        """Refuse new work, let everything queued be processed and answered, then stop.

        With ``timeout_seconds``, what is not answered by then is given up: the batches
        still running are cancelled and every request left is answered SHUTTING_DOWN.
        The same happens when the caller is cancelled. Whether everything was answered.
        """
        self.close()
        drained = False
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._queue.join()
            drained = True
        except TimeoutError:
            log.warning(
                "the queue did not drain within %.1f s: giving up %d running batches and %d "
                "queued requests",
                timeout_seconds,
                len(self._in_flight),
                self._queue.qsize(),
            )
        finally:
            await self._stop()
        return drained

    async def _stop(self) -> None:
        """End the flusher and every batch task; answer whatever is left SHUTTING_DOWN."""
        tasks = [*([self._task] if self._task is not None else []), *self._in_flight]
        self._task = None
        for task in tasks:
            task.cancel()
        # The tasks answer their own items when cancelled (see _run and _process_batch).
        await asyncio.gather(*tasks, return_exceptions=True)
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            _give_up([item])
            self._queue.task_done()

    @property
    def in_flight(self) -> int:
        """Batches being processed now."""
        return len(self._in_flight)

    async def _run(self) -> None:
        # Items taken off the queue and not yet handed to a batch task: this task answers
        # them (and marks them done) if it is cancelled while holding them.
        batch: list[Item[PayloadT, AnswerT]] = []
        try:
            while True:
                batch = []
                await self._next_batch(batch)
                await self._start_batch(batch)
        except asyncio.CancelledError:
            _give_up(batch)
            for _ in batch:
                self._queue.task_done()
            raise

    async def _start_batch(self, batch: list[Item[PayloadT, AnswerT]]) -> None:
        """Start a batch task for the items still wanted, once its keys are free. On
        return the task owns the items (and marks them done)."""
        live = self._drop_stale(batch)
        keys = self._keys(live)
        # Waiting here, before the next batch is even formed, is what keeps batch starts
        # in arrival order: a later batch can never overtake this one on a shared key.
        blockers = [
            task
            for task, held in self._in_flight.items()
            if keys is None or held is None or not keys.isdisjoint(held)
        ]
        waited = bool(blockers) or len(self._in_flight) >= self._in_flight_max
        if blockers:
            await asyncio.wait(blockers)
        while len(self._in_flight) >= self._in_flight_max:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
        if waited:
            live = self._drop_stale(live)  # deadlines may have passed while it waited
        if not live:
            for _ in batch:
                self._queue.task_done()
            return
        task = asyncio.get_running_loop().create_task(
            self._process_batch(live, len(batch)), name="batch"
        )
        self._in_flight[task] = keys
        metrics.BATCHES_IN_FLIGHT.set(len(self._in_flight))
        task.add_done_callback(self._finished)

    def _drop_stale(self, items: list[Item[PayloadT, AnswerT]]) -> list[Item[PayloadT, AnswerT]]:
        """The items still wanted: a passed deadline or a caller gone cancels the rest."""
        live = []
        for item in items:
            if item.expired or item.future.done():
                self.expired_total += 1
                why = metrics.REJECTED_DEADLINE if item.expired else metrics.REJECTED_CANCELLED
                why.inc()
                if not item.future.done():
                    item.future.cancel()
            else:
                live.append(item)
        return live

    def _keys(self, live: list[Item[PayloadT, AnswerT]]) -> frozenset[str] | None:
        if self._keys_of is None:
            return None
        try:
            return frozenset(key for item in live for key in self._keys_of(item.payload))
        except Exception:  # a payload the key function cannot read: run it alone
            log.exception("reading a batch's keys failed; running it alone")
            return None

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        metrics.BATCHES_IN_FLIGHT.set(len(self._in_flight))

    async def _process_batch(self, live: list[Item[PayloadT, AnswerT]], taken: int) -> None:
        started = time.monotonic()
        try:
            metrics.BATCH_SIZE.observe(len(live))
            metrics.BATCH_WAIT.observe(started - live[0].queued_at)
            await self._process(live)
            took = time.monotonic() - started
            self.seconds_per_batch += (took - self.seconds_per_batch) * _AVERAGE_WEIGHT
        except Exception as error:  # the pipeline answers items itself; this is a bug
            log.exception("batch processing failed")
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
        except asyncio.CancelledError:
            _give_up(live)
            raise
        finally:
            for _ in range(taken):
                self._queue.task_done()

    async def _next_batch(self, batch: list[Item[PayloadT, AnswerT]]) -> None:
        """Take the next batch off the queue into ``batch`` (filled in place, so that a
        cancelled caller still holds what was taken)."""
        batch.append(await self._queue.get())
        # One turn of the loop first: calls that arrived with this one join it.
        await asyncio.sleep(0)
        flush_at = time.monotonic() + self._flush_interval_seconds
        # A group submitted together is never cut: the batch may pass its size to finish one
        # (its items were queued at once, so they are all there).
        while len(batch) < self._batch_requests_max or batch[-1].more_follow:
            if batch[-1].more_follow:
                batch.append(self._queue.get_nowait())
                continue
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            if not self._in_flight:
                break  # an idle pipeline: nothing is gained by waiting
            if len(self._in_flight) >= self._in_flight_max:
                # No batch could start now anyway: what arrives until one finishes joins
                # this one (cut at the interval, it would only wait beside the next).
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            remaining = flush_at - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break


def _give_up(items: Iterable[Item[PayloadT, AnswerT]]) -> None:
    """Answer SHUTTING_DOWN to the items nobody will process now. A batch cancelled during
    its commit may have been posted: the request id tells on a retry."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(
                UnavailableError(
                    "the server stopped before answering; retry with the same request id",
                    reason="SHUTTING_DOWN",
                )
            )

"""The batcher: batches on disjoint accounts overlap; a shared account keeps them in order."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest

from processor.errors import OverloadedError, UnavailableError
from processor.flow.batcher import Batcher, Item
from processor.runtime import metrics


@dataclass(frozen=True)
class Work:
    account: str
    n: int


def keys_of(work: Work) -> tuple[str, ...]:
    return (work.account,)


class Recorder:
    """A process callback that records what ran when, and can be held at will."""

    def __init__(self, *, delay: float = 0.0, jitter: float = 0.0, seed: int = 1) -> None:
        self.running = 0
        self.most_running = 0
        self.started: list[list[Work]] = []
        self.order: dict[str, list[int]] = defaultdict(list)
        self.release: asyncio.Event | None = None
        self.delay = delay
        self.jitter = jitter
        self.rng = random.Random(seed)

    async def __call__(self, items: list[Item]) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        works = [item.payload for item in items]
        self.started.append(works)
        try:
            if self.release is not None:
                await self.release.wait()
            await asyncio.sleep(self.delay + self.rng.random() * self.jitter)
            # Recorded when the batch ends, as its commit would be: overlapping batches on
            # one account would show up here out of order.
            for work in works:
                self.order[work.account].append(work.n)
            for item in items:
                item.future.set_result(item.payload.n)
        finally:
            self.running -= 1


async def wait_until(predicate, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def test_batches_on_different_accounts_are_processed_at_the_same_time() -> None:
    recorder = Recorder()
    recorder.release = asyncio.Event()
    batcher = Batcher(recorder, flush_interval_ms=0, keys_of=keys_of, batches_in_flight_max=3)
    batcher.start()
    first = batcher.submit(Work("A", 1))
    await wait_until(lambda: len(recorder.started) == 1)
    second = batcher.submit(Work("B", 1))
    await wait_until(lambda: len(recorder.started) == 2)
    assert batcher.in_flight == 2
    recorder.release.set()
    assert await first == 1 and await second == 1
    await batcher.drain()
    assert recorder.most_running == 2


async def test_a_batch_sharing_an_account_waits_for_the_one_in_flight() -> None:
    recorder = Recorder()
    recorder.release = asyncio.Event()
    batcher = Batcher(recorder, flush_interval_ms=0, keys_of=keys_of, batches_in_flight_max=3)
    batcher.start()
    first = batcher.submit(Work("A", 1))
    await wait_until(lambda: len(recorder.started) == 1)
    second = batcher.submit(Work("A", 2))
    await asyncio.sleep(0.02)
    assert len(recorder.started) == 1, "the second batch started while the first held A"
    recorder.release.set()
    assert [await first, await second] == [1, 2]
    await batcher.drain()
    assert recorder.order["A"] == [1, 2]
    assert recorder.most_running == 1


async def test_a_waiting_batch_is_not_overtaken_by_a_later_one() -> None:
    # B waits for A's batch; C arrives after B and touches nothing in flight, yet must not
    # start before B: batches start in arrival order.
    recorder = Recorder()
    recorder.release = asyncio.Event()
    batcher = Batcher(recorder, flush_interval_ms=0, keys_of=keys_of, batches_in_flight_max=3)
    batcher.start()
    futures = [batcher.submit(Work("A", 1))]
    await wait_until(lambda: len(recorder.started) == 1)
    futures.append(batcher.submit(Work("A", 2)))
    await asyncio.sleep(0.005)
    futures.append(batcher.submit(Work("C", 3)))
    await asyncio.sleep(0.02)
    assert [works[0].n for works in recorder.started] == [1]
    recorder.release.set()
    await asyncio.gather(*futures)
    await batcher.drain()
    assert [works[0].n for works in recorder.started] == [1, 2, 3]


async def test_each_accounts_requests_are_processed_in_arrival_order_under_overlap() -> None:
    recorder = Recorder(delay=0.0005, jitter=0.003, seed=7)
    batcher = Batcher(
        recorder,
        flush_interval_ms=0.5,
        batch_requests_max=7,
        keys_of=keys_of,
        batches_in_flight_max=3,
    )
    batcher.start()
    rng = random.Random(11)
    accounts = [f"card-{n}" for n in range(200)]
    sent: dict[str, list[int]] = defaultdict(list)
    futures = []
    for n in range(600):
        account = rng.choice(accounts)
        sent[account].append(n)
        futures.append(batcher.submit(Work(account, n)))
        if n % 25 == 0:
            await asyncio.sleep(0.001)
    assert await asyncio.gather(*futures) == list(range(600))
    await batcher.drain()
    assert dict(recorder.order) == dict(sent)
    assert recorder.most_running > 1, "disjoint batches never overlapped"
    assert recorder.most_running <= 3


async def test_no_more_batches_run_at_once_than_the_limit() -> None:
    recorder = Recorder()
    recorder.release = asyncio.Event()
    batcher = Batcher(recorder, flush_interval_ms=0, batches_in_flight_max=2, keys_of=keys_of)
    batcher.start()
    futures = []
    for account in "ABC":
        futures.append(batcher.submit(Work(account, 1)))
        await asyncio.sleep(0.005)
    await wait_until(lambda: len(recorder.started) == 2)
    await asyncio.sleep(0.02)
    assert len(recorder.started) == 2 and batcher.in_flight == 2
    recorder.release.set()
    await asyncio.gather(*futures)
    await batcher.drain()
    assert recorder.most_running == 2


async def test_without_a_key_function_batches_run_one_at_a_time() -> None:
    recorder = Recorder(delay=0.002)
    batcher = Batcher(recorder, flush_interval_ms=0)
    batcher.start()
    futures = []
    for n, account in enumerate("ABCDEF"):
        futures.append(batcher.submit(Work(account, n)))
        await asyncio.sleep(0.0005)
    await asyncio.gather(*futures)
    await batcher.drain()
    assert recorder.most_running == 1


async def test_a_batch_whose_keys_cannot_be_read_runs_alone() -> None:
    def broken(work: Work) -> tuple[str, ...]:
        if work.account == "bad":
            raise KeyError("no account")
        return (work.account,)

    recorder = Recorder()
    recorder.release = asyncio.Event()
    batcher = Batcher(recorder, flush_interval_ms=0, keys_of=broken, batches_in_flight_max=3)
    batcher.start()
    first = batcher.submit(Work("A", 1))
    await wait_until(lambda: len(recorder.started) == 1)
    odd = batcher.submit(Work("bad", 2))
    await asyncio.sleep(0.02)
    assert len(recorder.started) == 1
    recorder.release.set()
    assert [await first, await odd] == [1, 2]
    await batcher.drain()
    assert recorder.most_running == 1


async def test_drain_waits_for_every_batch_in_flight() -> None:
    recorder = Recorder(delay=0.02)
    batcher = Batcher(recorder, flush_interval_ms=0, keys_of=keys_of, batches_in_flight_max=3)
    batcher.start()
    futures = []
    for account in "ABC":
        futures.append(batcher.submit(Work(account, 1)))
        await asyncio.sleep(0.001)
    await batcher.drain()
    assert all(future.done() for future in futures)
    assert batcher.in_flight == 0
    assert metrics.REGISTRY.get_sample_value("loyalty_batches_in_flight") == 0


async def test_an_expired_request_is_dropped_and_the_rest_still_run() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, flush_interval_ms=5, keys_of=keys_of, batches_in_flight_max=3)
    batcher.start()
    stale = batcher.submit(Work("A", 1), deadline=0.0)  # long past on the monotonic clock
    fresh = batcher.submit(Work("B", 2))
    assert await fresh == 2
    with pytest.raises(asyncio.CancelledError):
        await stale
    await batcher.drain()
    assert batcher.expired_total == 1
    assert [work.n for works in recorder.started for work in works] == [2]


@pytest.mark.parametrize(
    "arguments",
    [
        {"batches_in_flight_max": 0},
        {"batch_requests_max": 0},
        {"queue_depth_max": 0},
        {"flush_interval_ms": -1},
    ],
)
def test_bad_limits_are_refused(arguments: dict[str, float]) -> None:
    async def process(items: list[Item]) -> None:
        return None

    with pytest.raises(ValueError, match="must be >= 1"):
        Batcher(process, **arguments)  # type: ignore[arg-type]


async def test_a_request_whose_deadline_passes_while_waiting_for_its_account_is_dropped() -> None:
    recorder = Recorder()
    recorder.release = asyncio.Event()
    batcher = Batcher(recorder, flush_interval_ms=0, keys_of=keys_of, batches_in_flight_max=3)
    batcher.start()
    first = batcher.submit(Work("A", 1))
    await wait_until(lambda: len(recorder.started) == 1)
    waiting = batcher.submit(Work("A", 2), deadline=time.monotonic() + 0.02)
    await asyncio.sleep(0.05)  # its batch is formed, held behind A's, and its deadline passes
    recorder.release.set()
    assert await first == 1
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await batcher.drain()
    assert batcher.expired_total == 1
    assert recorder.order["A"] == [1]


async def test_by_default_one_batch_runs_at_a_time() -> None:
    recorder = Recorder(delay=0.002)
    batcher = Batcher(recorder, flush_interval_ms=0, keys_of=keys_of)
    batcher.start()
    futures = []
    for n, account in enumerate("ABCDEF"):
        futures.append(batcher.submit(Work(account, n)))
        await asyncio.sleep(0.0005)
    await asyncio.gather(*futures)
    await batcher.drain()
    assert recorder.most_running == 1


async def test_a_drain_past_its_time_limit_gives_up_what_is_running_held_and_queued() -> None:
    recorder = Recorder()
    recorder.release = asyncio.Event()  # never set: a batch stuck on its commit
    batcher = Batcher(recorder, flush_interval_ms=0, keys_of=keys_of)
    batcher.start()
    running = batcher.submit(Work("A", 1))
    await wait_until(lambda: len(recorder.started) == 1)
    held = batcher.submit(Work("A", 2))  # taken into the next batch, waiting for A
    await wait_until(lambda: batcher.depth == 0)
    queued = [batcher.submit(Work("B", n)) for n in range(3)]

    assert await batcher.drain(timeout_seconds=0.05) is False

    for future in [running, held, *queued]:
        with pytest.raises(UnavailableError) as refused:
            await future
        assert refused.value.reason == "SHUTTING_DOWN"
    assert batcher.in_flight == 0 and batcher.depth == 0
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []
    with pytest.raises(UnavailableError):
        batcher.submit(Work("C", 1))


async def test_a_drain_within_its_time_limit_answers_everything() -> None:
    batcher = Batcher(Recorder(), flush_interval_ms=0, keys_of=keys_of)
    batcher.start()
    futures = [batcher.submit(Work("A", n)) for n in range(5)]
    assert await batcher.drain(timeout_seconds=60) is True
    assert [future.result() for future in futures] == list(range(5))


async def test_requests_submitted_together_are_queued_whole_or_refused_whole() -> None:
    recorder = Recorder()
    recorder.release = asyncio.Event()
    batcher = Batcher(recorder, flush_interval_ms=0, queue_depth_max=4, keys_of=keys_of)
    with pytest.raises(OverloadedError):
        batcher.submit_many([Work("A", n) for n in range(5)])
    assert batcher.depth == 0 and batcher.rejected_total == 1
    futures = batcher.submit_many([Work("A", n) for n in range(4)])
    assert batcher.depth == 4
    recorder.release.set()
    batcher.start()
    assert await asyncio.gather(*futures) == [0, 1, 2, 3]
    await batcher.drain()


async def test_requests_submitted_together_share_one_batch_past_its_size() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, flush_interval_ms=0, batch_requests_max=3, keys_of=keys_of)
    alone = batcher.submit(Work("A", 0))
    together = batcher.submit_many([Work(f"B{n}", n) for n in range(5)])
    after = batcher.submit(Work("C", 9))
    batcher.start()
    await asyncio.gather(alone, *together, after)
    await batcher.drain()
    # The first batch takes the lone request and then the whole group, past its size of 3.
    assert [[work.n for work in works] for works in recorder.started] == [[0, 0, 1, 2, 3, 4], [9]]


async def test_a_request_that_would_wait_past_its_deadline_is_refused_at_once() -> None:
    batcher = Batcher(Recorder(), flush_interval_ms=0, batch_requests_max=2, keys_of=keys_of)
    for n in range(10):
        batcher.submit(Work("A", n))  # queued, the batcher not started: 5 batches ahead
    # As measured over earlier batches: half a second per batch.
    batcher.seconds_per_batch = 0.5
    with pytest.raises(OverloadedError, match="deadline would pass"):
        batcher.submit(Work("B", 1), deadline=time.monotonic() + 1.0)
    assert batcher.depth == 10 and batcher.rejected_total == 1
    # A deadline the queue ahead leaves room for, or none, is taken.
    batcher.submit(Work("B", 2), deadline=time.monotonic() + 3600)
    batcher.submit(Work("B", 3))
    batcher.start()
    await batcher.drain()


async def test_a_request_the_next_batch_takes_is_tried_however_slow_batches_were() -> None:
    # One very slow batch must not make every later request look late: with nothing ahead
    # but what the next batch takes, a request is always tried (and the estimate updated).
    batcher = Batcher(Recorder(), flush_interval_ms=0, batch_requests_max=2, keys_of=keys_of)
    batcher.seconds_per_batch = 100.0
    batcher.start()
    future = batcher.submit(Work("A", 1), deadline=time.monotonic() + 60)
    assert await future == 1
    await batcher.drain()
    assert batcher.seconds_per_batch < 100.0


async def test_the_time_per_batch_is_learned_from_finished_batches() -> None:
    batcher = Batcher(Recorder(delay=0.01), flush_interval_ms=0, keys_of=keys_of)
    batcher.start()
    await asyncio.gather(*(batcher.submit(Work("A", n)) for n in range(3)))
    await batcher.drain()
    assert batcher.seconds_per_batch > 0


async def turns(count: int = 20) -> None:
    """Let the event loop run ``count`` times: no clock involved."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_an_idle_pipeline_takes_a_lone_request_without_waiting_the_flush_interval() -> None:
    recorder = Recorder()
    # An hour's interval: had the batcher waited it out, the batch would not start.
    batcher = Batcher(recorder, flush_interval_ms=3_600_000, keys_of=keys_of)
    batcher.start()
    future = batcher.submit(Work("A", 1))
    await turns()
    assert recorder.started == [[Work("A", 1)]]
    assert await future == 1
    await batcher.drain()


async def test_while_a_batch_runs_the_next_one_gathers_what_arrives_meanwhile() -> None:
    recorder = Recorder()
    recorder.release = asyncio.Event()
    batcher = Batcher(
        recorder, flush_interval_ms=3_600_000, batch_requests_max=2, keys_of=keys_of,
        batches_in_flight_max=2,
    )  # fmt: skip
    batcher.start()
    futures = [batcher.submit(Work("A", 1))]
    await turns()
    futures.append(batcher.submit(Work("B", 2)))
    await turns()
    # B waits for company: A's batch is still running.
    assert recorder.started == [[Work("A", 1)]]
    futures.append(batcher.submit(Work("C", 3)))
    await turns()
    assert recorder.started == [[Work("A", 1)], [Work("B", 2), Work("C", 3)]]
    recorder.release.set()
    assert await asyncio.gather(*futures) == [1, 2, 3]
    await batcher.drain()


async def test_with_no_room_in_flight_the_next_batch_gathers_until_a_batch_finishes() -> None:
    recorder = Recorder()
    recorder.release = asyncio.Event()
    # No interval at all: the batch is still not cut while it could not start anyway.
    batcher = Batcher(recorder, flush_interval_ms=0, keys_of=keys_of)
    batcher.start()
    futures = [batcher.submit(Work("A", 1))]
    await turns()
    for n, account in enumerate("BCD", start=2):
        futures.append(batcher.submit(Work(account, n)))
        await turns()
    assert recorder.started == [[Work("A", 1)]]
    recorder.release.set()
    assert await asyncio.gather(*futures) == [1, 2, 3, 4]
    assert recorder.started == [[Work("A", 1)], [Work("B", 2), Work("C", 3), Work("D", 4)]]
    await batcher.drain()

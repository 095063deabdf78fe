"""Graceful shutdown: SIGTERM a serving ``loyalty serve`` in the middle of a stream of
purchases. Health turns NOT_SERVING first, every purchase the client saw answered is in
the ledger, and the process exits 0. And an in-process stop that nothing can hold: a stuck
batch or a backed-up stream is given up at the end of the grace period, no task outlives the
stop, and a test that fails inside a served server leaves the suite running."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from plugins.server import keyed
from test_metrics import (
    DEMO_CARDS,
    channels,
    demo_cards,
    in_process_server,
    purchase,
    serve_process,
    transaction,
)

from processor import proto
from processor.flow.batcher import Batcher
from processor.flow.pipeline import Pipeline
from processor.runtime.settings import Settings
from processor.service.server import cancel_all, start
from processor.service.transactions import STREAM_IN_FLIGHT_MAX
from processor.tools.demo import DEMO_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 8
TRAFFIC_BEFORE_SIGTERM_SECONDS = 1.0
CALL_TIMEOUT_SECONDS = 10.0
GRACE_SECONDS = 5.0


async def watch_health(address: str, seen: list[tuple[float, int]]) -> None:
    """Record (time, status) of the server's health updates until NOT_SERVING, then hang up
    (as a load balancer would: an open stream would hold the stop for the whole grace)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with contextlib.suppress(grpc.aio.AioRpcError):  # the server went away
            async for update in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                seen.append((time.monotonic(), update.status))
                if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    return


async def purchases(
    stub: Any, accounts: list[str], client: int, acked: dict[str, str], refused: list[float]
) -> None:
    """Purchases one after another until the server refuses them."""
    index = 0
    while True:
        account = accounts[(client + index * CLIENTS) % len(accounts)]
        request_id = f"stop-{client}-{index}"
        try:
            await stub.PostTransaction(purchase(account, request_id), timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            assert error.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
            ), f"{request_id}: {error.code()} {error.details()}"
            refused.append(time.monotonic())
            return
        acked[request_id] = account
        index += 1


def test_sigterm_drains_in_flight_purchases_and_exits_0(
    fresh_schema_url: str, redis_url: str, tmp_path: Path
) -> None:
    grace = {"LOYALTY_GRACE_SECONDS": str(GRACE_SECONDS)}
    with serve_process(fresh_schema_url, redis_url, tmp_path / "data", env=grace) as server:
        accounts = demo_cards(server.first_card, DEMO_CARDS)
        acked: dict[str, str] = {}
        refused: list[float] = []
        health: list[tuple[float, int]] = []

        async def scenario() -> float:
            opened = channels(server.listen, CLIENTS)
            processor_key = DEMO_KEYS["Processor"]
            stubs = [
                keyed(proto.transactions_grpc.TransactionServiceStub, c, processor_key)
                for c in opened
            ]
            watcher = asyncio.create_task(watch_health(server.listen, health))
            clients = [
                asyncio.create_task(purchases(stubs[n], accounts, n, acked, refused))
                for n in range(CLIENTS)
            ]
            await asyncio.sleep(TRAFFIC_BEFORE_SIGTERM_SECONDS)
            assert not refused and acked, "the purchases should flow before the SIGTERM"
            signalled = time.monotonic()
            await asyncio.to_thread(server.process.send_signal, 15)
            await asyncio.wait_for(asyncio.gather(*clients), 30)
            await asyncio.wait_for(watcher, 30)
            for channel in opened:
                await channel.close()
            return signalled

        signalled = asyncio.run(scenario())
        code = server.terminate()

    assert code == 0, server.log()
    assert "shutting down: draining in-flight requests" in server.log()
    # Health: SERVING, then NOT_SERVING after the SIGTERM (the server turns it before it
    # refuses a call; two client connections cannot time that order, so it is not asserted).
    statuses = [status for _, status in health]
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert statuses[0] == serving and not_serving in statuses, statuses
    turned = next(at for at, status in health if status == not_serving)
    assert turned >= signalled
    assert len(refused) == CLIENTS

    # Every purchase answered to the client is committed: idempotency and ledger rows.
    with psycopg.connect(fresh_schema_url) as connection:
        posted = {
            request_id
            for (request_id,) in connection.execute(
                "SELECT request_id FROM idempotency WHERE request_id LIKE 'stop-%'"
            )
        }
        in_ledger = {
            request_id
            for (request_id,) in connection.execute(
                "SELECT DISTINCT request_id FROM ledger WHERE request_id LIKE 'stop-%'"
            )
        }
    assert len(acked) > CLIENTS
    print(f"{len(acked)} purchases acknowledged, {len(refused)} refused after SIGTERM")
    assert set(acked) <= posted, sorted(set(acked) - posted)[:5]
    assert set(acked) <= in_ledger, sorted(set(acked) - in_ledger)[:5]


# --------------------------------------------------------------------------- in-process stop


async def test_a_stop_ends_every_task_with_a_batch_stuck_and_a_stream_backed_up(
    schema_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure inside a served test stops the server within its grace period and leaves
    no task of the server running, even with a batch that never finishes and a stream whose
    reader is blocked on a full queue of answers."""

    async def stuck(self: Pipeline, items: list[Any]) -> None:
        await asyncio.Event().wait()  # a commit that never returns

    submitted = 0
    submit = Batcher.submit

    def counting(self: Batcher, *args: Any, **kwargs: Any) -> Any:
        nonlocal submitted
        submitted += 1
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "process", stuck)
    monkeypatch.setattr(Batcher, "submit", counting)
    backed_up = STREAM_IN_FLIGHT_MAX + 1  # the stream's reader then waits for room
    with pytest.raises(AssertionError, match="deliberately"):
        async with in_process_server(schema_url, redis_url, grace_seconds=1.0) as served:
            stub = keyed(proto.transactions_grpc.TransactionServiceStub, served.channel, served.key)
            cards = served.cards

            async def requests() -> Any:
                for index in range(backed_up + 10):
                    yield proto.transactions.StreamTransactionsRequest(
                        transaction=transaction(cards[index % len(cards)], f"backed-{index}")
                    )

            stream = stub.StreamTransactions(requests(), timeout=60)
            waiting = asyncio.ensure_future(stream.read())
            while submitted < backed_up:
                await asyncio.sleep(0.01)
            assert served.running.batcher.in_flight == 0, "deliberately failed"
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert left == []


def test_a_test_failing_inside_a_served_server_lets_the_next_test_run(
    pytester: pytest.Pytester,
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        timeout = 120
        markers =
            slow: slow
            integration: integration
        """
    )
    pytester.makeconftest('pytest_plugins = ["plugins.postgres", "plugins.redis"]')
    pytester.makepyfile(
        test_inner="""
        from test_metrics import in_process_server, purchase
        from plugins.server import keyed
        from processor import proto

        async def test_fails_inside(schema_url, redis_url):
            async with in_process_server(schema_url, redis_url) as served:
                stub = keyed(
                proto.transactions_grpc.TransactionServiceStub, served.channel, served.key
            )
                await stub.PostTransaction(purchase(served.cards[0], "inner-1"), timeout=30)
                assert served.running.batcher.depth == -1, "deliberately failed"

        def test_runs_next():
            pass
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))
    monkeypatch.setenv("LOYALTY_DATABASE_URL", database_url)
    monkeypatch.setenv("LOYALTY_REDIS_URL", redis_url)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*deliberately failed*"])


async def test_a_start_that_fails_leaves_no_task_or_pool_behind(
    schema_url: str, redis_url: str
) -> None:
    # Not an address of this host; plaintext allowed, so that the bind is what fails.
    settings = Settings(listen="192.0.2.1:1", metrics_listen="", plaintext_allowed=True)
    with pytest.raises(OSError, match=r"cannot listen on 192\.0\.2\.1:1"):
        await start(settings, schema_url, redis_url)
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []


async def test_a_task_that_outlives_its_cancel_is_logged_and_left_behind_so_the_stop_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3_600)
        except asyncio.CancelledError:
            await released.wait()  # a bug: it swallows its cancel and waits on

    async def obedient() -> None:
        await asyncio.sleep(3_600)

    tasks = [
        asyncio.get_running_loop().create_task(stubborn(), name="stubborn"),
        asyncio.get_running_loop().create_task(obedient(), name="obedient"),
    ]
    await asyncio.sleep(0)
    await cancel_all(tasks, wait_seconds=0.2)
    assert tasks[1].cancelled() and not tasks[0].done()
    left = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(left) == 1 and "task stubborn did not end" in left[0]
    assert "released.wait()" in left[0]  # where it waits
    released.set()
    await tasks[0]

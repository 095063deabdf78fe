"""End to end: ``python -m processor.cli serve`` as a real process, driven over gRPC.

The demo program is loaded into the test's own schema in-process, then the server is
started as a subprocess on a free port against that schema (``--database-url`` carries
the schema's ``search_path`` option) and the session's Redis under a key prefix of its own
(``LOYALTY_CACHE_KEY_PREFIX``). The tests prove, against the process a deployment runs:

- it reports SERVING through gRPC health checking and lists its services by reflection;
- SIGTERM in the middle of a stream drains: the process exits cleanly and every
  transaction whose answer the client received is in the ledger;
- kill -9 in the middle of a stream loses no acknowledged transaction, and after a
  restart a client retrying every request it sent gets each one posted exactly once;
- two server processes posting 1,000 transactions each to one card end at the exact sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import psycopg
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from plugins.server import flush_prefix, key_with_every_role, keyed, line, transaction

from processor import proto
from processor.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS_MAX = 60.0
EXIT_SECONDS_MAX = 30.0
GRACE_SECONDS = "1"
TEST_PIN_KEY = "end-to-end test PIN key, not a secret: 32+ chars"
APPROVED = proto.common.RESULT_STATUS_APPROVED
POINTS = "points:points"
ESCROW = "escrow:points"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """One ``loyalty serve`` process and the log it writes."""

    process: subprocess.Popen[bytes]
    address: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    async def wait_serving(self) -> None:
        """Until gRPC health says SERVING; fails with the server's log if it never does."""
        deadline = time.monotonic() + STARTUP_SECONDS_MAX
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    pytest.fail(
                        f"the server exited with {self.process.returncode}:\n{self.output()}"
                    )
                with contextlib.suppress(grpc.aio.AioRpcError):
                    answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if time.monotonic() > deadline:
                    pytest.fail(f"the server never reported SERVING:\n{self.output()}")
                await asyncio.sleep(0.1)

    async def wait_exit(self) -> int:
        deadline = time.monotonic() + EXIT_SECONDS_MAX
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not exit:\n{self.output()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(EXIT_SECONDS_MAX)


@dataclass
class Deployment:
    """The test's schema and Redis prefix, and a way to start servers on them."""

    schema_url: str
    redis_url: str
    prefix: str
    cards: list[str]
    logs: Path
    started: list[ServerProcess]
    key: str  # an API key with every role

    def start(self) -> ServerProcess:
        port = free_port()
        log = self.logs / f"server-{len(self.started)}.log"
        env = {
            **os.environ,
            "LOYALTY_CACHE_KEY_PREFIX": self.prefix,
            "LOYALTY_GRACE_SECONDS": GRACE_SECONDS,
            "LOYALTY_FLUSH_INTERVAL_MS": "1",
            # Outside the demo the server requires a PIN key of its own.
            "LOYALTY_PIN_KEY": TEST_PIN_KEY,
        }
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "processor.cli", "serve",
                    "--database-url", self.schema_url,
                    "--redis-url", self.redis_url,
                    "--listen", f"127.0.0.1:{port}",
                    "--metrics-listen", f"127.0.0.1:{free_port()}",
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = ServerProcess(process, f"127.0.0.1:{port}", log)
        self.started.append(server)
        return server


@pytest_asyncio.fixture
async def deployment(
    schema_url: str, redis_url: str, cards: list[str], tmp_path: Path
) -> AsyncIterator[Deployment]:
    # `cards` loads the demo program into the schema, in-process, before any server starts.
    cache_prefix = f"e2e-{uuid.uuid4().hex[:12]}:"
    key = await key_with_every_role(schema_url)
    deployed = Deployment(schema_url, redis_url, cache_prefix, cards, tmp_path, [], key)
    try:
        yield deployed
    finally:
        for server in deployed.started:
            server.stop()
        with contextlib.suppress(Exception):
            await flush_prefix(redis_url, cache_prefix)


def ledger_request_ids(schema_url: str, card: str) -> dict[str, int]:
    """Base-rule ledger rows per request id on one card: 1 for each $1.00 purchase posted
    (a purchase that also issued a coupon has a second row, for the coupon's cost)."""
    with psycopg.connect(schema_url) as connection:
        rows = connection.execute(
            "SELECT request_id, count(*) FROM ledger WHERE account_id = %s AND rule = 'base'"
            " GROUP BY request_id",
            (card,),
        ).fetchall()
    return {request_id: count for request_id, count in rows}


class Stream:
    """One StreamTransactions call sending $1.00 purchases to one card as fast as the
    server takes them; it records what it sent and what was acknowledged."""

    def __init__(
        self, channel: grpc.aio.Channel, card: str, prefix: str, count: int, key: str
    ) -> None:
        self.card, self.prefix, self.count = card, prefix, count
        self.sent: list[str] = []
        self.acknowledged: list[Any] = []
        self.error: grpc.aio.AioRpcError | None = None
        self._stub = keyed(proto.transactions_grpc.TransactionServiceStub, channel, key)

    async def _messages(self) -> AsyncIterator[Any]:
        for number in range(self.count):
            request_id = f"{self.prefix}-{number}"
            self.sent.append(request_id)
            yield proto.transactions.StreamTransactionsRequest(
                transaction=transaction(self.card, request_id, lines=[line(1, 100)])
            )
            if number % 20 == 19:
                await asyncio.sleep(0.002)  # a steady client, not one burst

    async def run(self) -> Stream:
        call = self._stub.StreamTransactions(self._messages(), timeout=60)
        try:
            async for response in call:
                self.acknowledged.append(response.result)
        except grpc.aio.AioRpcError as error:
            self.error = error
        return self


def retryable(error: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE, as the server ends a stream it cannot go on with; or grpc's own INTERNAL
    when the client's next message met a stream the server had just ended that way (grpc
    Python reports its failed send, "Failed execute_batch" of a SendMessageOperation, in
    place of the server's status). Either way the ids are sent again, and posted once."""
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    debug = error.debug_error_string() or ""
    return error.code() == grpc.StatusCode.INTERNAL and "SendMessageOperation" in debug


async def wait_for(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- one process


async def test_a_served_process_is_healthy_reflects_and_drains_on_sigterm(
    deployment: Deployment, store: Store
) -> None:
    server = deployment.start()
    await server.wait_serving()
    card = deployment.cards[5]

    async with grpc.aio.insecure_channel(server.address) as channel:
        # Every service is SERVING by name, and reflection lists them all.
        health = health_pb2_grpc.HealthStub(channel)
        for name in proto.SERVICE_NAMES:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[Any]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        (listing,) = [answer async for answer in reflection.ServerReflectionInfo(ask(), timeout=5)]
        names = {service.name for service in listing.list_services_response.service}
        assert names >= {
            "loyalty.v1.TransactionService",
            "loyalty.v1.TenderService",
            "loyalty.v1.AwardService",
            "loyalty.v1.AdminService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection",
        }

        # A stream, answered in order.
        first = await Stream(channel, card, "warm", 100, deployment.key).run()
        assert first.error is None
        assert [r.request_id for r in first.acknowledged] == first.sent
        assert [r.balances[POINTS] for r in first.acknowledged] == list(range(1, 101))

        # SIGTERM while a stream is posting: the process drains and exits cleanly.
        busy = Stream(channel, card, "term", 3_000, deployment.key)
        running = asyncio.create_task(busy.run())
        await wait_for(lambda: len(busy.acknowledged) >= 50)
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0, server.output()
        await running

    acknowledged = [r.request_id for r in busy.acknowledged]
    assert acknowledged == busy.sent[: len(acknowledged)]  # in order, none skipped
    in_ledger = ledger_request_ids(deployment.schema_url, card)
    assert set(first.sent) <= set(in_ledger)
    assert set(acknowledged) <= set(in_ledger), "an acknowledged transaction was lost"
    assert set(in_ledger) <= set(first.sent) | set(busy.sent)
    assert all(count == 1 for count in in_ledger.values())
    assert await store.reconcile() == []


async def test_kill_9_mid_stream_loses_no_acknowledged_transaction(
    deployment: Deployment, store: Store
) -> None:
    card = deployment.cards[6]
    server = deployment.start()
    await server.wait_serving()
    async with grpc.aio.insecure_channel(server.address) as channel:
        busy = Stream(channel, card, "kill", 400, deployment.key)
        running = asyncio.create_task(busy.run())
        await wait_for(lambda: len(busy.acknowledged) >= 50)
        server.process.kill()
        await server.wait_exit()
        await running
    acknowledged = {r.request_id for r in busy.acknowledged}
    in_ledger = ledger_request_ids(deployment.schema_url, card)
    assert acknowledged <= set(in_ledger), "an acknowledged transaction was lost"
    assert await store.reconcile() == []

    # Restart on the same schema and cache; the client retries everything it sent.
    restarted = deployment.start()
    await restarted.wait_serving()
    sent = [f"kill-{number}" for number in range(400)]
    async with grpc.aio.insecure_channel(restarted.address) as channel:
        retry = await Stream(channel, card, "kill", 400, deployment.key).run()
    assert retry.error is None
    assert [r.request_id for r in retry.acknowledged] == sent
    replayed = {r.request_id for r in retry.acknowledged if r.replayed}
    assert replayed == set(in_ledger)  # committed before the kill: answered as replays
    after = ledger_request_ids(deployment.schema_url, card)
    assert after == dict.fromkeys(sent, 1)  # each posted exactly once
    assert (await store.ledger_sums(card))[card, "points", "points"] == 400
    assert await store.reconcile() == []


# --------------------------------------------------------------------------- two processes

STREAM_ATTEMPTS_MAX = 5


async def test_two_server_processes_posting_to_one_card_end_at_the_exact_sum(
    deployment: Deployment, store: Store
) -> None:
    card = deployment.cards[7]
    servers = [deployment.start(), deployment.start()]
    await asyncio.gather(*(server.wait_serving() for server in servers))
    streams_per_server, per_stream = 4, 250

    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(server.address))
            for server in servers
        ]

        async def until_posted(channel: grpc.aio.Channel, prefix: str) -> dict[str, Any]:
            """One client's stream, sent again with the same ids after a retryable end, as
            the contract asks of clients (two processes racing one card may exhaust a
            batch's re-evaluations: CONCURRENT_UPDATE); the first answer of each id."""
            answered: dict[str, Any] = {}
            for _ in range(STREAM_ATTEMPTS_MAX):
                one = await Stream(channel, card, prefix, per_stream, deployment.key).run()
                for result in one.acknowledged:
                    answered.setdefault(result.request_id, result)
                if one.error is None:
                    return answered
                assert retryable(one.error), one.error
            raise AssertionError(f"{prefix}: not posted in {STREAM_ATTEMPTS_MAX} attempts")

        posted = await asyncio.gather(
            *(
                until_posted(channel, f"p{index}s{number}")
                for index, channel in enumerate(channels)
                for number in range(streams_per_server)
            )
        )

    results = [result for answered in posted for result in answered.values()]
    total = 2 * streams_per_server * per_stream
    assert len(results) == total == 2_000
    # A retried stream's ids posted before it ended are answered as replays of their first
    # answers: the same balances, so the history below holds either way.
    assert all(r.status == APPROVED for r in results)
    # 2,000 stars, one per purchase: coupon-5 at 500 and again at 1,000 (500 stars each),
    # silver -> gold at 1,000 ytd, then every star escrowed (gold): 2,000 - 1,000 = 1,000.
    history = [*range(1, 500), 0, *range(1, 500), 0, *range(1, 1001)]
    assert sorted(r.balances[POINTS] + r.balances[ESCROW] for r in results) == sorted(history)
    assert await store.ledger_sums(card) == {(card, "points", "points"): 1_000}
    assert ledger_request_ids(deployment.schema_url, card) == {r.request_id: 1 for r in results}
    assert await store.reconcile() == []

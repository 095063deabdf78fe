"""Two ``loyalty serve`` processes behind a real gRPC-aware load balancer (HAProxy).

Clients post to the same cards through the balancer, which spreads their calls over both
servers, call by call; one server is killed with SIGKILL in the middle. Clients retry what
failed with the same request id, as the contract tells them to. In the end every request
was acknowledged, each is in the ledger once, and every balance is exact: the two servers
lost no update to each other, and the kill lost nothing acknowledged.

HAProxy comes from Debian's packages (``.ci/run`` installs it); without it the test skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import psycopg
import pytest
from plugins.server import keyed
from test_metrics import (
    DEMO_CARDS,
    channels,
    demo_cards,
    free_port,
    purchase,
    sample_value,
    serve_process,
)

from processor import proto
from processor.tools.demo import DEMO_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CARDS = 10
CLIENTS = 8
PER_CLIENT = 60
KILL_AFTER = 120  # acknowledgements before one server is killed
RETRY_PAUSE_SECONDS = 0.05
# What a client meets while a server dies behind the balancer: the balancer's own refusal
# (no grpc-status: UNAVAILABLE, or UNKNOWN for some HTTP codes), a cut stream, a drain.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@contextlib.contextmanager
def haproxy(backends: list[str], directory: Path) -> Iterator[str]:
    """HAProxy balancing HTTP/2 (gRPC) calls over ``backends``; its address."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy); .ci/run installs it")
    port = free_port()
    servers = "\n".join(
        f"  server s{index} {address} proto h2 check inter 200ms fall 1 rise 2"
        for index, address in enumerate(backends)
    )
    config = directory / "haproxy.cfg"
    config.write_text(
        f"""global
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend grpc
  bind 127.0.0.1:{port} proto h2
  default_backend loyalty
backend loyalty
  balance roundrobin
{servers}
""",
        encoding="utf-8",
    )
    with (directory / "haproxy.log").open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def post_until_acknowledged(
    stub: Any, card: str, request_id: str, acknowledged: dict[str, tuple[str, int]]
) -> None:
    """One purchase, retried with its request id until a server acknowledges it."""
    while True:  # hang guard: pytest-timeout
        try:
            answer = await stub.PostTransaction(purchase(card, request_id), timeout=10)
        except grpc.aio.AioRpcError as error:
            assert error.code() in RETRYABLE, f"{request_id}: {error.code()} {error.details()}"
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
            continue
        acknowledged[request_id] = (card, answer.result.status)
        return


def test_two_servers_behind_haproxy_post_exactly_once_when_one_is_killed(
    fresh_schema_url: str, redis_url: str, tmp_path: Path
) -> None:
    shared = {"LOYALTY_CACHE_KEY_PREFIX": f"t-{uuid.uuid4().hex[:16]}:"}
    with (
        serve_process(fresh_schema_url, redis_url, tmp_path / "one", env=shared) as one,
        serve_process(fresh_schema_url, redis_url, tmp_path / "two", env=shared) as two,
        haproxy([one.listen, two.listen], tmp_path) as balancer,
    ):
        # Past the demo's first cards, which are registered to customers.
        cards = demo_cards(one.first_card, DEMO_CARDS)[10 : 10 + CARDS]
        acknowledged: dict[str, tuple[str, int]] = {}
        killed = False

        async def scenario() -> None:
            nonlocal killed
            opened = channels(balancer, CLIENTS)
            processor_key = DEMO_KEYS["Processor"]
            stubs = [
                keyed(proto.transactions_grpc.TransactionServiceStub, c, processor_key)
                for c in opened
            ]

            async def client(number: int) -> None:
                for index in range(PER_CLIENT):
                    request_id = f"lb-{number}-{index}"
                    card = cards[(number + index) % CARDS]
                    await post_until_acknowledged(stubs[number], card, request_id, acknowledged)

            async def killer() -> None:
                nonlocal killed
                while len(acknowledged) < KILL_AFTER:
                    await asyncio.sleep(0.01)
                two.process.send_signal(signal.SIGKILL)
                killed = True

            await asyncio.gather(killer(), *(client(n) for n in range(CLIENTS)))
            for channel in opened:
                await channel.close()

        asyncio.run(scenario())
        assert killed and two.process.wait(10) == -signal.SIGKILL
        # The balancer did spread the calls: the survivor answered some, not all.
        by_one = sample_value(
            one.scrape(), "grpc_server_handled_total", grpc_method="PostTransaction"
        )
        assert 0 < by_one < CLIENTS * PER_CLIENT

    total = CLIENTS * PER_CLIENT
    assert len(acknowledged) == total
    with psycopg.connect(fresh_schema_url) as connection:
        posted = connection.execute(
            "SELECT count(*) FROM idempotency WHERE request_id LIKE 'lb-%'"
        ).fetchone()
        points = dict(
            connection.execute(
                "SELECT account_id, sum(amount) FROM ledger"
                " WHERE balance = 'points' AND account_id = ANY(%s) GROUP BY account_id",
                (cards,),
            ).fetchall()
        )
    assert posted is not None and posted[0] == total  # each acknowledged id once
    # Every purchase is $10.00, 10 points, on its card: exact sums, no update lost.
    approved = proto.common.RESULT_STATUS_APPROVED
    assert {status for _, status in acknowledged.values()} == {approved}
    expected = {card: 0 for card in cards}
    for card, _ in acknowledged.values():
        expected[card] += 10
    assert points == expected

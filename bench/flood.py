"""A unary flood: N PostTransaction calls at once, each with a deadline, against loyalty serve.

What a payment processor's retry storm looks like to the server: every call sent at the same
moment over a few channels, from this process, against ``loyalty serve --demo`` started as a
second process (on the servers ``LOYALTY_DATABASE_URL`` / ``LOYALTY_REDIS_URL`` name, else
embedded ones in a temporary directory). Prints one JSON line: what the clients got, by
status (``+details`` when the refusal carried an ErrorInfo), and what the server counted
(``grpc_server_handled_total`` and ``loyalty_requests_rejected_total`` from its /metrics).

    .venv/bin/python bench/flood.py --calls 5000 --deadline-seconds 1

A server that holds under a flood answers every call OK or RESOURCE_EXHAUSTED with details,
and counts every call it was sent. ``--ceiling`` floods ``bench/ceiling.py`` (the no-op
server, a third process) the same way afterwards: what the transport and this client
manage on the same machine when the server does no work at all.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))

from credentials import metadata
from demo_server import demo_server, free_port, transaction

from processor import proto

CHANNELS = 16
DETAILS_KEY = "grpc-status-details-bin"


async def flood(address: str, accounts: list[str], calls: int, deadline: float) -> dict[str, int]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [proto.transactions_grpc.TransactionServiceStub(channel) for channel in channels]
    tag = time.time_ns()

    async def one(index: int) -> str:
        stub = stubs[index % CHANNELS]
        request = proto.transactions.PostTransactionRequest(
            transaction=transaction(accounts[index % len(accounts)], f"flood-{tag}-{index}")
        )
        try:
            await stub.PostTransaction(request, timeout=deadline, metadata=metadata())
        except grpc.aio.AioRpcError as error:
            details = DETAILS_KEY in dict(error.trailing_metadata() or ())
            return str(error.code().name) + ("+details" if details else "")
        return "OK"

    try:
        outcomes = await asyncio.gather(*(one(index) for index in range(calls)))
    finally:
        for channel in channels:
            await channel.close()
    return dict(collections.Counter(outcomes))


def server_counts(metrics_address: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total") and '"PostTransaction"' in line:
            code = line.split('grpc_code="')[1].split('"')[0]
            counts[f"handled_{code}"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("loyalty_requests_rejected_total"):
            reason = line.split('reason="')[1].split('"')[0]
            counts[f"rejected_{reason}"] = float(line.rsplit(" ", 1)[1])
    return {name: value for name, value in counts.items() if value}


def ceiling_flood(accounts: list[str], calls: int, deadline: float) -> dict[str, int]:
    """The same flood against bench/ceiling.py, started and stopped here."""
    listen = f"127.0.0.1:{free_port()}"
    ceiling = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ceiling.py")), "--listen", listen],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert ceiling.stdout is not None
        if "listening" not in ceiling.stdout.readline():
            raise RuntimeError("bench/ceiling.py did not start")
        return asyncio.run(flood(listen, accounts, calls, deadline))
    finally:
        ceiling.terminate()
        ceiling.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--deadline-seconds", type=float, default=1.0)
    parser.add_argument(
        "--ceiling", action="store_true", help="flood the no-op server too, afterwards"
    )
    args = parser.parse_args()
    with demo_server("flood") as server:
        clients = asyncio.run(
            flood(server.listen, server.accounts, args.calls, args.deadline_seconds)
        )
        figures: dict[str, Any] = {
            "calls": args.calls,
            "deadline_seconds": args.deadline_seconds,
            "clients": clients,
            "server": server_counts(server.metrics_listen),
        }
        accounts = server.accounts
    if args.ceiling:
        figures["ceiling_clients"] = ceiling_flood(accounts, args.calls, args.deadline_seconds)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

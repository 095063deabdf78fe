"""A unary flood: N PostTransaction calls at once, each with a deadline, against loyalty serve.

What a payment processor's retry storm looks like to the server: every call sent at the same
moment over a few channels, from this process, against ``loyalty serve --demo`` started as a
second process (on the servers ``LOYALTY_DATABASE_URL`` / ``LOYALTY_REDIS_URL`` name, else
embedded ones in a temporary directory). Prints one JSON line: what the clients got, by
status (``+details`` when the refusal carried an ErrorInfo), and what the server counted
(``grpc_server_handled_total`` and ``requests_rejected_total`` from its /metrics).

    .venv/bin/python bench/flood.py --calls 5000 --deadline-seconds 1

A server that holds under a flood answers every call OK or RESOURCE_EXHAUSTED with details,
and counts every call it was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from processor import proto  # noqa: E402
from processor.cards import card_number  # noqa: E402

LOYALTY = str(Path(sys.executable).with_name("loyalty"))
CHANNELS = 16
DETAILS_KEY = "grpc-status-details-bin"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def purchase(account: str, request_id: str) -> object:
    return proto.transactions.PostTransactionRequest(
        transaction=proto.transactions.Transaction(
            context=proto.common.RequestContext(
                request_id=request_id,
                account=account,
                local_time="2026-03-03T10:00:00",
                location="S002",
            ),
            purchase=proto.transactions.Purchase(
                currency="USD",
                lines=[proto.common.Line(number=1, item="ITEM-1", amount=1000, quantity=1)],
            ),
        )
    )


async def flood(address: str, accounts: list[str], calls: int, deadline: float) -> dict[str, int]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [proto.transactions_grpc.TransactionServiceStub(channel) for channel in channels]
    tag = time.time_ns()

    async def one(index: int) -> str:
        stub = stubs[index % CHANNELS]
        request = purchase(accounts[index % len(accounts)], f"flood-{tag}-{index}")
        try:
            await stub.PostTransaction(request, timeout=deadline)
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
        elif line.startswith("requests_rejected_total"):
            reason = line.split('reason="')[1].split('"')[0]
            counts[f"rejected_{reason}"] = float(line.rsplit(" ", 1)[1])
    return {name: value for name, value in counts.items() if value}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--deadline-seconds", type=float, default=1.0)
    args = parser.parse_args()
    listen, metrics_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="loyalty-flood-") as data_dir:
        environment = dict(os.environ, LOYALTY_CACHE_KEY_PREFIX=f"flood-{os.getpid()}:")
        command = [
            LOYALTY, "serve", "--demo", "--listen", listen,
            "--metrics-listen", metrics_listen, "--data-dir", data_dir,
        ]  # fmt: skip
        server = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            first = ""
            assert server.stdout is not None
            for line in server.stdout:
                if "first card " in line:
                    first = line.split("first card ")[1].split(")")[0]
                if "serving on port" in line:
                    break
            if not first:
                print("loyalty serve did not start", file=sys.stderr)
                return 2
            prefix, sequence = first[:5], int(first[5:-1])
            accounts = [card_number(prefix, sequence + n, len(first)) for n in range(2_000)]
            clients = asyncio.run(flood(listen, accounts, args.calls, args.deadline_seconds))
            figures = {
                "calls": args.calls,
                "deadline_seconds": args.deadline_seconds,
                "clients": clients,
                "server": server_counts(metrics_listen),
            }
        finally:
            server.terminate()
            server.wait(60)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

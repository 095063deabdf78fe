"""Server CPU per transaction: what a unary call and a durable batched transaction cost.

Starts ``loyalty serve --demo`` as a second process (one worker; on the servers
``LOYALTY_DATABASE_URL`` / ``LOYALTY_REDIS_URL`` name, else embedded ones in a temporary
directory) and reads its own ``process_cpu_seconds_total`` before and after each phase, a
figure the noise of a shared machine barely moves (unlike latency):

- unary: one caller posting ``PostTransaction`` in a loop;
- durable: six callers posting ``PostTransactions`` of 100 purchases each.

Prints one JSON line: ``server_cpu_us_per_request`` (unary) and ``server_cpu_us_per_txn``
(durable), with the rates the client saw.

    .venv/bin/python bench/server_cpu.py --unary 2000 --batches 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_server import demo_server, transaction

from processor import proto

DURABLE_CALLERS = 6
PER_CALL = 100


def cpu_seconds(metrics_address: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    raise RuntimeError("the server exports no process_cpu_seconds_total")


async def unary(address: str, accounts: list[str], calls: int, tag: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = proto.transactions_grpc.TransactionServiceStub(channel)
        for index in range(calls):
            request = proto.transactions.PostTransactionRequest(
                transaction=transaction(accounts[index % len(accounts)], f"u{tag}-{index}")
            )
            await stub.PostTransaction(request, timeout=30)


async def durable(address: str, accounts: list[str], batches: int, tag: str) -> None:
    channels = [grpc.aio.insecure_channel(address) for _ in range(DURABLE_CALLERS)]

    async def caller(number: int) -> None:
        stub = proto.transactions_grpc.TransactionServiceStub(channels[number])
        for batch in range(number, batches, DURABLE_CALLERS):
            request = proto.transactions.PostTransactionsRequest(
                transactions=[
                    transaction(
                        accounts[(batch * PER_CALL + index) % len(accounts)],
                        f"d{tag}-{batch}-{index}",
                    )
                    for index in range(PER_CALL)
                ]
            )
            await stub.PostTransactions(request, timeout=60)

    try:
        await asyncio.gather(*(caller(number) for number in range(DURABLE_CALLERS)))
    finally:
        for channel in channels:
            await channel.close()


def measure(metrics_address: str, run: Any, count: int) -> tuple[float, float]:
    """(server CPU µs per item, items per second) of one phase."""
    before, started = cpu_seconds(metrics_address), time.perf_counter()
    asyncio.run(run)
    elapsed, after = time.perf_counter() - started, cpu_seconds(metrics_address)
    return (after - before) / count * 1e6, count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unary", type=int, default=2_000, help="unary calls")
    parser.add_argument("--batches", type=int, default=60, help="PostTransactions calls of 100")
    args = parser.parse_args()
    with demo_server("cpu") as server:
        listen, accounts, tag = server.listen, server.accounts, str(time.time_ns())
        asyncio.run(unary(listen, accounts, 200, f"w{tag}"))  # warm-up: caches, programs
        unary_us, unary_rate = measure(
            server.metrics_listen, unary(listen, accounts, args.unary, tag), args.unary
        )
        transactions = args.batches * PER_CALL
        durable_us, durable_rate = measure(
            server.metrics_listen, durable(listen, accounts, args.batches, tag), transactions
        )
    print(
        json.dumps(
            {
                "server_cpu_us_per_request": round(unary_us, 1),
                "unary_requests_per_s": round(unary_rate, 1),
                "server_cpu_us_per_txn": round(durable_us, 1),
                "durable_txn_per_s": round(durable_rate, 1),
                "unary_calls": args.unary,
                "durable_txns": transactions,
            },
            sort_keys=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Server CPU per transaction: what a unary call and a durable batched transaction cost.

Starts ``loyalty serve --demo`` as a second process (one worker; on the servers
``LOYALTY_DATABASE_URL`` / ``LOYALTY_REDIS_URL`` name, else embedded ones in a temporary
directory) and reads its own ``process_cpu_seconds_total`` before and after each phase, a
figure the noise of a shared machine barely moves (unlike latency):

- unary: one caller posting ``PostTransaction`` in a loop;
- durable: six callers posting ``PostTransactions`` of 100 purchases each;
- unary again, eight callers at once;
- with ``--idle SECONDS``, first, the server doing nothing: its background loops' CPU.

With ``--ceiling``, the same phases run against bench/ceiling.py too (the no-op server:
gRPC, the messages and nothing else), whose CPU is read from /proc: what the transport
alone costs on this machine, the floor under the server's figures.

Prints one JSON line: ``server_cpu_us_per_request`` (unary, one caller),
``server_cpu_us_per_request_8`` (eight callers) and ``server_cpu_us_per_txn`` (durable),
with the rates the client saw (and ``server_cpu_ms_per_s_idle`` with ``--idle``); with
``--ceiling`` also ``ceiling_cpu_us_per_request``,
``ceiling_cpu_us_per_request_8`` and ``ceiling_cpu_us_per_txn``.

    .venv/bin/python bench/server_cpu.py --unary 2000 --batches 60 --ceiling
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

from credentials import metadata
from demo_server import ceiling_server, demo_server, server_usage, transaction

from processor import proto

DURABLE_CALLERS = 6
PER_CALL = 100
UNARY_CALLERS = 8
IDLE_SETTLE_SECONDS = 3.0


def cpu_seconds(metrics_address: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    raise RuntimeError("the server exports no process_cpu_seconds_total")


async def unary(address: str, accounts: list[str], calls: int, tag: str, callers: int = 1) -> None:
    """``calls`` PostTransaction calls from ``callers`` callers on one channel, each
    waiting for its answer before its next call."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = proto.transactions_grpc.TransactionServiceStub(channel)

        async def caller(first: int) -> None:
            for index in range(first, calls, callers):
                request = proto.transactions.PostTransactionRequest(
                    transaction=transaction(accounts[index % len(accounts)], f"u{tag}-{index}")
                )
                await stub.PostTransaction(request, timeout=30, metadata=metadata())

        await asyncio.gather(*(caller(first) for first in range(callers)))


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
            await stub.PostTransactions(request, timeout=60, metadata=metadata())

    try:
        await asyncio.gather(*(caller(number) for number in range(DURABLE_CALLERS)))
    finally:
        for channel in channels:
            await channel.close()


def measure(cpu: Any, run: Any, count: int) -> tuple[float, float]:
    """(CPU µs per item, items per second) of one phase, ``cpu()`` reading the CPU seconds
    used so far."""
    before, started = cpu(), time.perf_counter()
    asyncio.run(run)
    elapsed, after = time.perf_counter() - started, cpu()
    return (after - before) / count * 1e6, count / elapsed


def phases(address: str, accounts: list[str], cpu: Any, args: Any) -> dict[str, float]:
    """The three phases against the server at ``address``; its CPU read by ``cpu()``."""
    tag = str(time.time_ns())
    asyncio.run(unary(address, accounts, 200, f"w{tag}"))  # warm-up: caches, programs
    one, one_rate = measure(cpu, unary(address, accounts, args.unary, tag), args.unary)
    # Durable before the eight callers: its accounts then hold what they held in the
    # figures measured before that phase existed (every purchase adds a lot to a state).
    transactions = args.batches * PER_CALL
    durable_us, durable_rate = measure(
        cpu, durable(address, accounts, args.batches, tag), transactions
    )
    eight, eight_rate = measure(
        cpu, unary(address, accounts, args.unary, f"e{tag}", UNARY_CALLERS), args.unary
    )
    return {
        "cpu_us_per_request": round(one, 1),
        "unary_requests_per_s": round(one_rate, 1),
        "cpu_us_per_request_8": round(eight, 1),
        "unary_requests_per_s_8": round(eight_rate, 1),
        "cpu_us_per_txn": round(durable_us, 1),
        "durable_txn_per_s": round(durable_rate, 1),
    }


def ceiling_phases(accounts: list[str], args: Any) -> dict[str, float]:
    """The same phases against bench/ceiling.py, its CPU read from /proc."""
    with ceiling_server() as ceiling:
        return phases(ceiling.listen, accounts, lambda: server_usage(ceiling.pid)[0], args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unary", type=int, default=2_000, help="unary calls per phase")
    parser.add_argument("--batches", type=int, default=60, help="PostTransactions calls of 100")
    parser.add_argument(
        "--ceiling", action="store_true", help="run the phases against bench/ceiling.py too"
    )
    parser.add_argument(
        "--idle", type=float, default=0.0, help="seconds of no calls to measure first"
    )
    args = parser.parse_args()
    if args.unary <= 0 or args.batches <= 0 or args.idle < 0:
        parser.error("--unary and --batches must be positive, --idle not negative")
    idle_ms_per_s = None
    with demo_server("cpu") as server:
        metrics_address, accounts = server.metrics_listen, server.accounts
        if args.idle:
            time.sleep(IDLE_SETTLE_SECONDS)  # start-up's own work done
            before = cpu_seconds(metrics_address)
            time.sleep(args.idle)
            idle_ms_per_s = (cpu_seconds(metrics_address) - before) / args.idle * 1e3
        measured = phases(server.listen, accounts, lambda: cpu_seconds(metrics_address), args)
    figures: dict[str, Any] = {
        "server_cpu_us_per_request": measured["cpu_us_per_request"],
        "server_cpu_us_per_request_8": measured["cpu_us_per_request_8"],
        "server_cpu_us_per_txn": measured["cpu_us_per_txn"],
        "unary_requests_per_s": measured["unary_requests_per_s"],
        "unary_requests_per_s_8": measured["unary_requests_per_s_8"],
        "durable_txn_per_s": measured["durable_txn_per_s"],
        "unary_calls": args.unary,
        "durable_txns": args.batches * PER_CALL,
    }
    if idle_ms_per_s is not None:
        figures["server_cpu_ms_per_s_idle"] = round(idle_ms_per_s, 1)
    if args.ceiling:
        floor = ceiling_phases(accounts, args)
        figures.update(
            ceiling_cpu_us_per_request=floor["cpu_us_per_request"],
            ceiling_cpu_us_per_request_8=floor["cpu_us_per_request_8"],
            ceiling_cpu_us_per_txn=floor["cpu_us_per_txn"],
            ceiling_durable_txn_per_s=floor["durable_txn_per_s"],
            durable_ratio_to_ceiling=round(
                measured["durable_txn_per_s"] / floor["durable_txn_per_s"], 3
            ),
        )
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

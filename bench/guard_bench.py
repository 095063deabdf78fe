"""What the guard around every call costs: server CPU per unary call, bare and guarded.

Starts a no-op ``grpc.aio`` server (PostTransaction answering an empty response) as a
second process, once without anything around its methods, once served through
:class:`processor.service.guard.Guarded` (request id, metrics, error mapping) and once
guarded with authentication too (an API key checked and the caller's role), and sends
each the same calls from eight callers on one channel, alternating the servers
``--rounds`` times. CPU is the server process's own (/proc), a figure the noise of a shared
machine barely moves. Prints one JSON line: the median µs per call of each, and their
difference.

    .venv/bin/python bench/guard_bench.py --calls 8000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo_server import free_port, server_usage

from processor import proto

CALLERS = 8


class NoOp(proto.transactions_grpc.TransactionServiceServicer):
    async def PostTransaction(self, request: Any, context: Any) -> Any:
        return proto.transactions.PostTransactionResponse()


KEY = "lk_bench_guard-bench-key-not-secret"


class _OneKey:
    """Stands in for the key table's database: one Processor key."""

    async def keys(self, include_revoked: bool = False) -> list[Any]:
        import datetime

        from processor.store.credentials import KeyRecord, secret_hash

        made = datetime.datetime.now(datetime.UTC)
        hashed = secret_hash(KEY.split("_", 2)[2])
        return [KeyRecord("bench", "bench", ("Processor",), None, hashed, False, made, None)]


def serve(mode: str, port: int) -> None:
    from processor.service.auth import Authority, KeyTable
    from processor.service.guard import Guarded

    async def run() -> None:
        server = grpc.aio.server()
        services: Any = server
        if mode == "guarded":
            services = Guarded(server)
        elif mode == "authenticated":
            keys = KeyTable(_OneKey(), demo_allowed=False)  # type: ignore[arg-type]
            await keys.refresh()
            services = Guarded(server, Authority(keys))
        proto.transactions_grpc.add_TransactionServiceServicer_to_server(NoOp(), services)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("listening", flush=True)
        await server.wait_for_termination()

    with contextlib.suppress(ImportError):  # the event loop the server runs on
        import uvloop

        uvloop.install()
    asyncio.run(run())


async def load(port: int, calls: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = proto.transactions_grpc.TransactionServiceStub(channel)
        request = proto.transactions.PostTransactionRequest()
        metadata = (("x-api-key", KEY),)

        async def caller() -> None:
            for _ in range(calls // CALLERS):
                await stub.PostTransaction(request, timeout=10, metadata=metadata)

        await asyncio.gather(*(caller() for _ in range(CALLERS)))


def measure(mode: str, calls: int) -> float:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        if "listening" not in server.stdout.readline():
            raise RuntimeError(f"the {mode} server did not start (exit {server.wait()})")
        asyncio.run(load(port, 500))  # warm-up
        before = server_usage(server.pid)[0]
        asyncio.run(load(port, calls))
        return (server_usage(server.pid)[0] - before) / calls * 1e6
    finally:
        server.terminate()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=8_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--serve", choices=("bare", "guarded", "authenticated"), help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if args.calls < CALLERS or args.rounds < 1:
        parser.error(f"--calls must be at least {CALLERS} and --rounds positive")
    figures: dict[str, list[float]] = {"bare": [], "guarded": [], "authenticated": []}
    for _ in range(args.rounds):
        for mode in figures:
            figures[mode].append(measure(mode, args.calls))
    bare, guarded, authenticated = (statistics.median(runs) for runs in figures.values())
    print(json.dumps({
        "bare_cpu_us_per_call": round(bare, 1),
        "guarded_cpu_us_per_call": round(guarded, 1),
        "guard_cpu_us_per_call": round(guarded - bare, 1),
        "authenticated_cpu_us_per_call": round(authenticated, 1),
        "authentication_cpu_us_per_call": round(authenticated - guarded, 1),
        "runs": {mode: [round(one, 1) for one in runs] for mode, runs in figures.items()},
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

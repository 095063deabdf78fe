"""Many clients: N concurrent clients, each on a connection of its own, at an aggregate rate.

Seed 001's figure for the platform: 10,000 concurrent clients, 1,000 requests/s, a p99 of
at most 200 ms. This script holds that load against ``loyalty serve --demo`` started as a
second process (on the servers ``LOYALTY_DATABASE_URL`` / ``LOYALTY_REDIS_URL`` name, else
embedded ones in a temporary directory):

1. ``--processes`` client processes open ``--clients`` channels between them, each its own
   TCP connection (a channel of its own subchannel pool), and wait until every one is
   connected;
2. each client then posts a $10.00 ``PostTransaction`` every ``clients / rate`` seconds,
   from a random phase, for ``--seconds``, each call with ``--deadline-seconds``;
3. the server is read before the clients connect, once they are connected, every few
   seconds during the run and at its end: resident memory, descriptors and CPU seconds of
   its processes (from Linux's /proc, the forked workers of ``--server-workers``
   included), and the means of its own histograms from /metrics (call handling, batch
   size, queue wait, engine, commit).

Prints one JSON line: requests sent and answered by status, the achieved rate, latency
percentiles as the clients saw them (from the call's start to its answer), how late the
clients' own schedule ran (a client on a busy machine measures itself too), the server's
CPU per request, the means of its own histograms over the run, and its memory and
descriptors at each point.

With ``--ceiling`` the same load goes to bench/ceiling.py instead (the no-op server: gRPC
and the messages, nothing evaluated or written), for what the transport alone costs per
request with that many connections on this machine.

    .venv/bin/python bench/many_clients.py --clients 10000 --rate 1000 --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from credentials import metadata
from demo_server import DemoServer, ceiling_server, demo_server, server_usage, transaction

from processor import proto

# A channel of its own subchannel pool opens its own connection: without it, channels to
# one address in one process share a single TCP connection.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
CONNECT_AT_ONCE = 200
CONNECT_SECONDS = 120.0
SAMPLE_SECONDS = 5.0


# The server's own view of where a request's time went: sums and counts of histograms.
SERVER_HISTOGRAMS = ("batch_size", "batch_wait_seconds", "engine_seconds", "commit_seconds")
HANDLING = 'grpc_server_handling_seconds_{}{{grpc_method="PostTransaction"'


def server_gauges(server: DemoServer) -> dict[str, float]:
    cpu, rss, descriptors = server_usage(server.pid)
    gauges = {"cpu_seconds": cpu, "rss_bytes": float(rss), "open_fds": float(descriptors)}
    if not server.metrics_listen:  # the no-op server measures nothing of its own
        return gauges
    url = f"http://{server.metrics_listen}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        for histogram in SERVER_HISTOGRAMS:
            for part in ("sum", "count"):
                if name == f"loyalty_{histogram}_{part}":  # reported without the prefix
                    gauges[f"{histogram}_{part}"] = float(value)
        for part in ("sum", "count"):
            if name.startswith(HANDLING.format(part)):
                gauges[f"handling_{part}"] = float(value)
    return gauges


def server_means(first: dict[str, float], last: dict[str, float]) -> dict[str, float]:
    """Means over the run of what the server measured itself, in ms (batch size as is)."""

    def mean(name: str) -> float:
        count = last.get(f"{name}_count", 0.0) - first.get(f"{name}_count", 0.0)
        total = last.get(f"{name}_sum", 0.0) - first.get(f"{name}_sum", 0.0)
        return total / count if count else 0.0

    means = {"batch_size": round(mean("batch_size"), 1)}
    for name in ("handling", *SERVER_HISTOGRAMS[1:]):
        means[f"{name.removesuffix('_seconds')}_ms"] = round(1000 * mean(name), 2)
    return means


async def client_process(
    address: str, accounts: list[str], first: int, count: int, interval: float,
    seconds: float, deadline: float, tag: str,
) -> dict[str, Any]:  # fmt: skip
    """``count`` clients of this process: connected, then posting from the wall time that
    the parent writes to stdin once every process is connected."""
    channels = [grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in range(count)]
    stubs = [proto.transactions_grpc.TransactionServiceStub(channel) for channel in channels]
    for offset in range(0, count, CONNECT_AT_ONCE):
        batch = channels[offset : offset + CONNECT_AT_ONCE]
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in batch)), CONNECT_SECONDS)
    print("connected", flush=True)
    loop = asyncio.get_running_loop()
    start_at = float(await loop.run_in_executor(None, sys.stdin.readline))
    latencies: list[float] = []
    lateness: list[float] = []
    outcomes: collections.Counter[str] = collections.Counter()
    begin = loop.time() + max(0.0, start_at - time.time())
    end = begin + seconds

    async def one_client(index: int) -> None:
        number = first + index
        account = accounts[number % len(accounts)]
        due = begin + random.uniform(0.0, interval)
        sequence = 0
        while due < end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            started = loop.time()
            lateness.append(started - due)
            request = proto.transactions.PostTransactionRequest(
                transaction=transaction(account, f"mc-{tag}-{number}-{sequence}")
            )
            try:
                await stubs[index].PostTransaction(request, timeout=deadline, metadata=metadata())
                outcomes["OK"] += 1
                latencies.append(loop.time() - started)
            except grpc.aio.AioRpcError as error:
                outcomes[error.code().name] += 1
            sequence += 1
            due += interval

    try:
        await asyncio.gather(*(one_client(index) for index in range(count)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return {"latencies": latencies, "lateness": lateness, "outcomes": dict(outcomes)}


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def milliseconds(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * percentile(values, 0.50), 1),
        "p99_ms": round(1000 * percentile(values, 0.99), 1),
        "max_ms": round(1000 * max(values, default=0.0), 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = str(time.time_ns())
    interval = args.clients / args.rate
    serving = (
        ceiling_server()
        if args.ceiling
        else demo_server("many-clients", workers=args.server_workers)
    )
    with (
        serving as server,
        tempfile.TemporaryDirectory(prefix="many-clients-") as directory,
    ):
        results = Path(directory)
        before = server_gauges(server)
        share = -(-args.clients // args.processes)
        workers = []
        for first in range(0, args.clients, share):
            count = min(share, args.clients - first)
            worker = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(results / f"{first}.json")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert worker.stdin is not None
            plan = [server.listen, server.accounts, first, count, interval,
                    args.seconds, args.deadline_seconds, tag]  # fmt: skip
            worker.stdin.write(json.dumps(plan) + "\n")
            worker.stdin.flush()
            workers.append(worker)
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "connected":
                raise RuntimeError("a client process could not connect its clients")
        connected = server_gauges(server)
        start_at = time.time() + 1.0
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"{start_at}\n")
            worker.stdin.close()
        time.sleep(max(0.0, start_at - time.time()))
        samples = [server_gauges(server)]
        while any(worker.poll() is None for worker in workers):
            time.sleep(SAMPLE_SECONDS)
            samples.append(server_gauges(server))
        if any(worker.wait() != 0 for worker in workers):
            raise RuntimeError("a client process failed")
        outputs = [json.loads(path.read_text()) for path in sorted(results.glob("*.json"))]
        after = samples[-1]
    latencies = [value for output in outputs for value in output["latencies"]]
    lateness = [value for output in outputs for value in output["lateness"]]
    outcomes: collections.Counter[str] = collections.Counter()
    for result in outputs:
        outcomes.update(result["outcomes"])
    requests = sum(outcomes.values())
    cpu = after["cpu_seconds"] - samples[0]["cpu_seconds"]
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "offered_per_s": args.rate,
        "requests": requests,
        "answered_per_s": round(outcomes["OK"] / args.seconds, 1),
        "outcomes": dict(outcomes),
        "latency": milliseconds(latencies),
        "client_lateness": milliseconds(lateness),
        "server_cpu_us_per_request": round(1e6 * cpu / max(requests, 1)),
        "server_cpu_share": round(cpu / args.seconds, 2),
        "server_means": server_means(samples[0], after),
        "server_rss_mb": {
            "idle": round(before["rss_bytes"] / 2**20, 1),
            "connected": round(connected["rss_bytes"] / 2**20, 1),
            "peak": round(max(s["rss_bytes"] for s in samples) / 2**20, 1),
            "median": round(statistics.median(s["rss_bytes"] for s in samples) / 2**20, 1),
            "end": round(after["rss_bytes"] / 2**20, 1),
        },
        "server": "ceiling" if args.ceiling else "loyalty",
        "server_workers": args.server_workers,
        "server_open_fds": {"idle": before["open_fds"], "connected": connected["open_fds"]},
    }


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        # A client process: its plan on the first line of stdin, its figures to a file
        # (a pipe would fill and stall it before the parent reads).
        result = asyncio.run(client_process(*json.loads(sys.stdin.readline())))
        Path(sys.argv[2]).write_text(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1_000.0, help="requests/s, all clients")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--deadline-seconds", type=float, default=2.0)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--server-workers", type=int, default=1, help="loyalty serve --workers")
    parser.add_argument(
        "--ceiling", action="store_true", help="load bench/ceiling.py, the no-op server, instead"
    )
    args = parser.parse_args()
    if min(args.clients, args.rate, args.seconds, args.processes) <= 0:
        parser.error("--clients, --rate, --seconds and --processes must be positive")
    print(json.dumps(run(args), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

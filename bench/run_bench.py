"""One complete load test, short enough for ``make bench``: throughput, its ceiling, the SLA.

    .venv/bin/python bench/run_bench.py [--accounts 100000] [--durable-seconds 20]
        [--locust-seconds 60] [--users 10] [--rate 20] [--p99-ms 50] [--job NAME]

1. Servers: ``LOYALTY_DATABASE_URL`` / ``LOYALTY_REDIS_URL`` when set, else an embedded
   PostgreSQL and Valkey in a temporary data directory (removed at the end).
2. Migrations, the demo program, ``--accounts`` seeded accounts (``processor.tools.seed``,
   resumable: a second run against the same servers loads nothing), the cache warmed.
3. The transport ceiling: ``bench/ceiling.py`` started, then the durable client below run
   against it for ``--durable-seconds``.
4. ``loyalty serve`` started (metrics on), and the same client against it: asyncio gRPC
   workers posting ``PostTransactions`` batches and ``StreamTransactions`` streams of
   purchases as fast as answers come, every one of them committed before it is answered.
5. A headless locust run of ``--locust-seconds`` with till traffic (``LoyaltyUser``,
   ``--users`` users at ``--rate`` requests/s each), its CSV and HTML reports written to
   ``bench/results/``, and the SLA gate (``bench/sla.py``) over it, with the server's own
   p99 from ``/metrics``. With ``--job NAME``, that scheduled job runs again and again
   beside it (``loyalty jobs run``, in a process of its own, each run a day later from a
   year on), and the JSON line adds its runs and accounts/s.

The last line on stdout is ONE JSON object: ``e2e_txn_per_s`` (durable transactions/s of
the service), ``ceiling_txn_per_s`` (the same client against the no-op server),
``ratio``, ``server_cpu_us_per_txn`` and ``ceiling_cpu_us_per_txn`` (CPU per durable
transaction of the service and of the no-op server, from /proc),
``server_cpu_us_per_request`` (the service's CPU per request under the locust run; one
caller and eight: bench/server_cpu.py), ``p99_ms`` (locust's p99 of unary
``PostTransaction``), ``server_p99_ms``,
``unary_req_per_s``, ``sla_passed`` and the seeding figures. Progress goes to stderr. The
exit status is the SLA gate's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ceiling  # noqa: E402
import sla  # noqa: E402
from credentials import API_KEY_ENV, metadata  # noqa: E402
from demo_server import server_usage  # noqa: E402

from processor import proto  # noqa: E402
from processor.jobs.named import JOBS  # noqa: E402
from processor.runtime import serve as runtime  # noqa: E402
from processor.tools.seed import card_numbers  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
LOYALTY = str(Path(PYTHON).with_name("loyalty"))
LOCUST = str(Path(PYTHON).with_name("locust"))


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- the durable client


@dataclass
class DurableRun:
    """What the durable client got through in its window."""

    seconds: float = 0.0
    batched: int = 0
    streamed: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def txn_per_s(self) -> float:
        return (self.batched + self.streamed) / self.seconds if self.seconds else 0.0


class Workload:
    """Purchases on seeded cards with unique request ids, cheap to make: a pool of baskets
    made once, each copy given its own id and card."""

    def __init__(self, first_card: str, accounts: int, prefix: str = "60012") -> None:
        rng = random.Random(11)
        when = ceiling.local_time()
        self.pool = [ceiling.purchase(rng, first_card, "x", when) for _ in range(512)]
        self.prefix = prefix
        self.length = len(first_card)
        self.first_sequence = int(first_card[len(prefix) : -1])
        self.accounts = accounts
        self.run = uuid.uuid4().hex[:10]
        self.counter = itertools.count()
        self.rng = rng
        self.cards = card_numbers(prefix, self.first_sequence, accounts, self.length)

    def transaction(self) -> Any:
        message = proto.transactions.Transaction()
        message.CopyFrom(self.pool[self.rng.randrange(len(self.pool))])
        message.context.request_id = f"db-{self.run}-{next(self.counter)}"
        message.context.account = self.cards[self.rng.randrange(len(self.cards))]
        return message


async def durable_run(
    address: str,
    workload: Workload,
    seconds: float,
    *,
    batch_workers: int = 6,
    batch_size: int = 100,
    stream_workers: int = 2,
    stream_window: int = 200,
    channels: int = 4,
) -> DurableRun:
    """Post batches and streams of purchases for ``seconds``; count committed answers."""
    run = DurableRun()
    opened = [grpc.aio.insecure_channel(address) for _ in range(channels)]
    stubs = [proto.transactions_grpc.TransactionServiceStub(channel) for channel in opened]
    deadline = time.monotonic() + seconds

    def failed(error: grpc.RpcError) -> None:
        name = str(getattr(error.code(), "name", error.code()))
        run.errors[name] = run.errors.get(name, 0) + 1

    async def batches(stub: Any) -> None:
        while time.monotonic() < deadline:
            request = proto.transactions.PostTransactionsRequest(
                transactions=[workload.transaction() for _ in range(batch_size)]
            )
            try:
                response = await stub.PostTransactions(request, timeout=10.0, metadata=metadata())
            except grpc.RpcError as error:
                run.failed += batch_size
                failed(error)
                await asyncio.sleep(0.05)
                continue
            if time.monotonic() <= deadline:
                run.batched += len(response.results)

    async def stream(stub: Any) -> None:
        window = asyncio.Semaphore(stream_window)

        async def requests() -> Any:
            while time.monotonic() < deadline:
                await window.acquire()
                yield proto.transactions.StreamTransactionsRequest(
                    transaction=workload.transaction()
                )

        while time.monotonic() < deadline:
            call = stub.StreamTransactions(requests(), timeout=seconds + 30, metadata=metadata())
            try:
                async for _ in call:
                    window.release()
                    if time.monotonic() <= deadline:
                        run.streamed += 1
            except grpc.RpcError as error:
                failed(error)
                await asyncio.sleep(0.05)

    started = time.monotonic()
    workers = [batches(stubs[index % channels]) for index in range(batch_workers)]
    workers += [stream(stubs[(index + 1) % channels]) for index in range(stream_workers)]
    await asyncio.gather(*workers)
    run.seconds = min(time.monotonic(), deadline) - started
    for channel in opened:
        await channel.close()
    return run


# --------------------------------------------------------------------------- processes


async def wait_serving(address: str, timeout_seconds: float = 60.0) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    end = time.monotonic() + timeout_seconds
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"{address} is not serving after {timeout_seconds} s")
            await asyncio.sleep(0.2)


def per_item_us(cpu_seconds: float, items: int) -> float | None:
    """CPU microseconds per item (None when there were none)."""
    return round(cpu_seconds / items * 1e6, 1) if items else None


@contextlib.contextmanager
def process(arguments: list[str], log_path: Path, env: dict[str, str] | None = None) -> Any:
    """A child process, logged to a file, stopped with SIGTERM (then SIGKILL) on exit."""
    with open(log_path, "w", encoding="utf-8") as out:
        child = subprocess.Popen(arguments, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            yield child
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


class JobsBeside:
    """A scheduled job run again and again (``loyalty jobs run NAME``, each run as of the
    next day from a year on, so each goes through every account) in a process of its own,
    for as long as the locust phase lasts: its runs' figures, and the locust p99 beside it."""

    def __init__(self, name: str, database_url: str, redis_url: str | None) -> None:
        self.name = name
        self.command = [LOYALTY, "jobs", "run", name, "--database-url", database_url]
        if redis_url:
            self.command += ["--redis-url", redis_url]
        self.runs: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> JobsBeside:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _loop(self) -> None:
        first = datetime.date.today() + datetime.timedelta(days=365)
        for offset in itertools.count():
            if self.stopping.is_set():
                return
            as_of = (first + datetime.timedelta(days=offset)).isoformat()
            started = time.perf_counter()
            done = subprocess.run(
                [*self.command, "--as-of", as_of], capture_output=True, text=True, check=False
            )
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                log(f"job {self.name} as of {as_of} failed: {done.stderr.strip()[-500:]}")
                return
            report = json.loads(done.stdout.strip().splitlines()[-1])
            self.runs.append({**report, "seconds": round(seconds, 2)})

    def figures(self) -> dict[str, Any]:
        """The runs that finished during the locust phase (the last, cut short by its end,
        counts when it finished)."""
        accounts = sum(run["accounts_done"] for run in self.runs)
        seconds = sum(run["seconds"] for run in self.runs)
        return {
            "job": self.name,
            "job_runs": len(self.runs),
            "job_accounts_per_s": round(accounts / seconds) if seconds else None,
        }


def run_locust(
    address: str,
    prefix: Path,
    seconds: int,
    users: int,
    rate: float,
    env: dict[str, str],
    user_class: str = "LoyaltyUser",
) -> int:
    arguments = [
        LOCUST, "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", address,
        "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary",
        "--stop-timeout", "5", "--exit-code-on-error", "0", user_class,
    ]  # fmt: skip
    child_env = {**os.environ, **env}
    if rate > 0:
        child_env["BENCH_RATE"] = str(rate)
    with open(f"{prefix}.log", "w", encoding="utf-8") as out:
        return subprocess.run(
            arguments, stdout=out, stderr=subprocess.STDOUT, env=child_env, cwd=ROOT,
            timeout=seconds + 120, check=False,
        ).returncode  # fmt: skip


# --------------------------------------------------------------------------- the run


def seed_database(
    database_url: str, redis_url: str | None, accounts: int, *, warm: bool = True
) -> dict[str, Any]:
    from processor.runtime.settings import Settings
    from processor.store.migrate import migrate
    from processor.tools import seed

    settings = Settings()
    migrate(database_url)
    asyncio.run(runtime.load_demo(settings, database_url))
    report = seed.seed(database_url, accounts, progress=sys.stderr)
    figures = report.as_dict()
    if redis_url and warm:
        report.warmed, report.warm_seconds = asyncio.run(
            seed._warm_all(settings, database_url, redis_url, report, sys.stderr)
        )
        figures["warmed"] = report.warmed
        figures["warm_seconds"] = round(report.warm_seconds, 1)
    if redis_url:
        figures["redis_bytes_per_account"] = asyncio.run(
            redis_bytes_per_account(redis_url, settings.cache_key_prefix, report.first_card)
        )
    figures.update(postgres_bytes_per_account(database_url))
    return figures


async def redis_bytes_per_account(redis_url: str, key_prefix: str, first_card: str) -> float:
    """MEMORY USAGE per account of the buckets of 1,000 seeded accounts, on average."""
    from processor.cache.accounts import AccountCache

    prefix = "60012"
    cards = card_numbers(prefix, int(first_card[len(prefix) : -1]), 1_000, len(first_card))
    async with AccountCache.from_url(redis_url, key_prefix=key_prefix) as cache:
        sizes = [await cache.memory_usage_bytes(card) for card in cards]
    found = [size for size in sizes if size is not None]
    return round(sum(found) / len(found), 1) if found else 0.0


def postgres_bytes_per_account(database_url: str) -> dict[str, Any]:
    """pg_total_relation_size (heap, indexes, TOAST) of the hot tables, per account."""
    import psycopg

    tables = ("accounts", "cards", "customers", "ledger")
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("CHECKPOINT")
        accounts = connection.execute("SELECT count(*) FROM accounts").fetchone()
        sizes = {}
        for table in tables:
            row = connection.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " WHERE c.oid = %s::regclass OR c.oid IN"
                " (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
                (table, table),
            ).fetchone()
            sizes[table] = int(row[0]) if row else 0
    count = int(accounts[0]) if accounts else 0
    per = {f"pg_{table}_bytes_per_account": round(size / count, 1) for table, size in sizes.items()}
    return {
        "pg_bytes_per_account": round(sum(sizes.values()) / count, 1) if count else 0.0,
        **(per if count else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--durable-seconds", type=float, default=20.0)
    parser.add_argument("--locust-seconds", type=int, default=60)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s per user")
    parser.add_argument("--p99-ms", type=float, default=sla.P99_MS_DEFAULT)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--workers", type=int, default=1, help="loyalty serve --workers")
    parser.add_argument(
        "--job",
        choices=[name for name, job in JOBS.items() if job.walks == "accounts"],
        help="run this scheduled job again and again beside the locust phase (its figures "
        "and the locust p99 beside it)",
    )
    parser.add_argument(
        "--no-warm",
        dest="warm",
        action="store_false",
        help="leave the cache as it is (already warm from an earlier run, or meant cold)",
    )
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)

    from processor.runtime.settings import Settings

    data_dir = Path(tempfile.mkdtemp(prefix="loyalty-bench-"))
    resolved = runtime.resolve_servers(Settings(data_dir=data_dir))
    figures: dict[str, Any] = {}
    code = 2
    try:
        log(f"servers: {'embedded under ' + str(data_dir) if resolved.started else 'from env'}")
        seeding = seed_database(
            resolved.database_url, resolved.redis_url, args.accounts, warm=args.warm
        )
        log(f"seeded: {json.dumps(seeding)}")
        workload = Workload(seeding["first_card"], args.accounts)
        # The ceiling, measured with the same client.
        ceiling_port = free_port()
        with process(
            [PYTHON, str(ROOT / "bench" / "ceiling.py"), "--listen", f"127.0.0.1:{ceiling_port}"],
            args.results / "ceiling.log",
        ) as no_op:
            asyncio.run(wait_serving(f"127.0.0.1:{ceiling_port}"))
            log(f"ceiling: durable client for {args.durable_seconds:g} s")
            used = server_usage(no_op.pid)[0]
            top = asyncio.run(
                durable_run(f"127.0.0.1:{ceiling_port}", workload, args.durable_seconds)
            )
            ceiling_cpu = server_usage(no_op.pid)[0] - used
        log(f"ceiling: {top.txn_per_s:,.0f} transactions/s ({top})")
        port, metrics_port = free_port(), free_port()
        serve = [
            LOYALTY, "serve", "--listen", f"127.0.0.1:{port}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--database-url", resolved.database_url, "--workers", str(args.workers),
        ]  # fmt: skip
        if resolved.redis_url:
            serve += ["--redis-url", resolved.redis_url]
        # Outside the demo the server requires a PIN key; the seeded cards carry no PINs.
        serve_env = {**os.environ}
        serve_env.setdefault("LOYALTY_PIN_KEY", "bench PIN key, not a secret (no card has a PIN)")
        # Every call needs a credential: a Processor key of this run, for its clients.
        made = subprocess.run(
            [LOYALTY, "keys", "create", "--name", "bench", "--role", "Processor",
             "--database-url", resolved.database_url],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        os.environ[API_KEY_ENV] = made.stdout.strip()
        with process(serve, args.results / "serve.log", serve_env) as server:
            address = f"127.0.0.1:{port}"
            asyncio.run(wait_serving(address))
            log(f"service: durable client for {args.durable_seconds:g} s")
            used = server_usage(server.pid)[0]
            e2e = asyncio.run(durable_run(address, workload, args.durable_seconds))
            durable_cpu = server_usage(server.pid)[0] - used
            log(f"service: {e2e.txn_per_s:,.0f} transactions/s ({e2e})")
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            before = sla.scrape(metrics_url) or ""
            (args.results / "metrics_before.txt").write_text(before)
            log(f"service: locust {args.users} users x {args.rate:g}/s, {args.locust_seconds} s")
            env = {"BENCH_FIRST_CARD": seeding["first_card"], "BENCH_ACCOUNTS": str(args.accounts)}
            used = server_usage(server.pid)[0]
            beside = (
                JobsBeside(args.job, resolved.database_url, resolved.redis_url)
                if args.job
                else contextlib.nullcontext()
            )
            with beside:
                if args.job:
                    log(f"service: job {args.job} run again and again beside locust")
                run_locust(
                    address, args.results / "unary", args.locust_seconds, args.users, args.rate,
                    env,
                )  # fmt: skip
            locust_cpu = server_usage(server.pid)[0] - used
            after = sla.scrape(metrics_url) or ""
            (args.results / "metrics_after.txt").write_text(after)
        stats = sla.read_stats(args.results / "unary_stats.csv")
        server_p99 = sla.server_p99(after, before) if sla.SERVER_METRIC in after else {}
        verdict = sla.judge(stats, p99_ms=args.p99_ms, server_p99_s=server_p99)
        for line in verdict.lines:
            log(f"sla: {line}")
        for problem in verdict.problems:
            log(f"sla: FAIL: {problem}")
        log(f"sla: {'PASS' if verdict.passed else 'FAIL'}")
        code = 0 if verdict.passed else 1
        posting = next((row for row in stats if row.name == "PostTransaction"), None)
        total = next((row for row in stats if row.name == sla.AGGREGATED), None)
        figures = {
            "e2e_txn_per_s": round(e2e.txn_per_s),
            "ceiling_txn_per_s": round(top.txn_per_s),
            "ratio": round(e2e.txn_per_s / top.txn_per_s, 3) if top.txn_per_s else None,
            "server_cpu_us_per_txn": per_item_us(durable_cpu, e2e.batched + e2e.streamed),
            "ceiling_cpu_us_per_txn": per_item_us(ceiling_cpu, top.batched + top.streamed),
            "server_cpu_us_per_request": per_item_us(locust_cpu, total.requests if total else 0),
            "p99_ms": posting.p99_ms if posting else None,
            "server_p99_ms": round(server_p99["PostTransaction"] * 1000, 2)
            if "PostTransaction" in server_p99
            else None,
            "unary_req_per_s": round(total.requests_per_second, 1) if total else None,
            "unary_failures": total.failures if total else None,
            "sla_passed": verdict.passed,
            "sla_p99_ms": args.p99_ms,
            "e2e_failed": e2e.failed,
            "accounts": args.accounts,
            "seed_accounts_per_s": seeding["accounts_per_second"],
            "seed_rows_per_s": seeding["rows_per_second"],
            "redis_bytes_per_account": seeding.get("redis_bytes_per_account"),
            "pg_bytes_per_account": seeding.get("pg_bytes_per_account"),
        }
        if isinstance(beside, JobsBeside):
            figures.update(beside.figures())
    finally:
        resolved.stop()
        if resolved.started:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(figures), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

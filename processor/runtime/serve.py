"""Running ``loyalty serve``: the servers to use, start-up once, then one or more workers.

``prepare`` runs once, in the parent process: it starts the embedded PostgreSQL and
Valkey when no URLs are given, applies migrations and loads the demo program. ``serve``
runs in every worker: it opens its own pools (after any fork, never before: a forked
child must not share its parent's sockets), starts the gRPC server
(:func:`processor.service.server.start`) and serves until SIGTERM or SIGINT, then stops it
gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from processor.flow.registry import ProgramRegistry
from processor.runtime import logs, metrics
from processor.runtime.settings import Settings, secret
from processor.service import tls
from processor.service.server import Running, check_ports, check_secrets, pin_key_of, start
from processor.store.catalog import Catalog
from processor.store.credentials import Credentials
from processor.store.ledger import Store
from processor.store.migrate import migrate

log = logging.getLogger(__name__)

WORKER_POLL_SECONDS = 0.2
"""How often the parent of several workers looks for workers that exited."""


@dataclass(slots=True)
class Resolved:
    """The servers a run uses, and the embedded ones it started (to stop at the end)."""

    database_url: str
    redis_url: str | None
    started: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for server in reversed(self.started):
            with contextlib.suppress(Exception):
                server.stop()


def resolve_servers(settings: Settings, *, cache: bool = True) -> Resolved:
    """The configured URLs, or embedded servers under the data directory (no cache server
    when ``cache`` is false: the command needs only the database)."""
    database_url = secret(settings.database_url)
    redis_url = secret(settings.redis_url)
    started: list[Any] = []
    if not database_url:
        from processor.runtime.embedded import postgres

        embedded = postgres.start(Path(settings.data_dir) / "postgres")
        started.append(embedded)
        database_url = embedded.url
    if not redis_url and cache:
        from processor.runtime.embedded import valkey

        cache_server = valkey.start(Path(settings.data_dir) / "valkey")
        started.append(cache_server)
        redis_url = cache_server.url
    return Resolved(database_url, redis_url, started)


async def load_demo(settings: Settings, database_url: str) -> Any:
    """Create and activate the demo program and its cards (idempotent)."""
    from processor.tools import demo

    async with Store(database_url) as store:
        catalog = Catalog(store, pin_key=pin_key_of(settings))
        registry = ProgramRegistry(catalog)
        summary = await demo.load_demo(catalog, registry, cards=settings.demo_cards)
        await demo.demo_keys(Credentials(store))
        return summary


def prepare(settings: Settings) -> Resolved:
    """Everything done once before serving: servers, migrations, the demo."""
    resolved = resolve_servers(settings)
    try:
        applied = migrate(resolved.database_url)
        if applied:
            log.info("applied migrations %s", ", ".join(applied))
        if settings.demo:
            summary = asyncio.run(load_demo(settings, resolved.database_url))
            print_demo(settings, summary)
    except BaseException:
        resolved.stop()
        raise
    return resolved


def print_demo(settings: Settings, summary: Any) -> None:
    from processor.tools.demo import DEMO_KEYS

    card = summary.first_card
    keys = "\n".join(f"    {role:<10} {key}" for role, key in DEMO_KEYS.items())
    pin = f" PIN {summary.first_pin} on the first cards." if summary.first_pin else ""
    print(
        f"""
Demo program loaded: {summary.program_id} v{summary.version}, {summary.cards} cards
(first card {card}).{pin} gRPC on {settings.listen}, metrics on
http://{settings.metrics_listen}/metrics

Every call but health needs a credential. The demo's API keys, one per role (published:
only a server started with --demo accepts them), go in the x-api-key header:
{keys}

  buf curl --protocol grpc --http2-prior-knowledge \\
    -H 'x-api-key: {DEMO_KEYS["Processor"]}' \\
    --data '{{"transaction": {{"context": {{"request_id": "first-1", "account": "{card}",
    "local_time": "2026-03-02T10:00:00", "location": "S001"}}, "purchase": {{"currency": "USD",
    "lines": [{{"number": 1, "item": "JACKET-1", "amount": "12000", "quantity": 1,
    "hierarchy": ["OUTERWEAR"]}}]}}}}}}' \\
    http://{settings.listen}/loyalty.v1.TransactionService/PostTransaction
""",
        flush=True,
    )


GC_THRESHOLDS: Final = (200_000, 20, 20)
"""The collector's thresholds while serving (CPython's defaults are 700, 10, 10): a batch
makes thousands of short-lived objects, none in cycles that matter, and a young-generation
collection every 700 allocations walked them all, several times per batch. The count is
of objects made and not yet freed, so six calls of 100 transactions in flight (tens of
thousands of live objects) set off a collection every few batches at 50,000; 200,000
made a durable transaction 2% cheaper. Collecting on a clock instead was tried and not
kept (BENCHMARKS.md)."""


def tune_collector() -> None:
    """Freeze what start-up made (modules, compiled programs, pools: never garbage) so no
    collection walks it again, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    settings: Settings,
    database_url: str,
    redis_url: str | None,
    ready: Callable[[Running], Awaitable[None] | None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    running = await start(settings, database_url, redis_url)
    if settings.gc_tuning:
        tune_collector()
    if ready is not None:
        outcome = ready(running)
        if asyncio.iscoroutine(outcome):
            await outcome
    metrics = _start_metrics(settings)
    try:
        await stopping.wait()
        log.info("shutting down: draining in-flight requests")
    finally:
        await running.stop(settings.grace_seconds)
        if metrics is not None:
            metrics.shutdown()


def _start_metrics(settings: Settings) -> Any:
    """The /metrics endpoint of a single-process server; with several workers the parent
    serves it (see ``_run_workers``)."""
    if settings.workers > 1 or not settings.metrics_listen:
        return None
    return _exposition(settings)


def _exposition(settings: Settings) -> Any:
    """``/metrics`` on ``metrics_listen``, over TLS when the settings name certificates."""
    return metrics.start_exposition(
        settings.metrics_listen, tls.metrics_context(tls.tls_files(settings))
    )


def run(settings: Settings) -> int:
    """``loyalty serve``: prepare once, then serve in one process or ``workers`` forks."""
    logs.install(settings.log_format, settings.log_level)
    check_ports(settings)  # before any embedded server starts
    check_secrets(settings)
    resolved = prepare(settings)
    try:
        if settings.workers == 1:
            _run_worker(settings, resolved)
            return 0
        return _run_workers(settings, resolved)
    finally:
        resolved.stop()


def _run_worker(settings: Settings, resolved: Resolved) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(settings, resolved.database_url, resolved.redis_url))


def _run_workers(settings: Settings, resolved: Resolved) -> int:
    """Fork the workers before any gRPC object exists; the kernel balances connections
    across them through SO_REUSEPORT.

    Metrics switch to multiprocess mode first, in an emptied directory under the data
    directory (or the one PROMETHEUS_MULTIPROC_DIR names); once the workers are forked this
    process serves the one /metrics endpoint over all of them and marks each worker dead
    when it exits."""
    metrics.use_multiprocess(metrics.multiprocess_dir() or Path(settings.data_dir) / "metrics")
    children = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run_worker(settings, resolved)
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    exposition = None
    if settings.metrics_listen:
        exposition = _exposition(settings)
    status = 0
    try:
        # Each worker is reaped by its own pid (the embedded servers are children too), as
        # soon as it exits, so its gauges leave the totals while the others still serve.
        waiting = list(children)
        while waiting:
            for child in list(waiting):
                pid, code = os.waitpid(child, os.WNOHANG)
                if pid == child:
                    waiting.remove(child)
                    metrics.mark_process_dead(child)
                    status = status or os.waitstatus_to_exitcode(code)
            if waiting:
                time.sleep(WORKER_POLL_SECONDS)
    finally:
        if exposition is not None:
            exposition.shutdown()
    return 1 if status else 0


if __name__ == "__main__":  # pragma: no cover - `loyalty serve` is the entry point
    sys.exit(run(Settings()))

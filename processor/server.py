"""The gRPC server: wiring the pipeline to its services, starting and stopping cleanly.

``prepare`` runs once, in the parent process: it starts the embedded PostgreSQL and
Valkey when no URLs are given, applies migrations and loads the demo program. ``serve``
runs in every worker: it opens its own pools (after any fork, never before: a forked
child must not share its parent's sockets), builds the pipeline and serves until SIGTERM
or SIGINT, then turns health to NOT_SERVING, stops taking calls, lets in-flight batches
commit and answer, and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from processor import logs, metrics, proto
from processor.batcher import Batcher
from processor.cache import AccountCache
from processor.cache_dictionary import sample_states_dictionary
from processor.engine import get_engine
from processor.pipeline import Pipeline, submission_keys
from processor.registry import ProgramRegistry
from processor.service.admin import AdminServicer
from processor.service.awards import AwardServicer
from processor.service.interceptors import default_interceptors
from processor.service.posting import encode_result
from processor.service.tender import TenderServicer
from processor.service.transactions import TransactionServicer
from processor.settings import Settings, secret
from processor.store.catalog import Catalog
from processor.store.ledger import Store
from processor.store.migrate import migrate

log = logging.getLogger(__name__)

MESSAGE_BYTES_MAX = 8 * 1024 * 1024
STREAM_POLL_SECONDS = 0.01
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


def resolve_servers(settings: Settings) -> Resolved:
    """The configured URLs, or embedded servers under the data directory."""
    database_url = secret(settings.database_url)
    redis_url = secret(settings.redis_url)
    started: list[Any] = []
    if not database_url:
        from processor.embedded import postgres

        embedded = postgres.start(Path(settings.data_dir) / "postgres")
        started.append(embedded)
        database_url = embedded.url
    if not redis_url:
        from processor.embedded import valkey

        cache_server = valkey.start(Path(settings.data_dir) / "valkey")
        started.append(cache_server)
        redis_url = cache_server.url
    return Resolved(database_url, redis_url, started)


async def load_demo(settings: Settings, database_url: str) -> Any:
    """Create and activate the demo program and its cards (idempotent)."""
    from processor import demo

    async with Store(database_url) as store:
        catalog = Catalog(store)
        registry = ProgramRegistry(catalog)
        return await demo.load_demo(catalog, registry, cards=settings.demo_cards)


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
    card = summary.first_card
    print(
        f"""
Demo program loaded: {summary.program_id} v{summary.version}, {summary.cards} cards
(first card {card}). gRPC on {settings.listen}, metrics on http://{settings.metrics_listen}/metrics

  buf curl --protocol grpc --http2-prior-knowledge --data '{{"transaction": {{"context":
    {{"request_id": "first-1", "account": "{card}", "local_time": "2026-03-02T10:00:00",
    "location": "S001"}}, "purchase": {{"currency": "USD", "lines": [{{"number": 1,
    "item": "JACKET-1", "amount": "12000", "quantity": 1, "hierarchy": ["OUTERWEAR"]}}]}}}}}}' \\
    http://{settings.listen}/loyalty.v1.TransactionService/PostTransaction
""",
        flush=True,
    )


@dataclass(slots=True)
class Running:
    """A serving process's parts, for tests and for shutdown."""

    server: grpc.aio.Server
    port: int
    health: Any
    batcher: Batcher
    pipeline: Pipeline
    registry: ProgramRegistry
    store: Store
    cache: AccountCache | None
    tasks: list[asyncio.Task[Any]]
    transactions: TransactionServicer

    async def stop(self, grace_seconds: float) -> None:
        """NOT_SERVING, refuse new work, answer what is queued, end the calls, close.

        The batcher closes before the server stops: a stream still open then gets
        SHUTTING_DOWN (UNAVAILABLE, retryable) for new requests instead of queuing work
        that would be committed after its caller is gone; everything already queued is
        committed and answered while the calls that wait for it are still open.

        It ends within the grace period (and the pools' close) whatever is stuck: what the
        batcher has not answered by then is given up, and every later step runs even if an
        earlier one failed or this call is cancelled, so no task of the server outlives it.
        """
        began = time.monotonic()

        def left() -> float:
            return max(0.0, grace_seconds - (time.monotonic() - began))

        try:
            await self.health.enter_graceful_shutdown()
            self.batcher.close()
            await self.batcher.drain(left())
            # A stream that sends again is told SHUTTING_DOWN and ends itself; give open
            # streams the grace period to do so before the server cuts what is left.
            while self.transactions.streams_open and left() > 0:
                await asyncio.sleep(STREAM_POLL_SECONDS)
        finally:
            await close_all(
                lambda: self.batcher.drain(0.0),  # at once, if the above did not get to it
                lambda: self.server.stop(left()),
                lambda: cancel_all(self.tasks),
                self.cache.aclose if self.cache is not None else None,
                self.store.close,
            )


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until each has ended."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def close_all(*steps: Callable[[], Awaitable[Any]] | None) -> None:
    """Run every step in order, even when one fails or this call is cancelled; then raise
    the first failure."""
    failure: BaseException | None = None
    for step in steps:
        if step is None:
            continue
        try:
            await step()
        except BaseException as error:  # the steps after it must still run
            failure = failure or error
    if failure is not None:
        raise failure


async def start(settings: Settings, database_url: str, redis_url: str | None) -> Running:
    """Open the pools, build the pipeline and services, and start serving."""
    store = Store(database_url)
    await store.open()
    try:
        return await _start_on(store, settings, redis_url)
    except BaseException:
        await store.close()
        raise


async def _start_on(store: Store, settings: Settings, redis_url: str | None) -> Running:
    catalog = Catalog(store)
    registry = ProgramRegistry(catalog)
    await registry.refresh()
    cache = None
    if redis_url:
        # The candidate compression dictionary: sample states of the active programs. The
        # first one stored in Redis is the one every process writes with (processor.cache).
        dictionary = (
            sample_states_dictionary(program.source for program in registry.programs())
            if settings.cache_compression
            else None
        )
        cache = AccountCache.from_url(
            redis_url, key_prefix=settings.cache_key_prefix, dictionary=dictionary
        )
    # Whatever this start began is ended again if a later step fails (a port taken, a
    # server that will not start), so a failed start leaves no task or pool behind.
    batcher: Batcher | None = None
    server: grpc.aio.Server | None = None
    try:
        pipeline = Pipeline(
            store=store,
            cache=cache,
            programs=registry,
            cards=catalog,
            engine=get_engine(settings.engine),
            encode=encode_result,
        )
        batcher = Batcher(
            pipeline.process,
            queue_depth_max=settings.queue_depth_max,
            batch_requests_max=settings.batch_requests_max,
            flush_interval_ms=settings.flush_interval_ms,
            batches_in_flight_max=settings.batches_in_flight_max,
            keys_of=submission_keys,
        )
        batcher.start()
        server = grpc.aio.server(
            interceptors=default_interceptors(),
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
                ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ],
        )
        transactions = TransactionServicer(batcher)
        proto.transactions_grpc.add_TransactionServiceServicer_to_server(transactions, server)
        proto.tender_grpc.add_TenderServiceServicer_to_server(TenderServicer(batcher), server)
        proto.awards_grpc.add_AwardServiceServicer_to_server(
            AwardServicer(batcher, pipeline), server
        )
        proto.admin_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(catalog=catalog, registry=registry, store=store), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [*proto.SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        try:
            # grpcio answers a failed bind with 0 in older releases, RuntimeError in newer.
            port = server.add_insecure_port(settings.listen)
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {settings.listen}: the address cannot be bound")
        await server.start()
        for name in ["", *proto.SERVICE_NAMES]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        sampler = metrics.Sampler(batcher=batcher, store=store, cache=cache)
        tasks = [
            asyncio.get_running_loop().create_task(
                registry.run_refresher(settings.registry_refresh_seconds), name="registry"
            ),
            asyncio.get_running_loop().create_task(sampler.run(), name="metrics"),
        ]
    except BaseException:
        await close_all(
            (lambda: batcher.drain(0.0)) if batcher is not None else None,
            (lambda: server.stop(None)) if server is not None else None,
            cache.aclose if cache is not None else None,
        )
        raise
    log.info("serving on port %d (engine %s)", port, pipeline.engine.name)
    return Running(
        server,
        port,
        health_servicer,
        batcher,
        pipeline,
        registry,
        store,
        cache,
        tasks,
        transactions,
    )


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
    return metrics.start_exposition(settings.metrics_listen)


def run(settings: Settings) -> int:
    """``loyalty serve``: prepare once, then serve in one process or ``workers`` forks."""
    logs.install(settings.log_format, settings.log_level)
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
        exposition = metrics.start_exposition(settings.metrics_listen)
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

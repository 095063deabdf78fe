"""The gRPC server of one process: the pipeline wired to its services, started and stopped.

``start`` opens the pools, builds the cache, pipeline, batcher and servicers and starts
serving; ``Running.stop`` turns health NOT_SERVING, refuses new calls, lets in-flight batches
commit and answer within the grace period, and closes. How a process gets there (embedded
servers, migrations, the demo, workers, signals) is processor.runtime.serve's job.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from processor import proto
from processor.cache import compression
from processor.cache.accounts import AccountCache
from processor.engine import get_engine
from processor.errors import InputFileError, Problem
from processor.flow.batcher import Batcher
from processor.flow.pipeline import Pipeline, SubmissionBatcher, submission_keys
from processor.flow.registry import ProgramRegistry
from processor.jobs.runner import JobContext
from processor.jobs.schedule import Schedule
from processor.limits import MESSAGE_BYTES_MAX, PIN_KEY_CHARS_MIN
from processor.outbox.delivery import Deliveries, run_sender, senders_of
from processor.outbox.tasks import TaskMaker
from processor.runtime import metrics
from processor.runtime.settings import Settings, secret
from processor.service import auth, tls
from processor.service.admin import AdminServicer
from processor.service.awards import AwardServicer
from processor.service.guard import Guarded
from processor.service.health import Health, add_reflection
from processor.service.posting import encode_result
from processor.service.tender import TenderServicer
from processor.service.transactions import TransactionServicer
from processor.service.transactions import handler as transaction_handler
from processor.store import notifications
from processor.store.card_cache import CardCache
from processor.store.card_cache import subscribe as subscribe_card_cache
from processor.store.cards import DEVELOPMENT_PIN_KEY
from processor.store.catalog import Catalog
from processor.store.credentials import Credentials
from processor.store.event_log import EventLog
from processor.store.ledger import Store
from processor.store.notifications import Notifications
from processor.store.tasks import Tasks

log = logging.getLogger(__name__)

STREAM_POLL_SECONDS = 0.01
DATABASE_WATCH_SECONDS = 0.5
"""How often health follows whether PostgreSQL is reachable (Store.reachable)."""
CANCEL_WAIT_SECONDS = 5.0
"""How long a stop waits for each background task to end after its cancel."""


def check_secrets(settings: Settings) -> None:
    """Refuse to serve real cards without a PIN key of our own: PINs hashed with the public
    development key could be tried offline by anyone holding a copy of the database."""
    if settings.demo:
        return
    key = secret(settings.pin_key) or ""
    why = None
    if not key.strip():
        why = "is required outside the demo (PINs would be hashed with the public development key)"
    elif len(key) < PIN_KEY_CHARS_MIN:
        why = f"must be at least {PIN_KEY_CHARS_MIN} characters of secret"
    elif key.encode("utf-8") == DEVELOPMENT_PIN_KEY or "CHANGE-ME" in key.upper():
        why = "is a public value (the development key or an example's placeholder): set a secret"
    if why is not None:
        raise InputFileError("settings", [Problem("pin_key (LOYALTY_PIN_KEY)", why)])


def token_settings(settings: Settings) -> auth.TokenSettings | None:
    """The bearer tokens the settings accept (None: API keys and certificates only); all of
    issuer, audience and JWKS, or none, else refused naming the missing one."""
    given = {
        "auth_token_issuer (LOYALTY_AUTH_TOKEN_ISSUER)": settings.auth_token_issuer,
        "auth_token_audience (LOYALTY_AUTH_TOKEN_AUDIENCE)": settings.auth_token_audience,
        "auth_token_jwks (LOYALTY_AUTH_TOKEN_JWKS)": settings.auth_token_jwks,
    }
    if not any(given.values()):
        return None
    missing = [
        Problem(name, "bearer tokens need an issuer, an audience and a JWKS")
        for name, value in given.items()
        if not value
    ]
    if missing:
        raise InputFileError("settings", missing)
    return auth.TokenSettings(
        issuer=settings.auth_token_issuer or "",
        audience=settings.auth_token_audience or "",
        jwks=settings.auth_token_jwks or "",
        leeway_seconds=settings.auth_token_leeway_seconds,
        roles_claim=settings.auth_token_roles_claim,
        cards_claim=settings.auth_token_cards_claim,
    )


def pin_key_of(settings: Settings) -> bytes | None:
    """The PIN key the settings give (None: the environment's, or the development key)."""
    key = secret(settings.pin_key)
    return key.encode("utf-8") if key else None


def check_ports(settings: Settings) -> tls.TlsFiles | None:
    """Refuse settings that would serve plaintext beyond loopback, or TLS files that do
    not load, naming the setting, file and reason (processor.service.tls); the TLS files
    to serve with (None: plaintext)."""
    if settings.demo and not tls.is_loopback(settings.listen) and not settings.plaintext_allowed:
        # The demo's keys and PINs are published: anyone who can reach it could use them.
        # A container publishing its port on the host's loopback says so with
        # plaintext_allowed (ops/compose.yaml).
        raise InputFileError(
            "settings",
            [
                Problem(
                    "listen (LOYALTY_LISTEN)",
                    "the demo serves on loopback only (its keys are public), unless"
                    " plaintext_allowed says its port is reached from this host alone",
                )
            ],
        )
    files = tls.tls_files(settings)
    tls.check_listen(settings.listen, files, settings.plaintext_allowed)
    if settings.metrics_listen:
        # An address without a host serves metrics on loopback (metrics.start_exposition).
        host, _, port = settings.metrics_listen.rpartition(":")
        listen = settings.metrics_listen if host else f"127.0.0.1:{port}"
        tls.check_listen(listen, files, settings.plaintext_allowed, setting="metrics_listen")
    return files


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments."""
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ("grpc.http2.bdp_probe", int(settings.http2_bdp_probe)),
    ]


@dataclass(slots=True)
class Running:
    """A serving process's parts, for tests and for shutdown."""

    server: grpc.aio.Server
    port: int
    health: Any
    batcher: SubmissionBatcher
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


async def watch_database(
    store: Store, health_servicer: Any, interval_seconds: float = DATABASE_WATCH_SECONDS
) -> None:
    """Health NOT_SERVING while PostgreSQL is unreachable, SERVING again once it is back, so
    a load balancer sends calls to a server that can post them. Runs until cancelled; after
    a graceful shutdown began, the health servicer ignores these updates."""
    serving = True
    while True:
        await asyncio.sleep(interval_seconds)
        if store.reachable != serving:
            serving = store.reachable
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ["", *proto.SERVICE_NAMES]:
                await health_servicer.set(name, status)


async def cancel_all(
    tasks: list[asyncio.Task[Any]], wait_seconds: float = CANCEL_WAIT_SECONDS
) -> None:
    """Cancel the tasks and wait until each has ended, for ``wait_seconds`` at most: a task
    that outlives its cancel (a bug) is logged with where it waits, and left behind, so
    that a stop always ends."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=wait_seconds)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: its failure was the task's to log
    for task in pending:
        where = io.StringIO()
        task.print_stack(file=where)
        log.error(
            "task %s did not end within %.0f s of its cancel; left behind:\n%s",
            task.get_name(), wait_seconds, where.getvalue(),
        )  # fmt: skip


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
    tls_files = check_ports(settings)  # before anything opens
    tokens = token_settings(settings)
    verifier = auth.TokenVerifier(tokens) if tokens is not None else None
    store = Store(database_url, reconnect_attempt_seconds=settings.database_reconnect_seconds)
    await store.open()
    try:
        return await _start_on(store, settings, redis_url, tls_files, verifier)
    except BaseException:
        await store.close()
        raise


async def _start_on(
    store: Store,
    settings: Settings,
    redis_url: str | None,
    tls_files: tls.TlsFiles | None,
    verifier: auth.TokenVerifier | None,
) -> Running:
    catalog = Catalog(
        store, pin_key=pin_key_of(settings), pin_attempts_max=settings.pin_attempts_max
    )
    registry = ProgramRegistry(catalog)
    await registry.refresh()
    credentials = Credentials(store)
    keys = auth.KeyTable(credentials, demo_allowed=settings.demo)
    await keys.refresh()
    authority = auth.Authority(keys, verifier, reflection_open=settings.auth_reflection_open)
    cache = (
        compression.open_for_programs(redis_url, registry.programs(), settings)
        if redis_url
        else None
    )
    # Whatever this start began is ended again if a later step fails (a port taken, a
    # server that will not start), so a failed start leaves no task or pool behind.
    batcher: SubmissionBatcher | None = None
    server: grpc.aio.Server | None = None
    try:
        # Held cards are only as good as the changes told (nothing listening: none held).
        card_cache = CardCache() if settings.card_cache and settings.notifications else None
        # One listening connection tells every loop below what changed (migrations 0005,
        # 0013): a loop sleeps until then rather than polling PostgreSQL.
        told = Notifications()
        if card_cache is not None:
            subscribe_card_cache(told, card_cache)
        # Told by this process's own commits (Store.on_events_written), not by PostgreSQL.
        events_written = told.signal(notifications.EVENTS, "written")
        store.on_events_written = events_written.tell
        events_positioned = told.signal(notifications.EVENTS, "positioned")
        programs_activated = told.signal(notifications.PROGRAMS)
        keys_changed = told.signal(notifications.KEYS)
        pipeline = Pipeline(
            store=store,
            cache=cache,
            programs=registry,
            cards=catalog,
            engine=get_engine(settings.engine),
            encode=encode_result,
            card_cache=card_cache,
            events_points_issued=settings.events_points_issued,
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
        server = grpc.aio.server(options=server_options(settings))
        transactions = TransactionServicer(batcher)
        # Guarded stands in for the server, duck-typed: every method served authenticated.
        services: Any = Guarded(server, authority, credentials)
        services.add_generic_rpc_handlers((transaction_handler(transactions),))
        proto.tender_grpc.add_TenderServiceServicer_to_server(TenderServicer(batcher), services)
        proto.awards_grpc.add_AwardServiceServicer_to_server(
            AwardServicer(batcher, pipeline), services
        )
        proto.admin_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(
                catalog=catalog,
                registry=registry,
                store=store,
                credentials=credentials,
                cache=cache,
                events_positioned=events_positioned,
            ),
            services,
        )
        health_servicer = Health()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
        add_reflection(services, [*proto.SERVICE_NAMES, health.SERVICE_NAME])
        try:
            # grpcio answers a failed bind with 0 in older releases, RuntimeError in newer.
            if tls_files is None:
                port = server.add_insecure_port(settings.listen)
            else:
                port = server.add_secure_port(settings.listen, tls.server_credentials(tls_files))
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {settings.listen}: the address cannot be bound")
        await server.start()
        for name in ["", *proto.SERVICE_NAMES]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        metrics.initialize_methods(
            (
                f"/{service.full_name}/{method.name}",
                method.client_streaming,
                method.server_streaming,
            )
            for module in proto.FILES
            for service in module.DESCRIPTOR.services_by_name.values()
            for method in service.methods
        )
        sampler = metrics.Sampler(batcher=batcher, store=store, cache=cache, card_cache=card_cache)
        tasks = [
            asyncio.get_running_loop().create_task(
                registry.run_refresher(
                    settings.registry_refresh_seconds, programs_activated.waiter()
                ),
                name="registry",
            ),
            asyncio.get_running_loop().create_task(sampler.run(), name="metrics"),
            asyncio.get_running_loop().create_task(metrics.run_probes(store, cache), name="probes"),
            asyncio.get_running_loop().create_task(
                keys.run_refresher(settings.auth_keys_refresh_seconds, keys_changed.waiter()),
                name="api-keys",
            ),
            asyncio.get_running_loop().create_task(
                watch_database(store, health_servicer), name="database-health"
            ),
            asyncio.get_running_loop().create_task(
                EventLog(store).run_relay(written=events_written.waiter()), name="events"
            ),
        ]
        deliveries = Deliveries(store)
        senders = [
            TaskMaker(Tasks(store), registry, written=events_written.tell),
            *senders_of(
                secret(settings.events_webhook_url), settings.events_log, settings.events_senders
            ),
        ]
        for sender in senders:
            tasks.append(
                asyncio.get_running_loop().create_task(
                    run_sender(deliveries, sender, positioned=events_positioned.waiter()),
                    name=f"events-{sender.name}",
                )
            )
        if settings.jobs_schedule:
            schedule = Schedule(
                store.conninfo,
                JobContext(store, registry, cache),
                cron=settings.jobs_cron,
                chunk_accounts=settings.jobs_chunk_accounts,
                events_kept_days=settings.events_kept_days,
            )
            tasks.append(
                asyncio.get_running_loop().create_task(schedule.run_forever(), name="jobs")
            )
        if verifier is not None:
            tasks.append(
                asyncio.get_running_loop().create_task(verifier.run_refresher(), name="jwks")
            )
        if settings.notifications:
            tasks.append(
                asyncio.get_running_loop().create_task(
                    told.run(store.conninfo), name="notifications"
                )
            )
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

"""The processor's Prometheus metrics: every series it exports, declared once, here.

Conventions (prometheus/client_python): base units (``_seconds``; money in minor units,
points in the program's scaled units), counters named ``..._total``, and label sets that
are bounded and known up front. No label ever holds a card number, a customer id or a
request id: programs, levels, kinds, reasons, jobs and gRPC methods are the only label values,
and each comes from configuration or a fixed vocabulary.

What records what:

- :func:`measuring` (the gRPC server metrics, in the conventional names of
  go-grpc-prometheus): started, handled by status code, handling time, messages in and out,
  and failures by their ``google.rpc.ErrorInfo`` reason and numeric code;
- :func:`record_results` (the business metrics), called by the pipeline for the results of
  a committed batch only, so a replay or a rolled-back attempt never counts twice;
- the batcher and the pipeline (batch size, queue wait, engine and commit time, retries,
  refusals), and :class:`Sampler`, which copies gauges and the cache's own counters once a
  second.

Several worker processes (``--workers`` > 1) use the client's multiprocess mode: the
parent calls :func:`use_multiprocess` on an emptied directory BEFORE forking, serves the
one ``/metrics`` endpoint over a ``MultiProcessCollector`` (:func:`start_exposition`) and
calls :func:`mark_process_dead` for each worker that exits. Its documented limits hold:
no per-process collectors (process_*, python_gc_*) in that mode, gauges aggregate by their
``multiprocess_mode`` (``livesum`` for levels, ``max`` for flags), and no exemplars.
"""

# grpcio ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import ssl
import threading
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Final, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
import prometheus_client
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    values,
)
from prometheus_client.metrics import MetricWrapperBase

from processor.limits import CLIENT_DEADLINE_FLOOR_SECONDS

log = logging.getLogger(__name__)

# The *_created series double every counter and histogram and do not exist in multiprocess
# mode; leaving them out keeps one and several workers alike.
prometheus_client.disable_created_metrics()

REGISTRY: Final = CollectorRegistry(auto_describe=True)
"""The registry of every metric below (plus process and GC collectors in one process)."""

MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS_SECONDS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""Call latency: from 100 microseconds (the batcher's floor is a few ms, a replay is less)
up; 0.2 s is the service-level objective, so it is a bucket boundary."""

STAGE_BUCKETS_SECONDS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5,
)  # fmt: skip
"""One step of a batch (queue wait, engine, commit): from 50 microseconds."""

BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

GRPC_LABELS: Final = ("grpc_service", "grpc_method", "grpc_type")

# --------------------------------------------------------------------------- gRPC server

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    GRPC_LABELS,
    registry=REGISTRY,
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by gRPC status code (a declined transaction is OK).",
    (*GRPC_LABELS, "grpc_code"),
    registry=REGISTRY,
)
GRPC_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status, as the server saw it.",
    GRPC_LABELS,
    buckets=LATENCY_BUCKETS_SECONDS,
    registry=REGISTRY,
)
GRPC_RECEIVED = Counter(
    "grpc_server_msg_received_total",
    "Request messages received by the server.",
    GRPC_LABELS,
    registry=REGISTRY,
)
GRPC_SENT = Counter(
    "grpc_server_msg_sent_total",
    "Response messages sent by the server.",
    GRPC_LABELS,
    registry=REGISTRY,
)
CLIENT_DEADLINE_EXCEEDED = Counter(
    "loyalty_client_deadline_exceeded_total",
    "RPCs that ended DEADLINE_EXCEEDED having arrived with less time left than the latency "
    "objective (200 ms): the client's own deadline, left out of the availability objective. "
    "Also counted in grpc_server_handled_total.",
    ("grpc_service", "grpc_method"),
    registry=REGISTRY,
)
GRPC_ERRORS = Counter(
    "grpc_server_errors_total",
    "RPCs that ended with an error status, by google.rpc.ErrorInfo reason and numeric code "
    "(code 1001: the database is unavailable).",
    ("grpc_service", "grpc_method", "grpc_code", "reason", "code"),
    registry=REGISTRY,
)

# --------------------------------------------------------------------------- business

TRANSACTIONS = Counter(
    "loyalty_transactions_total",
    "Committed requests by card program and outcome (approved, declined) with the decline "
    "reason; replays are not counted.",
    ("program", "outcome", "reason"),
    registry=REGISTRY,
)
POINTS_ISSUED = Counter(
    "loyalty_points_issued_total",
    "Points added to balances (scaled by the program's points precision), by loyalty "
    "program, the account's level once its batch committed, and posting kind.",
    ("program", "level", "kind"),
    registry=REGISTRY,
)
POINTS_REDEEMED = Counter(
    "loyalty_points_redeemed_total",
    "Points taken off balances (scaled by the program's points precision): award and move "
    "costs, returns, expiry; by loyalty program, level and posting kind.",
    ("program", "level", "kind"),
    registry=REGISTRY,
)
AWARDS_ISSUED = Counter(
    "loyalty_awards_issued_total",
    "Awards issued, by the program holding them and kind (coupon, certificate, e_award).",
    ("program", "kind"),
    registry=REGISTRY,
)
AWARDS_REDEEMED = Counter(
    "loyalty_awards_redeemed_total",
    "Award redemptions: coupon and certificate uses, and e-award value spends.",
    ("program", "kind"),
    registry=REGISTRY,
)
LEVEL_MOVES = Counter(
    "loyalty_level_moves_total",
    "Level moves, by loyalty program and kind (advancement, sustain, demotion, extension).",
    ("program", "kind"),
    registry=REGISTRY,
)
EVENTS_POSITIONED = Counter(
    "loyalty_events_positioned_total",
    "Events (level moves, awards issued) this process's relay numbered for readers to follow.",
    registry=REGISTRY,
)
EVENTS_DELIVERED = Counter(
    "loyalty_events_delivered_total",
    "Events delivered to a configured sender (webhook, log) and received.",
    ("sender",),
    registry=REGISTRY,
)
EVENT_DELIVERY_FAILURES = Counter(
    "loyalty_event_delivery_failures_total",
    "Deliveries of events to a sender that failed (sent again after a pause).",
    ("sender",),
    registry=REGISTRY,
)
TENDER_VALUE = Counter(
    "loyalty_tender_value_total",
    "Stored value in minor units of the tender program's currency, by kind: issued "
    "(activations, reloads, reversals) or redeemed (redemptions, captures, cash-outs).",
    ("program", "kind"),
    registry=REGISTRY,
)

# --------------------------------------------------------------------------- scheduled jobs

JOB_STATES = Counter(
    "loyalty_job_states_total",
    "Account states a scheduled job went through, by job and outcome: changed (committed), "
    "unchanged, or skipped (no active program serves the card). The label is job_name: "
    "Prometheus keeps job for the scrape target's.",
    ("job_name", "outcome"),
    registry=REGISTRY,
)
JOB_RUNS = Counter(
    "loyalty_job_runs_total",
    "Job runs ended, by job and outcome: finished, failed, or stopped (its process was "
    "stopping); the next start of a failed or stopped run resumes it.",
    ("job_name", "outcome"),
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "loyalty_job_duration_seconds",
    "How long each job run took in this process, from its start or resume to its end.",
    ("job_name",),
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400),
    registry=REGISTRY,
)
JOB_PROGRESS = Gauge(
    "loyalty_job_progress_ratio",
    "Share of the accounts the running job has gone through, 0 to 1 (1 once it ends).",
    ("job_name",),
    registry=REGISTRY,
    multiprocess_mode="max",
)
JOB_LAST_SUCCESS = Gauge(
    "loyalty_job_last_success_timestamp_seconds",
    "When each job last finished a run (Unix time; read from PostgreSQL when the schedule "
    "starts), for the alert on a job that no longer finishes.",
    ("job_name",),
    registry=REGISTRY,
    multiprocess_mode="max",
)

# --------------------------------------------------------------------------- internals

BATCH_SIZE = Histogram(
    "loyalty_batch_size",
    "Requests evaluated together in one batch.",
    buckets=BATCH_SIZE_BUCKETS,
    registry=REGISTRY,
)
BATCH_WAIT = Histogram(
    "loyalty_batch_wait_seconds",
    "How long the oldest request of each batch waited in the queue.",
    buckets=STAGE_BUCKETS_SECONDS,
    registry=REGISTRY,
)
ENGINE = Histogram(
    "loyalty_engine_seconds",
    "Rule engine time for one batch (every program's call).",
    buckets=STAGE_BUCKETS_SECONDS,
    registry=REGISTRY,
)
COMMIT = Histogram(
    "loyalty_commit_seconds",
    "PostgreSQL time to commit one batch (one transaction), failed attempts included.",
    buckets=STAGE_BUCKETS_SECONDS,
    registry=REGISTRY,
)
CONCURRENCY_RETRIES = Counter(
    "loyalty_concurrency_retries_total",
    "Batches evaluated again because another process changed their accounts first.",
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    "loyalty_cache_hits_total",
    "Account states read from Redis (asked only by batches whose cards are held in memory;"
    " a looked-up batch reads its states with its lookup).",
    registry=REGISTRY,
)
CACHE_MISSES = Counter(
    "loyalty_cache_misses_total",
    "Account states Redis did not have (read from PostgreSQL instead).",
    registry=REGISTRY,
)
CACHE_ERRORS = Counter(
    "loyalty_cache_errors_total",
    "Redis calls that failed (each answered as a miss or a no-op).",
    registry=REGISTRY,
)
CACHE_CIRCUIT_OPEN = Gauge(
    "loyalty_cache_circuit_open",
    "1 while the cache skips Redis after repeated errors (worst worker).",
    registry=REGISTRY,
    multiprocess_mode="max",
)
CARD_CACHE_HITS = Counter(
    "loyalty_catalog_memory_hits_total",
    "Batches whose cards were all held in memory: nothing read before evaluation.",
    registry=REGISTRY,
)
CARD_CACHE_MISSES = Counter(
    "loyalty_catalog_memory_misses_total",
    "Batches that read their cards from PostgreSQL (one not held, or not listening).",
    registry=REGISTRY,
)
CARD_CACHE_LISTENING = Gauge(
    "loyalty_catalog_memory_listening",
    "1 while PostgreSQL's notifications of card changes are heard; 0 means every batch"
    " reads its cards (worst worker).",
    registry=REGISTRY,
    multiprocess_mode="min",
)
DATABASE_UP = Gauge(
    "loyalty_database_up",
    "1 while PostgreSQL answered the last probe (SELECT 1 every 5 s through the pool), 0 "
    "when it did not: seen without any traffic (worst worker).",
    registry=REGISTRY,
    multiprocess_mode="min",
)
CACHE_UP = Gauge(
    "loyalty_cache_up",
    "1 while Redis answered the last probe (PING every 5 s), 0 when it did not (worst "
    "worker); absent without a cache.",
    registry=REGISTRY,
    multiprocess_mode="min",
)
DB_POOL_IN_USE = Gauge(
    "loyalty_db_pool_in_use",
    "PostgreSQL connections lent out of the pools (sum over live workers).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "loyalty_db_pool_waiting",
    "Callers waiting for a PostgreSQL connection (sum over live workers).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
QUEUE_DEPTH = Gauge(
    "loyalty_queue_depth",
    "Requests waiting for a batch (sum over live workers).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
BATCHES_IN_FLIGHT = Gauge(
    "loyalty_batches_in_flight",
    "Batches being evaluated or committed at once (sum over live workers).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
REQUESTS_REJECTED = Counter(
    "loyalty_requests_rejected_total",
    "Requests refused before evaluation: queue_full (RESOURCE_EXHAUSTED: no room, or the "
    "requests ahead would outlast the call's deadline), shutting_down "
    "(UNAVAILABLE), deadline_expired (the deadline passed while queued), cancelled (the "
    "caller gave up while queued).",
    ("reason",),
    registry=REGISTRY,
)

DECLARED: Final[tuple[MetricWrapperBase, ...]] = tuple(
    value for value in globals().values() if isinstance(value, MetricWrapperBase)
)
"""Every metric of this module, in declaration order."""

REJECTED_QUEUE_FULL: Final = REQUESTS_REJECTED.labels("queue_full")
REJECTED_SHUTTING_DOWN: Final = REQUESTS_REJECTED.labels("shutting_down")
REJECTED_DEADLINE: Final = REQUESTS_REJECTED.labels("deadline_expired")
REJECTED_CANCELLED: Final = REQUESTS_REJECTED.labels("cancelled")


def exported_names() -> set[str]:
    """Every series name the metrics above export (histograms with their suffixes)."""
    names: set[str] = set()
    for metric in DECLARED:
        for family in metric.describe():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    return names


# --------------------------------------------------------------------------- processes


def use_multiprocess(directory: Path) -> Path:
    """Switch this process (and the workers it will fork) to multiprocess mode.

    Call it before forking and before any value is recorded. ``directory`` is created and
    emptied of earlier runs' files (stale files would add old counts to new ones). The
    mode is normally chosen by the client library when it is first imported; this module
    is imported earlier than the settings are read, so the values of the metrics declared
    above are made again in the mode now chosen.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_DIR_ENV] = str(directory)
    values.ValueClass = values.get_value_class()
    _state.multiprocess_dir = directory
    for metric in DECLARED:
        if not metric._labelnames:
            metric._metric_init()
            continue
        with metric._lock:
            children: list[Any] = list(metric._metrics.values())
        for child in children:
            child._metric_init()
    return directory


class _State:
    multiprocess_dir: Path | None = None  # set by use_multiprocess()
    process_collectors: bool = False


_state = _State()


def multiprocess_dir() -> Path | None:
    """The directory PROMETHEUS_MULTIPROC_DIR names, if any."""
    value = os.environ.get(MULTIPROC_DIR_ENV)
    return Path(value) if value else None


def mark_process_dead(pid: int) -> None:
    """Forget an exited worker's gauges (its counters keep counting in the totals)."""
    if _state.multiprocess_dir is not None:
        multiprocess.mark_process_dead(pid, str(_state.multiprocess_dir))


def start_exposition(listen: str, tls: Callable[[], ssl.SSLContext] | None = None) -> Any:
    """Serve ``/metrics`` on ``host:port``; returns the server (``shutdown()`` stops it).
    ``tls``: serve HTTPS, each connection with the context it gives then
    (processor.service.tls.metrics_context: renewed certificates are taken so).

    After :func:`use_multiprocess` the endpoint merges every worker's files; otherwise it
    serves :data:`REGISTRY`, this process's own values, with the process and
    garbage-collector metrics added.
    """
    host, _, port = listen.rpartition(":")
    registry: CollectorRegistry = REGISTRY
    if _state.multiprocess_dir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(_state.multiprocess_dir))
    else:
        _add_process_collectors()
    address = host.strip("[]") or "127.0.0.1"
    if tls is not None:
        return _start_tls_exposition(address, int(port), registry, tls)
    server, _ = prometheus_client.start_http_server(int(port), addr=address, registry=registry)
    return server


TLS_HANDSHAKE_SECONDS: Final = 10.0
"""How long a metrics client may take to finish its TLS handshake and send its request."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


def _start_tls_exposition(
    address: str, port: int, registry: CollectorRegistry, context: Callable[[], ssl.SSLContext]
) -> Any:
    """``/metrics`` over HTTPS, each connection's handshake done in its own thread within
    ``TLS_HANDSHAKE_SECONDS``. (prometheus_client's own HTTPS server shakes hands inside
    ``accept``, on its one serving thread: a client that connects and says nothing would
    stop every scrape.)"""

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

        def get_request(self) -> tuple[Any, Any]:
            connection, peer = self.socket.accept()
            connection.settimeout(TLS_HANDSHAKE_SECONDS)
            wrapped = context().wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
            return wrapped, peer

    server = make_server(
        address, port, prometheus_client.make_wsgi_app(registry), Server, _QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _add_process_collectors() -> None:
    if not _state.process_collectors:
        prometheus_client.ProcessCollector(registry=REGISTRY)
        prometheus_client.GCCollector(registry=REGISTRY)
        _state.process_collectors = True


# --------------------------------------------------------------------------- gRPC interceptor

_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
_CODE_BY_VALUE: Final = {code.value[0]: code for code in grpc.StatusCode}

CODE_NAMES: Final = {
    code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}
"""The ``grpc_code`` label of each status: gRPC's canonical code names (``InvalidArgument``,
``Canceled``), as the ecosystem's server metrics, dashboards and alerts spell them, not
Python's upper-case enum names."""


class _MethodSeries:
    """The label children of one method, made once (labels() on every call costs)."""

    __slots__ = (
        "client_deadline", "handling", "labels", "ok", "received", "sent", "started",
    )  # fmt: skip

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = GRPC_STARTED.labels(*labels)
        self.received = GRPC_RECEIVED.labels(*labels)
        self.sent = GRPC_SENT.labels(*labels)
        self.handling = GRPC_HANDLING.labels(*labels)
        self.ok = GRPC_HANDLED.labels(*labels, CODE_NAMES[grpc.StatusCode.OK])
        self.client_deadline = CLIENT_DEADLINE_EXCEEDED.labels(*labels[:2])
        # At zero beside the client-caused count it holds, so a rate of one never lacks the
        # other (the availability rules subtract them).
        GRPC_HANDLED.labels(*labels, CODE_NAMES[grpc.StatusCode.DEADLINE_EXCEEDED])

    def handled(self, code: grpc.StatusCode) -> None:
        if code is grpc.StatusCode.OK:
            self.ok.inc()
        else:
            GRPC_HANDLED.labels(*self.labels, CODE_NAMES[code]).inc()


def measuring(full_method: str, handler: Any) -> Callable[[Any], Any]:
    """What wraps the behaviour of ``handler`` (the method ``full_method``) to record its
    ``grpc_server_*`` metrics; its series are made (at zero) once, here, not per call.

    The wrapper goes outside the error mapping (see processor.service.guard), so it
    sees each call's final status, mapped errors included, and times the whole call. A call
    the client cancelled counts as CANCELLED, one whose deadline passed as
    DEADLINE_EXCEEDED. Servicer methods that are plain functions pass through unmeasured.
    """
    series = _MethodSeries(_method_labels(full_method, handler))
    streaming_in = bool(handler.request_streaming)
    return lambda behaviour: _measured(behaviour, series, streaming_in=streaming_in)


def initialize_methods(methods: Iterable[tuple[str, bool, bool]]) -> None:
    """Make every method's ``grpc_server_*`` series (its OK count among them) at zero before
    its first call, so rates and ratios exist from the start: ``methods`` are (full method
    name, request streaming, response streaming)."""
    for full_method, streaming_in, streaming_out in methods:
        _MethodSeries(_labels_of(full_method, streaming_in, streaming_out))


def _method_labels(full_method: str, handler: Any) -> tuple[str, str, str]:
    return _labels_of(full_method, handler.request_streaming, handler.response_streaming)


def _labels_of(full_method: str, streaming_in: bool, streaming_out: bool) -> tuple[str, str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    kind = {
        (False, False): "unary",
        (True, False): "client_stream",
        (False, True): "server_stream",
        (True, True): "bidi_stream",
    }[(bool(streaming_in), bool(streaming_out))]
    return service or "unknown", method or "unknown", kind


def _measured(behaviour: Any, series: _MethodSeries, *, streaming_in: bool) -> Any:
    def begin(request: Any) -> Any:
        series.started.inc()
        if not streaming_in:
            series.received.inc()
            return request
        return _counted(request, series)

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            budget = _time_remaining(context)
            error: BaseException | None = None
            try:
                async for response in behaviour(begin(request), context):
                    series.sent.inc()
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                _finish(series, context, error, started, budget)

        return stream
    if inspect.iscoroutinefunction(behaviour):

        async def unary(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            budget = _time_remaining(context)
            error: BaseException | None = None
            try:
                response = await behaviour(begin(request), context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                _finish(series, context, error, started, budget)
            if response is not None:
                series.sent.inc()
            return response

        return unary
    return behaviour


async def _counted(requests: Any, series: _MethodSeries) -> AsyncIterator[Any]:
    async for request in requests:
        series.received.inc()
        yield request


def _finish(
    series: _MethodSeries,
    context: Any,
    error: BaseException | None,
    started: float,
    budget: float | None,
) -> None:
    """Record a call's end; ``budget`` is the time its deadline left it when it arrived."""
    series.handling.observe(time.perf_counter() - started)
    code = _status_code(context, error)
    series.handled(code)
    if (
        code == grpc.StatusCode.DEADLINE_EXCEEDED
        and budget is not None
        and budget < CLIENT_DEADLINE_FLOOR_SECONDS
    ):
        series.client_deadline.inc()
    if code != grpc.StatusCode.OK:
        reason, numeric = _reason(context)
        service, method, _ = series.labels
        GRPC_ERRORS.labels(service, method, CODE_NAMES[code], reason, numeric).inc()


def _status_code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = _time_remaining(context)
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = _code_of(context)
    if error is None:
        return code or grpc.StatusCode.OK
    if isinstance(error, grpc.aio.AbortError):
        return code or grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.UNKNOWN  # escaped every mapping: grpc answers it UNKNOWN


def _code_of(context: Any) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODE_BY_VALUE.get(code)
    return None


def _time_remaining(context: Any) -> float | None:
    try:
        remaining = context.time_remaining()
    except Exception:
        return None
    return remaining if isinstance(remaining, int | float) else None


def _reason(context: Any) -> tuple[str, str]:
    """The ErrorInfo reason and numeric code of a failed call, from its status details."""
    try:
        trailing = context.trailing_metadata() or ()
    except Exception:
        return "", ""
    for key, value in trailing:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        with contextlib.suppress(Exception):
            status = status_pb2.Status.FromString(value)
            for packed in status.details:
                info = error_details_pb2.ErrorInfo()
                if packed.Unpack(info):
                    return str(info.reason), str(info.metadata.get("code", ""))
    return "", ""


# --------------------------------------------------------------------------- business metrics

_SPENT_AWARD_VALUE_KINDS: Final = frozenset({"redeem"})
_MOVED_TENDER_KINDS: Final = frozenset({"merge_in", "merge_out"})


class Holdings(Protocol):
    """What the business metrics read of a committed batch's accounts."""

    def level(self, account: str, program: str) -> str:
        """The account's level in the program, "" without an account there."""
        ...

    def state(self, account: str) -> Any | None:
        """The account's state (read for the kinds of the awards it redeemed)."""
        ...


class StateHoldings:
    """Holdings over account states by account id."""

    def __init__(self, states: Mapping[str, Any]) -> None:
        self._states = states

    def level(self, account: str, program: str) -> str:
        state = self._states.get(account)
        held = state.loyalty.get(program) if state is not None else None
        return str(held.level) if held is not None else ""

    def state(self, account: str) -> Any | None:
        return self._states.get(account)


def record_results(
    results: Iterable[tuple[Any, Any]], holdings: Holdings, *, transactions: bool = True
) -> None:
    """Count a committed batch's results: ``(Result, CompiledProgram)`` pairs, and what
    the committed accounts hold (levels, and the kinds of awards redeemed). A scheduled
    job's results (``transactions`` false) count their points, awards and moves only.

    Counts are summed per label set first, so a batch costs one increment per series.
    """
    tally: Tally[tuple[Any, tuple[str, ...]]] = Tally()
    for result, program in results:
        if transactions:
            declined = result.status != "approved"
            outcome = ("declined", result.reason or "DECLINED") if declined else ("approved", "")
            tally[(TRANSACTIONS, (program.id, *outcome))] += 1
        for posting in result.postings:
            _tally_posting(tally, posting, holdings, posting.account or result.account)
        for award in result.awards:
            tally[(AWARDS_ISSUED, (award.program, award.kind))] += 1
        for code in result.redeemed:
            tally[(AWARDS_REDEEMED, _award_labels(holdings.state(result.account), code))] += 1
        for move in result.moves:
            tally[(LEVEL_MOVES, (move.program, move.kind))] += 1
    for (metric, labels), amount in tally.items():
        metric.labels(*labels).inc(amount)


def _tally_posting(
    tally: Tally[tuple[Any, tuple[str, ...]]], posting: Any, holdings: Holdings, owner: str
) -> None:
    amount = posting.amount
    if amount == 0:
        return
    if posting.balance == "points":
        level = holdings.level(owner, posting.program)
        metric = POINTS_ISSUED if amount > 0 else POINTS_REDEEMED
        tally[(metric, (posting.program, level, posting.kind))] += abs(amount)
    elif posting.balance == "tender" and posting.kind not in _MOVED_TENDER_KINDS:
        kind = "issued" if amount > 0 else "redeemed"
        tally[(TENDER_VALUE, (posting.program, kind))] += abs(amount)
    elif posting.balance == "award_value" and posting.kind in _SPENT_AWARD_VALUE_KINDS:
        tally[(AWARDS_REDEEMED, (posting.program, "e_award"))] += 1


def _award_labels(state: Any, code: str) -> tuple[str, str]:
    if state is not None:
        held = [account.awards for account in state.awards.values()]
        held += [account.awards for account in state.loyalty.values()]
        for awards in held:
            for award in awards:
                if award.code == code:
                    return str(award.program), str(award.kind)
    return "", "unknown"


# --------------------------------------------------------------------------- sampling

SAMPLE_INTERVAL_SECONDS: Final = 1.0


PROBE_INTERVAL_SECONDS: Final = 5.0
"""How often the server probes PostgreSQL and Redis for loyalty_database_up and _cache_up."""


async def probe_once(store: Any, cache: Any | None) -> None:
    """Probe PostgreSQL (and Redis, when there is a cache) and set their gauges."""
    DATABASE_UP.set(1 if await store.probe() else 0)
    if cache is not None:
        CACHE_UP.set(1 if await cache.probe() else 0)


async def run_probes(
    store: Any, cache: Any | None, interval_seconds: float = PROBE_INTERVAL_SECONDS
) -> None:
    """probe_once every ``interval_seconds`` until cancelled."""
    this = asyncio.current_task()
    while True:
        await probe_once(store, cache)
        if this is not None and this.cancelling():
            # A cancel that arrived inside a probe may come out of the driver as its own
            # error (a query cancelled), which the probe counts as "down": stop anyway.
            raise asyncio.CancelledError
        await asyncio.sleep(interval_seconds)


class Sampler:
    """Copies what the serving parts count or hold into the metrics, once a second: the
    queue depth, the database pool, and the cache's own counters (as increments)."""

    def __init__(
        self, *, batcher: Any, store: Any, cache: Any | None, card_cache: Any | None = None
    ) -> None:
        self._batcher = batcher
        self._pool = getattr(store, "pool", None)
        self._cache = cache
        self._cache_seen = (0, 0, 0)
        self._card_cache = card_cache
        self._card_cache_seen = (0, 0)

    def sample(self) -> None:
        QUEUE_DEPTH.set(self._batcher.depth)
        if self._pool is not None:
            stats = self._pool.get_stats()
            size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
            DB_POOL_IN_USE.set(max(size - available, 0))
            DB_POOL_WAITING.set(stats.get("requests_waiting", 0))
        if self._cache is not None:
            now = (self._cache.hits_total, self._cache.misses_total, self._cache.errors_total)
            for metric, current, seen in zip(
                (CACHE_HITS, CACHE_MISSES, CACHE_ERRORS), now, self._cache_seen, strict=True
            ):
                if current > seen:
                    metric.inc(current - seen)
            self._cache_seen = now
            CACHE_CIRCUIT_OPEN.set(1 if self._cache.circuit_open else 0)
        if self._card_cache is not None:
            held = (self._card_cache.hits_total, self._card_cache.misses_total)
            for metric, current, seen in zip(
                (CARD_CACHE_HITS, CARD_CACHE_MISSES), held, self._card_cache_seen, strict=True
            ):
                if current > seen:
                    metric.inc(current - seen)
            self._card_cache_seen = held
            CARD_CACHE_LISTENING.set(1 if self._card_cache.listening else 0)

    async def run(self, interval_seconds: float = SAMPLE_INTERVAL_SECONDS) -> None:
        """Sample until cancelled, and once more then (the last counts of a shutdown)."""
        try:
            while True:
                self._sample_logged()
                await asyncio.sleep(interval_seconds)
        finally:
            self._sample_logged()

    def _sample_logged(self) -> None:
        try:
            self.sample()
        except Exception:  # metrics must never take the server down
            log.exception("sampling metrics failed")


__all__ = [
    "DECLARED",
    "REGISTRY",
    "Holdings",
    "Sampler",
    "StateHoldings",
    "exported_names",
    "mark_process_dead",
    "measuring",
    "record_results",
    "start_exposition",
    "use_multiprocess",
]

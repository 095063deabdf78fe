"""Metrics: the declared contract, what a served call records, and several workers.

Values are read with ``get_sample_value`` from :data:`processor.runtime.metrics.REGISTRY`, the
processor's own registry (never the client library's global one), as differences around
the code under test, since other tests' servers record into the same registry.

The helpers here (a ``loyalty serve`` subprocess, an in-process server, purchases over
gRPC) are shared with test_ops.py and test_shutdown.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from plugins.server import key_with_every_role, keyed
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from processor import proto
from processor.cache.accounts import AccountCache
from processor.cards import card_number
from processor.engine.types import (
    AccountState,
    Award,
    AwardIssue,
    LevelMove,
    LoyaltyAccount,
    Posting,
    Result,
)
from processor.flow.registry import ProgramRegistry
from processor.runtime import metrics
from processor.runtime.settings import Settings
from processor.service.server import Running, start
from processor.store import Store
from processor.store.catalog import Catalog
from processor.tools.demo import DEMO_KEYS, DemoSummary, load_demo

ROOT = Path(__file__).resolve().parent.parent
DEMO_CARDS = 20
LOCAL_TIME = "2026-03-03T10:00:00"  # a Tuesday morning: no weekend bonus
LOCATION = "S002"
SERVICE = "loyalty.v1.TransactionService"
READY_SECONDS = 90.0
STOP_SECONDS = 30.0
PROMTOOL = shutil.which("promtool")

# --------------------------------------------------------------------------- helpers


def purchase(account: str, request_id: str, amount: int = 1000) -> Any:
    """A PostTransactionRequest for a one-line purchase (``amount`` minor units)."""
    return proto.transactions.PostTransactionRequest(
        transaction=transaction(account, request_id, amount)
    )


def transaction(account: str, request_id: str, amount: int = 1000) -> Any:
    common = proto.common
    return proto.transactions.Transaction(
        context=common.RequestContext(
            request_id=request_id, account=account, local_time=LOCAL_TIME, location=LOCATION
        ),
        purchase=proto.transactions.Purchase(
            currency="USD",
            lines=[
                common.Line(
                    number=1, item="ITEM-1", amount=amount, quantity=1, hierarchy=["APPAREL"]
                )
            ],
        ),
    )


def demo_cards(first_card: str, count: int) -> list[str]:
    """The demo's first ``count`` card numbers, from the first one."""
    prefix, sequence = first_card[:5], int(first_card[5:-1])
    return [card_number(prefix, sequence + index, len(first_card)) for index in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def channels(address: str, count: int) -> list[Any]:
    """``count`` channels, each with its own connection (no shared subchannel), so the
    kernel can hand them to different workers."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(address, options=options) for _ in range(count)]


def sample_value(text: str, name: str, **labels: str) -> float:
    """The sum of the exposition's samples named ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def registry_value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class ServerProcess:
    """A ``loyalty serve`` subprocess and what it printed."""

    process: subprocess.Popen[str]
    listen: str
    metrics_listen: str
    data_dir: Path
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def first_card(self) -> str:
        for line in self.stdout:
            found = re.search(r"first card (\d+)", line)
            if found:
                return found.group(1)
        raise AssertionError(f"the demo printed no first card: {self.stdout}")

    def scrape(self) -> str:
        with urllib.request.urlopen(
            f"http://{self.metrics_listen}/metrics", timeout=10
        ) as response:
            return str(response.read().decode())

    def serving_lines(self) -> list[str]:
        return [line for line in list(self.stderr) if "serving on port" in line]

    def terminate(self, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM, then the exit code (killed and failed after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"no exit {timeout} s after SIGTERM:\n{self.log()}") from None

    def log(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)


def _pump(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


@contextlib.contextmanager
def serve_process(
    database_url: str,
    redis_url: str,
    data_dir: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """``python -m processor.cli serve --demo`` on free loopback ports, with the test's
    database and a cache prefix of its own; waits until every worker serves."""
    listen, metrics_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LOYALTY_") and key != metrics.MULTIPROC_DIR_ENV
    }
    prefix = f"t-{uuid.uuid4().hex[:16]}:"
    environment.update(
        LOYALTY_DATABASE_URL=database_url,
        LOYALTY_REDIS_URL=redis_url,
        LOYALTY_CACHE_KEY_PREFIX=prefix,
        LOYALTY_DEMO_CARDS=str(DEMO_CARDS),
        LOYALTY_FLUSH_INTERVAL_MS="1",
        PYTHONUNBUFFERED="1",
    )
    environment.update(env or {})
    command = [
        sys.executable, "-m", "processor.cli", "serve", "--demo",
        "--workers", str(workers), "--listen", listen, "--metrics-listen", metrics_listen,
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = ServerProcess(process, listen, metrics_listen, data_dir)
    pumps = [
        threading.Thread(target=_pump, args=(process.stdout, server.stdout), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, server.stderr), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    try:
        deadline = time.monotonic() + READY_SECONDS
        while len(server.serving_lines()) < workers:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pump in pumps:
            pump.join(5)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        with contextlib.suppress(Exception):
            asyncio.run(_flush_prefix(redis_url, prefix))


async def _flush_prefix(redis_url: str, prefix: str) -> None:
    async with AccountCache.from_url(redis_url, key_prefix=prefix) as cache:
        await cache.flush()


async def post_purchases(
    address: str,
    accounts: Sequence[str],
    calls: int,
    *,
    channel_count: int = 8,
    tag: str = "",
    key: str = DEMO_KEYS["Processor"],
) -> dict[str, str]:
    """``calls`` purchases spread over the accounts and channels, sending ``key`` (by
    default the demo's, which a ``serve --demo`` accepts); request id -> status name."""
    opened = channels(address, channel_count)
    stubs = [keyed(proto.transactions_grpc.TransactionServiceStub, one, key) for one in opened]
    tag = tag or uuid.uuid4().hex[:8]

    async def one(index: int) -> tuple[str, str]:
        request_id = f"m-{tag}-{index}"
        stub = stubs[index % len(stubs)]
        try:
            await stub.PostTransaction(
                purchase(accounts[index % len(accounts)], request_id), timeout=20
            )
        except grpc.aio.AioRpcError as error:
            return request_id, error.code().name
        return request_id, "OK"

    try:
        return dict(await asyncio.gather(*(one(index) for index in range(calls))))
    finally:
        for channel in opened:
            await channel.close()


@dataclass
class InProcess:
    running: Running
    demo: DemoSummary
    channel: Any
    key: str  # an API key with every role

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def cards(self) -> list[str]:
        return demo_cards(self.demo.first_card, DEMO_CARDS)


@contextlib.asynccontextmanager
async def in_process_server(
    database_url: str, redis_url: str, *, grace_seconds: float = 5.0
) -> AsyncIterator[InProcess]:
    """The demo in ``database_url``'s schema, served in this process on a free port and
    stopped on the way out (within ``grace_seconds``), also when the body fails."""
    async with Store(database_url, pool_size_max=2) as store:
        catalog = Catalog(store)
        demo = await load_demo(catalog, ProgramRegistry(catalog), cards=DEMO_CARDS)
    prefix = f"t-{uuid.uuid4().hex[:16]}:"
    settings = Settings(
        listen="127.0.0.1:0", metrics_listen="", cache_key_prefix=prefix, flush_interval_ms=1
    )
    running = await start(settings, database_url, redis_url)
    key = await key_with_every_role(database_url)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield InProcess(running, demo, channel, key)
    finally:
        await channel.close()
        await running.stop(grace_seconds)
        with contextlib.suppress(Exception):
            await _flush_prefix(redis_url, prefix)


# --------------------------------------------------------------------------- the contract


def test_every_metric_is_declared_with_help_units_and_bounded_labels() -> None:
    allowed = {
        "grpc_service", "grpc_method", "grpc_type", "grpc_code", "reason", "code",
        "program", "outcome", "level", "kind", "job_name", "sender",
    }  # fmt: skip
    names = set()
    for metric in metrics.DECLARED:
        (family,) = metric.describe()
        assert family.documentation.strip(), family.name
        assert set(metric._labelnames) <= allowed, (family.name, metric._labelnames)
        if family.type == "counter":
            names.add(family.name + "_total")
        else:
            names.add(family.name)
    for name in names:
        assert not re.search(r"card|customer|account|request_id", name), name
        assert not name.endswith(("_ms", "_milliseconds")), name
    assert {
        "grpc_server_started_total", "grpc_server_handled_total",
        "grpc_server_handling_seconds", "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total", "loyalty_transactions_total",
        "loyalty_points_issued_total", "loyalty_points_redeemed_total",
        "loyalty_awards_issued_total", "loyalty_awards_redeemed_total",
        "loyalty_level_moves_total", "loyalty_tender_value_total", "loyalty_batch_size",
        "loyalty_batch_wait_seconds", "loyalty_engine_seconds", "loyalty_commit_seconds",
        "loyalty_concurrency_retries_total", "loyalty_cache_hits_total",
        "loyalty_cache_misses_total", "loyalty_cache_errors_total", "loyalty_db_pool_in_use",
        "loyalty_db_pool_waiting", "loyalty_queue_depth", "loyalty_requests_rejected_total",
    } <= names  # fmt: skip
    exported = metrics.exported_names()
    assert {
        "loyalty_commit_seconds_bucket",
        "loyalty_commit_seconds_sum",
        "loyalty_commit_seconds_count",
    } <= exported
    assert "loyalty_transactions_total" in exported and "loyalty_queue_depth" in exported


def test_latency_buckets_start_below_a_millisecond_and_mark_the_objective() -> None:
    assert metrics.LATENCY_BUCKETS_SECONDS[0] < 0.001
    assert 0.2 in metrics.LATENCY_BUCKETS_SECONDS
    assert list(metrics.LATENCY_BUCKETS_SECONDS) == sorted(metrics.LATENCY_BUCKETS_SECONDS)
    assert metrics.STAGE_BUCKETS_SECONDS[0] < 0.001


def test_gauges_aggregate_across_workers_sensibly() -> None:
    for gauge in (metrics.QUEUE_DEPTH, metrics.DB_POOL_IN_USE, metrics.DB_POOL_WAITING):
        assert gauge._multiprocess_mode == "livesum"
    assert metrics.CACHE_CIRCUIT_OPEN._multiprocess_mode == "max"


def test_record_results_counts_business_metrics_by_bounded_labels() -> None:
    state = AccountState("6001200000000010")
    state.loyalty["points"] = LoyaltyAccount("points", "gold", 0, 0, 0)
    coupon = Award("CPN-1", "coupon", "r-coupon", "points", 0, None, 0)
    state.loyalty["points"].awards.append(coupon)
    approved = Result(
        "t-1",
        state.account,
        postings=[
            Posting("points", 1, "points", "regular", 150, "r-1"),
            Posting("points", 1, "points", "bonus", 50, "r-2"),
            Posting("points", 1, "points", "award_cost", -100, "r-coupon"),
            Posting("gift", 1, "tender", "activate", 5000),
            Posting("gift", 1, "tender", "redeem", -1200),
            Posting("gift", 1, "tender", "merge_in", 700),
            Posting("ecash", 1, "award_value", "redeem", -300),
        ],
        awards=[AwardIssue("CPN-2", "coupon", "r-coupon", "points", 0, 100, None)],
        redeemed=["CPN-1"],
        moves=[LevelMove("points", "up", "advancement", "silver", "gold")],
    )
    declined = Result("t-2", state.account, status="declined", reason="INSUFFICIENT_BALANCE")
    program = SimpleNamespace(id="demo-metrics")
    approved_labels = {"program": "demo-metrics", "outcome": "approved", "reason": ""}
    declined_labels = {**approved_labels, "outcome": "declined", "reason": "INSUFFICIENT_BALANCE"}
    gold = {"program": "points", "level": "gold"}
    watched = [
        ("loyalty_transactions_total", approved_labels, 1),
        ("loyalty_transactions_total", declined_labels, 1),
        ("loyalty_points_issued_total", {**gold, "kind": "regular"}, 150),
        ("loyalty_points_issued_total", {**gold, "kind": "bonus"}, 50),
        ("loyalty_points_redeemed_total", {**gold, "kind": "award_cost"}, 100),
        (
            "loyalty_tender_value_total",
            {"program": "gift", "kind": "issued"},
            5000,
        ),  # merge_in left out
        ("loyalty_tender_value_total", {"program": "gift", "kind": "redeemed"}, 1200),
        ("loyalty_awards_issued_total", {"program": "points", "kind": "coupon"}, 1),
        ("loyalty_awards_redeemed_total", {"program": "points", "kind": "coupon"}, 1),
        ("loyalty_awards_redeemed_total", {"program": "ecash", "kind": "e_award"}, 1),
        ("loyalty_level_moves_total", {"program": "points", "kind": "advancement"}, 1),
    ]
    before = [registry_value(name, **labels) for name, labels, _ in watched]

    metrics.record_results(
        [(approved, program), (declined, program)], metrics.StateHoldings({state.account: state})
    )

    for (name, labels, expected), earlier in zip(watched, before, strict=True):
        assert registry_value(name, **labels) - earlier == expected, (name, labels)


def test_use_multiprocess_sends_values_to_the_directory(tmp_path: Path) -> None:
    # In a fresh interpreter: the switch is process-wide and this one serves other tests.
    stale = tmp_path / "counter_1.db"
    stale.write_bytes(b"stale")
    script = f"""
from pathlib import Path
from processor.runtime import metrics
metrics.use_multiprocess(Path({str(tmp_path)!r}))
metrics.CONCURRENCY_RETRIES.inc(3)
metrics.REJECTED_QUEUE_FULL.inc()
metrics.QUEUE_DEPTH.set(7)
metrics.TRANSACTIONS.labels("p", "approved", "").inc(2)
"""
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60)
    assert not stale.exists()
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("loyalty_concurrency_retries_total") == 3
    assert (
        registry.get_sample_value("loyalty_requests_rejected_total", {"reason": "queue_full"}) == 1
    )
    assert registry.get_sample_value("loyalty_queue_depth") == 7
    labels = {"program": "p", "outcome": "approved", "reason": ""}
    assert registry.get_sample_value("loyalty_transactions_total", labels) == 2


# --------------------------------------------------------------------------- one process


@pytest.mark.integration
async def test_a_served_call_records_grpc_business_and_batch_metrics(
    schema_url: str, redis_url: str
) -> None:
    unary = {"grpc_service": SERVICE, "grpc_method": "PostTransaction", "grpc_type": "unary"}
    bidi = {
        "grpc_service": SERVICE,
        "grpc_method": "StreamTransactions",
        "grpc_type": "bidi_stream",
    }
    watched = {
        "ok": ("grpc_server_handled_total", {**unary, "grpc_code": "OK"}),
        "not_found": ("grpc_server_handled_total", {**unary, "grpc_code": "NotFound"}),
        "started": ("grpc_server_started_total", unary),
        "received": ("grpc_server_msg_received_total", unary),
        "sent": ("grpc_server_msg_sent_total", unary),
        "timed": ("grpc_server_handling_seconds_count", unary),
        "reason": (
            "grpc_server_errors_total",
            {
                "grpc_service": SERVICE,
                "grpc_method": "PostTransaction",
                "grpc_code": "NotFound",
                "reason": "UNKNOWN_CARD",
                "code": "",
            },
        ),
        "stream_ok": ("grpc_server_handled_total", {**bidi, "grpc_code": "OK"}),
        "stream_in": ("grpc_server_msg_received_total", bidi),
        "stream_out": ("grpc_server_msg_sent_total", bidi),
        "approved": (
            "loyalty_transactions_total",
            {"program": "northwind", "outcome": "approved", "reason": ""},
        ),
        "points": ("loyalty_points_issued_total", {}),
        "batched": ("loyalty_batch_size_sum", {}),
        "commits": ("loyalty_commit_seconds_count", {}),
        "engine": ("loyalty_engine_seconds_count", {}),
        "cache_lookups": ("loyalty_cache_hits_total", {}),
        "cache_misses": ("loyalty_cache_misses_total", {}),
    }

    def values() -> dict[str, float]:
        result = {}
        for key, (name, labels) in watched.items():
            if labels:
                result[key] = registry_value(name, **labels)
            else:  # every series of the family
                result[key] = sum(
                    sample.value
                    for family in metrics.REGISTRY.collect()
                    for sample in family.samples
                    if sample.name == name
                )
        return result

    async with in_process_server(schema_url, redis_url) as served:
        before = values()
        stub = keyed(proto.transactions_grpc.TransactionServiceStub, served.channel, served.key)
        cards = served.cards
        card_cache = served.running.pipeline.card_cache
        assert card_cache is not None
        while not card_cache.listening:  # so the replay's card is held once looked up
            await asyncio.sleep(0.01)
        for index in range(5):
            await stub.PostTransaction(purchase(cards[index], f"unary-{index}"), timeout=10)
        await stub.PostTransaction(purchase(cards[0], "unary-0"), timeout=10)  # a replay
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.PostTransaction(purchase("6001209999999999", "unknown-1"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND

        async def requests() -> AsyncIterator[Any]:
            for index in range(3):
                yield proto.transactions.StreamTransactionsRequest(
                    transaction=transaction(cards[5 + index], f"stream-{index}")
                )

        answers = [answer async for answer in stub.StreamTransactions(requests(), timeout=10)]
        assert len(answers) == 3
    after = values()  # the server stopped: its sampler copied the cache counters one last time
    delta = {key: after[key] - before[key] for key in watched}

    assert delta["ok"] == 6 and delta["not_found"] == 1
    assert delta["started"] == delta["received"] == delta["timed"] == 7
    assert delta["sent"] == 6
    assert delta["reason"] == 1
    assert delta["stream_ok"] == 1 and delta["stream_in"] == 3 and delta["stream_out"] == 3
    assert delta["approved"] == 8  # the replay is answered but never counted again
    assert delta["points"] > 0
    assert delta["batched"] == 5 + 1 + 1 + 3  # the replay and the unknown card are batched too
    assert delta["commits"] >= 1 and delta["engine"] >= 1
    # Only a batch of held cards asks the cache (the replay's: its card was held since its
    # first call); a looked-up batch reads its states with its lookup.
    assert delta["cache_lookups"] + delta["cache_misses"] == 1


# --------------------------------------------------------------------------- several workers


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_serve_one_metrics_endpoint_that_adds_them_up(
    fresh_schema_url: str, redis_url: str, tmp_path: Path
) -> None:
    calls = 64
    data_dir = tmp_path / "data"
    with serve_process(fresh_schema_url, redis_url, data_dir, workers=2) as server:
        cards = demo_cards(server.first_card, DEMO_CARDS)
        outcomes = asyncio.run(post_purchases(server.listen, cards, calls, channel_count=16))
        assert list(outcomes.values()) == ["OK"] * calls
        time.sleep(metrics.SAMPLE_INTERVAL_SECONDS + 0.3)  # one sampling round of the gauges
        text = server.scrape()

        unary = {"grpc_service": SERVICE, "grpc_method": "PostTransaction", "grpc_type": "unary"}
        assert sample_value(text, "grpc_server_handled_total", **unary, grpc_code="OK") == calls
        assert sample_value(text, "grpc_server_started_total", **unary) == calls
        assert sample_value(text, "grpc_server_msg_received_total", **unary) == calls
        assert sample_value(text, "grpc_server_msg_sent_total", **unary) == calls
        assert sample_value(text, "grpc_server_handling_seconds_count", **unary) == calls
        assert sample_value(text, "loyalty_transactions_total", outcome="approved") == calls
        assert sample_value(text, "loyalty_points_issued_total") > 0
        assert sample_value(text, "loyalty_batch_size_sum") == calls
        assert sample_value(text, "loyalty_commit_seconds_count") >= 2
        assert sample_value(text, "loyalty_queue_depth") == 0
        assert sample_value(text, "loyalty_db_pool_waiting") == 0
        assert "process_cpu_seconds_total" not in text  # per-process collectors: not here

        # Each worker wrote its own files, and both served some of the calls.
        directory = data_dir / "metrics"
        per_worker = {}
        for path in directory.glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            if pid == server.process.pid:
                continue
            registry_of_one = _registry_of([path])
            per_worker[pid] = registry_of_one.get_sample_value(
                "grpc_server_handled_total", {**unary, "grpc_code": "OK"}
            )
        assert len(per_worker) == 2, per_worker
        assert all(handled and handled > 0 for handled in per_worker.values()), per_worker
        assert sum(value or 0 for value in per_worker.values()) == calls

        if PROMTOOL:
            checked = subprocess.run(
                [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr

        code = server.terminate()
        assert code == 0, server.log()
    # The workers were marked dead: their live-summed gauges are gone, counters stay.
    worker_gauges = [directory / f"gauge_livesum_{pid}.db" for pid in per_worker]
    assert not [path for path in worker_gauges if path.exists()]
    assert len(list(directory.glob("counter_*.db"))) >= 2


def _registry_of(paths: Sequence[Path]) -> Any:
    """A registry over some of a multiprocess directory's files."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    class Files:
        def collect(self) -> list[Metric]:
            return list(MultiProcessCollector.merge([str(path) for path in paths]))

    registry = CollectorRegistry()
    registry.register(Files())
    return registry


def test_every_method_has_its_series_at_zero_before_its_first_call_with_canonical_codes() -> None:
    # Names of this test's own: the registry is the process's, and other tests call the
    # contract's methods.
    metrics.initialize_methods([("/zero.Test/Once", False, False), ("/zero.Test/Both", True, True)])
    unary = {"grpc_service": "zero.Test", "grpc_method": "Once", "grpc_type": "unary"}
    for name in ("grpc_server_started_total", "grpc_server_msg_received_total"):
        assert metrics.REGISTRY.get_sample_value(name, unary) == 0
    handled = {**unary, "grpc_code": "OK"}
    assert metrics.REGISTRY.get_sample_value("grpc_server_handled_total", handled) == 0
    stream = {"grpc_service": "zero.Test", "grpc_method": "Both", "grpc_type": "bidi_stream"}
    assert metrics.REGISTRY.get_sample_value("grpc_server_started_total", stream) == 0
    # gRPC's canonical code names, as the ecosystem's dashboards and alerts match them.
    assert metrics.CODE_NAMES[grpc.StatusCode.INVALID_ARGUMENT] == "InvalidArgument"
    assert metrics.CODE_NAMES[grpc.StatusCode.CANCELLED] == "Canceled"
    assert metrics.CODE_NAMES[grpc.StatusCode.DEADLINE_EXCEEDED] == "DeadlineExceeded"
    assert len(set(metrics.CODE_NAMES.values())) == len(grpc.StatusCode)


def test_every_metric_is_grpc_s_conventional_or_carries_the_loyalty_prefix() -> None:
    # In a shared Prometheus the processor's series must not mix with other programs'.
    for metric in metrics.DECLARED:
        (family,) = metric.describe()
        assert family.name.startswith(("grpc_server_", "loyalty_")), family.name


async def test_the_probes_stop_when_a_probe_swallows_their_cancel() -> None:
    # asyncio.wait_for (Python 3.11) and drivers can take a cancel in and return: the loop
    # must stop all the same, or a stopping server waits for it for ever.
    class Swallowing:
        async def probe(self) -> bool:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                return False
            return True

    probes = asyncio.ensure_future(metrics.run_probes(Swallowing(), None, interval_seconds=0.01))
    await asyncio.sleep(0.05)
    probes.cancel()
    await asyncio.wait_for(asyncio.gather(probes, return_exceptions=True), 10)
    assert probes.cancelled()


class _Handler:
    request_streaming = False
    response_streaming = False


class _Deadline:
    """A call's context whose deadline left it ``budget`` seconds when it arrived and has
    passed by the time it ends."""

    def __init__(self, budget: float) -> None:
        self.remaining = [budget]

    def time_remaining(self) -> float:
        return self.remaining.pop(0) if self.remaining else -0.001

    def code(self) -> None:
        return None


@pytest.mark.parametrize(
    ("budget", "method", "counted"),
    [(0.05, "Short", 1.0), (0.199, "JustUnder", 1.0), (0.2, "AtTheObjective", 0.0),
     (2.0, "Long", 0.0)],
)  # fmt: skip
def test_a_deadline_shorter_than_the_latency_objective_is_counted_as_the_clients(
    budget: float, method: str, counted: float
) -> None:
    async def runs_out_of_time(request: Any, context: Any) -> Any:
        raise asyncio.CancelledError  # what grpc does to a call whose deadline passed

    wrapped = metrics.measuring(f"/deadline.Test/{method}", _Handler())(runs_out_of_time)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(wrapped(object(), _Deadline(budget)))
    labels = {"grpc_service": "deadline.Test", "grpc_method": method}
    handled = {**labels, "grpc_type": "unary", "grpc_code": "DeadlineExceeded"}
    assert registry_value("grpc_server_handled_total", **handled) == 1.0  # still recorded
    assert registry_value("loyalty_client_deadline_exceeded_total", **labels) == counted
    # Its series exists at zero before the first call, as every method's.
    metrics.initialize_methods([("/deadline.Test/Unused", False, False)])
    unused = {"grpc_service": "deadline.Test", "grpc_method": "Unused"}
    assert metrics.REGISTRY.get_sample_value("loyalty_client_deadline_exceeded_total", unused) == 0
    # And the DeadlineExceeded count it is part of: the availability rules subtract the one
    # from the other, so neither may appear without the other.
    expired = {**unused, "grpc_type": "unary", "grpc_code": "DeadlineExceeded"}
    assert metrics.REGISTRY.get_sample_value("grpc_server_handled_total", expired) == 0

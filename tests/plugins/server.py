"""A served processor: the demo program in the test's own schema, behind a real gRPC server.

Load with ``-p plugins.server`` (``tests/`` on the path; it needs ``plugins.postgres`` and
``plugins.redis``). Fixtures:

- ``demo_summary``: the demo program with :data:`DEMO_CARDS` cards loaded into ``schema_url``
  (its :class:`~processor.tools.demo.DemoSummary`); ``cards``: their numbers, in order.
- ``served``: that schema served in-process on a free loopback port
  (:func:`processor.service.server.start`) with a cache key prefix of its own, an open
  ``grpc.aio`` channel and a stub for each service. Everything is stopped and the
  prefix's cache keys removed after the test.
- ``start_served``: a factory for servers with other settings, a second server on the same
  schema, or a restart, each stopped after the test.

Every server asks for credentials like any deployment: the fixtures store an API key with
every role in the schema (:func:`key_with_every_role`) and the channels they open send it
through their stubs (:func:`keyed`); tests of authentication make stubs of their own.

:class:`ThreadedServer` serves on a loop of its own thread, for synchronous clients.

Helpers: :func:`purchase` builds a ``PostTransactionRequest`` for a purchase,
:func:`line` one of its lines, :func:`context` a ``RequestContext``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from processor import proto
from processor.cache.accounts import AccountCache
from processor.cards import card_number
from processor.flow.registry import ProgramRegistry
from processor.runtime.settings import Settings
from processor.service.roles import ROLES
from processor.service.server import Running, start
from processor.store import Store
from processor.store.catalog import Catalog
from processor.store.credentials import Credentials
from processor.tools.demo import DemoSummary, load_demo

common = proto.common
transactions = proto.transactions

DEMO_CARDS = 50
LOCAL_TIME = "2026-03-03T10:00:00"  # a Tuesday morning: no weekend bonus
LOCATION = "S002"  # an outlet, not a "visit" store: no daily-visit points, no gold bonus
GRACE_SECONDS = 5.0


@dataclass
class Served:
    """One running server with a client channel and a stub per service."""

    running: Running
    demo: DemoSummary
    channel: grpc.aio.Channel
    settings: Settings
    database_url: str
    redis_url: str
    transactions: Any = None
    tender: Any = None
    awards: Any = None
    admin: Any = None
    key: str = ""  # an API key with every role, which the channel sends
    channel_closed: bool = field(default=False)
    server_stopped: bool = field(default=False)

    def __post_init__(self) -> None:
        self.transactions = keyed(
            proto.transactions_grpc.TransactionServiceStub, self.channel, self.key
        )
        self.tender = keyed(proto.tender_grpc.TenderServiceStub, self.channel, self.key)
        self.awards = keyed(proto.awards_grpc.AwardServiceStub, self.channel, self.key)
        self.admin = keyed(proto.admin_grpc.AdminServiceStub, self.channel, self.key)

    @property
    def store(self) -> Store:
        """The server's own store (for ledger sums and reconcile)."""
        return self.running.store

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def stop_server(self, grace_seconds: float = GRACE_SECONDS) -> None:
        """What SIGTERM does to ``loyalty serve``: NOT_SERVING, refuse new calls, let
        in-flight ones finish within the grace period, drain the batcher, close."""
        if not self.server_stopped:
            self.server_stopped = True
            await self.running.stop(grace_seconds)

    async def stop(self) -> None:
        """Close the channel and stop the server (in-flight batches commit first)."""
        try:
            if not self.channel_closed:
                self.channel_closed = True
                await self.channel.close()
        finally:
            await self.stop_server()


StartServed = Callable[..., Awaitable[Served]]


def context(
    account: str,
    request_id: str,
    local_time: str = LOCAL_TIME,
    *,
    location: str = LOCATION,
    **fields: Any,
) -> Any:
    """A RequestContext for one card."""
    return common.RequestContext(
        request_id=request_id,
        account=account,
        local_time=local_time,
        location=location,
        **fields,
    )


def line(number: int, amount: int, *, item: str = "", quantity: int = 1, **fields: Any) -> Any:
    """A purchase line: ``amount`` minor units (12000 is $120.00)."""
    return common.Line(
        number=number,
        item=item or f"ITEM-{number}",
        amount=amount,
        quantity=quantity,
        hierarchy=fields.pop("hierarchy", ["APPAREL"]),
        **fields,
    )


def purchase(
    account: str,
    request_id: str,
    local_time: str = LOCAL_TIME,
    lines: Sequence[Any] | None = None,
    *,
    location: str = LOCATION,
    currency: str = "USD",
    context_fields: dict[str, Any] | None = None,
    **purchase_fields: Any,
) -> Any:
    """A PostTransactionRequest for a purchase (one $10.00 line unless ``lines`` are given)."""
    return transactions.PostTransactionRequest(
        transaction=transaction(
            account,
            request_id,
            local_time,
            lines,
            location=location,
            currency=currency,
            context_fields=context_fields,
            **purchase_fields,
        )
    )


def transaction(
    account: str,
    request_id: str,
    local_time: str = LOCAL_TIME,
    lines: Sequence[Any] | None = None,
    *,
    location: str = LOCATION,
    currency: str = "USD",
    context_fields: dict[str, Any] | None = None,
    **purchase_fields: Any,
) -> Any:
    """The Transaction of a purchase, for PostTransactions and streams."""
    return transactions.Transaction(
        context=context(
            account, request_id, local_time, location=location, **(context_fields or {})
        ),
        purchase=transactions.Purchase(
            currency=currency,
            lines=list(lines) if lines is not None else [line(1, 1000)],
            **purchase_fields,
        ),
    )


class KeyedStub:
    """A stub whose every call sends ``x-api-key`` (unless the call sends metadata with its
    own). Metadata per call, not a client interceptor: grpc.aio's stream interceptors fail
    streams that end early."""

    def __init__(self, stub: Any, key: str) -> None:
        self._stub = stub
        self._key = key

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        key = self._key

        def call(*args: Any, **kwargs: Any) -> Any:
            metadata = list(kwargs.pop("metadata", None) or ())
            if not any(header == "x-api-key" for header, _ in metadata):
                metadata.append(("x-api-key", key))
            return method(*args, metadata=metadata, **kwargs)

        return call


def keyed(stub_class: Any, channel: Any, key: str) -> KeyedStub:
    """``stub_class(channel)`` whose every call sends ``key``."""
    return KeyedStub(stub_class(channel), key)


class _SendsKeySync(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``x-api-key`` to every call of a synchronous channel."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("x-api-key", self.key)]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready, details.compression,
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, *fields: Any) -> None:
        (
            self.method, self.timeout, self.metadata, self.credentials,
            self.wait_for_ready, self.compression,
        ) = fields  # fmt: skip


def keyed_sync_channel(channel: Any, key: str) -> Any:
    """A synchronous ``channel`` whose every unary and bidirectional call sends ``key``."""
    return grpc.intercept_channel(channel, _SendsKeySync(key))


async def key_with_every_role(database_url: str) -> str:
    """A new API key holding every role, stored in the schema ``database_url`` names."""
    async with Store(database_url, pool_size_max=1) as store:
        _, key = await Credentials(store).create_key("tests", list(ROLES))
    return key


async def load_demo_into(database_url: str, cards: int = DEMO_CARDS) -> DemoSummary:
    """Load the demo program and ``cards`` cards into the schema ``database_url`` names."""
    async with Store(database_url, pool_size_max=2) as store:
        catalog = Catalog(store)
        return await load_demo(catalog, ProgramRegistry(catalog), cards=cards)


def unique_prefix() -> str:
    """A cache key prefix of one test's servers (at most 32 characters)."""
    return f"t-{uuid.uuid4().hex[:16]}:"


async def flush_prefix(redis_url: str, prefix: str) -> int:
    """Remove every cache key under ``prefix``; how many there were."""
    async with AccountCache.from_url(redis_url, key_prefix=prefix) as cache:
        return await cache.flush()


def loyalty(*args: str, database_url: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    """Run the ``loyalty`` command line against ``database_url`` and ``redis_url``."""
    environment = {
        **os.environ,
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_REDIS_URL": redis_url,
        "LOYALTY_CACHE_KEY_PREFIX": unique_prefix(),
    }
    return subprocess.run(
        [sys.executable, "-m", "processor.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


class ThreadedServer:
    """The processor served on an event loop of its own, in a daemon thread, for tests
    that drive it with a synchronous client (hypothesis runs every example in one server).
    ``start`` loads the demo into ``database_url`` first; ``overrides`` are settings."""

    def __init__(self, database_url: str, redis_url: str, **overrides: Any) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.overrides = overrides
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: Running | None = None
        self.demo: DemoSummary | None = None
        self.first_card = ""
        self.key = ""

    def run(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(120)

    def start(self) -> str:
        """Load the demo, serve it; the address to call."""
        self.thread.start()
        self.demo = self.run(load_demo_into(self.database_url))
        self.first_card = self.demo.first_card
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "metrics_listen": "",
            "cache_key_prefix": unique_prefix(),
            "flush_interval_ms": 1,
        }
        values.update(self.overrides)
        self.running = self.run(start(Settings(**values), self.database_url, self.redis_url))
        self.key = self.run(key_with_every_role(self.database_url))
        return f"127.0.0.1:{self.running.port}"

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata a synchronous call sends: the key with every role."""
        return (("x-api-key", self.key),)

    def stop(self) -> None:
        try:
            if self.running is not None:
                self.run(self.running.stop(5.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


@pytest_asyncio.fixture
async def demo_summary(schema_url: str) -> DemoSummary:
    """The demo program and :data:`DEMO_CARDS` cards, loaded into the test's schema."""
    return await load_demo_into(schema_url)


@pytest.fixture
def cards(demo_summary: DemoSummary) -> list[str]:
    """The demo cards' numbers, in order (the first three are registered to customers)."""
    return demo_cards(demo_summary)


def demo_cards(demo: DemoSummary) -> list[str]:
    """The numbers of a demo load's cards, in order."""
    first = demo.first_cards[0]
    prefix, sequence = first[:5], int(first[5:-1])
    return [card_number(prefix, sequence + index, len(first)) for index in range(demo.cards)]


@pytest_asyncio.fixture
async def start_served(
    schema_url: str, redis_url: str, demo_summary: DemoSummary
) -> AsyncIterator[StartServed]:
    """``await start_served(**settings)``: a server on the test's schema (or on
    ``database_url``, a way to the same schema) and Redis (or ``cache_url``). Defaults:
    port 0, no metrics, a flush interval of 1 ms and one cache key prefix for every server of
    the test."""
    started: list[Served] = []
    prefixes: set[str] = set()
    default_prefix = unique_prefix()

    async def make(
        *, database_url: str | None = None, cache_url: str | None = None, **overrides: Any
    ) -> Served:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "metrics_listen": "",
            "cache_key_prefix": default_prefix,
            "flush_interval_ms": 1,
        }
        values.update(overrides)
        settings = Settings(**values)
        prefixes.add(settings.cache_key_prefix)
        url, cache = database_url or schema_url, cache_url or redis_url
        running = await start(settings, url, cache)
        key = await Credentials(running.store).create_key("tests", list(ROLES))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        served = Served(running, demo_summary, channel, settings, url, cache, key=key[1])
        started.append(served)
        return served

    try:
        yield make
    finally:
        for served in reversed(started):
            with contextlib.suppress(Exception):
                await served.stop()
        for prefix in prefixes:
            with contextlib.suppress(Exception):
                await flush_prefix(redis_url, prefix)


@pytest_asyncio.fixture
async def served(start_served: StartServed) -> Served:
    """The demo program with 50 cards, served in-process on a free port."""
    return await start_served()

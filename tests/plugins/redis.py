"""Redis fixtures: the server the environment names, or real embedded ones.

Load with ``-p plugins.redis`` (``tests/`` on the path). Fixtures:

- ``redis_url`` (session): ``LOYALTY_REDIS_URL`` when set, else an embedded Valkey started in
  a temporary directory for the session. The server is probed once; an unreachable server
  named by the environment fails the session's first test that needs it, with the URL.
- ``cluster_url`` (session): ``LOYALTY_REDIS_CLUSTER_URL`` when set, else an embedded Redis
  Cluster (3 masters) on loopback ports. Tests using it are marked ``integration``.
- ``redis_key_prefix`` (session): a key prefix unique to this test run, so runs sharing one
  server (two developers, two CI jobs) never see each other's keys; nothing here ever
  flushes a whole database.
- ``cache`` / ``cluster_cache``: an :class:`~processor.cache.accounts.AccountCache` under that
  prefix,
  emptied of its own keys and closed after each test.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis

from processor.cache.accounts import AccountCache
from processor.runtime.embedded import valkey

REDIS_URL_ENV = "LOYALTY_REDIS_URL"
CLUSTER_URL_ENV = "LOYALTY_REDIS_CLUSTER_URL"
PROBE_TIMEOUT_SECONDS = 2.0


def _probe(url: str, *, cluster: bool) -> None:
    """Fail with the URL when the server does not answer PING."""
    plain_url = url.replace("+cluster://", "://").replace("?cluster=1", "")
    client = redis.Redis.from_url(
        plain_url,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
        if cluster:
            state = client.cluster("INFO").get("cluster_state")
            if state != "ok":
                pytest.fail(f"the Redis Cluster at {url} reports cluster_state:{state}")
    except redis.RedisError as error:
        pytest.fail(f"Redis at {url} does not answer: {error}", pytrace=False)
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone Redis-protocol server for the session."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        _probe(url, cluster=False)
        yield url
        return
    server = valkey.start(tmp_path_factory.mktemp("valkey"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster for the session (``redis+cluster://`` URL naming one node)."""
    url = os.environ.get(CLUSTER_URL_ENV)
    if url:
        _probe(url, cluster=True)
        yield url
        return
    cluster = valkey.start_cluster(tmp_path_factory.mktemp("valkey-cluster"))
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_key_prefix() -> str:
    """A key prefix unique to this test run."""
    return f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}:"


# The cache's own limits (100 ms to connect, 0.5 s an operation) are for a dead Redis; in
# tests of a healthy one, on a loaded machine, they would turn a slow moment into a miss.
HEALTHY_SERVER_TIMEOUTS: dict[str, object] = {
    "socket_connect_timeout_seconds": 5.0,
    "socket_timeout_seconds": 5.0,
    "operation_timeout_seconds": 10.0,
}


@contextlib.asynccontextmanager
async def open_cache(url: str, key_prefix: str, **options: object) -> AsyncIterator[AccountCache]:
    """An AccountCache on ``url`` whose keys are removed and connections closed on exit;
    generous timeouts unless ``options`` name others."""
    cache = AccountCache.from_url(
        url, key_prefix=key_prefix, **{**HEALTHY_SERVER_TIMEOUTS, **options}
    )
    try:
        yield cache
    finally:
        try:
            await cache.flush()
        finally:
            await cache.aclose()


@pytest_asyncio.fixture
async def cache(redis_url: str, redis_key_prefix: str) -> AsyncIterator[AccountCache]:
    """An AccountCache on the standalone server, flushed after the test."""
    async with open_cache(redis_url, redis_key_prefix) as account_cache:
        yield account_cache


@pytest_asyncio.fixture
async def cluster_cache(cluster_url: str, redis_key_prefix: str) -> AsyncIterator[AccountCache]:
    """An AccountCache on the cluster, flushed after the test."""
    async with open_cache(cluster_url, redis_key_prefix) as account_cache:
        yield account_cache

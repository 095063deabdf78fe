"""The Redis account cache: versioned writes, hash-tagged keys, and life without Redis.

Every behaviour runs against a standalone server and against a Redis Cluster (``integration``);
the failure tests point the cache at a port nobody listens on, or at one that accepts and
never answers.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from plugins.redis import open_cache
from redis.crc import key_slot

from processor import cache as cache_module
from processor.cache import (
    CIRCUIT_ERRORS_MAX,
    OPERATION_TIMEOUT_SECONDS,
    VERSION_MAX,
    AccountCache,
)
from processor.embedded import valkey

STATE = bytes(range(90))  # about the size of one encoded account state


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture(
    params=["standalone", pytest.param("cluster", marks=pytest.mark.integration)]
)
async def any_cache(
    request: pytest.FixtureRequest, redis_key_prefix: str
) -> AsyncIterator[AccountCache]:
    """The cache on a standalone server, then on a Redis Cluster."""
    url_fixture = "redis_url" if request.param == "standalone" else "cluster_url"
    url = request.getfixturevalue(url_fixture)
    async with open_cache(url, redis_key_prefix) as account_cache:
        assert account_cache.cluster == (request.param == "cluster")
        yield account_cache


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


# -- round trips ------------------------------------------------------------------------


async def test_round_trip(any_cache: AccountCache) -> None:
    written = await any_cache.put_many({"1001": (3, STATE), "1002": (0, b"")})
    assert written == 2
    found = await any_cache.get_many(["1001", "1002", "missing", "1001"])
    assert found == {"1001": (3, STATE), "1002": (0, b"")}
    assert any_cache.hits_total == 2
    assert any_cache.misses_total == 1
    assert await any_cache.get_many([]) == {}
    assert await any_cache.put_many({}) == 0


async def test_many_accounts_span_several_commands(any_cache: AccountCache) -> None:
    count = cache_module.BATCH_KEYS_MAX * 2 + 17
    entries = {f"acct-{index}": (index, index.to_bytes(4, "big")) for index in range(count)}
    assert await any_cache.put_many(entries) == count
    assert await any_cache.get_many(entries) == entries
    assert await any_cache.invalidate(entries) == count
    assert await any_cache.get_many(entries) == {}


# -- versions only move forward ----------------------------------------------------------


async def test_older_version_never_overwrites_newer(any_cache: AccountCache) -> None:
    await any_cache.put_many({"7": (256, b"new")})
    assert await any_cache.put_many({"7": (255, b"old")}) == 0  # differs in the 7th byte
    assert await any_cache.put_many({"7": (1, b"older")}) == 0
    assert await any_cache.get_many(["7"]) == {"7": (256, b"new")}
    assert any_cache.stale_writes_total == 2

    assert await any_cache.put_many({"7": (256, b"new")}) == 1  # the same version: harmless
    assert await any_cache.put_many({"7": (VERSION_MAX, b"last")}) == 1
    assert await any_cache.put_many({"7": (2**32, b"mid")}) == 0
    assert await any_cache.get_many(["7"]) == {"7": (VERSION_MAX, b"last")}


async def test_mixed_batch_writes_only_the_newer_entries(any_cache: AccountCache) -> None:
    await any_cache.put_many({"a": (5, b"a5"), "b": (5, b"b5")})
    assert await any_cache.put_many({"a": (4, b"a4"), "b": (6, b"b6"), "c": (1, b"c1")}) == 2
    assert await any_cache.get_many(["a", "b", "c"]) == {
        "a": (5, b"a5"),
        "b": (6, b"b6"),
        "c": (1, b"c1"),
    }


async def test_concurrent_writers_leave_the_newest_version(
    any_cache: AccountCache, request: pytest.FixtureRequest, redis_key_prefix: str
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    accounts = [f"c{index}" for index in range(50)]
    versions = list(range(1, 21))
    url = request.getfixturevalue("cluster_url" if any_cache.cluster else "redis_url")

    async def writer(account_cache: AccountCache, order: list[tuple[str, int]]) -> None:
        for account_id, version in order:
            await account_cache.put_many({account_id: (version, f"v{version}".encode())})

    # Two caches with their own connections stand for two processes refreshing the same
    # accounts, each in its own shuffled order.
    async with open_cache(url, redis_key_prefix) as other:
        orders = []
        for _ in range(2):
            order = [(account, version) for account in accounts for version in versions]
            rng.shuffle(order)
            orders.append(order)
        await asyncio.gather(writer(any_cache, orders[0]), writer(other, orders[1]))
        assert any_cache.errors_total == other.errors_total == 0
        top = versions[-1]
        # Checked before `other` closes: closing it flushes the run's shared prefix.
        assert await other.get_many(accounts) == {
            account: (top, f"v{top}".encode()) for account in accounts
        }


# -- invalidation, TTL, keys -------------------------------------------------------------


async def test_invalidate(any_cache: AccountCache) -> None:
    await any_cache.put_many({"x": (1, b"x"), "y": (2, b"y")})
    assert await any_cache.invalidate(["x", "absent"]) == 1
    assert await any_cache.get_many(["x", "y"]) == {"y": (2, b"y")}
    assert await any_cache.invalidate([]) == 0
    # After an invalidation any version may be written again.
    assert await any_cache.put_many({"x": (0, b"x0")}) == 1


async def test_ttl_is_set_on_every_write(any_cache: AccountCache) -> None:
    await any_cache.put_many({"t": (1, STATE)})
    left = await any_cache.ttl_seconds_left("t")
    assert left is not None
    assert any_cache.ttl_seconds - 5 <= left <= any_cache.ttl_seconds
    assert await any_cache.ttl_seconds_left("absent") is None


async def test_configured_ttl(
    request: pytest.FixtureRequest, redis_key_prefix: str, any_cache: AccountCache
) -> None:
    url = request.getfixturevalue("cluster_url" if any_cache.cluster else "redis_url")
    async with open_cache(url, redis_key_prefix + "ttl:", ttl_seconds=120) as short:
        await short.put_many({"t": (1, STATE)})
        left = await short.ttl_seconds_left("t")
        assert left is not None
        assert 100 <= left <= 120


async def test_keys_carry_the_account_hash_tag(
    any_cache: AccountCache, redis_key_prefix: str
) -> None:
    key = any_cache.key("4242")
    assert key == f"{redis_key_prefix}acct:{{4242}}"
    companion = f"{key}:lots"
    assert key_slot(key.encode()) == key_slot(companion.encode()) == key_slot(b"{4242}")
    await any_cache.put_many({"4242": (1, STATE)})
    client = any_cache._client
    assert await client.exists(key) == 1
    raw = await client.get(key)
    assert raw == (1).to_bytes(8, "big") + STATE
    if any_cache.cluster:
        assert await client.cluster_keyslot(key) == key_slot(b"{4242}")


async def test_memory_per_entry(any_cache: AccountCache) -> None:
    await any_cache.put_many({"000012345678": (12, STATE)})
    usage = await any_cache.memory_usage_bytes("000012345678")
    print(f"MEMORY USAGE of one {len(STATE)}-byte state: {usage} bytes")
    assert usage is not None
    # A 98-byte string value, its key and their headers; more means the layout regressed.
    assert usage <= 200
    assert await any_cache.memory_usage_bytes("absent") is None


@pytest.mark.integration
async def test_lost_script_cache_is_reloaded(cluster_cache: AccountCache) -> None:
    # Only against the cluster the fixtures own: SCRIPT FLUSH touches the whole server.
    await cluster_cache.put_many({"s": (1, b"one")})
    await cluster_cache._client.script_flush()
    assert await cluster_cache.put_many({"s": (2, b"two"), "s2": (1, b"one")}) == 2
    assert await cluster_cache.get_many(["s"]) == {"s": (2, b"two")}
    assert cluster_cache.errors_total == 0


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        (1, "text"),
        (1, bytearray(b"x")),
        (1, None),
        (-1, b"x"),
        (VERSION_MAX + 1, b"x"),
        (True, b"x"),
        (1.0, b"x"),
        (1, b"x" * (cache_module.VALUE_BYTES_MAX + 1)),
        (1,),
        [1, b"x"],
    ],
    ids=lambda entry: repr(entry)[:24],
)
async def test_bad_entry_is_refused_and_nothing_written(cache: AccountCache, entry: object) -> None:
    with pytest.raises(ValueError):
        await cache.put_many({"good": (1, b"fine"), "bad": entry})
    assert await cache.get_many(["good", "bad"]) == {}
    assert cache.errors_total == 0


@pytest.mark.parametrize("account_id", ["", "a{b", "a}b", 42, None, "x" * 129])
async def test_bad_account_id_is_refused(cache: AccountCache, account_id: object) -> None:
    with pytest.raises(ValueError):
        await cache.put_many({account_id: (1, b"x")})
    with pytest.raises(ValueError):
        await cache.get_many([account_id])
    with pytest.raises(ValueError):
        await cache.invalidate([account_id])


@pytest.mark.parametrize("prefix", ["a{b}:", "with space", "x" * 65])
def test_bad_key_prefix_is_refused(prefix: str) -> None:
    client = aioredis.Redis()
    with pytest.raises(ValueError):
        AccountCache(client, key_prefix=prefix)


# -- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:1/2", ("redis://h:1/2", False)),
        ("valkey://h:1", ("redis://h:1", False)),
        ("redis+cluster://h:1", ("redis://h:1", True)),
        ("rediss+cluster://u:p@h:1", ("rediss://u:p@h:1", True)),
        (
            "redis://h:1?cluster=1&health_check_interval=5",
            ("redis://h:1?health_check_interval=5", True),
        ),
        ("redis://h:1?cluster=no", ("redis://h:1", False)),
    ],
)
def test_url_forms(url: str, expected: tuple[str, bool]) -> None:
    assert cache_module._parse_url(url) == expected


def test_url_with_a_bad_cluster_flag_is_refused() -> None:
    with pytest.raises(ValueError):
        cache_module._parse_url("redis://h:1?cluster=maybe")


async def test_from_url_picks_the_client() -> None:
    standalone = AccountCache.from_url("redis://127.0.0.1:1")
    clustered = AccountCache.from_url("redis://127.0.0.1:1", cluster=True)
    try:
        assert not standalone.cluster
        assert clustered.cluster
    finally:
        await standalone.aclose()
        await clustered.aclose()


# -- life without Redis ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_redis_down_reads_miss_and_writes_do_nothing(closed_port: int, scheme: str) -> None:
    clock = FakeClock()
    down = AccountCache.from_url(f"{scheme}://127.0.0.1:{closed_port}", clock=clock)
    try:
        started = time.monotonic()
        assert await down.get_many(["1", "2"]) == {}
        assert await down.put_many({"1": (1, STATE)}) == 0
        assert await down.invalidate(["1"]) == 0
        assert await down.flush() == 0
        elapsed = time.monotonic() - started
        assert elapsed < 4 * OPERATION_TIMEOUT_SECONDS
        assert down.errors_total == 4
        assert down.misses_total == 2
        assert not down.circuit_open
    finally:
        await down.aclose()


async def test_silent_redis_costs_at_most_the_timeout(silent_port: int) -> None:
    silent = AccountCache.from_url(f"redis://127.0.0.1:{silent_port}")
    try:
        started = time.monotonic()
        assert await silent.get_many(["1"]) == {}
        assert await silent.put_many({"1": (1, STATE)}) == 0
        elapsed = time.monotonic() - started
        assert elapsed < 2 * OPERATION_TIMEOUT_SECONDS + 0.5
        assert silent.errors_total == 2
    finally:
        await silent.aclose()


async def test_circuit_opens_then_closes_when_redis_returns(
    closed_port: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    clock = FakeClock()
    cooldown = 5.0
    flaky = AccountCache.from_url(
        f"redis://127.0.0.1:{closed_port}", clock=clock, circuit_cooldown_seconds=cooldown
    )
    try:
        for _ in range(CIRCUIT_ERRORS_MAX):
            assert await flaky.get_many(["1"]) == {}
        assert flaky.errors_total == CIRCUIT_ERRORS_MAX
        assert flaky.circuit_open

        # Open: Redis is not called at all.
        assert await flaky.get_many(["1"]) == {}
        assert await flaky.put_many({"1": (1, STATE)}) == 0
        assert flaky.errors_total == CIRCUIT_ERRORS_MAX
        assert flaky.skipped_total == 2

        # After the cool-down one call tries again; a failure re-opens at once.
        clock.now += cooldown
        assert not flaky.circuit_open
        assert await flaky.get_many(["1"]) == {}
        assert flaky.errors_total == CIRCUIT_ERRORS_MAX + 1
        assert flaky.circuit_open

        # Redis comes back on that port: the next try succeeds and closes the circuit.
        server = valkey.start(tmp_path_factory.mktemp("valkey-returns"), port=closed_port)
        try:
            clock.now += cooldown
            assert await flaky.put_many({"1": (1, STATE)}) == 1
            assert not flaky.circuit_open
            assert await flaky.get_many(["1"]) == {"1": (1, STATE)}
            await flaky.flush()
        finally:
            server.stop()
    finally:
        await flaky.aclose()


async def test_errors_are_logged_once_per_interval(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    down = AccountCache.from_url(
        f"redis://127.0.0.1:{closed_port}",
        clock=clock,
        circuit_errors_max=100,
        error_log_interval_seconds=30.0,
    )
    try:
        with caplog.at_level("WARNING", logger="processor.cache"):
            for _ in range(3):
                await down.get_many(["1"])
            clock.now += 30.0
            await down.get_many(["1"])
        reports = [record.getMessage() for record in caplog.records]
        assert len(reports) == 2, reports
        assert "(3 errors since the last report)" not in reports[0]
        assert "(3 errors since the last report)" in reports[1]
        assert down.errors_total == 4
    finally:
        await down.aclose()


# -- the embedded server -----------------------------------------------------------------


def test_embedded_server_is_reused_and_stopped_by_its_owner(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("valkey-own")
    owner = valkey.start(data_dir)
    try:
        assert owner.owned
        assert owner.url.startswith("redis://127.0.0.1:")
        again = valkey.start(data_dir)
        assert not again.owned
        assert (again.port, again.pid) == (owner.port, owner.pid)
        again.stop()  # not the owner: the server keeps running
        assert valkey.find_running(data_dir) is not None
        with pytest.raises(valkey.EmbeddedValkeyError):
            valkey.start(data_dir, port=owner.port + 1 if owner.port < 65535 else 1024)
    finally:
        owner.stop()
    assert valkey.find_running(data_dir) is None
    assert not valkey.stop(data_dir)


def test_embedded_server_is_stopped_from_its_data_dir(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("valkey-any")
    owner = valkey.start(data_dir)
    try:
        assert valkey.stop(data_dir)
        assert valkey.find_running(data_dir) is None
    finally:
        owner.stop()  # already gone: only cleans up

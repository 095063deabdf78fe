"""The Redis account cache: versioned writes, bucketed hash-tagged keys, life without Redis.

Every behaviour runs against a standalone server and against a Redis Cluster (``integration``);
the failure tests point the cache at a port nobody listens on, or at one that accepts and
never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from plugins.redis import REDIS_URL_ENV, open_cache
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from processor.cache import accounts as cache_module
from processor.cache import connect, entries, layout
from processor.cache.accounts import (
    CIRCUIT_ERRORS_MAX,
    LISTPACK_ENTRIES_MIN,
    LISTPACK_VALUE_BYTES_MIN,
    AccountCache,
)
from processor.cache.compression import DICTIONARY_BYTES_MAX, sample_states_dictionary
from processor.cards import card_number
from processor.engine import samples
from processor.limits import ACCOUNT_VERSION_MAX, CARD_NUMBER_STORED_CHARS_MAX
from processor.program.loader import load_program
from processor.runtime.embedded import valkey
from processor.store import codec
from processor.tools import seed

STATE = bytes(range(90))  # about the size of one encoded account state
# The size of a typical seeded state (processor.tools.seed: 123 bytes on average).
SEEDED_STATE = bytes(range(128))
DEMO_PROGRAM = Path(__file__).resolve().parents[1] / "examples" / "programs" / "demo.yaml"


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


# Script calls as the cache sends them: (sha, [(keys, argv), ...]) per pipeline.
ScriptCall = tuple[list[str], list[Any]]
Recorded = list[tuple[str, list[ScriptCall]]]


def record_script_calls(account_cache: AccountCache, monkeypatch: pytest.MonkeyPatch) -> Recorded:
    """Record every batch of EVALSHA commands the cache sends: ``(sha, [(keys, argv)])``.

    Each batch is one pipeline (or one lone command); each ``(keys, argv)`` one EVALSHA.
    """
    recorded: Recorded = []
    send = account_cache._evalsha_all

    async def recording(sha: str, calls: list[Any]) -> list[Any]:
        recorded.append((sha, list(calls)))
        return await send(sha, calls)

    monkeypatch.setattr(account_cache, "_evalsha_all", recording)
    return recorded


def read_calls(recorded: Recorded) -> list[ScriptCall]:
    """The read-script calls among the recorded ones."""
    return [call for sha, calls in recorded if sha == layout.GET_SCRIPT_SHA for call in calls]


def distinct_slots(account_cache: AccountCache, account_ids: list[str]) -> int:
    return len({key_slot(account_cache.key(account_id).encode()) for account_id in account_ids})


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
    count = layout.BATCH_ACCOUNTS_MAX * 2 + 17
    entries = {f"acct-{index}": (index, index.to_bytes(4, "big")) for index in range(count)}
    assert await any_cache.put_many(entries) == count
    assert await any_cache.get_many(entries) == entries
    assert await any_cache.invalidate(entries) == count
    assert await any_cache.get_many(entries) == {}


async def test_a_bucket_larger_than_one_command_is_split_across_commands(
    any_cache: AccountCache,
) -> None:
    # Twelve letters make 1,728 three-character fields under the one bucket "big".
    letters = "abcdefghijkl"
    fields = [a + b + c for a in letters for b in letters for c in letters]
    assert len(fields) > layout.BATCH_ACCOUNTS_MAX
    entries = {f"big{field}": (index, field.encode()) for index, field in enumerate(fields)}
    assert len({any_cache.key(account_id) for account_id in entries}) == 1
    assert await any_cache.put_many(entries) == len(entries)
    assert await any_cache.get_many(entries) == entries
    older = {account_id: (version - 1, b"old") for account_id, (version, _) in entries.items()}
    del older[f"big{fields[0]}"]  # version 0 has no older version
    assert await any_cache.put_many(older) == 0
    assert await any_cache.get_many(entries) == entries
    assert await any_cache.invalidate(entries) == len(entries)
    assert await any_cache._client.exists(any_cache.key("bigaaa")) == 0


# -- versions only move forward ----------------------------------------------------------


async def test_reads_over_many_buckets_return_what_was_written_in_one_script_call(
    any_cache: AccountCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(11)
    # 40 buckets holding 1 to 30 accounts each, scattered cards, and ids of the bucket {}.
    crowded = [
        card_number("60013", bucket * 100 + sequence, 16)
        for bucket in range(0, 4000, 100)
        for sequence in rng.sample(range(100), rng.randint(1, 30))
    ]
    scattered = [card_number("60014", rng.randrange(10**9), 16) for _ in range(60)]
    short = ["7", "42", "999"]
    entries = {
        account_id: (rng.randrange(ACCOUNT_VERSION_MAX), rng.randbytes(rng.randint(0, 200)))
        for account_id in crowded + scattered + short
    }
    assert await any_cache.put_many(entries) == len(entries)
    # Misses next to hits in written buckets, in buckets never written, and in {}.
    misses = [card_number("60013", bucket * 100 + 99, 16) for bucket in range(0, 4000, 100)]
    misses = [account_id for account_id in misses if account_id not in entries]
    misses += [card_number("60015", sequence * 100, 16) for sequence in range(20)] + ["8"]
    wanted = list(entries) + misses
    rng.shuffle(wanted)
    assert await any_cache.get_many(["warm-up"]) == {}  # loads the script on this server
    recorded = record_script_calls(any_cache, monkeypatch)

    assert await any_cache.get_many(wanted) == entries

    calls = read_calls(recorded)
    assert len(recorded) == 1  # one pipeline (or one lone command): one round trip per node
    expected_calls = distinct_slots(any_cache, wanted) if any_cache.cluster else 1
    assert len(calls) == expected_calls
    assert sorted(key for keys, _ in calls for key in keys) == sorted(
        {any_cache.key(account_id) for account_id in wanted}
    )
    assert any_cache.hits_total == len(entries)
    assert any_cache.misses_total == len(misses) + 1
    assert any_cache.errors_total == 0


async def test_reads_over_more_than_the_batch_limit_are_split(
    any_cache: AccountCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = layout.BATCH_ACCOUNTS_MAX
    # 25 full buckets of consecutive cards, every other card written: 2,500 ids to read.
    cards = [card_number("60016", sequence, 16) for sequence in range(2500)]
    entries = {card: (index, index.to_bytes(3, "big")) for index, card in enumerate(cards[::2])}
    assert await any_cache.put_many(entries) == len(entries)
    assert await any_cache.get_many(cards[:1]) == {cards[0]: entries[cards[0]]}  # loads the script
    recorded = record_script_calls(any_cache, monkeypatch)

    assert await any_cache.get_many(cards) == entries

    calls = read_calls(recorded)
    # ARGV[1] is the fields, "}" between fields of one key and "{" between keys.
    fields = [len(str(argv[0]).replace("{", "}").split("}")) for _, argv in calls]
    assert sum(fields) == len(cards)
    assert max(fields) <= limit
    if any_cache.cluster:
        assert len(calls) == distinct_slots(any_cache, cards)
    else:
        assert len(calls) == -(-len(cards) // limit)  # 3: 1,000 + 1,000 + 500
    assert any_cache.misses_total == len(cards) - len(entries)


async def test_a_stored_value_too_short_for_its_version_is_a_miss(
    any_cache: AccountCache,
) -> None:
    good = {"9001001": (5, STATE), "9001002": (0, b"")}
    assert await any_cache.put_many(good) == 2
    bucket = any_cache.key("9001001")
    # Beside them: nothing at all, a version length of 0 or above 8, fewer version bytes than
    # the length says, a length and no version. (b"\x01\x05\x00" would be version 5, no state.)
    bad = {"100": b"", "101": b"\x00abc", "102": b"\x09" + bytes(12), "103": b"\x03\x01\x02"}
    bad["104"] = b"\x01"
    for field, value in bad.items():
        await any_cache._client.hset(bucket, field, value)
    wanted = [f"9001{field}" for field in bad] + list(good)

    assert await any_cache.get_many(wanted) == good

    assert any_cache.hits_total == 2
    assert any_cache.misses_total == len(bad)
    assert any_cache.errors_total == 0


@pytest.mark.parametrize(
    "mode", ["standalone", pytest.param("cluster", marks=pytest.mark.integration)]
)
async def test_a_read_after_script_flush_reloads_the_script(
    mode: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SCRIPT FLUSH empties a whole server's script cache: only on servers this test owns (a
    # private embedded one) or the fixtures own (the cluster).
    async with contextlib.AsyncExitStack() as stack:
        if mode == "standalone":
            server = valkey.start(tmp_path_factory.mktemp("valkey-flush"))
            stack.callback(server.stop)
            url = server.url
        else:
            url = request.getfixturevalue("cluster_url")
        account_cache = await stack.enter_async_context(open_cache(url, redis_key_prefix))
        entries = {f"flush-{index}": (index, STATE) for index in range(50)}
        assert await account_cache.put_many(entries) == len(entries)
        assert await account_cache.get_many(entries) == entries  # the script is now loaded
        await account_cache._client.script_flush()
        recorded = record_script_calls(account_cache, monkeypatch)

        assert await account_cache.get_many([*entries, "flush-absent"]) == entries

        # The calls went out, missed the script, and were sent once more after SCRIPT LOAD.
        assert len(recorded) == 2
        assert recorded[0][1] == recorded[1][1]
        assert account_cache.errors_total == 0
        assert account_cache.misses_total == 1


async def test_older_version_never_overwrites_newer(any_cache: AccountCache) -> None:
    await any_cache.put_many({"7": (256, b"new")})
    assert await any_cache.put_many({"7": (255, b"old")}) == 0  # one version byte fewer
    assert await any_cache.put_many({"7": (1, b"older")}) == 0
    assert await any_cache.get_many(["7"]) == {"7": (256, b"new")}
    assert any_cache.stale_writes_total == 2

    assert await any_cache.put_many({"7": (256, b"new")}) == 1  # the same version: harmless
    assert await any_cache.put_many({"7": (ACCOUNT_VERSION_MAX, b"last")}) == 1
    assert await any_cache.put_many({"7": (2**32, b"mid")}) == 0
    assert await any_cache.get_many(["7"]) == {"7": (ACCOUNT_VERSION_MAX, b"last")}


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        (0, 1),
        (1, 2),
        (255, 256),
        (256, 257),
        (511, 65_280),  # 01ff < ff00: the same length, bytes compared in order
        (2**32 - 1, 2**32),
        (2**53, 2**53 + 1),  # where a double would call them equal
        (2**56 - 1, 2**56),
        (ACCOUNT_VERSION_MAX - 1, ACCOUNT_VERSION_MAX),
    ],
)
async def test_versions_compare_exactly_across_length_boundaries(
    any_cache: AccountCache, older: int, newer: int
) -> None:
    await any_cache.put_many({"b1": (newer, b"new")})
    assert await any_cache.put_many({"b1": (older, b"old")}) == 0
    assert await any_cache.get_many(["b1"]) == {"b1": (newer, b"new")}

    await any_cache.put_many({"b2": (older, b"old")})
    assert await any_cache.put_many({"b2": (newer, b"new")}) == 1
    assert await any_cache.get_many(["b2"]) == {"b2": (newer, b"new")}
    assert await any_cache.put_many({"b2": (newer, b"again")}) == 1  # the same version
    assert any_cache.stale_writes_total == 1


@pytest.mark.parametrize(
    ("version", "stored"),
    [
        (0, b"\x01\x00"),
        (1, b"\x01\x01"),
        (255, b"\x01\xff"),
        (256, b"\x02\x01\x00"),
        (2**32, b"\x05\x01\x00\x00\x00\x00"),
        (ACCOUNT_VERSION_MAX, b"\x08\x7f" + b"\xff" * 7),
    ],
)
async def test_version_is_stored_in_its_shortest_form(
    any_cache: AccountCache, version: int, stored: bytes
) -> None:
    await any_cache.put_many({"600120000020017": (version, STATE)})
    key, field = any_cache.location("600120000020017")
    # The version, then the format byte (0: the state as given; this cache has no dictionary).
    assert await any_cache._client.hget(key, field) == stored + b"\x00" + STATE
    assert await any_cache.get_many(["600120000020017"]) == {"600120000020017": (version, STATE)}


async def test_random_version_pairs_keep_the_larger(any_cache: AccountCache) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)

    def version() -> int:
        return rng.getrandbits(rng.randint(0, 63))

    pairs = {f"r{index:04d}": sorted((version(), version())) for index in range(300)}
    # Larger first, then smaller: every second write is refused unless they are equal.
    await any_cache.put_many({a: (high, b"high") for a, (_, high) in pairs.items()})
    equal = sum(low == high for low, high in pairs.values())
    assert await any_cache.put_many({a: (low, b"low") for a, (low, _) in pairs.items()}) == equal
    expected = {a: (high, b"low" if low == high else b"high") for a, (low, high) in pairs.items()}
    assert await any_cache.get_many(pairs) == expected


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


# -- buckets ------------------------------------------------------------------------------


# Short ids, ids sharing a prefix, ids one of which is another minus three characters.
TRICKY_IDS = [
    "1", "12", "123", "1234", "12345", "123456", "1234567", "0", "00", "000", "0000",
    "a", "ab", "abc", "abcd", "abcde", "abcdef", "abcabc", "xabc", "xxabc",
    "6001200000020", "6001200000020017", "6001200000020025", "6001200000021015",
    "600120000002", "60012000000201", "é", "éé", "ééé", "éééé", "a:b", "a:bc",
]  # fmt: skip


def test_ids_map_to_distinct_buckets_and_fields() -> None:
    cache = AccountCache(aioredis.Redis(), key_prefix="p:")
    locations = [cache.location(account_id) for account_id in TRICKY_IDS]
    assert len(set(locations)) == len(TRICKY_IDS)
    assert cache.location("12") == ("p:acct:{}", "12")
    assert cache.location("1234") == ("p:acct:{1}", "234")
    assert cache.location("6001200000020017") == ("p:acct:{6001200000020}", "017")
    for account_id, (key, field) in zip(TRICKY_IDS, locations, strict=True):
        assert key == cache.key(account_id)
        bucket = key[len("p:acct:{") : -1]
        assert bucket + field == account_id
        assert len(field) == 3 or (bucket == "" and len(field) < 3)


@given(st.lists(st.text(st.characters(exclude_characters="{}"), min_size=1, max_size=12)))
def test_any_ids_map_to_distinct_locations(account_ids: list[str]) -> None:
    cache = AccountCache(aioredis.Redis())
    distinct = set(account_ids)
    assert len({cache.location(account_id) for account_id in distinct}) == len(distinct)


async def test_tricky_ids_keep_their_own_entries(any_cache: AccountCache) -> None:
    entries = {
        account_id: (index, account_id.encode()) for index, account_id in enumerate(TRICKY_IDS)
    }
    assert await any_cache.put_many(entries) == len(entries)
    assert await any_cache.get_many(TRICKY_IDS) == entries
    assert await any_cache.invalidate(["123", "1234"]) == 2
    del entries["123"], entries["1234"]
    assert await any_cache.get_many(TRICKY_IDS) == entries


async def test_consecutive_cards_share_one_bucket(any_cache: AccountCache) -> None:
    cards = [card_number("60012", sequence, 16) for sequence in range(2000, 2100)]
    assert len({any_cache.key(card) for card in cards}) == 1
    assert any_cache.key(card_number("60012", 2100, 16)) != any_cache.key(cards[0])
    await any_cache.put_many({card: (1, STATE) for card in cards})
    assert await any_cache._client.hlen(any_cache.key(cards[0])) == 100


async def test_invalidate_drops_one_account_and_keeps_its_bucket_neighbours(
    any_cache: AccountCache,
) -> None:
    first, second, third = (card_number("60012", sequence, 16) for sequence in (7, 8, 9))
    key = any_cache.key(first)
    assert any_cache.key(second) == any_cache.key(third) == key
    await any_cache.put_many({first: (1, b"1"), second: (2, b"2"), third: (3, b"3")})
    assert await any_cache.invalidate([second]) == 1
    assert await any_cache.get_many([first, second, third]) == {first: (1, b"1"), third: (3, b"3")}
    assert await any_cache._client.hlen(key) == 2
    assert await any_cache.ttl_seconds_left(first) is not None
    assert await any_cache.ttl_seconds_left(second) is None
    # The last account out takes the bucket with it.
    assert await any_cache.invalidate([first, third, second]) == 2
    assert await any_cache._client.exists(key) == 0


async def test_a_write_refreshes_the_bucket_ttl(any_cache: AccountCache) -> None:
    first, neighbour = card_number("60012", 41, 16), card_number("60012", 42, 16)
    await any_cache.put_many({first: (1, STATE)})
    # As if the bucket had been idle for almost its whole TTL.
    await any_cache._client.expire(any_cache.key(first), 10)
    assert await any_cache.ttl_seconds_left(first) in (9, 10)
    await any_cache.put_many({neighbour: (1, STATE)})
    left = await any_cache.ttl_seconds_left(first)
    assert left is not None and any_cache.ttl_seconds - 5 <= left <= any_cache.ttl_seconds
    # A refused write (an older version) is no write: it leaves the TTL alone.
    await any_cache._client.expire(any_cache.key(first), 10)
    assert await any_cache.put_many({first: (0, STATE)}) == 0
    assert await any_cache.ttl_seconds_left(first) in (9, 10)


async def test_a_leftover_string_key_of_the_old_layout_is_replaced(
    any_cache: AccountCache,
) -> None:
    # Under the one-key-per-account layout, account "6001" had the key of bucket "6001".
    key = any_cache.key("6001017")
    await any_cache._client.set(key, (1).to_bytes(8, "big") + STATE, ex=60)
    assert await any_cache.put_many({"6001017": (2, STATE)}) == 1
    assert await any_cache.get_many(["6001017"]) == {"6001017": (2, STATE)}
    assert any_cache.errors_total == 0


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


async def test_buckets_carry_the_hash_tag(any_cache: AccountCache, redis_key_prefix: str) -> None:
    key, field = any_cache.location("424242")
    assert (key, field) == (f"{redis_key_prefix}acct:{{424}}", "242")
    companion = f"{key}:lots"
    assert key_slot(key.encode()) == key_slot(companion.encode()) == key_slot(b"{424}")
    await any_cache.put_many({"424242": (1, STATE)})
    client = any_cache._client
    assert await client.exists(key) == 1
    assert await client.hgetall(key) == {b"242": b"\x01\x01\x00" + STATE}
    if any_cache.cluster:
        assert await client.cluster_keyslot(key) == key_slot(b"{424}")


async def test_memory_per_account_is_the_bucket_average(any_cache: AccountCache) -> None:
    cards = [card_number("60012", sequence, 16) for sequence in range(2000, 2100)]
    await any_cache.put_many({card: (12, STATE) for card in cards})
    key = any_cache.key(cards[0])
    total = await any_cache._client.memory_usage(key, samples=0)
    usage = await any_cache.memory_usage_bytes(cards[0])
    assert usage == round(total / 100)
    encoding = await any_cache._client.object("encoding", key)
    print(f"MEMORY USAGE per account, {len(STATE)}-byte states, {encoding}: {usage} bytes")
    # A listpack: the 93-byte value, the field and their entry headers, and the bucket's
    # key and headers shared by 100. A hashtable (small listpack settings): a table entry
    # and two strings per account. More means the layout regressed.
    assert usage <= (110 if encoding in (b"listpack", "listpack") else 200)
    assert await any_cache.memory_usage_bytes("absent") is None
    assert await any_cache.memory_usage_bytes(card_number("60012", 2100, 16)) is None


async def test_buckets_stay_listpacks_on_the_embedded_server(cache: AccountCache) -> None:
    if os.environ.get(REDIS_URL_ENV):
        pytest.skip(f"{REDIS_URL_ENV} names a server whose listpack settings are its own")
    cards = [card_number("60012", sequence, 16) for sequence in range(2000, 2100)]
    await cache.put_many({card: (1, SEEDED_STATE) for card in cards})
    key = cache.key(cards[0])
    assert await cache._client.hlen(key) == 100
    assert await cache._client.object("encoding", key) == b"listpack"
    # Each account costs its 130-byte value and a few bytes of headers, not a key.
    usage = await cache.memory_usage_bytes(cards[0])
    assert usage is not None and usage <= len(SEEDED_STATE) + 20


async def test_small_listpack_settings_are_warned_about_once(
    redis_url: str, redis_key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    original = (await admin.config_get("hash-max-listpack-value"))["hash-max-listpack-value"]
    # A server that already has a small value (the defaults) is left as it is.
    lowered = int(original) >= LISTPACK_VALUE_BYTES_MIN
    try:
        if lowered:
            await admin.config_set("hash-max-listpack-value", "64")
        async with open_cache(redis_url, redis_key_prefix) as small:
            with caplog.at_level("WARNING", logger="processor.cache.accounts"):
                await small.put_many({"w1": (1, STATE)})
                await small.put_many({"w2": (1, STATE)})
                assert await small.get_many(["w1", "w2"]) == {"w1": (1, STATE), "w2": (1, STATE)}
        warnings = [r.getMessage() for r in caplog.records if "listpack" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert f"hash-max-listpack-value {64 if lowered else original}" in warnings[0]
        assert "hash-max-listpack-entries" in warnings[0]
        assert f"hash-max-listpack-value {LISTPACK_VALUE_BYTES_MIN}" in warnings[0]
    finally:
        if lowered:
            await admin.config_set("hash-max-listpack-value", original)
        await admin.aclose()


async def test_sufficient_listpack_settings_are_not_warned_about(
    cache: AccountCache, caplog: pytest.LogCaptureFixture
) -> None:
    settings = await cache._client.config_get("hash-max-listpack-*")
    if (
        int(settings["hash-max-listpack-value"]) < LISTPACK_VALUE_BYTES_MIN
        or int(settings["hash-max-listpack-entries"]) < LISTPACK_ENTRIES_MIN
    ):
        pytest.skip("the server keeps small listpack settings")
    with caplog.at_level("WARNING", logger="processor.cache.accounts"):
        await cache.put_many({"w1": (1, STATE)})
    assert not [r for r in caplog.records if "listpack" in r.getMessage()]


async def test_refused_config_get_is_ignored(
    cache: AccountCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def refused(*args: object, **kwargs: object) -> object:
        raise ResponseError("unknown command 'CONFIG'")

    monkeypatch.setattr(cache._client, "config_get", refused)
    with caplog.at_level(logging.WARNING, logger="processor.cache.accounts"):
        assert await cache.put_many({"w1": (1, STATE)}) == 1
        assert await cache.put_many({"w2": (1, STATE)}) == 1
    assert not caplog.records
    assert cache.errors_total == 0 and not cache.circuit_open


@pytest.mark.integration
async def test_lost_script_cache_is_reloaded(cluster_cache: AccountCache) -> None:
    # Only against the cluster the fixtures own: SCRIPT FLUSH touches the whole server.
    await cluster_cache.put_many({"s": (1, b"one")})
    await cluster_cache._client.script_flush()
    assert await cluster_cache.put_many({"s": (2, b"two"), "s2": (1, b"one")}) == 2
    assert await cluster_cache.get_many(["s"]) == {"s": (2, b"two")}
    assert cluster_cache.errors_total == 0


# -- compression with a dictionary shared through Redis --------------------------------


@functools.cache
def seeded_states() -> list[bytes]:
    """Encoded realistic states of the demo program (123 bytes on average)."""
    program = load_program(str(DEMO_PROGRAM))
    states = samples.account_templates(program, 1, seed._today(), random.Random(7), 300)
    return [codec.encode_state(state) for state in states]


@functools.cache
def demo_dictionary() -> bytes:
    dictionary = sample_states_dictionary([load_program(str(DEMO_PROGRAM))])
    assert dictionary is not None
    return dictionary


def other_dictionary() -> bytes:
    """A usable dictionary with another id: the demo one with its halves swapped."""
    half = len(demo_dictionary()) // 2
    return demo_dictionary()[half:] + demo_dictionary()[:half]


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.integration)])
def any_url(request: pytest.FixtureRequest) -> str:
    """The standalone server's URL, then the cluster's."""
    return str(
        request.getfixturevalue("redis_url" if request.param == "standalone" else "cluster_url")
    )


@pytest.fixture
def own_prefix(redis_key_prefix: str, request: pytest.FixtureRequest) -> str:
    """A key prefix of this test alone: its own dict:current."""
    return f"{redis_key_prefix}{zlib.crc32(request.node.name.encode()):08x}:"


async def stored_value(account_cache: AccountCache, account_id: str) -> bytes:
    key, field = account_cache.location(account_id)
    value = await account_cache._client.hget(key, field)
    assert isinstance(value, bytes)
    return value


def stored_format(value: bytes) -> int:
    return value[1 + value[0]]


def stored_dictionary_id(value: bytes) -> int:
    """The dictionary id a zstd value (format 2) starts its payload with."""
    payload = value[2 + value[0] :]
    return int.from_bytes(payload[:4], "big")


def cards_of(count: int, first: int = 5000) -> list[str]:
    return [card_number("60012", sequence, 16) for sequence in range(first, first + count)]


async def test_a_compressed_state_round_trips_and_is_smaller_than_the_raw_one(
    any_url: str, own_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    states = seeded_states()
    entries = {card: (7, state) for card, state in zip(cards_of(len(states)), states, strict=True)}
    with caplog.at_level("INFO", logger="processor.cache.accounts"):
        async with open_cache(any_url, own_prefix, dictionary=demo_dictionary()) as compressing:
            assert await compressing.put_many(entries) == len(entries)
            assert await compressing.get_many(entries) == entries
            assert compressing.dictionary_id == zlib.adler32(demo_dictionary())
            raw_total = packed_total = 0
            for card, (_, state) in entries.items():
                value = await stored_value(compressing, card)
                assert stored_format(value) == 2
                assert stored_dictionary_id(value) == compressing.dictionary_id
                raw_total += len(state)
                packed_total += len(value) - 3  # version length, version, format
            # Seeded states shrink to about 70% (122 bytes to 88 on average).
            assert packed_total < 0.8 * raw_total
            assert compressing.errors_total == 0
    used = [
        r.getMessage() for r in caplog.records if "compressing account states" in r.getMessage()
    ]
    dictionary_id = zlib.adler32(demo_dictionary())
    key = compressing.dictionary_key(dictionary_id)
    assert used == [
        f"redis cache: compressing account states with dictionary {dictionary_id:08x} "
        f"({len(demo_dictionary())} bytes, key {key})"
    ]


async def test_caches_with_different_candidates_converge_on_the_first_stored_and_read_each_other(
    any_url: str, own_prefix: str
) -> None:
    states = seeded_states()
    first_cards, second_cards = cards_of(50), cards_of(50, first=6000)
    first_entries = {card: (1, states[i]) for i, card in enumerate(first_cards)}
    second_entries = {card: (2, states[100 + i]) for i, card in enumerate(second_cards)}
    async with (
        open_cache(any_url, own_prefix, dictionary=demo_dictionary()) as first,
        open_cache(any_url, own_prefix, dictionary=other_dictionary()) as second,
    ):
        assert await first.put_many(first_entries) == 50
        assert await second.put_many(second_entries) == 50
        winner = zlib.adler32(demo_dictionary())
        assert first.dictionary_id == second.dictionary_id == winner
        current = await first._client.get(first.current_dictionary_key)
        assert current == f"{winner:08x}".encode()
        assert stored_dictionary_id(await stored_value(second, second_cards[0])) == winner
        # The loser's candidate was offered too (harmless), but nothing is written with it.
        everything = {**first_entries, **second_entries}
        assert await first.get_many(everything) == everything
        assert await second.get_many(everything) == everything
        assert first.errors_total == second.errors_total == 0


async def test_a_value_whose_dictionary_is_gone_is_a_miss_and_the_next_write_replaces_it(
    any_url: str, own_prefix: str
) -> None:
    card, state = cards_of(1)[0], seeded_states()[0]
    async with open_cache(any_url, own_prefix, dictionary=demo_dictionary()) as first:
        await first.put_many({card: (3, state)})
        old_id = first.dictionary_id
        assert old_id is not None
        # As after an eviction: the dictionary and the current id are gone, the entry stays.
        await first._client.delete(first.dictionary_key(old_id))
        await first._client.delete(first.current_dictionary_key)
        async with open_cache(any_url, own_prefix, dictionary=other_dictionary()) as second:
            assert await second.get_many([card]) == {}
            assert await second.get_many([card]) == {}  # still a miss, no error
            assert (second.misses_total, second.hits_total, second.errors_total) == (2, 0, 0)
            # The committed state comes back from PostgreSQL and is written, same version.
            assert await second.put_many({card: (3, state)}) == 1
            assert second.dictionary_id == zlib.adler32(other_dictionary()) != old_id
            assert stored_dictionary_id(await stored_value(second, card)) == second.dictionary_id
            assert await second.get_many([card]) == {card: (3, state)}
            # The first cache loads the new dictionary on demand to read it.
            assert await first.get_many([card]) == {card: (3, state)}
            assert first.errors_total == second.errors_total == 0


async def test_a_damaged_compressed_payload_is_a_miss(any_url: str, own_prefix: str) -> None:
    cards = cards_of(6)
    states = seeded_states()[:6]
    entries = {card: (9, state) for card, state in zip(cards, states, strict=True)}
    async with open_cache(any_url, own_prefix, dictionary=demo_dictionary()) as compressing:
        await compressing.put_many(entries)
        values = [await stored_value(compressing, card) for card in cards]
        head = 3  # version length, one version byte, format byte
        damaged = [
            values[0][:-1],  # truncated: no complete checksum
            values[1][:-1] + bytes([values[1][-1] ^ 1]),  # the checksum does not match
            values[2][: head + 20] + bytes([values[2][head + 20] ^ 0x10]) + values[2][head + 21 :],
            values[3][: head + 3]
            + bytes([values[3][head + 3] ^ 1])
            + values[3][head + 4 :],  # another dictionary id, one nobody stored
            values[4][: head + 4] + b"\xff" + values[4][head + 5 :],  # the frame's header
        ]
        for card, value in zip(cards[:5], damaged, strict=True):
            key, field = compressing.location(card)
            await compressing._client.hset(key, field, value)
        assert await compressing.get_many(cards) == {cards[5]: entries[cards[5]]}
        assert compressing.errors_total == 0
        # The next write replaces a damaged value.
        assert await compressing.put_many({cards[0]: (9, states[0])}) == 1
        assert await compressing.get_many(cards[:1]) == {cards[0]: (9, states[0])}


async def test_states_that_would_not_shrink_are_stored_raw(any_url: str, own_prefix: str) -> None:
    rng = random.Random(3)
    entries = {
        "r1": (1, rng.randbytes(128)),  # incompressible
        "r2": (1, b""),
        "r3": (1, b"x"),
        "r4": (1, seeded_states()[0][:15]),  # too short to try
    }
    async with open_cache(any_url, own_prefix, dictionary=demo_dictionary()) as compressing:
        assert await compressing.put_many(entries) == len(entries)
        for account_id, (_, state) in entries.items():
            assert await stored_value(compressing, account_id) == b"\x01\x01\x00" + state
        assert await compressing.get_many(entries) == entries


async def test_a_cache_without_a_dictionary_reads_compressed_values_and_writes_raw(
    any_url: str, own_prefix: str
) -> None:
    cards, states = cards_of(20), seeded_states()[:20]
    entries = {card: (4, state) for card, state in zip(cards, states, strict=True)}
    async with (
        open_cache(any_url, own_prefix, dictionary=demo_dictionary()) as compressing,
        open_cache(any_url, own_prefix) as plain,
    ):
        await compressing.put_many(entries)
        assert await plain.get_many(entries) == entries
        assert plain.dictionary_id is None
        newer = {cards[0]: (5, states[0])}
        assert await plain.put_many(newer) == 1
        assert stored_format(await stored_value(plain, cards[0])) == 0
        assert await compressing.get_many(cards[:1]) == newer


async def test_an_older_version_never_overwrites_a_newer_compressed_one(
    any_url: str, own_prefix: str
) -> None:
    card, state, other = cards_of(1)[0], seeded_states()[0], seeded_states()[1]
    async with (
        open_cache(any_url, own_prefix, dictionary=demo_dictionary()) as compressing,
        open_cache(any_url, own_prefix) as plain,
    ):
        assert await compressing.put_many({card: (300, state)}) == 1
        assert await plain.put_many({card: (299, other)}) == 0  # raw, one version byte fewer
        assert await compressing.put_many({card: (2, other)}) == 0
        assert await plain.get_many([card]) == {card: (300, state)}
        assert await plain.put_many({card: (301, other)}) == 1
        assert await compressing.put_many({card: (300, state)}) == 0
        assert await compressing.get_many([card]) == {card: (301, other)}
        assert compressing.stale_writes_total == 2 and plain.stale_writes_total == 1


async def test_the_dictionary_keys_have_no_ttl(any_url: str, own_prefix: str) -> None:
    card = cards_of(1)[0]
    async with open_cache(any_url, own_prefix, dictionary=demo_dictionary()) as compressing:
        await compressing.put_many({card: (1, seeded_states()[0])})
        assert compressing.dictionary_id is not None
        client = compressing._client
        assert await client.ttl(compressing.dictionary_key(compressing.dictionary_id)) == -1
        assert await client.ttl(compressing.current_dictionary_key) == -1
        assert await client.get(compressing.dictionary_key(compressing.dictionary_id)) == (
            demo_dictionary()
        )
        assert await client.ttl(compressing.key(card)) > 0  # entries expire, the dictionary not


async def test_a_lost_dictionary_is_stored_again_at_the_next_check(
    any_url: str, own_prefix: str
) -> None:
    clock = FakeClock()
    cards, states = cards_of(2), seeded_states()
    async with open_cache(
        any_url, own_prefix, dictionary=demo_dictionary(), clock=clock
    ) as compressing:
        await compressing.put_many({cards[0]: (1, states[0])})
        dictionary_id = compressing.dictionary_id
        assert dictionary_id is not None
        client = compressing._client
        await client.delete(compressing.dictionary_key(dictionary_id))
        await client.delete(compressing.current_dictionary_key)
        await compressing.put_many({cards[1]: (1, states[1])})  # not due yet: nothing offered
        assert await client.exists(compressing.dictionary_key(dictionary_id)) == 0
        clock.now += cache_module.DICTIONARY_CHECK_SECONDS
        await compressing.put_many({cards[1]: (2, states[1])})
        assert await client.get(compressing.dictionary_key(dictionary_id)) == demo_dictionary()
        assert (
            await client.get(compressing.current_dictionary_key) == f"{dictionary_id:08x}".encode()
        )
        async with open_cache(any_url, own_prefix) as reader:
            assert await reader.get_many(cards) == {
                cards[0]: (1, states[0]),
                cards[1]: (2, states[1]),
            }


async def test_seeded_states_take_at_most_120_bytes_per_account_compressed(
    redis_url: str, own_prefix: str
) -> None:
    if os.environ.get(REDIS_URL_ENV):
        pytest.skip(f"{REDIS_URL_ENV} names a server whose allocator and settings are its own")
    states = seeded_states()
    cards = cards_of(100)
    async with open_cache(redis_url, own_prefix, dictionary=demo_dictionary()) as compressing:
        await compressing.put_many({card: (1, states[i]) for i, card in enumerate(cards)})
        usage = await compressing.memory_usage_bytes(cards[0])
        print(f"MEMORY USAGE per account, seeded states compressed: {usage} bytes")
        assert usage is not None and usage <= 120


def test_the_sample_dictionary_is_deterministic_and_at_most_32_kb() -> None:
    program = load_program(str(DEMO_PROGRAM))
    first = sample_states_dictionary([program])
    assert first is not None and first == sample_states_dictionary([program])
    assert len(first) == DICTIONARY_BYTES_MAX
    small = sample_states_dictionary([program], size_max=1000)
    assert small is not None and len(small) == 1000
    assert sample_states_dictionary([]) is None


@pytest.mark.parametrize("dictionary", [b"", "text", bytes(entries.DICTIONARY_BYTES_MAX + 1)])
def test_a_bad_dictionary_is_refused(dictionary: Any) -> None:
    client = aioredis.Redis()
    with pytest.raises(ValueError, match="dictionary"):
        AccountCache(client, dictionary=dictionary)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ((1, "text"), "account bad: state must be bytes, got str"),
        ((1, bytearray(b"x")), "state must be bytes, got bytearray"),
        ((1, None), "state must be bytes, got NoneType"),
        ((-1, b"x"), f"version must be an int in 0..{ACCOUNT_VERSION_MAX}"),
        ((ACCOUNT_VERSION_MAX + 1, b"x"), f"version must be an int in 0..{ACCOUNT_VERSION_MAX}"),
        ((True, b"x"), "version must be an int"),
        ((1.0, b"x"), "version must be an int"),
        ((1, b"x" * (entries.VALUE_BYTES_MAX + 1)), "state is 65537 bytes; at most 65536"),
        ((1,), r"an entry is \(version, state\)"),
        ([1, b"x"], r"an entry is \(version, state\)"),
    ],
    ids=lambda entry: repr(entry)[:24],
)
async def test_bad_entry_is_refused_and_nothing_written(
    cache: AccountCache, entry: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await cache.put_many({"good": (1, b"fine"), "bad": entry})
    assert await cache.get_many(["good", "bad"]) == {}
    assert await cache._client.exists(cache.key("good"), cache.key("bad")) == 0
    assert cache.errors_total == 0


@pytest.mark.parametrize(
    "account_id", ["", "a{b", "a}b", 42, None, "x" * (CARD_NUMBER_STORED_CHARS_MAX + 1)]
)
async def test_bad_account_id_is_refused(cache: AccountCache, account_id: object) -> None:
    message = (
        f"an account id is a non-empty str of at most {CARD_NUMBER_STORED_CHARS_MAX} characters "
        "without braces"
    )
    with pytest.raises(ValueError, match=message):
        await cache.put_many({"good": (1, b"x"), account_id: (1, b"x")})
    assert await cache.get_many(["good"]) == {}
    with pytest.raises(ValueError, match=message):
        await cache.get_many([account_id])
    with pytest.raises(ValueError, match=message):
        await cache.invalidate([account_id])
    with pytest.raises(ValueError, match=message):
        cache.location(account_id)  # type: ignore[arg-type]


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
    assert connect.parse_url(url) == expected


def test_url_with_a_bad_cluster_flag_is_refused() -> None:
    with pytest.raises(ValueError):
        connect.parse_url("redis://h:1?cluster=maybe")


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
        assert await down.get_many(["1", "2"]) == {}
        assert await down.put_many({"1": (1, STATE)}) == 0
        assert await down.invalidate(["1"]) == 0
        assert await down.flush() == 0
        assert down.errors_total == 4
        assert down.misses_total == 2
        assert not down.circuit_open
    finally:
        await down.aclose()


async def test_a_silent_redis_is_given_up_by_the_operation_timeout(silent_port: int) -> None:
    # Socket timeouts of an hour: only the cache's own operation timeout can end these calls.
    # Were it not applied, the calls would hang and the test fail at its timeout.
    silent = AccountCache.from_url(
        f"redis://127.0.0.1:{silent_port}",
        socket_timeout_seconds=3600,
        socket_connect_timeout_seconds=3600,
    )
    try:
        assert await silent.get_many(["1"]) == {}
        assert await silent.put_many({"1": (1, STATE)}) == 0
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
        with caplog.at_level("WARNING", logger="processor.cache.accounts"):
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


# -- the command lane (single commands past the client's pool) ---------------------------


@pytest_asyncio.fixture
async def lane(redis_url: str) -> AsyncIterator[connect.CommandLane]:
    client = connect.client_for(redis_url, cluster=False, pool_timeout_seconds=1.0)
    assert isinstance(client, aioredis.Redis)
    command_lane = connect.CommandLane(client.connection_pool)
    try:
        yield command_lane
    finally:
        await command_lane.aclose()
        await client.aclose()


async def test_a_lane_connection_interrupted_mid_command_is_never_reused(
    lane: connect.CommandLane, redis_url: str, redis_key_prefix: str
) -> None:
    waited, other = f"{redis_key_prefix}lane-list", f"{redis_key_prefix}lane-value"
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.set(other, b"the other reply")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await lane.execute("BLPOP", waited, 5)
        # The interrupted BLPOP's reply arrives now; reused, its connection would hand it
        # to the next command instead of that command's own reply.
        await admin.rpush(waited, b"late")
        await asyncio.sleep(0.05)
        assert await lane.execute("GET", other) == b"the other reply"
        assert await lane.execute("GET", other) == b"the other reply"
    finally:
        await admin.delete(waited, other)
        await admin.aclose()


async def test_an_error_reply_leaves_the_lane_connection_whole(
    lane: connect.CommandLane,
) -> None:
    first = await lane.execute("CLIENT", "ID")
    with pytest.raises(ResponseError):
        await lane.execute("EVALSHA", "0" * 40, 0)
    assert await lane.execute("CLIENT", "ID") == first  # the same connection, answering


async def test_a_lane_connection_the_server_closed_fails_once_then_a_new_one_serves(
    lane: connect.CommandLane, redis_url: str
) -> None:
    killed = await lane.execute("CLIENT", "ID")
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.execute_command("CLIENT", "KILL", "ID", killed)
    finally:
        await admin.aclose()
    with contextlib.suppress(ConnectionError, OSError, RedisConnectionError):
        await lane.execute("PING")
    replacement = await lane.execute("CLIENT", "ID")
    assert replacement != killed
    assert await lane.execute("PING") in (b"PONG", True)


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


async def test_zlib_values_of_the_release_before_are_still_read(
    any_url: str, own_prefix: str
) -> None:
    # Format 1: a zlib stream deflated with the dictionary preset, its DICTID in the header.
    cards, states = cards_of(3), seeded_states()[:3]
    async with open_cache(any_url, own_prefix, dictionary=demo_dictionary()) as writer:
        await writer.put_many({cards[0]: (1, states[0])})  # stores the dictionary
        for card, state in zip(cards, states, strict=True):
            deflater = zlib.compressobj(6, zlib.DEFLATED, 13, 8, zdict=demo_dictionary())
            key, field = writer.location(card)
            payload = deflater.compress(state) + deflater.flush()
            await writer._client.hset(key, field, b"\x01\x05\x01" + payload)
        # A reader that never wrote loads the dictionary the zlib header names.
        async with open_cache(any_url, own_prefix) as reader:
            expected = {card: (5, state) for card, state in zip(cards, states, strict=True)}
            assert await reader.get_many(cards) == expected
            assert reader.errors_total == 0

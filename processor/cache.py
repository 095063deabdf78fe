"""The account cache: versioned account state in Redis, standalone or Cluster.

Redis is an accelerator, never a dependency. PostgreSQL is the system of record; this cache
holds each account's encoded state (opaque bytes made by the caller) together with the
version it was read or committed at, is refreshed only after a commit, and may be stale:
the commit's optimistic version check turns a stale read into a retry, never a wrong
balance. So every Redis failure (refused, timed out, cluster down) is absorbed here: the
call behaves as a miss (reads) or a no-op (writes), ``errors_total`` goes up, a warning is
logged at most once per ``ERROR_LOG_INTERVAL_SECONDS``, and after ``CIRCUIT_ERRORS_MAX``
errors in a row the cache stops calling Redis for ``CIRCUIT_COOLDOWN_SECONDS`` (calls are
counted in ``skipped_total``), then tries again; one success closes the circuit. Misuse of
the API (a non-bytes value, a negative version, a malformed id) is a ``ValueError``, raised
before anything is sent.

Layout. One plain string per account, ``<prefix>acct:{<account id>}``; the braces are a
Redis Cluster hash tag, so any companion key of an account (``key(id) + ":<suffix>"``) lands
in the same slot. The value is the version as 8 bytes big-endian followed by the state::

    [ version: u64 big-endian ][ encoded account state ... ]

Keeping the version inside the string, rather than in a hash with two fields or a second
key, costs 8 bytes instead of a second object (MEMORY USAGE on Redis 7.0: 328 bytes for a
two-field hash, 184 for the string), and lets a Lua script compare versions byte by byte
(fixed width, big-endian: byte order is numeric order, exact over 64 bits, no floats and no
locale-dependent string comparison). Every write sets a TTL (``ENTRY_TTL_SECONDS``) so
accounts that stop transacting leave memory by themselves.

Memory, measured with a 90-byte state (98-byte value) and a 12-digit account id:
``MEMORY USAGE`` reports 160-184 bytes per entry (Valkey 8.1 / Redis 7.0 with jemalloc),
and ``used_memory`` grows by about 190-245 bytes per account once the key-table buckets
and, on Redis 7.0, the expiry table (about 40 bytes, kept by the TTL) are counted. What
moves it: the value's size against the allocator's size classes (a 90-byte value instead
of 98 saved 16 bytes on jemalloc), the key length, and the TTL. Fewer than ~120 bytes per
account needs either a smaller encoded state or accounts grouped into small listpack
hashes (measured 116-123 bytes) at the price of a per-account TTL.

Writes never go backwards: :meth:`AccountCache.put_many` runs the script, which writes an
entry only when no entry exists or the stored version is not newer. Two processes refreshing
the same account out of order therefore leave the newer state, whatever order their writes
arrive in.

Connecting: :meth:`AccountCache.from_url` takes ``redis://``, ``rediss://``, ``unix://``
(and ``valkey://`` / ``valkeys://`` as aliases). Cluster mode is chosen by a
``redis+cluster://`` (or ``rediss+cluster://``) scheme, a ``?cluster=1`` query parameter, or
``cluster=True``; the URL then names any one node and the client discovers the others.

Round trips. A standalone server gets one pipeline per call (MGET, or one script call per
``BATCH_KEYS_MAX`` keys); a cluster gets one pipeline per node, holding one MGET or one
script call per slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence, Sized
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.retry import Retry

__all__ = [
    "ACCOUNTS_PER_CALL_MAX",
    "CIRCUIT_COOLDOWN_SECONDS",
    "CIRCUIT_ERRORS_MAX",
    "ENTRY_TTL_SECONDS",
    "OPERATION_TIMEOUT_SECONDS",
    "SOCKET_TIMEOUT_SECONDS",
    "VERSION_MAX",
    "AccountCache",
]

log = logging.getLogger(__name__)

# How long an entry lives after its last refresh; bounds memory to the active accounts.
ENTRY_TTL_SECONDS = 6 * 3600
# A dead or black-holed Redis must cost little per batch: connect and read give up fast,
# and a whole operation (including a cluster's one re-discovery) has a hard deadline.
SOCKET_CONNECT_TIMEOUT_SECONDS = 0.1
SOCKET_TIMEOUT_SECONDS = 0.25
OPERATION_TIMEOUT_SECONDS = 0.5
# The circuit opens after this many errors in a row and stays open for the cool-down.
CIRCUIT_ERRORS_MAX = 5
CIRCUIT_COOLDOWN_SECONDS = 5.0
ERROR_LOG_INTERVAL_SECONDS = 30.0
# Connections per pool (per node in a cluster); a full pool waits up to the deadline.
CONNECTIONS_MAX = 32
# Keys per MGET or script call, so one call never blocks the server for long.
BATCH_KEYS_MAX = 1000
ACCOUNTS_PER_CALL_MAX = 100_000
ACCOUNT_ID_LENGTH_MAX = 128
KEY_PREFIX_LENGTH_MAX = 64
VALUE_BYTES_MAX = 64 * 1024
VERSION_BYTES = 8
VERSION_MAX = 2**63 - 1  # PostgreSQL bigint

_ACCOUNT_NAMESPACE = "acct:"
_KEY_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.:-]*")
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SCHEME_ALIASES = {"valkey": "redis", "valkeys": "rediss", "valkey+cluster": "redis+cluster"}
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off", ""}

# KEYS[i] gets ARGV[i + 1] unless it holds a newer version; ARGV[1] is the TTL in seconds.
# Returns how many entries were written.
PUT_SCRIPT = b"""
local function older(candidate, stored)
  for i = 1, 8 do
    local a, b = string.byte(candidate, i), string.byte(stored, i)
    if a ~= b then return a < b end
  end
  return false
end
local written = 0
for i, key in ipairs(KEYS) do
  local value = ARGV[i + 1]
  local stored = redis.call('GETRANGE', key, 0, 7)
  if #stored < 8 or not older(value, stored) then
    redis.call('SET', key, value, 'EX', ARGV[1])
    written = written + 1
  end
end
return written
"""
PUT_SCRIPT_SHA = hashlib.sha1(PUT_SCRIPT).hexdigest()

# What a failing Redis raises through redis-py: its own errors (connection, timeout,
# cluster down, server replies), cluster discovery failures, socket errors, our deadline.
_REDIS_FAILURES: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)

_T = TypeVar("_T")
Client = aioredis.Redis | RedisCluster


class AccountCache:
    """Versioned account state in Redis; every Redis failure reads as a miss."""

    def __init__(
        self,
        client: Client,
        *,
        key_prefix: str = "",
        ttl_seconds: int = ENTRY_TTL_SECONDS,
        operation_timeout_seconds: float = OPERATION_TIMEOUT_SECONDS,
        circuit_errors_max: int = CIRCUIT_ERRORS_MAX,
        circuit_cooldown_seconds: float = CIRCUIT_COOLDOWN_SECONDS,
        error_log_interval_seconds: float = ERROR_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(key_prefix) > KEY_PREFIX_LENGTH_MAX or not _KEY_PREFIX_PATTERN.fullmatch(key_prefix):
            raise ValueError(
                f"key_prefix must be at most {KEY_PREFIX_LENGTH_MAX} characters of "
                f"[A-Za-z0-9_.:-], got {key_prefix!r}"
            )
        if not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be a positive integer, got {ttl_seconds!r}")
        if operation_timeout_seconds <= 0 or circuit_cooldown_seconds < 0:
            raise ValueError("timeouts must be positive and the cool-down not negative")
        if circuit_errors_max < 1:
            raise ValueError(f"circuit_errors_max must be >= 1, got {circuit_errors_max}")
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._key_prefix = key_prefix + _ACCOUNT_NAMESPACE
        self.ttl_seconds = ttl_seconds
        self._operation_timeout_seconds = operation_timeout_seconds
        self._circuit_errors_max = circuit_errors_max
        self._circuit_cooldown_seconds = circuit_cooldown_seconds
        self._error_log_interval_seconds = error_log_interval_seconds
        self._clock = clock
        self._errors_in_row = 0
        self._open_until = 0.0
        self._last_error_log = -float("inf")
        self._errors_unlogged = 0
        # Counters for metrics: read them, never reset them.
        self.errors_total = 0
        self.skipped_total = 0
        self.hits_total = 0
        self.misses_total = 0
        self.stale_writes_total = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool | None = None,
        socket_timeout_seconds: float = SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout_seconds: float = SOCKET_CONNECT_TIMEOUT_SECONDS,
        connections_max: int = CONNECTIONS_MAX,
        **options: Any,
    ) -> AccountCache:
        """A cache over the server (or cluster) at ``url``; ``options`` go to the constructor.

        No connection is made here: the first call connects, and a failure then is a miss.
        """
        client_url, url_cluster = _parse_url(url)
        timeouts = {
            "socket_timeout": socket_timeout_seconds,
            "socket_connect_timeout": socket_connect_timeout_seconds,
        }
        client: Client
        if cluster if cluster is not None else url_cluster:
            # One retry lets the client re-discover the slots after a failover; the
            # operation deadline still bounds the whole call.
            client = RedisCluster.from_url(
                client_url,
                retry=Retry(NoBackoff(), 1),
                max_connections=connections_max,
                **timeouts,
            )
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                client_url,
                max_connections=connections_max,
                timeout=options.get("operation_timeout_seconds", OPERATION_TIMEOUT_SECONDS),
                retry=Retry(NoBackoff(), 0),
                **timeouts,
            )
            client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        return cls(client, **options)

    @property
    def cluster(self) -> bool:
        """True when the cache talks to a Redis Cluster."""
        return self._cluster

    @property
    def circuit_open(self) -> bool:
        """True while Redis is being skipped after repeated errors."""
        return self._clock() < self._open_until

    def key(self, account_id: str) -> str:
        """The Redis key of an account; companion keys append ``:<suffix>`` to it."""
        _check_account_id(account_id)
        return f"{self._key_prefix}{{{account_id}}}"

    async def get_many(self, account_ids: Iterable[str]) -> dict[str, tuple[int, bytes]]:
        """``{account id: (version, state)}`` for the cached accounts; misses are absent."""
        ids = list(dict.fromkeys(account_ids))
        _check_count(ids)
        for account_id in ids:
            _check_account_id(account_id)
        if not ids:
            return {}
        keys = [self._key(account_id) for account_id in ids]
        values = await self._guarded("get", lambda: self._mget(keys), None)
        if values is None:
            self.misses_total += len(ids)
            return {}
        found: dict[str, tuple[int, bytes]] = {}
        for account_id, value in zip(ids, values, strict=True):
            if isinstance(value, bytes) and len(value) >= VERSION_BYTES:
                version = int.from_bytes(value[:VERSION_BYTES], "big")
                found[account_id] = (version, value[VERSION_BYTES:])
        self.hits_total += len(found)
        self.misses_total += len(ids) - len(found)
        return found

    async def put_many(self, entries: Mapping[str, tuple[int, bytes]]) -> int:
        """Store committed states; an entry holding a newer version is left alone.

        Returns how many entries were written (0 when Redis is unavailable).
        """
        _check_count(entries)
        groups: dict[int, tuple[list[str], list[bytes]]] = {}
        for account_id, entry in entries.items():
            _check_account_id(account_id)
            value = _encode_entry(account_id, entry)
            key = self._key(account_id)
            slot = key_slot(key.encode()) if self._cluster else 0
            keys, values = groups.setdefault(slot, ([], []))
            keys.append(key)
            values.append(value)
        if not groups:
            return 0
        calls = [
            (keys[start : start + BATCH_KEYS_MAX], values[start : start + BATCH_KEYS_MAX])
            for keys, values in groups.values()
            for start in range(0, len(keys), BATCH_KEYS_MAX)
        ]
        written = await self._guarded("put", lambda: self._run_put_script(calls), None)
        if written is None:
            return 0
        self.stale_writes_total += len(entries) - written
        return written

    async def invalidate(self, account_ids: Iterable[str]) -> int:
        """Drop the entries of ``account_ids``; returns how many existed.

        Prefer :meth:`put_many` with the committed version: a refresh read before the
        invalidation may still land afterwards, which is harmless (the version check at
        commit time catches it) but costs a retry.
        """
        ids = list(dict.fromkeys(account_ids))
        _check_count(ids)
        for account_id in ids:
            _check_account_id(account_id)
        if not ids:
            return 0
        keys = [self._key(account_id) for account_id in ids]
        return await self._guarded("invalidate", lambda: self._unlink(keys), 0)

    async def flush(self) -> int:
        """Drop every entry under this cache's prefix (for tests); returns how many."""

        async def scan_and_unlink() -> int:
            pattern = f"{self._key_prefix}*"
            keys = [key async for key in self._client.scan_iter(match=pattern, count=1000)]
            return await self._unlink(keys) if keys else 0

        return await self._guarded("flush", scan_and_unlink, 0)

    async def memory_usage_bytes(self, account_id: str) -> int | None:
        """What ``MEMORY USAGE`` reports for one account's entry (None if absent)."""
        key = self.key(account_id)

        async def usage() -> int | None:
            result = await self._client.memory_usage(key, samples=0)
            return None if result is None else int(result)

        return await self._guarded("memory", usage, None)

    async def ttl_seconds_left(self, account_id: str) -> int | None:
        """The remaining TTL of one account's entry (None if absent or unavailable)."""
        key = self.key(account_id)

        async def ttl() -> int | None:
            seconds = int(await self._client.ttl(key))
            return seconds if seconds >= 0 else None

        return await self._guarded("ttl", ttl, None)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def __aenter__(self) -> AccountCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- Redis calls ------------------------------------------------------------------

    def _key(self, account_id: str) -> str:
        return f"{self._key_prefix}{{{account_id}}}"

    async def _mget(self, keys: list[str]) -> list[Any]:
        if isinstance(self._client, RedisCluster):
            return list(await self._client.mget_nonatomic(keys))
        if len(keys) <= BATCH_KEYS_MAX:
            return list(await self._client.mget(keys))
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), BATCH_KEYS_MAX):
            pipe.mget(keys[start : start + BATCH_KEYS_MAX])
        return [value for chunk in await pipe.execute() for value in chunk]

    async def _unlink(self, keys: Sequence[str]) -> int:
        if isinstance(self._client, RedisCluster):
            # The cluster client splits a multi-key UNLINK by slot, one pipeline per node.
            return int(await self._client.unlink(*keys))
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), BATCH_KEYS_MAX):
            pipe.unlink(*keys[start : start + BATCH_KEYS_MAX])
        return sum(int(count) for count in await pipe.execute())

    async def _run_put_script(self, calls: list[tuple[list[str], list[bytes]]]) -> int:
        results = await self._evalsha_all(calls)
        missing = [call for call, result in zip(calls, results, strict=True) if _noscript(result)]
        if missing:
            # The server lost its script cache (restart, failover, SCRIPT FLUSH): load the
            # script on every node and run the calls that missed it once more.
            await self._client.script_load(PUT_SCRIPT)
            retried = await self._evalsha_all(missing)
            results = [result for result in results if not _noscript(result)] + retried
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(int(result) for result in results)

    async def _evalsha_all(self, calls: list[tuple[list[str], list[bytes]]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, values in calls:
            pipe.execute_command(
                "EVALSHA", PUT_SCRIPT_SHA, len(keys), *keys, self.ttl_seconds, *values
            )
        return list(await pipe.execute(raise_on_error=False))

    # -- failure handling -------------------------------------------------------------

    async def _guarded(self, operation: str, call: Callable[[], Awaitable[_T]], fallback: _T) -> _T:
        """Run ``call`` against Redis unless the circuit is open; failures give ``fallback``."""
        if self.circuit_open:
            self.skipped_total += 1
            return fallback
        try:
            async with asyncio.timeout(self._operation_timeout_seconds):
                result = await call()
        except _REDIS_FAILURES as error:
            self._record_error(operation, error)
            return fallback
        self._record_success()
        return result

    def _record_error(self, operation: str, error: BaseException) -> None:
        now = self._clock()
        self.errors_total += 1
        self._errors_in_row += 1
        self._errors_unlogged += 1
        if self._errors_in_row >= self._circuit_errors_max:
            # Also re-opens at once when the first call after a cool-down fails.
            if self._open_until == 0.0:
                log.warning(
                    "redis cache: %d errors in a row, skipping Redis for %.1fs",
                    self._errors_in_row,
                    self._circuit_cooldown_seconds,
                )
            self._open_until = now + self._circuit_cooldown_seconds
        if now - self._last_error_log >= self._error_log_interval_seconds:
            log.warning(
                "redis cache %s failed (%d errors since the last report), serving from "
                "PostgreSQL: %s: %s",
                operation,
                self._errors_unlogged,
                type(error).__name__,
                error,
            )
            self._last_error_log = now
            self._errors_unlogged = 0

    def _record_success(self) -> None:
        if self._open_until != 0.0:
            log.warning("redis cache: Redis answers again, circuit closed")
        self._errors_in_row = 0
        self._open_until = 0.0


def _parse_url(url: str) -> tuple[str, bool]:
    """The URL redis-py understands, and whether it asks for cluster mode."""
    parts = urlsplit(url)
    scheme = _SCHEME_ALIASES.get(parts.scheme, parts.scheme)
    cluster = scheme in _CLUSTER_SCHEMES
    scheme = _CLUSTER_SCHEMES.get(scheme, scheme)
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "cluster":
            query.append((name, value))
        elif value.lower() in _TRUE_WORDS:
            cluster = True
        elif value.lower() not in _FALSE_WORDS:
            raise ValueError(f"cluster={value!r} in the Redis URL is not a boolean")
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(query))), cluster


def _noscript(result: object) -> bool:
    return isinstance(result, NoScriptError)


def _check_count(items: Sized) -> None:
    if len(items) > ACCOUNTS_PER_CALL_MAX:
        raise ValueError(f"{len(items)} accounts in one call; at most {ACCOUNTS_PER_CALL_MAX}")


def _check_account_id(account_id: object) -> None:
    if (
        not isinstance(account_id, str)
        or not 0 < len(account_id) <= ACCOUNT_ID_LENGTH_MAX
        or "{" in account_id
        or "}" in account_id
    ):
        raise ValueError(
            f"an account id is a non-empty str of at most {ACCOUNT_ID_LENGTH_MAX} characters "
            f"without braces, got {account_id!r}"
        )


def _encode_entry(account_id: str, entry: object) -> bytes:
    if not isinstance(entry, tuple) or len(entry) != 2:
        raise ValueError(f"account {account_id}: an entry is (version, state), got {entry!r}")
    version, state = entry
    if type(version) is not int or not 0 <= version <= VERSION_MAX:
        raise ValueError(f"account {account_id}: version must be an int in 0..{VERSION_MAX}")
    if not isinstance(state, bytes):
        raise ValueError(f"account {account_id}: state must be bytes, got {type(state).__name__}")
    if len(state) > VALUE_BYTES_MAX:
        raise ValueError(
            f"account {account_id}: state is {len(state)} bytes; at most {VALUE_BYTES_MAX}"
        )
    return version.to_bytes(VERSION_BYTES, "big") + state

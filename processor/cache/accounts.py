"""The account cache: versioned account state in Redis, standalone or Cluster.

Redis is an accelerator, never a dependency. PostgreSQL is the system of record; this cache
holds each account's encoded state (opaque bytes made by the caller) together with the
version it was read or committed at, is refreshed only after a commit, and may be stale:
the commit's optimistic version check turns a stale read into a retry, never a wrong
balance. So every Redis failure (refused, timed out, cluster down) is absorbed here: the
call behaves as a miss (reads) or a no-op (writes), through a circuit breaker
(:mod:`processor.cache.breaker`). Misuse of
the API (a non-bytes value, a negative version, a malformed id) is a ``ValueError``, raised
before anything is sent.

The cache is four modules: this one (the AccountCache: reads, writes, invalidation and the
sharing of compression dictionaries), :mod:`~processor.cache.layout` (buckets, fields,
TTLs, the read and write scripts), :mod:`~processor.cache.entries` (the value format and
its compression), :mod:`~processor.cache.connect` (URLs and clients) and
:mod:`~processor.cache.breaker` (failures).

The dictionary is shared through Redis: ``<prefix>dict:{<id as 8 hex digits>}`` holds its
bytes and ``<prefix>dict:current`` names the id to write with. At its first write a cache
offers its candidate (``SET`` both keys ``NX``) and writes with whatever ``dict:current``
then names, so the first dictionary stored wins and every process and server converges on
it; it repeats the offer, with the dictionary it uses, every DICTIONARY_CHECK_SECONDS, which
re-creates both keys after a FLUSHALL or an eviction (a ``dict:current`` naming a dictionary
that is gone is replaced by the offer). Until the first offer succeeds states are written
uncompressed. A reader loads any dictionary it meets on demand (one GET, then kept; one
found missing is not asked for again for DICTIONARY_MISSING_RETRY_SECONDS). The dictionary
keys have no TTL: run the server with a ``volatile-*`` eviction policy (entries have TTLs),
under which they are never evicted. In a cluster they hash to some node and are read once.
Costs, per demo state (122 bytes) on a 2-core machine: compressing 3.6 µs and
decompressing 0.7 µs with the dictionary's zstd codec (made once per dictionary), where
zlib took 14.3 and 13.4 µs for copies of primed objects (format 1, still read).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from processor.cache import connect, layout
from processor.cache import entries as entry_format
from processor.cache.breaker import (
    COOLDOWN_SECONDS as CIRCUIT_COOLDOWN_SECONDS,
)
from processor.cache.breaker import (
    ERROR_LOG_INTERVAL_SECONDS,
    REDIS_FAILURES,
    CircuitBreaker,
)
from processor.cache.breaker import (
    ERRORS_MAX as CIRCUIT_ERRORS_MAX,
)
from processor.cache.connect import Client
from processor.cache.entries import DICTIONARY_BYTES_MAX
from processor.cache.layout import (
    ACCOUNTS_PER_CALL_MAX,
    ENTRY_TTL_SECONDS,
    LISTPACK_ENTRIES_MIN,
    LISTPACK_VALUE_BYTES_MIN,
    ScriptCall,
)
from processor.errors import InternalError, present
from processor.limits import CACHE_KEY_PREFIX_CHARS_MAX

__all__ = [
    "ACCOUNTS_PER_CALL_MAX",
    "CIRCUIT_COOLDOWN_SECONDS",
    "CIRCUIT_ERRORS_MAX",
    "DICTIONARY_BYTES_MAX",
    "ENTRY_TTL_SECONDS",
    "LISTPACK_ENTRIES_MIN",
    "LISTPACK_VALUE_BYTES_MIN",
    "OPERATION_TIMEOUT_SECONDS",
    "AccountCache",
]

log = logging.getLogger(__name__)

# A whole operation (including a cluster's one re-discovery) has a hard deadline.
OPERATION_TIMEOUT_SECONDS: Final = 0.5

PROBE_TIMEOUT_SECONDS: Final = 2.0
"""Longest a probe of Redis waits for its PING to be answered."""
# How often a writing cache offers its dictionary again (re-creating its key after a FLUSHALL
# or an eviction) and looks at which one is current; and how long a dictionary id found
# missing is not asked for again, so that values written with it cost no GET per read.
DICTIONARY_CHECK_SECONDS = 60.0
DICTIONARY_RETRY_SECONDS = 1.0
DICTIONARY_MISSING_RETRY_SECONDS = 10.0
# Dictionaries loaded by one process; primed decompressors (one per zlib header seen).
DICTIONARIES_MAX = 8
_DECODERS_MAX = 64

# Reading the server's settings may also meet a reply that is not what it should be.
_CONFIG_FAILURES: tuple[type[BaseException], ...] = (*REDIS_FAILURES, ValueError, TypeError)

_T = TypeVar("_T")


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
        dictionary: bytes | None = None,
    ) -> None:
        """``dictionary`` is the candidate compression dictionary this cache offers (see
        "Compression" in the module docstring); None writes states uncompressed, and reads
        compressed ones whenever their dictionary can be loaded."""
        too_long = len(key_prefix) > CACHE_KEY_PREFIX_CHARS_MAX
        if too_long or not layout.KEY_PREFIX_PATTERN.fullmatch(key_prefix):
            raise ValueError(
                f"key_prefix must be at most {CACHE_KEY_PREFIX_CHARS_MAX} characters of "
                f"[A-Za-z0-9_.:-], got {key_prefix!r}"
            )
        if not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be a positive integer, got {ttl_seconds!r}")
        if dictionary is not None and (
            not isinstance(dictionary, bytes) or not 0 < len(dictionary) <= DICTIONARY_BYTES_MAX
        ):
            raise ValueError(
                f"dictionary must be None or 1 to {DICTIONARY_BYTES_MAX} bytes, got "
                f"{type(dictionary).__name__} {str(dictionary)[:40]}"
            )
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        # A cluster's commands must find their node: the client's pipelines do that.
        self._lane: connect.CommandLane | None = None
        if not isinstance(client, RedisCluster):
            self._lane = connect.CommandLane(client.connection_pool)
        self._key_prefix = key_prefix + layout.ACCOUNT_NAMESPACE
        self._dictionary_prefix = key_prefix + layout.DICTIONARY_NAMESPACE
        # Compression state: the candidate offered until one is current; the dictionaries
        # loaded (id -> bytes, each checked against its id); ids found missing (id -> when
        # to ask again); the writer (id, its zstd codec); primed zlib decompressors by the
        # header they were primed with (format 1); zstd codecs by dictionary id; when the
        # next negotiation is due.
        self._candidate = None if dictionary is None else (zlib.adler32(dictionary), dictionary)
        self._dictionaries: dict[int, bytes] = {}
        self._dictionaries_missing: dict[int, float] = {}
        self._writer: tuple[int, entry_format.ZstdCodec] | None = None
        self._decoders: dict[bytes, Any] = {}
        self._zstd_codecs: dict[bytes, entry_format.ZstdCodec] = {}
        self._dictionary_due = 0.0
        self.ttl_seconds = ttl_seconds
        self._breaker = CircuitBreaker(
            operation_timeout_seconds=operation_timeout_seconds,
            errors_max=circuit_errors_max,
            cooldown_seconds=circuit_cooldown_seconds,
            error_log_interval_seconds=error_log_interval_seconds,
            clock=clock,
        )
        self._guarded = self._breaker.call
        self._clock = clock
        self._listpack_checked = False
        # Counters for metrics: read them, never reset them (the breaker keeps the failures').
        self.hits_total = 0
        self.misses_total = 0
        self.stale_writes_total = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool | None = None,
        socket_timeout_seconds: float = connect.SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout_seconds: float = connect.SOCKET_CONNECT_TIMEOUT_SECONDS,
        connections_max: int = connect.CONNECTIONS_MAX,
        **options: Any,
    ) -> AccountCache:
        """A cache over the server (or cluster) at ``url``; ``options`` go to the constructor.

        No connection is made here: the first call connects, and a failure then is a miss.
        """
        client = connect.client_for(
            url,
            cluster=cluster,
            pool_timeout_seconds=options.get(
                "operation_timeout_seconds", OPERATION_TIMEOUT_SECONDS
            ),
            socket_timeout_seconds=socket_timeout_seconds,
            socket_connect_timeout_seconds=socket_connect_timeout_seconds,
            connections_max=connections_max,
        )
        return cls(client, **options)

    @property
    def cluster(self) -> bool:
        """True when the cache talks to a Redis Cluster."""
        return self._cluster

    @property
    def circuit_open(self) -> bool:
        """True while Redis is being skipped after repeated errors."""
        return self._breaker.open

    @property
    def errors_total(self) -> int:
        """Redis calls that failed (a miss or a no-op each)."""
        return self._breaker.errors_total

    @property
    def skipped_total(self) -> int:
        """Redis calls not tried while the circuit was open."""
        return self._breaker.skipped_total

    def key(self, account_id: str) -> str:
        """The key of the bucket holding an account; companion keys append ``:<suffix>``."""
        return self.location(account_id)[0]

    def location(self, account_id: str) -> tuple[str, str]:
        """``(bucket key, field)`` of an account's entry."""
        layout.check_account_id(account_id)
        return self._location(account_id)

    async def get_many(self, account_ids: Iterable[str]) -> dict[str, tuple[int, bytes]]:
        """``{account id: (version, state)}`` for the cached accounts; misses are absent."""
        ids = list(dict.fromkeys(account_ids))
        layout.check_count(ids)
        for account_id in ids:
            layout.check_account_id(account_id)
        if not ids:
            return {}
        # slot -> bucket key -> [account id]: a script call's keys share a slot. This is
        # _location inlined (the read path is hot): for every id, id[:-FIELD_LENGTH] is its
        # bucket and id[-FIELD_LENGTH:] its field.
        prefix = self._key_prefix
        slots: dict[int, dict[str, list[str]]] = {}
        buckets: dict[str, list[str]] = {}
        for account_id in ids:
            key = f"{prefix}{{{account_id[: -layout.FIELD_LENGTH]}}}"
            if self._cluster:
                buckets = slots.setdefault(key_slot(key.encode()), {})
            members = buckets.get(key)
            if members is None:
                buckets[key] = [account_id]
            else:
                members.append(account_id)
        if not self._cluster:
            slots[0] = buckets
        batches = [batch for buckets in slots.values() for batch in layout.batches(buckets)]
        calls = [layout.get_call(batch) for batch in batches]
        values = await self._guarded("get", lambda: self._run_get_script(calls), None)
        if values is None:
            self.misses_total += len(ids)
            return {}
        found: dict[str, tuple[int, bytes]] = {}
        # Compressed values whose dictionary is not loaded yet: (account id, version, format,
        # payload).
        waiting: list[tuple[str, int, int, bytes]] = []
        decoders = self._decoders
        zstd_codecs = self._zstd_codecs
        # The script returns the values in the order of its fields, call after call.
        order = (account_id for batch in batches for _, chunk in batch for account_id in chunk)
        for account_id, value in zip(order, values, strict=True):
            if value is None:
                continue
            entry = entry_format.split_entry(value)
            if entry is None:
                continue
            version, form, payload = entry
            if form == entry_format.FORMAT_RAW:
                found[account_id] = (version, payload)
            elif form == entry_format.FORMAT_ZSTD:
                codec = zstd_codecs.get(payload[: entry_format.ZSTD_ID_BYTES])
                if codec is None:
                    waiting.append((account_id, version, form, payload))
                    continue
                state = codec.decompress(payload)
                if state is not None:
                    found[account_id] = (version, state)
            elif form == entry_format.FORMAT_ZLIB:
                decoder = decoders.get(payload[: entry_format.ZLIB_HEADER_BYTES])
                if decoder is None:
                    waiting.append((account_id, version, form, payload))
                    continue
                state = entry_format.inflate(decoder, payload)
                if state is not None:
                    found[account_id] = (version, state)
            # Any other format (a newer release's, or a value of the layout before formats,
            # whose state starts with a msgpack array byte, 0x90 or more) is a miss.
        if waiting:
            await self._inflate_waiting(waiting, found)
        self.hits_total += len(found)
        self.misses_total += len(ids) - len(found)
        return found

    async def put_many(self, entries: Mapping[str, tuple[int, bytes]]) -> int:
        """Store committed states; an entry holding a newer version is left alone.

        Returns how many entries were written (0 when Redis is unavailable).
        """
        layout.check_count(entries)
        if self._candidate is not None and self._clock() >= self._dictionary_due:
            # Rare (first use, then every DICTIONARY_CHECK_SECONDS): misuse is refused before
            # anything is sent, so the entries are checked before the negotiation.
            for account_id, entry in entries.items():
                layout.check_account_id(account_id)
                entry_format.encode_entry(account_id, entry, None)
            await self._negotiate_dictionary()
        compressor = None if self._writer is None else self._writer[1]
        # slot -> bucket key -> [(field, value)]: a script call's keys must share a slot.
        slots: dict[int, dict[str, list[tuple[str, bytes]]]] = {}
        for account_id, entry in entries.items():
            layout.check_account_id(account_id)
            value = entry_format.encode_entry(account_id, entry, compressor)
            key, field = self._location(account_id)
            slot = key_slot(key.encode()) if self._cluster else 0
            slots.setdefault(slot, {}).setdefault(key, []).append((field, value))
        if not slots:
            return 0
        calls = [call for buckets in slots.values() for call in layout.script_calls(buckets)]
        written = await self._guarded("put", lambda: self._run_put_script(calls), None)
        if written is None:
            return 0
        self.stale_writes_total += len(entries) - written
        if not self._listpack_checked:
            await self._check_listpack_settings()
        return written

    async def invalidate(self, account_ids: Iterable[str]) -> int:
        """Drop the entries of ``account_ids``; returns how many existed.

        Prefer :meth:`put_many` with the committed version: a refresh read before the
        invalidation may still land afterwards, which is harmless (the version check at
        commit time catches it) but costs a retry. The bucket neighbours stay.
        """
        ids = list(dict.fromkeys(account_ids))
        layout.check_count(ids)
        for account_id in ids:
            layout.check_account_id(account_id)
        if not ids:
            return 0
        deletes = self._by_bucket(ids)
        return await self._guarded("invalidate", lambda: self._hdel_all(deletes), 0)

    async def flush(self) -> int:
        """Drop every bucket and compression dictionary under this cache's prefix (for
        tests); returns how many keys. A cache with a dictionary offers it again at its next
        write."""

        async def scan_and_unlink() -> int:
            keys = [
                key
                for pattern in (f"{self._key_prefix}*", f"{self._dictionary_prefix}*")
                async for key in self._client.scan_iter(match=pattern, count=1000)
            ]
            return await self._unlink(keys) if keys else 0

        self._dictionary_due = 0.0
        return await self._guarded("flush", scan_and_unlink, 0)

    @property
    def dictionary_id(self) -> int | None:
        """The id (zlib DICTID, the adler32 of its bytes) of the dictionary this cache
        compresses with; None while it writes states uncompressed."""
        return None if self._writer is None else self._writer[0]

    def dictionary_key(self, dictionary_id: int) -> str:
        """The key holding the bytes of a compression dictionary."""
        return f"{self._dictionary_prefix}{{{dictionary_id:08x}}}"

    @property
    def current_dictionary_key(self) -> str:
        """The key naming the id of the dictionary every cache writes with."""
        return f"{self._dictionary_prefix}current"

    async def memory_usage_bytes(self, account_id: str) -> int | None:
        """``MEMORY USAGE`` of the account's bucket over its number of accounts: the
        bucket's average per account, not this entry's own size (None if not cached)."""
        key, field = self.location(account_id)

        async def usage() -> int | None:
            pipe = self._client.pipeline(transaction=False)
            pipe.hexists(key, field)
            pipe.hlen(key)
            pipe.memory_usage(key, samples=0)
            cached, count, total = await pipe.execute()
            if not cached or not count or total is None:
                return None
            return round(int(total) / int(count))

        return await self._guarded("memory", usage, None)

    async def ttl_seconds_left(self, account_id: str) -> int | None:
        """The remaining TTL of the account's bucket (None if not cached or unavailable)."""
        key, field = self.location(account_id)

        async def ttl() -> int | None:
            pipe = self._client.pipeline(transaction=False)
            pipe.hexists(key, field)
            pipe.ttl(key)
            cached, seconds = await pipe.execute()
            return int(seconds) if cached and int(seconds) >= 0 else None

        return await self._guarded("ttl", ttl, None)

    async def probe(self, timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> bool:
        """Whether Redis answers a PING now (the probe behind loyalty_cache_up)."""
        try:
            async with asyncio.timeout(timeout_seconds):  # not wait_for: it can drop a cancel
                return bool(await self._client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        """Close the connections."""
        if self._lane is not None:
            await self._lane.aclose()
        await self._client.aclose()

    async def __aenter__(self) -> AccountCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- Redis calls ------------------------------------------------------------------

    def _location(self, account_id: str) -> tuple[str, str]:
        return layout.location(self._key_prefix, account_id)

    def _by_bucket(self, ids: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
        """``[(bucket key, [(field, account id), ...])]``, at most BATCH_ACCOUNTS_MAX each."""
        buckets: dict[str, list[tuple[str, str]]] = {}
        for account_id in ids:
            key, field = self._location(account_id)
            buckets.setdefault(key, []).append((field, account_id))
        return [
            (key, members[start : start + layout.BATCH_ACCOUNTS_MAX])
            for key, members in buckets.items()
            for start in range(0, len(members), layout.BATCH_ACCOUNTS_MAX)
        ]

    async def _hdel_all(self, deletes: list[tuple[str, list[tuple[str, str]]]]) -> int:
        pipe = self._client.pipeline(transaction=False)
        for key, members in deletes:
            pipe.hdel(key, *(field for field, _ in members))
        return sum(int(count) for count in await pipe.execute())

    async def _unlink(self, keys: Sequence[str]) -> int:
        if isinstance(self._client, RedisCluster):
            # The cluster client splits a multi-key UNLINK by slot, one pipeline per node.
            return int(await self._client.unlink(*keys))
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), layout.BATCH_ACCOUNTS_MAX):
            pipe.unlink(*keys[start : start + layout.BATCH_ACCOUNTS_MAX])
        return sum(int(count) for count in await pipe.execute())

    async def _run_put_script(self, calls: list[ScriptCall]) -> int:
        ttl = [self.ttl_seconds]
        calls = [(keys, ttl + arguments) for keys, arguments in calls]
        results = await self._run_script(layout.PUT_SCRIPT, layout.PUT_SCRIPT_SHA, calls)
        return sum(int(result) for result in results)

    async def _run_get_script(self, calls: list[ScriptCall]) -> list[Any]:
        results = await self._run_script(layout.GET_SCRIPT, layout.GET_SCRIPT_SHA, calls)
        return [value for values in results for value in values]

    async def _run_script(self, script: bytes, sha: str, calls: list[ScriptCall]) -> list[Any]:
        """The results of the script calls, in order; the first failure is raised."""
        results = await self._evalsha_all(sha, calls)
        missing = [index for index, result in enumerate(results) if _noscript(result)]
        if missing:
            # The server lost its script cache (restart, failover, SCRIPT FLUSH): load the
            # script on every node and run the calls that missed it once more.
            await self._client.script_load(script)
            retried = await self._evalsha_all(sha, [calls[index] for index in missing])
            for index, result in zip(missing, retried, strict=True):
                results[index] = result
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _evalsha_all(self, sha: str, calls: list[ScriptCall]) -> list[Any]:
        if len(calls) == 1 and self._lane is not None:
            # One call needs no pipeline (which costs about 0.1 ms of client CPU more), nor
            # the client's pool (see connect.CommandLane).
            keys, arguments = calls[0]
            try:
                return [await self._lane.execute("EVALSHA", sha, len(keys), *keys, *arguments)]
            except NoScriptError as error:
                return [error]
        # A cluster pipeline sends each node its own calls, one round trip per node.
        pipe = self._client.pipeline(transaction=False)
        for keys, arguments in calls:
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *arguments)
        return list(await pipe.execute(raise_on_error=False))

    # -- compression ------------------------------------------------------------------

    async def _negotiate_dictionary(self) -> None:
        """Offer this cache's dictionary and write with the current one (best effort).

        The offer is the dictionary in use, or the candidate before the first success:
        ``SET dict:{id} bytes NX`` and ``SET dict:current id NX``, then whatever
        ``dict:current`` names is loaded and written with, so the first offer stored wins
        everywhere. Repeated every DICTIONARY_CHECK_SECONDS, this re-creates keys lost to a
        FLUSHALL or an eviction and follows a change of the current one. A failure leaves
        the writer as it was (none at first: states are then written uncompressed).
        """
        self._dictionary_due = self._clock() + DICTIONARY_RETRY_SECONDS
        done = await self._guarded("dictionary", self._offer_dictionary, False)
        if done:
            self._dictionary_due = self._clock() + DICTIONARY_CHECK_SECONDS

    async def _offer_dictionary(self) -> bool:
        offer_id, offer = present(self._candidate, "the dictionary candidate to offer")
        if self._writer is not None:
            offer_id, offer = self._writer[0], self._dictionaries[self._writer[0]]
        offer_key, current_key = self.dictionary_key(offer_id), self.current_dictionary_key
        pipe = self._client.pipeline(transaction=False)
        # No expiry: the dictionary must outlive every entry written with it; entries carry
        # TTLs, so a volatile-* eviction policy never evicts it.
        pipe.set(offer_key, offer, nx=True)
        pipe.set(current_key, f"{offer_id:08x}", nx=True)
        pipe.get(current_key)
        pipe.get(offer_key)
        _, _, current, stored = await pipe.execute()
        current_id = entry_format.dictionary_id(current)
        data: object = None
        if current_id == offer_id:
            data = stored
        elif current_id is not None:
            data = self._dictionaries.get(current_id)
            if data is None:
                data = await self._client.get(self.dictionary_key(current_id))
        if current_id is None or not entry_format.valid_dictionary(current_id, data):
            # dict:current names a dictionary that is gone (evicted) or is not an id: this
            # offer takes its place. Two caches doing so at once may each keep its own
            # until their next check; both read each other's values meanwhile.
            if not entry_format.valid_dictionary(offer_id, stored):
                return True  # another dictionary with the same id: write uncompressed
            await self._client.set(current_key, f"{offer_id:08x}")
            current_id, data = offer_id, stored
        if current_id is None or not isinstance(data, bytes):
            raise InternalError("a dictionary was chosen without its id or bytes")
        self._use_dictionary(current_id, data)
        return True

    def _use_dictionary(self, dictionary_id: int, data: bytes) -> None:
        self._keep_dictionary(dictionary_id, data)
        if self._writer is not None and self._writer[0] == dictionary_id:
            return
        log.info(
            "redis cache: compressing account states with dictionary %08x (%d bytes, key %s)",
            dictionary_id,
            len(data),
            self.dictionary_key(dictionary_id),
        )
        self._writer = (dictionary_id, self._zstd(dictionary_id, data))

    def _zstd(self, dictionary_id: int, data: bytes) -> entry_format.ZstdCodec:
        """The zstd codec of a dictionary, made once (priming it digests the dictionary),
        kept under the id prefix its payloads start with."""
        prefix = dictionary_id.to_bytes(entry_format.ZSTD_ID_BYTES, "big")
        codec = self._zstd_codecs.get(prefix)
        if codec is None:
            if len(self._zstd_codecs) >= DICTIONARIES_MAX:
                self._zstd_codecs.clear()
            codec = self._zstd_codecs[prefix] = entry_format.ZstdCodec(dictionary_id, data)
        return codec

    def _keep_dictionary(self, dictionary_id: int, data: bytes) -> None:
        self._dictionaries.pop(dictionary_id, None)
        self._dictionaries[dictionary_id] = data
        self._dictionaries_missing.pop(dictionary_id, None)
        writing = None if self._writer is None else self._writer[0]
        while len(self._dictionaries) > DICTIONARIES_MAX:
            oldest = next(key for key in self._dictionaries if key != writing)
            del self._dictionaries[oldest]
            self._decoders.clear()
            self._zstd_codecs.clear()

    async def _inflate_waiting(
        self, waiting: list[tuple[str, int, int, bytes]], found: dict[str, tuple[int, bytes]]
    ) -> None:
        """Decode the values whose dictionary had no decoder yet: load the dictionaries
        (one round trip), make a decoder for each. What cannot be decoded, a dictionary that
        is gone or a payload that names none, is a miss."""
        now = self._clock()
        named = {
            (account_id, version): _named_dictionary(form, payload)
            for account_id, version, form, payload in waiting
        }
        wanted = {
            dictionary_id
            for dictionary_id in named.values()
            if dictionary_id is not None
            and dictionary_id not in self._dictionaries
            and self._dictionaries_missing.get(dictionary_id, 0.0) <= now
        }
        if wanted:
            await self._guarded("dictionary", lambda: self._load_dictionaries(sorted(wanted)), None)
        for account_id, version, form, payload in waiting:
            state = None
            if form == entry_format.FORMAT_ZSTD:
                dictionary_id = named[account_id, version]
                data = None if dictionary_id is None else self._dictionaries.get(dictionary_id)
                if dictionary_id is not None and data is not None:
                    state = self._zstd(dictionary_id, data).decompress(payload)
            else:
                decoder = self._decoder(payload)
                if decoder is not None:
                    state = entry_format.inflate(decoder, payload)
            if state is not None:
                found[account_id] = (version, state)

    async def _load_dictionaries(self, dictionary_ids: list[int]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for dictionary_id in dictionary_ids:
            pipe.get(self.dictionary_key(dictionary_id))
        for dictionary_id, data in zip(dictionary_ids, await pipe.execute(), strict=True):
            if entry_format.valid_dictionary(dictionary_id, data):
                self._keep_dictionary(dictionary_id, data)
            else:
                log.debug("redis cache: compression dictionary %08x is gone", dictionary_id)
                self._dictionaries_missing[dictionary_id] = (
                    self._clock() + DICTIONARY_MISSING_RETRY_SECONDS
                )

    def _decoder(self, payload: bytes) -> Any:
        """The primed decompressor for the payload's zlib header; None if the header is not
        a valid one or its dictionary is not loaded."""
        header = payload[: entry_format.ZLIB_HEADER_BYTES]
        decoder = self._decoders.get(header)
        if decoder is not None:
            return decoder
        dictionary_id = entry_format.header_dictionary_id(payload)
        data = None if dictionary_id is None else self._dictionaries.get(dictionary_id)
        if data is None:
            return None
        # Fed the header alone, inflate asks for the dictionary and checks its adler32
        # against the DICTID: copies of the primed object start from the deflate data,
        # a fifth of the cost of a new decompressobj with zdict.
        decoder = zlib.decompressobj(zlib.MAX_WBITS, zdict=data)
        try:
            if decoder.decompress(header) != b"" or decoder.eof:
                return None
        except zlib.error:
            return None
        if len(self._decoders) >= _DECODERS_MAX:
            self._decoders.clear()
        self._decoders[header] = decoder
        return decoder

    async def _check_listpack_settings(self) -> None:
        """Warn once when the server would store buckets as hashtables (best effort)."""
        self._listpack_checked = True
        try:
            async with asyncio.timeout(self._breaker.operation_timeout_seconds):
                reply = await self._client.config_get("hash-max-listpack-*")
            settings = {_text(name): int(_text(value)) for name, value in dict(reply).items()}
        except _CONFIG_FAILURES as error:
            # Managed services often refuse CONFIG; the cache works either way.
            log.debug("redis cache: cannot read the listpack settings: %s", error)
            return
        if any(
            settings.get(name, wanted) < wanted for name, wanted in layout.LISTPACK_SETTINGS.items()
        ):
            found = ", ".join(
                f"{name} {settings.get(name, '?')}" for name in layout.LISTPACK_SETTINGS
            )
            wanted = ", ".join(
                f"{name} {value}" for name, value in layout.LISTPACK_SETTINGS.items()
            )
            log.warning(
                "redis cache: the server has %s; below %s its account buckets are hashtables, "
                "not listpacks, and take about 40-50 bytes more per account (still correct). Set "
                "both in the server's configuration.",
                found,
                wanted,
            )


def _named_dictionary(form: int, payload: bytes) -> int | None:
    """The id of the dictionary a compressed payload was written with (None: no valid one)."""
    if form == entry_format.FORMAT_ZSTD:
        return entry_format.zstd_dictionary_id(payload)
    return entry_format.header_dictionary_id(payload)


def _noscript(result: object) -> bool:
    return isinstance(result, NoScriptError)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

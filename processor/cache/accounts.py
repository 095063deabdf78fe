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

Layout. Accounts are grouped into small hashes ("buckets") that Redis stores as listpacks:
one allocation holding all of a bucket's fields and values back to back, instead of a key,
an object, a value allocation and a table entry per account. An id is split into its last
three characters (the field) and the rest (the bucket)::

    key    <prefix>acct:{<id[:-3]>}
    field  <id[-3:]>
    value  [ n: 1 byte ][ version: n bytes big-endian, no leading zero byte ]
           [ format: 1 byte ][ payload: the state, raw (0) or compressed (1) ... ]

Card numbers are sequential with a Luhn check digit, so the cards of sequences ...00 to
...99 share a bucket: 100 cards. An id of three characters or fewer goes whole into the field of
the bucket ``{}``. No two ids share a (key, field): the bucket followed by the field is the
id again (the field is exactly three characters whenever the bucket is not empty, and the
braces, refused in ids and prefixes, delimit the bucket inside the key).
:meth:`AccountCache.location` gives the pair, :meth:`AccountCache.key` the bucket key. The
braces are a Redis Cluster hash tag, so a bucket and any companion key (``key(id) +
":<suffix>"``) land in the same slot (the empty tag of ``{}`` hashes the whole key: still
one slot).

The version sits inside the value (a second field per account would double the listpack
entries) in its shortest big-endian form: 2 bytes for versions below 256, 9 for
``ACCOUNT_VERSION_MAX``. The write script compares two versions without turning them into Lua
numbers (doubles, inexact above 2**53): with no leading zero bytes a longer version is the
larger one, and equal lengths compare byte by byte.

TTL. Redis 7.0 and Valkey 8 have no TTL per hash field (HEXPIRE came with Redis 7.4 and
Valkey 9), so the TTL is the bucket's: every write refreshes it to ``ENTRY_TTL_SECONDS``,
and a bucket leaves memory once none of its accounts has been written for that long. The
trade: an idle account stays cached while a bucket neighbour is active, so memory is
bounded by the active buckets rather than the active accounts (in the worst case, one
active card per bucket, 100 times as many accounts stay), and an eviction under
``volatile-lru`` drops a whole bucket. Idle entries risk nothing: a stale entry costs a
retry at commit, as always.

Listpack settings. A hash stays a listpack while it has at most
``hash-max-listpack-entries`` fields and no value longer than ``hash-max-listpack-value``
bytes. The defaults (512 and 64) turn a bucket into a hashtable at its first state, which
still works but costs about 40-50 bytes more per account (see below). The embedded server and
``ops/compose.yaml`` set ``LISTPACK_VALUE_BYTES_MIN`` and ``LISTPACK_ENTRIES_MIN``; on any
other server the cache reads both settings once (CONFIG GET; a refusal is ignored) and logs
one warning when they are smaller. It never changes a server's settings. A listpack is
searched linearly: an HGET or HSET walks about 13 KB for a full bucket of card states,
microseconds.

Memory per account, measured with 100,000 seeded accounts (``processor.tools.seed`` states, 123
bytes on average, so 125-byte values) under consecutive 16-digit card numbers, as ``MEMORY
USAGE`` (:meth:`AccountCache.memory_usage_bytes` over 1,000 accounts) / ``used_memory``
growth; the old layout is one string key per account with its own TTL:

    ============================================  ===========  ==========
    server                                        buckets      old layout
    ============================================  ===========  ==========
    Valkey 8.1 (embedded, libc malloc), listpack  132 / 133    198 / 231
    Redis 7.0 (jemalloc), listpack settings set   144 / 145    219 / 282
    Redis 7.0, default settings: hashtables       184 / 194    219 / 282
    ============================================  ===========  ==========

In a listpack an account costs its value (125 bytes on average), about 6 bytes of entry
headers and field, and 1-2 bytes of its bucket's key, object and TTL shared by 100; on
jemalloc about 11 more, as the ~13 KB listpack is rounded up to a 2 KB size class. Under
120 bytes therefore needs smaller states, not another layout: the state alone averages 123
bytes. Hence compression (below): the same 100,000 accounts take 89.5 / 90-92 bytes each on
the embedded Valkey 8.1 (values of 82.5 bytes on average), against 133 / 134-137
uncompressed, measured in one sitting.

Compression. A cache given a candidate ``dictionary`` (the server builds one from sample
states of its active programs: :mod:`processor.cache.compression`) stores a state as format
1, a zlib stream (RFC 1950) deflated with that preset dictionary, whenever it comes out
shorter than the state; otherwise, and in every cache without a dictionary, as format 0,
the state itself. The zlib header names the dictionary (its DICTID, the adler32 of its
bytes) and the stream ends with the adler32 of the state, so a value can never decode into
a wrong state: one written with a dictionary this process cannot load, or damaged, fails
to decode and is a miss, replaced by the next write. The version prefix is unchanged, so
the write script's never-older rule holds for every format.

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
Costs, per 123-byte state on a 2-core machine (medians): compressing 23-30 us (a copy of a
primed compressor; see COMPRESSION_LEVEL), decompressing 5-7 us (a copy of a primed
decompressor), against about 100 and 20 us for new zlib objects with ``zdict``.

Upgrading. Values of the release before formats (version, then the msgpack state, whose
first byte is 0x90 or more) read as misses and are replaced by the next write. The
release before cannot read formatted values (it would pass the format byte on to the state
decoder, which refuses it): do not run both releases on one cache prefix; change
``cache_key_prefix`` with the upgrade, or stop the old processes before starting new ones.

Writes never go backwards: :meth:`AccountCache.put_many` runs the script, which writes an
entry only when no entry exists or the stored version is not newer. Two processes refreshing
the same account out of order therefore leave the newer state, whatever order their writes
arrive in.

Connecting: :meth:`AccountCache.from_url` takes ``redis://``, ``rediss://``, ``unix://``
(and ``valkey://`` / ``valkeys://`` as aliases). Cluster mode is chosen by a
``redis+cluster://`` (or ``rediss+cluster://``) scheme, a ``?cluster=1`` query parameter, or
``cluster=True``; the URL then names any one node and the client discovers the others.

Round trips. Reads and writes run a script: :meth:`AccountCache.get_many` one read script
call (HMGET on each of its buckets, values back in one flat array) and
:meth:`AccountCache.put_many` one write script call per ``BATCH_ACCOUNTS_MAX`` accounts of a
slot. A standalone server gets them in one pipeline per call (a lone call goes without
one), a cluster in one pipeline per node, one call per slot (and batch). Invalidation sends
one pipeline of HDELs, one per bucket. Scripts because the client's CPU, not the server's,
is what a read costs: redis-py packs every command argument in Python, and random accounts
fall in as many buckets as there are accounts. The figures, as medians of 50 ``get_many``
calls of random accounts out of 100,000 consecutive seeded cards (125-byte values) against
the embedded Valkey, on a 2-core machine under other load (wall times there are noisy;
client CPU is ``time.process_time``, server time is ``INFO commandstats``)::

    ==========================  =====================  =====================
    accounts (buckets)          one HMGET per bucket   read script
                                CPU / wall / server    CPU / wall / server
    ==========================  =====================  =====================
    10 random (10)              1.14 / 4.4 / 0.07 ms   0.70 / 4.3 / 0.14 ms
    100 random (~100)           4.79 / 12.8 / 0.76 ms  1.40 / 9.2 / 1.04 ms
    1,000 random (~1,000)       31.9 / 69 / 5.5 ms     7.1 / 23 / 9.7 ms
    10 in one bucket            0.60 / 0.69 / 0.03 ms  0.49 / 0.67 / 0.10 ms
    100 in one bucket           1.23 / 1.47 / 0.22 ms  0.72 / 1.13 / 0.33 ms
    ==========================  =====================  =====================

The script costs the server more than plain HMGETs (Lua's per-call overhead) but saves the
client several times as much, and wins even when all accounts share a bucket (its fields
travel as one argument), so reads always take it. ARGV is that one string (see GET_SCRIPT).

Upgrading from the layout of one string key per account (``<prefix>acct:{<id>}``): the old
keys expire within ``ENTRY_TTL_SECONDS``. Only where one id is another minus its last three
characters can an old key bear a bucket's name: reads of that bucket fail (and are served
from PostgreSQL) until the first write to it replaces the old key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence, Sized
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from processor.errors import InternalError, present
from processor.limits import (
    ACCOUNT_VERSION_MAX,
    CACHE_KEY_PREFIX_CHARS_MAX,
    CARD_NUMBER_STORED_CHARS_MAX,
)

__all__ = [
    "ACCOUNTS_PER_CALL_MAX",
    "CIRCUIT_COOLDOWN_SECONDS",
    "CIRCUIT_ERRORS_MAX",
    "DICTIONARY_BYTES_MAX",
    "ENTRY_TTL_SECONDS",
    "LISTPACK_ENTRIES_MIN",
    "LISTPACK_VALUE_BYTES_MIN",
    "OPERATION_TIMEOUT_SECONDS",
    "SOCKET_TIMEOUT_SECONDS",
    "AccountCache",
]

log = logging.getLogger(__name__)

# How long a bucket lives after the last write to any of its accounts; bounds memory to
# the buckets holding an active account.
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
# Accounts per script call or HDEL, so one command never blocks the server for long.
BATCH_ACCOUNTS_MAX = 1000
ACCOUNTS_PER_CALL_MAX = 100_000
VALUE_BYTES_MAX = 64 * 1024
# ACCOUNT_VERSION_MAX in its shortest big-endian form; the script relies on this bound.
VERSION_BYTES_MAX = 8
# Three characters: a card number's last two sequence digits and its check digit, so a
# bucket holds 100 consecutive cards, few enough for a small listpack, many enough that
# the per-key overhead (about 100 bytes) is 1 byte per account.
FIELD_LENGTH = 3
# The server settings under which a bucket of card states stays a listpack: the largest
# seeded states are about 260 bytes, so 1024 leaves room for accounts with many more lots;
# 512 fields hold a bucket of 100 cards with room to spare (ids without a check digit can
# fill 1000 fields: such a full bucket becomes a hashtable, still correct).
LISTPACK_VALUE_BYTES_MIN = 1024
LISTPACK_ENTRIES_MIN = 512

# Compression (see "Compression" in the module docstring). The byte after the version:
FORMAT_RAW = 0  # the state as given
FORMAT_ZLIB = 1  # a zlib stream (RFC 1950) made with a preset dictionary
# Median microseconds to compress one seeded state (123 bytes) with a copy of a primed
# compressor, and its average compressed size (32 KB dictionary of sample states; 2-core
# machine under other load; a new compressobj with zdict instead of a copy costs ~100 us):
#   window bits  level 1       level 3       level 6       level 9
#   15 (32 KB)   25 us / 84.6  26 us / 80.9  33 us / 76.3  39 us / 76.1
#   13 (8 KB)    20 us / 85.0  20 us / 81.3  23 us / 79.8  23 us / 79.8
# An 8 KB window (the dictionary's last 8 KB) costs 3.5 bytes per account and saves 30% of
# the CPU; both are far below the 120-byte goal. The window and level are the writer's
# choice alone: a reader decodes any of them, so they can change without a flush.
COMPRESSION_LEVEL = 6
COMPRESSION_WINDOW_BITS = 13
COMPRESSION_MEMORY_LEVEL = 8
# zlib's 2-byte header and 4-byte DICTID come before the deflate data, its 4-byte adler32
# of the output after it: a state shorter than this never shrinks, so it is not tried.
_COMPRESSED_BYTES_MIN = 16
_ZLIB_HEADER_BYTES = 6
# A dictionary is at most this long (zlib only uses its last 32 KB, the window).
DICTIONARY_BYTES_MAX = 64 * 1024
# How often a writing cache offers its dictionary again (re-creating its key after a FLUSHALL
# or an eviction) and looks at which one is current; and how long a dictionary id found
# missing is not asked for again, so that values written with it cost no GET per read.
DICTIONARY_CHECK_SECONDS = 60.0
DICTIONARY_RETRY_SECONDS = 1.0
DICTIONARY_MISSING_RETRY_SECONDS = 10.0
# Dictionaries loaded by one process; primed decompressors (one per zlib header seen).
DICTIONARIES_MAX = 8
_DECODERS_MAX = 64

_ACCOUNT_NAMESPACE = "acct:"
_DICTIONARY_NAMESPACE = "dict:"
_KEY_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.:-]*")
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SCHEME_ALIASES = {"valkey": "redis", "valkeys": "rediss", "valkey+cluster": "redis+cluster"}
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off", ""}
_LISTPACK_SETTINGS = {
    "hash-max-listpack-value": LISTPACK_VALUE_BYTES_MIN,
    "hash-max-listpack-entries": LISTPACK_ENTRIES_MIN,
}

# KEYS are distinct bucket keys of one slot. ARGV[1] is the TTL in seconds; then, for each
# key in order, the number of its entries and that many field, value pairs:
#   ARGV = ttl, n1, field, value, ... (n1 pairs), n2, field, value, ... (n2 pairs), ...
# An entry is written unless its field holds a newer version; a bucket that got a write
# has its TTL refreshed. Returns how many entries were written.
PUT_SCRIPT = b"""
-- A stored value that does not parse counts as absent: the candidate replaces it.
local function older(candidate, stored)
  local n, m = string.byte(candidate, 1), string.byte(stored, 1)
  if m == nil or m < 1 or m > 8 or #stored <= m then
    return false
  end
  if n ~= m then
    return n < m
  end
  for i = 2, n + 1 do
    local a, b = string.byte(candidate, i), string.byte(stored, i)
    if a ~= b then return a < b end
  end
  return false
end
local at = 2
local written = 0
for _, key in ipairs(KEYS) do
  local last = at + 2 * tonumber(ARGV[at])
  local touched = false
  for i = at + 1, last, 2 do
    local stored = redis.pcall('HGET', key, ARGV[i])
    if type(stored) == 'table' and stored.err then
      -- A string key of the one-key-per-account layout under a bucket's name.
      redis.call('UNLINK', key)
      stored = false
    end
    if not stored or not older(ARGV[i + 1], stored) then
      redis.call('HSET', key, ARGV[i], ARGV[i + 1])
      written = written + 1
      touched = true
    end
  end
  if touched then
    redis.call('EXPIRE', key, ARGV[1])
  end
  at = last + 1
end
return written
"""
PUT_SCRIPT_SHA = hashlib.sha1(PUT_SCRIPT).hexdigest()

# KEYS are distinct bucket keys of one slot. ARGV[1] holds their fields: each key's fields
# joined by "}", the keys' groups joined by "{", in the order of KEYS. Ids (so fields) never
# hold a brace nor an empty field, and UTF-8 never puts a brace byte inside a character.
# Returns the stored values in the order of the fields, nil for a field holding nothing.
# One argument instead of one per field: redis-py packs every argument in Python, and that
# is most of a read's cost (see "Round trips" in the module docstring for the figures).
GET_SCRIPT = b"""
local values = {}
local k = 0
for group in string.gmatch(ARGV[1], '[^{]+') do
  k = k + 1
  local fields = {}
  for field in string.gmatch(group, '[^}]+') do
    fields[#fields + 1] = field
  end
  local found = redis.call('HMGET', KEYS[k], unpack(fields))
  for i = 1, #fields do
    values[#values + 1] = found[i]
  end
end
return values
"""
GET_SCRIPT_SHA = hashlib.sha1(GET_SCRIPT).hexdigest()

# What a failing Redis raises through redis-py: its own errors (connection, timeout,
# cluster down, server replies), cluster discovery failures, socket errors, our deadline.
_REDIS_FAILURES: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)

# Reading the server's settings may also meet a reply that is not what it should be.
_CONFIG_FAILURES: tuple[type[BaseException], ...] = (*_REDIS_FAILURES, ValueError, TypeError)

_T = TypeVar("_T")
Client = aioredis.Redis | RedisCluster
# One script call: its bucket keys and its ARGV (see PUT_SCRIPT and GET_SCRIPT).
_ScriptCall = tuple[list[str], list[int | str | bytes]]
# One script call's share of the buckets of a slot: [(bucket key, [item, ...]), ...].
_Batch = list[tuple[str, list[_T]]]


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
        if too_long or not _KEY_PREFIX_PATTERN.fullmatch(key_prefix):
            raise ValueError(
                f"key_prefix must be at most {CACHE_KEY_PREFIX_CHARS_MAX} characters of "
                f"[A-Za-z0-9_.:-], got {key_prefix!r}"
            )
        if not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be a positive integer, got {ttl_seconds!r}")
        if operation_timeout_seconds <= 0 or circuit_cooldown_seconds < 0:
            raise ValueError("timeouts must be positive and the cool-down not negative")
        if circuit_errors_max < 1:
            raise ValueError(f"circuit_errors_max must be >= 1, got {circuit_errors_max}")
        if dictionary is not None and (
            not isinstance(dictionary, bytes) or not 0 < len(dictionary) <= DICTIONARY_BYTES_MAX
        ):
            raise ValueError(
                f"dictionary must be None or 1 to {DICTIONARY_BYTES_MAX} bytes, got "
                f"{type(dictionary).__name__} {str(dictionary)[:40]}"
            )
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._key_prefix = key_prefix + _ACCOUNT_NAMESPACE
        self._dictionary_prefix = key_prefix + _DICTIONARY_NAMESPACE
        # Compression state: the candidate offered until one is current; the dictionaries
        # loaded (id -> bytes, each checked against its id); ids found missing (id -> when
        # to ask again); the writer (id, primed compressor); primed decompressors by the
        # zlib header they were primed with; when the next negotiation is due.
        self._candidate = None if dictionary is None else (zlib.adler32(dictionary), dictionary)
        self._dictionaries: dict[int, bytes] = {}
        self._dictionaries_missing: dict[int, float] = {}
        self._writer: tuple[int, Any] | None = None
        self._decoders: dict[bytes, Any] = {}
        self._dictionary_due = 0.0
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
        self._listpack_checked = False
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
        """The key of the bucket holding an account; companion keys append ``:<suffix>``."""
        return self.location(account_id)[0]

    def location(self, account_id: str) -> tuple[str, str]:
        """``(bucket key, field)`` of an account's entry."""
        _check_account_id(account_id)
        return self._location(account_id)

    async def get_many(self, account_ids: Iterable[str]) -> dict[str, tuple[int, bytes]]:
        """``{account id: (version, state)}`` for the cached accounts; misses are absent."""
        ids = list(dict.fromkeys(account_ids))
        _check_count(ids)
        for account_id in ids:
            _check_account_id(account_id)
        if not ids:
            return {}
        # slot -> bucket key -> [account id]: a script call's keys share a slot. This is
        # _location inlined (the read path is hot): for every id, id[:-FIELD_LENGTH] is its
        # bucket and id[-FIELD_LENGTH:] its field.
        prefix = self._key_prefix
        slots: dict[int, dict[str, list[str]]] = {}
        buckets: dict[str, list[str]] = {}
        for account_id in ids:
            key = f"{prefix}{{{account_id[:-FIELD_LENGTH]}}}"
            if self._cluster:
                buckets = slots.setdefault(key_slot(key.encode()), {})
            members = buckets.get(key)
            if members is None:
                buckets[key] = [account_id]
            else:
                members.append(account_id)
        if not self._cluster:
            slots[0] = buckets
        batches = [batch for buckets in slots.values() for batch in _batches(buckets)]
        calls = [_get_call(batch) for batch in batches]
        values = await self._guarded("get", lambda: self._run_get_script(calls), None)
        if values is None:
            self.misses_total += len(ids)
            return {}
        found: dict[str, tuple[int, bytes]] = {}
        # Compressed values whose dictionary is not loaded yet: (account id, version, payload).
        waiting: list[tuple[str, int, bytes]] = []
        decoders = self._decoders
        # The script returns the values in the order of its fields, call after call.
        order = (account_id for batch in batches for _, chunk in batch for account_id in chunk)
        for account_id, value in zip(order, values, strict=True):
            if value is None:
                continue
            entry = _split_entry(value)
            if entry is None:
                continue
            version, form, payload = entry
            if form == FORMAT_RAW:
                found[account_id] = (version, payload)
            elif form == FORMAT_ZLIB:
                decoder = decoders.get(payload[:_ZLIB_HEADER_BYTES])
                if decoder is None:
                    waiting.append((account_id, version, payload))
                    continue
                state = _inflate(decoder, payload)
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
        _check_count(entries)
        if self._candidate is not None and self._clock() >= self._dictionary_due:
            # Rare (first use, then every DICTIONARY_CHECK_SECONDS): misuse is refused before
            # anything is sent, so the entries are checked before the negotiation.
            for account_id, entry in entries.items():
                _check_account_id(account_id)
                _encode_entry(account_id, entry, None)
            await self._negotiate_dictionary()
        compressor = None if self._writer is None else self._writer[1]
        # slot -> bucket key -> [(field, value)]: a script call's keys must share a slot.
        slots: dict[int, dict[str, list[tuple[str, bytes]]]] = {}
        for account_id, entry in entries.items():
            _check_account_id(account_id)
            value = _encode_entry(account_id, entry, compressor)
            key, field = self._location(account_id)
            slot = key_slot(key.encode()) if self._cluster else 0
            slots.setdefault(slot, {}).setdefault(key, []).append((field, value))
        if not slots:
            return 0
        calls = [call for buckets in slots.values() for call in _script_calls(buckets)]
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
        _check_count(ids)
        for account_id in ids:
            _check_account_id(account_id)
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

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def __aenter__(self) -> AccountCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- Redis calls ------------------------------------------------------------------

    def _location(self, account_id: str) -> tuple[str, str]:
        # Ids of FIELD_LENGTH characters or fewer keep an empty bucket, so every field of a
        # non-empty bucket has exactly FIELD_LENGTH characters and bucket + field == id.
        cut = max(len(account_id) - FIELD_LENGTH, 0)
        return f"{self._key_prefix}{{{account_id[:cut]}}}", account_id[cut:]

    def _by_bucket(self, ids: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
        """``[(bucket key, [(field, account id), ...])]``, at most BATCH_ACCOUNTS_MAX each."""
        buckets: dict[str, list[tuple[str, str]]] = {}
        for account_id in ids:
            key, field = self._location(account_id)
            buckets.setdefault(key, []).append((field, account_id))
        return [
            (key, members[start : start + BATCH_ACCOUNTS_MAX])
            for key, members in buckets.items()
            for start in range(0, len(members), BATCH_ACCOUNTS_MAX)
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
        for start in range(0, len(keys), BATCH_ACCOUNTS_MAX):
            pipe.unlink(*keys[start : start + BATCH_ACCOUNTS_MAX])
        return sum(int(count) for count in await pipe.execute())

    async def _run_put_script(self, calls: list[_ScriptCall]) -> int:
        ttl = [self.ttl_seconds]
        calls = [(keys, ttl + arguments) for keys, arguments in calls]
        results = await self._run_script(PUT_SCRIPT, PUT_SCRIPT_SHA, calls)
        return sum(int(result) for result in results)

    async def _run_get_script(self, calls: list[_ScriptCall]) -> list[Any]:
        results = await self._run_script(GET_SCRIPT, GET_SCRIPT_SHA, calls)
        return [value for values in results for value in values]

    async def _run_script(self, script: bytes, sha: str, calls: list[_ScriptCall]) -> list[Any]:
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

    async def _evalsha_all(self, sha: str, calls: list[_ScriptCall]) -> list[Any]:
        if len(calls) == 1 and not self._cluster:
            # One call needs no pipeline (which costs about 0.1 ms of client CPU more).
            keys, arguments = calls[0]
            try:
                return [
                    await self._client.execute_command("EVALSHA", sha, len(keys), *keys, *arguments)
                ]
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
        current_id = _dictionary_id(current)
        data: object = None
        if current_id == offer_id:
            data = stored
        elif current_id is not None:
            data = self._dictionaries.get(current_id)
            if data is None:
                data = await self._client.get(self.dictionary_key(current_id))
        if current_id is None or not _valid_dictionary(current_id, data):
            # dict:current names a dictionary that is gone (evicted) or is not an id: this
            # offer takes its place. Two caches doing so at once may each keep its own
            # until their next check; both read each other's values meanwhile.
            if not _valid_dictionary(offer_id, stored):
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
        # One primed compressor per dictionary: a copy of it costs a third of a new
        # compressobj with zdict (deflateSetDictionary hashes the whole window each time).
        compressor = zlib.compressobj(
            COMPRESSION_LEVEL,
            zlib.DEFLATED,
            COMPRESSION_WINDOW_BITS,
            COMPRESSION_MEMORY_LEVEL,
            zdict=data,
        )
        log.info(
            "redis cache: compressing account states with dictionary %08x (%d bytes, key %s)",
            dictionary_id,
            len(data),
            self.dictionary_key(dictionary_id),
        )
        self._writer = (dictionary_id, compressor)

    def _keep_dictionary(self, dictionary_id: int, data: bytes) -> None:
        self._dictionaries.pop(dictionary_id, None)
        self._dictionaries[dictionary_id] = data
        self._dictionaries_missing.pop(dictionary_id, None)
        writing = None if self._writer is None else self._writer[0]
        while len(self._dictionaries) > DICTIONARIES_MAX:
            oldest = next(key for key in self._dictionaries if key != writing)
            del self._dictionaries[oldest]
            self._decoders.clear()

    async def _inflate_waiting(
        self, waiting: list[tuple[str, int, bytes]], found: dict[str, tuple[int, bytes]]
    ) -> None:
        """Decode the values whose zlib header had no primed decompressor yet: load their
        dictionaries (one round trip), prime one per header. What cannot be decoded, a
        dictionary that is gone or a header that is not zlib's, is a miss."""
        now = self._clock()
        wanted = {
            dictionary_id
            for _, _, payload in waiting
            if (dictionary_id := _header_dictionary_id(payload)) is not None
            and dictionary_id not in self._dictionaries
            and self._dictionaries_missing.get(dictionary_id, 0.0) <= now
        }
        if wanted:
            await self._guarded("dictionary", lambda: self._load_dictionaries(sorted(wanted)), None)
        for account_id, version, payload in waiting:
            decoder = self._decoder(payload)
            if decoder is not None:
                state = _inflate(decoder, payload)
                if state is not None:
                    found[account_id] = (version, state)

    async def _load_dictionaries(self, dictionary_ids: list[int]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for dictionary_id in dictionary_ids:
            pipe.get(self.dictionary_key(dictionary_id))
        for dictionary_id, data in zip(dictionary_ids, await pipe.execute(), strict=True):
            if _valid_dictionary(dictionary_id, data):
                self._keep_dictionary(dictionary_id, data)
            else:
                log.debug("redis cache: compression dictionary %08x is gone", dictionary_id)
                self._dictionaries_missing[dictionary_id] = (
                    self._clock() + DICTIONARY_MISSING_RETRY_SECONDS
                )

    def _decoder(self, payload: bytes) -> Any:
        """The primed decompressor for the payload's zlib header; None if the header is not
        a valid one or its dictionary is not loaded."""
        header = payload[:_ZLIB_HEADER_BYTES]
        decoder = self._decoders.get(header)
        if decoder is not None:
            return decoder
        dictionary_id = _header_dictionary_id(payload)
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
            async with asyncio.timeout(self._operation_timeout_seconds):
                reply = await self._client.config_get("hash-max-listpack-*")
            settings = {_text(name): int(_text(value)) for name, value in dict(reply).items()}
        except _CONFIG_FAILURES as error:
            # Managed services often refuse CONFIG; the cache works either way.
            log.debug("redis cache: cannot read the listpack settings: %s", error)
            return
        if any(settings.get(name, wanted) < wanted for name, wanted in _LISTPACK_SETTINGS.items()):
            found = ", ".join(f"{name} {settings.get(name, '?')}" for name in _LISTPACK_SETTINGS)
            wanted = ", ".join(f"{name} {value}" for name, value in _LISTPACK_SETTINGS.items())
            log.warning(
                "redis cache: the server has %s; below %s its account buckets are hashtables, "
                "not listpacks, and take about 40-50 bytes more per account (still correct). Set "
                "both in the server's configuration.",
                found,
                wanted,
            )

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
        or not 0 < len(account_id) <= CARD_NUMBER_STORED_CHARS_MAX
        or "{" in account_id
        or "}" in account_id
    ):
        raise ValueError(
            "an account id is a non-empty str of at most "
            f"{CARD_NUMBER_STORED_CHARS_MAX} characters without braces, got {account_id!r}"
        )


def _batches(buckets: dict[str, list[_T]]) -> list[_Batch[_T]]:
    """The buckets of one slot cut into script calls of at most BATCH_ACCOUNTS_MAX items.

    A bucket with more items than fit in one call continues in the next; a call names a key
    once.
    """
    batches: list[_Batch[_T]] = []
    batch: _Batch[_T] = []
    room = BATCH_ACCOUNTS_MAX
    for key, items in buckets.items():
        start = 0
        while start < len(items):
            if room == 0:
                batches.append(batch)
                batch, room = [], BATCH_ACCOUNTS_MAX
            chunk = items if start == 0 and len(items) <= room else items[start : start + room]
            batch.append((key, chunk))
            start += len(chunk)
            room -= len(chunk)
    if batch:
        batches.append(batch)
    return batches


def _get_call(batch: _Batch[str]) -> _ScriptCall:
    """The GET_SCRIPT call reading a batch of ``(bucket key, [account id, ...])``."""
    fields = "{".join(
        ["}".join([member[-FIELD_LENGTH:] for member in chunk]) for _, chunk in batch]
    )
    return [key for key, _ in batch], [fields]


def _script_calls(buckets: dict[str, list[tuple[str, bytes]]]) -> list[_ScriptCall]:
    """The script calls writing the buckets of one slot: each names a key once, with its
    count of field, value pairs (the layout PUT_SCRIPT reads)."""
    calls: list[_ScriptCall] = []
    for batch in _batches(buckets):
        arguments: list[int | str | bytes] = []
        for _, pairs in batch:
            arguments.append(len(pairs))
            for field, value in pairs:
                arguments += (field, value)
        calls.append(([key for key, _ in batch], arguments))
    return calls


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode_entry(account_id: str, entry: object, compressor: Any) -> bytes:
    """The stored value of an entry: version, format byte, state (compressed with a copy of
    ``compressor`` when that makes it shorter)."""
    if not isinstance(entry, tuple) or len(entry) != 2:
        raise ValueError(f"account {account_id}: an entry is (version, state), got {entry!r}")
    version, state = entry
    if type(version) is not int or not 0 <= version <= ACCOUNT_VERSION_MAX:
        raise ValueError(
            f"account {account_id}: version must be an int in 0..{ACCOUNT_VERSION_MAX}"
        )
    if not isinstance(state, bytes):
        raise ValueError(f"account {account_id}: state must be bytes, got {type(state).__name__}")
    if len(state) > VALUE_BYTES_MAX:
        raise ValueError(
            f"account {account_id}: state is {len(state)} bytes; at most {VALUE_BYTES_MAX}"
        )
    size = max((version.bit_length() + 7) // 8, 1)
    head = bytes((size,)) + version.to_bytes(size, "big")
    if compressor is not None and len(state) >= _COMPRESSED_BYTES_MIN:
        packer = compressor.copy()
        packed: bytes = packer.compress(state) + packer.flush()
        if len(packed) < len(state):
            return head + b"\x01" + packed
    return head + b"\x00" + state


def _split_entry(value: object) -> tuple[int, int, bytes] | None:
    """``(version, format, payload)`` of a stored value; None for a value that does not
    parse (too short for its version, or no format byte)."""
    if not isinstance(value, bytes) or not value:
        return None
    size = value[0]
    if not 1 <= size <= VERSION_BYTES_MAX or len(value) <= size + 1:
        return None
    return int.from_bytes(value[1 : 1 + size], "big"), value[1 + size], value[2 + size :]


def _inflate(decoder: Any, payload: bytes) -> bytes | None:
    """The state in a FORMAT_ZLIB payload, with a copy of its primed decompressor; None when
    the stream is damaged (zlib checks the adler32 of the output at its end) or too long."""
    inflater = decoder.copy()
    try:
        state: bytes = inflater.decompress(payload[_ZLIB_HEADER_BYTES:], VALUE_BYTES_MAX + 1)
    except zlib.error:
        return None
    if not inflater.eof or inflater.unused_data or len(state) > VALUE_BYTES_MAX:
        return None
    return state


def _header_dictionary_id(payload: bytes) -> int | None:
    """The DICTID of a zlib header (RFC 1950: CMF, FLG with FDICT set, DICTID); None when
    the payload does not start with such a header."""
    if len(payload) <= _ZLIB_HEADER_BYTES:
        return None
    cmf, flg = payload[0], payload[1]
    if cmf & 0x0F != zlib.DEFLATED or cmf >> 4 > 7 or not flg & 0x20 or (cmf << 8 | flg) % 31:
        return None
    return int.from_bytes(payload[2:_ZLIB_HEADER_BYTES], "big")


def _dictionary_id(value: object) -> int | None:
    """The id in ``dict:current`` (8 hex digits); None for anything else."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]{8}", text):
        return None
    return int(text, 16)


def _valid_dictionary(dictionary_id: int, data: object) -> bool:
    """Whether ``data`` is a dictionary whose id (adler32) is ``dictionary_id``."""
    return (
        isinstance(data, bytes)
        and 0 < len(data) <= DICTIONARY_BYTES_MAX
        and zlib.adler32(data) == dictionary_id
    )

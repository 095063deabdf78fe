"""The account cache's layout in Redis: buckets, fields, TTLs and the two scripts.

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

Writes never go backwards: :meth:`AccountCache.put_many` runs the script, which writes an
entry only when no entry exists or the stored version is not newer. Two processes refreshing
the same account out of order therefore leave the newer state, whatever order their writes
arrive in.

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

import hashlib
import re
from collections.abc import Sized
from typing import Final, TypeVar

from processor.limits import CARD_NUMBER_STORED_CHARS_MAX

# How long a bucket lives after the last write to any of its accounts; bounds memory to
# the buckets holding an active account.
ENTRY_TTL_SECONDS: Final = 6 * 3600
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

LISTPACK_SETTINGS: Final = {
    "hash-max-listpack-value": LISTPACK_VALUE_BYTES_MIN,
    "hash-max-listpack-entries": LISTPACK_ENTRIES_MIN,
}

# Accounts per script call or HDEL, so one command never blocks the server for long; and
# per cache call.
BATCH_ACCOUNTS_MAX: Final = 1000
ACCOUNTS_PER_CALL_MAX: Final = 100_000

ACCOUNT_NAMESPACE: Final = "acct:"
DICTIONARY_NAMESPACE: Final = "dict:"
KEY_PREFIX_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:-]*")

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

_T = TypeVar("_T")
# One script call: its bucket keys and its ARGV (see PUT_SCRIPT and GET_SCRIPT).
ScriptCall = tuple[list[str], list[int | str | bytes]]
# One script call's share of the buckets of a slot: [(bucket key, [item, ...]), ...].
Batch = list[tuple[str, list[_T]]]


def location(account_prefix: str, account_id: str) -> tuple[str, str]:
    """``(bucket key, field)`` of an account under ``account_prefix`` (``<prefix>acct:``)."""
    # Ids of FIELD_LENGTH characters or fewer keep an empty bucket, so every field of a
    # non-empty bucket has exactly FIELD_LENGTH characters and bucket + field == id.
    cut = max(len(account_id) - FIELD_LENGTH, 0)
    return f"{account_prefix}{{{account_id[:cut]}}}", account_id[cut:]


def check_count(items: Sized) -> None:
    if len(items) > ACCOUNTS_PER_CALL_MAX:
        raise ValueError(f"{len(items)} accounts in one call; at most {ACCOUNTS_PER_CALL_MAX}")


def check_account_id(account_id: object) -> None:
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


def batches(buckets: dict[str, list[_T]]) -> list[Batch[_T]]:
    """The buckets of one slot cut into script calls of at most BATCH_ACCOUNTS_MAX items.

    A bucket with more items than fit in one call continues in the next; a call names a key
    once.
    """
    batches: list[Batch[_T]] = []
    batch: Batch[_T] = []
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


def get_call(batch: Batch[str]) -> ScriptCall:
    """The GET_SCRIPT call reading a batch of ``(bucket key, [account id, ...])``."""
    fields = "{".join(
        ["}".join([member[-FIELD_LENGTH:] for member in chunk]) for _, chunk in batch]
    )
    return [key for key, _ in batch], [fields]


def script_calls(buckets: dict[str, list[tuple[str, bytes]]]) -> list[ScriptCall]:
    """The script calls writing the buckets of one slot: each names a key once, with its
    count of field, value pairs (the layout PUT_SCRIPT reads)."""
    calls: list[ScriptCall] = []
    for batch in batches(buckets):
        arguments: list[int | str | bytes] = []
        for _, pairs in batch:
            arguments.append(len(pairs))
            for field, value in pairs:
                arguments += (field, value)
        calls.append(([key for key, _ in batch], arguments))
    return calls

"""What one cached value is: the account's version, a format byte, and its state, raw or
compressed with a shared zlib dictionary.

    value  [ n: 1 byte ][ version: n bytes big-endian, no leading zero byte ]
           [ format: 1 byte ][ payload: the state, raw (0) or compressed (1) ... ]

Compression. A cache given a candidate ``dictionary`` (the server builds one from sample
states of its active programs: :mod:`processor.cache.compression`) stores a state as format
1, a zlib stream (RFC 1950) deflated with that preset dictionary, whenever it comes out
shorter than the state; otherwise, and in every cache without a dictionary, as format 0,
the state itself. The zlib header names the dictionary (its DICTID, the adler32 of its
bytes) and the stream ends with the adler32 of the state, so a value can never decode into
a wrong state: one written with a dictionary this process cannot load, or damaged, fails
to decode and is a miss, replaced by the next write. The version prefix is unchanged, so
the write script's never-older rule holds for every format.

Upgrading. Values of the release before formats (version, then the msgpack state, whose
first byte is 0x90 or more) read as misses and are replaced by the next write. The
release before cannot read formatted values (it would pass the format byte on to the state
decoder, which refuses it): do not run both releases on one cache prefix; change
``cache_key_prefix`` with the upgrade, or stop the old processes before starting new ones.

Everything here is a pure function; which dictionary a cache writes with, and how the
dictionaries are shared through Redis, is :mod:`processor.cache.accounts`' business.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Final

from processor.limits import ACCOUNT_VERSION_MAX

VALUE_BYTES_MAX: Final = 64 * 1024
"""The largest state the cache holds."""
# ACCOUNT_VERSION_MAX in its shortest big-endian form; the script relies on this bound.
VERSION_BYTES_MAX = 8
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
ZLIB_HEADER_BYTES = 6
# A dictionary is at most this long (zlib only uses its last 32 KB, the window).
DICTIONARY_BYTES_MAX = 64 * 1024


def encode_entry(account_id: str, entry: object, compressor: Any) -> bytes:
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


def split_entry(value: object) -> tuple[int, int, bytes] | None:
    """``(version, format, payload)`` of a stored value; None for a value that does not
    parse (too short for its version, or no format byte)."""
    if not isinstance(value, bytes) or not value:
        return None
    size = value[0]
    if not 1 <= size <= VERSION_BYTES_MAX or len(value) <= size + 1:
        return None
    return int.from_bytes(value[1 : 1 + size], "big"), value[1 + size], value[2 + size :]


def inflate(decoder: Any, payload: bytes) -> bytes | None:
    """The state in a FORMAT_ZLIB payload, with a copy of its primed decompressor; None when
    the stream is damaged (zlib checks the adler32 of the output at its end) or too long."""
    inflater = decoder.copy()
    try:
        state: bytes = inflater.decompress(payload[ZLIB_HEADER_BYTES:], VALUE_BYTES_MAX + 1)
    except zlib.error:
        return None
    if not inflater.eof or inflater.unused_data or len(state) > VALUE_BYTES_MAX:
        return None
    return state


def header_dictionary_id(payload: bytes) -> int | None:
    """The DICTID of a zlib header (RFC 1950: CMF, FLG with FDICT set, DICTID); None when
    the payload does not start with such a header."""
    if len(payload) <= ZLIB_HEADER_BYTES:
        return None
    cmf, flg = payload[0], payload[1]
    if cmf & 0x0F != zlib.DEFLATED or cmf >> 4 > 7 or not flg & 0x20 or (cmf << 8 | flg) % 31:
        return None
    return int.from_bytes(payload[2:ZLIB_HEADER_BYTES], "big")


def dictionary_id(value: object) -> int | None:
    """The id in ``dict:current`` (8 hex digits); None for anything else."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]{8}", text):
        return None
    return int(text, 16)


def valid_dictionary(dictionary_id: int, data: object) -> bool:
    """Whether ``data`` is a dictionary whose id (adler32) is ``dictionary_id``."""
    return (
        isinstance(data, bytes)
        and 0 < len(data) <= DICTIONARY_BYTES_MAX
        and zlib.adler32(data) == dictionary_id
    )

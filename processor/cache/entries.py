"""What one cached value is: the account's version, a format byte, and its state, raw or
compressed with a shared dictionary.

    value  [ n: 1 byte ][ version: n bytes big-endian, no leading zero byte ]
           [ format: 1 byte ][ payload: the state, raw (0) or compressed (1, 2) ... ]

Compression. A cache given a candidate ``dictionary`` (the server builds one from sample
states of its active programs: :mod:`processor.cache.compression`) stores a state as format
2 whenever it comes out shorter than the state: the dictionary's id (the adler32 of its
bytes, 4 bytes big-endian) and a zstd frame compressed with the dictionary as raw content,
without the frame's magic number, with its content size and checksum. Otherwise, and in
every cache without a dictionary, it stores format 0, the state itself. Format 1, a zlib
stream (RFC 1950) deflated with the dictionary preset, is what the release before wrote;
it is still read. Either way the value names its dictionary and carries a checksum of the
state, so it can never decode into a wrong state: one written with a dictionary this
process cannot load, or damaged, fails to decode and is a miss, replaced by the next
write. The version prefix is unchanged, so the write script's never-older rule holds for
every format.

zstd rather than zlib for speed: per demo state (122 bytes), compressing 3.6 µs against
14.3 for a copy of a primed zlib compressor, decompressing 0.7 against 13.4, for about 13
bytes more per account (bench/codec_bench.py, BENCHMARKS.md).

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

import zstandard

from processor.limits import ACCOUNT_VERSION_MAX

VALUE_BYTES_MAX: Final = 64 * 1024
"""The largest state the cache holds."""
# ACCOUNT_VERSION_MAX in its shortest big-endian form; the script relies on this bound.
VERSION_BYTES_MAX = 8
# Compression (see "Compression" in the module docstring). The byte after the version:
FORMAT_RAW = 0  # the state as given
FORMAT_ZLIB = 1  # a zlib stream (RFC 1950) made with a preset dictionary (read only)
FORMAT_ZSTD = 2  # the dictionary's id, then a magicless zstd frame made with it
ZSTD_LEVEL = 3
ZSTD_ID_BYTES = 4
# The level is the writer's choice alone (a reader decodes any): 3 measured 84 bytes a
# demo state against 90 at 1, at the same speed.
# The id, the frame's header and its checksum come to about 11 bytes: a state shorter
# than this never shrinks, so it is not tried.
_COMPRESSED_BYTES_MIN = 16
# zlib's 2-byte header and 4-byte DICTID, before the deflate data (format 1).
ZLIB_HEADER_BYTES = 6
# A dictionary is at most this long.
DICTIONARY_BYTES_MAX = 64 * 1024


def encode_entry(account_id: str, entry: object, compressor: Any) -> bytes:
    """The stored value of an entry: version, format byte, state (compressed by
    ``compressor``, a ZstdCodec, when that makes it shorter)."""
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
        packed: bytes = compressor.compress(state)
        if len(packed) < len(state):
            return head + b"\x02" + packed
    return head + b"\x00" + state


class ZstdCodec:
    """The zstd compressor and decompressor of one dictionary (format 2 payloads)."""

    def __init__(self, dictionary_id: int, data: bytes) -> None:
        self.dictionary_id = dictionary_id
        self.prefix = dictionary_id.to_bytes(ZSTD_ID_BYTES, "big")
        prepared = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        parameters = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL,
            format=zstandard.FORMAT_ZSTD1_MAGICLESS,
            write_checksum=True,
            write_content_size=True,
            write_dict_id=False,
        )
        self._compressor = zstandard.ZstdCompressor(
            dict_data=prepared, compression_params=parameters
        )
        self._decompressor = zstandard.ZstdDecompressor(
            dict_data=prepared, format=zstandard.FORMAT_ZSTD1_MAGICLESS
        )

    def compress(self, state: bytes) -> bytes:
        """The payload of ``state``: this dictionary's id, then the frame."""
        return self.prefix + self._compressor.compress(state)

    def decompress(self, payload: bytes) -> bytes | None:
        """The state of a payload of this dictionary; None when it is damaged or too long."""
        try:
            state: bytes = self._decompressor.decompress(
                payload[ZSTD_ID_BYTES:], max_output_size=VALUE_BYTES_MAX + 1
            )
        except zstandard.ZstdError:
            return None
        return state if len(state) <= VALUE_BYTES_MAX else None


def zstd_dictionary_id(payload: bytes) -> int | None:
    """The dictionary id a format 2 payload starts with; None when it is too short."""
    if len(payload) <= ZSTD_ID_BYTES:
        return None
    return int.from_bytes(payload[:ZSTD_ID_BYTES], "big")


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

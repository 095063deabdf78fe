"""Array parameters for PostgreSQL, packed in PostgreSQL's own binary format.

The store binds a batch as arrays (``unnest(%b::text[], ...)``): a commit of a hundred
transactions is some 26 arrays and thousands of elements. psycopg packs a Python list
element by element in Python, a dumper call each, which measured as the largest single
cost of a commit (BENCHMARKS.md, "Arrays packed in one call"). Here a whole list is packed
in one call into the bytes PostgreSQL's ``array_recv`` reads, and handed to psycopg
already packed: ``text([...])``, ``bytea([...])``, ``int4([...])``, ``int8([...])`` make a
parameter psycopg sends as it is, with the array type's oid.

The format (PostgreSQL's ``array_send``, big-endian): the number of dimensions (0 for an
empty array, else 1), a has-nulls flag, the element type's oid; for the one dimension its
length and lower bound (1); then each element as its length (-1 for NULL) and its bytes in
the element type's binary form (UTF-8 text, raw bytea, two's-complement integers).

``pack_reference`` is the definition, in Python; ``processor._arrays`` (ext/_arrays.pyx)
is the same in C, used when built (``make`` builds it), and tests/test_arrays.py holds the
two equal and round-trips both through PostgreSQL.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

# Element kinds, as ext/_arrays.pyx numbers them.
TEXT: Final = 0
BYTEA: Final = 1
INT4: Final = 2
INT8: Final = 3

# PostgreSQL's built-in oids (pg_type): each kind's element type and array type.
_ELEMENT_OIDS: Final = {TEXT: 25, BYTEA: 17, INT4: 23, INT8: 20}
_ARRAY_OIDS: Final = {TEXT: 1009, BYTEA: 1001, INT4: 1007, INT8: 1016}
_INT_RANGES: Final = {INT4: (-(2**31), 2**31 - 1), INT8: (-(2**63), 2**63 - 1)}
_NULL: Final = struct.pack(">i", -1)


def pack_reference(values: Sequence[Any], kind: int, element_oid: int) -> bytes:
    """``values`` as one-dimensional ``array_send`` bytes of ``element_oid`` elements."""
    if not values:
        return struct.pack(">iiI", 0, 0, element_oid)
    parts = []
    for index, value in enumerate(values):
        if value is None:
            parts.append(_NULL)
            continue
        parts.append(_element(value, kind, index))
    hasnull = int(any(value is None for value in values))
    head = struct.pack(">iiIii", 1, hasnull, element_oid, len(values), 1)
    return head + b"".join(parts)


def _element(value: object, kind: int, index: int) -> bytes:
    # Exact types, as the compiled packer checks them: a bool is not a number here.
    if kind == TEXT and type(value) is str:
        encoded = value.encode("utf-8")
        return struct.pack(">i", len(encoded)) + encoded
    if kind == BYTEA and type(value) is bytes:
        return struct.pack(">i", len(value)) + value
    if kind in (INT4, INT8) and type(value) is int:
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise OverflowError(f"element {index} ({value}) does not fit in its integer type")
        return struct.pack(">iq", 8, value) if kind == INT8 else struct.pack(">ii", 4, value)
    expected = {TEXT: "str", BYTEA: "bytes"}.get(kind, "int")
    raise TypeError(f"element {index} is {type(value).__name__}, not {expected}")


def _compiled() -> Callable[[list[Any], int, int], bytes] | None:
    try:
        from processor._arrays import pack  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    compiled: Callable[[list[Any], int, int], bytes] = pack
    return compiled


_pack: Final = _compiled() or pack_reference
COMPILED: Final = _pack is not pack_reference
"""Whether arrays are packed by processor._arrays (else by ``pack_reference``)."""


class PackedArray:
    """An array parameter already in PostgreSQL's binary format; psycopg sends ``data``."""

    __slots__ = ("data",)
    kind: int = TEXT
    sql_type: str = "text"  # the element type's name in SQL: a statement casts to it + []

    def __init__(self, values: Sequence[Any]) -> None:
        self.data = _pack(values if type(values) is list else list(values), self.kind,
                          _ELEMENT_OIDS[self.kind])  # fmt: skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self.data)} bytes>)"


class text(PackedArray):  # named for the SQL type it binds, as the casts are
    """A ``text[]`` parameter."""

    __slots__ = ()
    kind = TEXT
    sql_type = "text"


class bytea(PackedArray):
    """A ``bytea[]`` parameter."""

    __slots__ = ()
    kind = BYTEA
    sql_type = "bytea"


class int4(PackedArray):
    """An ``int4[]`` (integer) parameter."""

    __slots__ = ()
    kind = INT4
    sql_type = "int4"


class int8(PackedArray):
    """An ``int8[]`` (bigint) parameter."""

    __slots__ = ()
    kind = INT8
    sql_type = "int8"


def _dumper(array_oid: int) -> type[Dumper]:
    class PackedDumper(Dumper):
        format = Format.BINARY
        oid = array_oid

        def dump(self, obj: Any) -> bytes:
            data: bytes = obj.data
            return data

    return PackedDumper


# Registered on psycopg's global adapters, which every connection copies when it is made:
# a packed array is sent the same way by every pool and every test connection.
for _type in (text, bytea, int4, int8):
    psycopg.adapters.register_dumper(_type, _dumper(_ARRAY_OIDS[_type.kind]))

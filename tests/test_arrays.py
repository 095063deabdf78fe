"""Array parameters packed in PostgreSQL's binary format (processor.store.arrays): the compiled
packer (processor._arrays) gives the reference's bytes, PostgreSQL reads them back as the
values given, and a value of the wrong type or range is refused before anything is sent.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.store import arrays

try:
    from processor._arrays import pack as compiled_pack
except ImportError:  # LOYALTY_NO_EXTENSIONS=1: only the reference is there to test
    compiled_pack = None

needs_compiled = pytest.mark.skipif(compiled_pack is None, reason="processor._arrays not built")

ELEMENTS: dict[int, st.SearchStrategy[Any]] = {
    # Text as it reaches the packer: decoded from UTF-8 (protobuf strings, PostgreSQL's), so
    # never a lone surrogate, and without NUL, which PostgreSQL's text refuses.
    arrays.TEXT: st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
    ),
    arrays.BYTEA: st.binary(max_size=300),
    arrays.INT4: st.integers(-(2**31), 2**31 - 1),
    arrays.INT8: st.integers(-(2**63), 2**63 - 1),
}
TYPES = {arrays.TEXT: arrays.text, arrays.BYTEA: arrays.bytea, arrays.INT4: arrays.int4,
         arrays.INT8: arrays.int8}  # fmt: skip
SQL_TYPES = {arrays.TEXT: "text", arrays.BYTEA: "bytea", arrays.INT4: "int4", arrays.INT8: "int8"}
OIDS = {arrays.TEXT: 25, arrays.BYTEA: 17, arrays.INT4: 23, arrays.INT8: 20}


@st.composite
def arrays_of_one_kind(draw: st.DrawFn) -> tuple[int, list[Any]]:
    kind = draw(st.sampled_from(sorted(ELEMENTS)))
    values = draw(st.lists(st.one_of(st.none(), ELEMENTS[kind]), max_size=40))
    return kind, values


@needs_compiled
@given(arrays_of_one_kind())
def test_the_compiled_packer_gives_the_reference_bytes(case: tuple[int, list[Any]]) -> None:
    kind, values = case
    assert compiled_pack is not None
    assert compiled_pack(values, kind, OIDS[kind]) == arrays.pack_reference(
        values, kind, OIDS[kind]
    )


def test_the_compiled_packer_is_the_one_in_use_when_built() -> None:
    assert arrays.COMPILED is (compiled_pack is not None)


def test_an_empty_array_has_no_dimensions() -> None:
    assert arrays.text([]).data == bytes.fromhex("00000000 00000000 00000019")


@pytest.mark.parametrize(
    ("make", "values", "error"),
    [
        (arrays.text, ["a", b"b"], TypeError),
        (arrays.bytea, [b"a", "b"], TypeError),
        (arrays.int8, [1, "2"], TypeError),
        (arrays.int8, [True], TypeError),  # a bool is not a number here
        (arrays.int4, [2**31], OverflowError),
        (arrays.int8, [-(2**63) - 1], OverflowError),
    ],
)
def test_a_wrong_element_is_refused_by_both_packers(
    make: type[arrays.PackedArray], values: list[Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        make(values)
    with pytest.raises(error):
        arrays.pack_reference(values, make.kind, OIDS[make.kind])


async def test_postgresql_reads_back_every_kind_as_given(database_url: str) -> None:
    cases = {
        arrays.TEXT: ["", "café", "7000100000000001", None, "x" * 300],
        arrays.BYTEA: [b"", b"\x00\xff", None, bytes(range(256))],
        arrays.INT4: [0, -1, 2**31 - 1, -(2**31), None],
        arrays.INT8: [0, -1, 2**63 - 1, -(2**63), None],
    }
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        cursor = connection.cursor(binary=True)
        for kind, values in cases.items():
            for given_values in (values, [], [value for value in values if value is not None]):
                packed = TYPES[kind](given_values)
                await cursor.execute(f"SELECT %b::{SQL_TYPES[kind]}[]", (packed,))
                row = await cursor.fetchone()
                assert row is not None
                assert row[0] == given_values, SQL_TYPES[kind]
        # Unnested as the store binds them: rows of columns.
        await cursor.execute(
            "SELECT * FROM unnest(%b::text[], %b::int8[], %b::bytea[])",
            (arrays.text(["a", "b"]), arrays.int8([1, 2]), arrays.bytea([b"x", b"y"])),
        )
        assert await cursor.fetchall() == [("a", 1, b"x"), ("b", 2, b"y")]

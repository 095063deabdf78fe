"""The compiled answer writer (processor._answers) writes the reference's bytes, byte for byte.

processor.wire.answers.result_bytes_reference defines a Result's bytes (protobuf's own
deterministic serialization); the compiled twin must write exactly those, for any result
the engine can make: random ones over the whole range of every field, and the results of
real evaluations of the demo program.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.engine import compile_program, get_engine
from processor.engine.types import (
    AwardIssue,
    LevelMove,
    Posting,
    Purchase,
    Result,
    TenderDecision,
    TenderRequest,
    TraceEntry,
)
from processor.program.loader import load_program
from processor.proto import common
from processor.wire import answers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from engine_bench import DEMO, workload  # noqa: E402

PROGRAM = compile_program(load_program(DEMO))
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
# Day numbers Python's dates can write (years 1..9999), the range the engine keeps to.
DAYS = st.integers(-719_162, 2_932_896)
TEXT = st.text(max_size=12)
PROGRAMS = st.sampled_from(["", "loyal", "northwind", "gift", "ü-ñ", *PROGRAM.balance_digits])

needs_compiled = pytest.mark.skipif(
    not answers.COMPILED_RESULTS, reason="processor._answers is not built"
)


def both(result: Result, **options: Any) -> tuple[bytes, bytes]:
    return (
        answers.result_bytes(result, PROGRAM, **options),
        answers.result_bytes_reference(result, PROGRAM, **options),
    )


postings = st.builds(
    Posting,
    program=PROGRAMS,
    program_version=UINT32,
    balance=st.sampled_from(["points", "tender", "award_value"]),
    kind=TEXT,
    amount=INT64,
    rule=TEXT,
    day=DAYS,
    account=TEXT,
)
award_issues = st.builds(
    AwardIssue,
    code=TEXT,
    kind=st.sampled_from(["coupon", "certificate", "e_award"]),
    rule=TEXT,
    program=PROGRAMS,
    value=INT64,
    points_cost=INT64,
    expires_day=st.none() | DAYS.filter(lambda day: day > -719_162),
)
moves = st.builds(
    LevelMove,
    program=PROGRAMS,
    rule=TEXT,
    kind=st.sampled_from(["advancement", "sustain", "demotion", "extension"]),
    from_level=TEXT,
    to_level=TEXT,
)
decisions = st.builds(
    TenderDecision,
    op=st.sampled_from(["activate", "redeem", "balance", "cash_out", "merge", "unload"]),
    approved=st.booleans(),
    requested=INT64,
    approved_amount=INT64,
    balance=INT64,
    reason=TEXT,
)
traces = st.builds(
    TraceEntry, program=PROGRAMS, rule=TEXT, fired=st.booleans(), points=INT64, reason=TEXT
)
results = st.builds(
    Result,
    id=TEXT,
    account=TEXT,
    status=st.sampled_from(["approved", "declined"]),
    reason=TEXT,
    postings=st.lists(postings, max_size=4),
    awards=st.lists(award_issues, max_size=3),
    redeemed=st.lists(TEXT, max_size=3),
    moves=st.lists(moves, max_size=2),
    tender=st.none() | decisions,
    trace=st.lists(traces, max_size=6),
    balances=st.dictionaries(PROGRAMS | TEXT, INT64, max_size=4),
)
requests = st.none() | st.builds(
    TenderRequest,
    op=st.just("redeem"),
    id=st.just("t"),
    account=st.just("6001"),
    day=st.just(0),
    second=st.just(0),
    location=st.just("S1"),
    amount=st.just(100),
    currency=st.sampled_from(["", "usd", "EUR"]),
)


@needs_compiled
@settings(max_examples=400, deadline=None)
@given(result=results, replayed=st.booleans(), request=requests)
def test_any_result_is_written_as_the_reference_writes_it(
    result: Result, replayed: bool, request: TenderRequest | None
) -> None:
    compiled, reference = both(result, replayed=replayed, request=request)
    assert compiled == reference


@needs_compiled
def test_the_demo_programs_evaluations_are_written_as_the_reference_writes_them() -> None:
    purchases: list[Purchase] = workload(3_000, seed=11, cards=300)
    outcome = get_engine("cython").evaluate(PROGRAM, {}, purchases, {})
    written = [answers.result_bytes(result, PROGRAM) for result in outcome.results]
    assert written == [answers.result_bytes_reference(r, PROGRAM) for r in outcome.results]
    # And they are Results a client parses back: the fields that vary survive.
    parsed = [common.Result.FromString(data) for data in written]
    assert [message.request_id for message in parsed] == [r.id for r in outcome.results]
    assert sum(len(message.awards) for message in parsed) == sum(
        len(r.awards) for r in outcome.results
    )
    assert any(message.awards for message in parsed) and any(m.moves for m in parsed)


@needs_compiled
@pytest.mark.parametrize("day", [-719_163, 2_932_897, 10**9])
def test_a_date_past_what_python_writes_fails_the_same_way(day: int) -> None:
    result = Result("r", "a", postings=[Posting("loyal", 1, "points", "regular", 5, day=day)])
    with pytest.raises(OverflowError):
        answers.result_bytes_reference(result, PROGRAM)
    with pytest.raises(OverflowError):
        answers.result_bytes(result, PROGRAM)


@needs_compiled
def test_the_trace_cache_is_shared_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers, "_TRACE_FIELDS", {})
    monkeypatch.setattr(answers, "_TRACE_FIELDS_MAX", 4)
    rng = random.Random(3)
    for n in range(50):
        entries = [TraceEntry("loyal", f"rule-{rng.randrange(9)}", True, rng.randrange(3))]
        result = Result(f"r-{n}", "a", trace=entries)
        compiled, reference = both(result)
        assert compiled == reference
        assert len(answers._TRACE_FIELDS) <= 4


@needs_compiled
def test_the_answers_the_engine_writes_from_its_rows_are_the_reference_bytes() -> None:
    purchases: list[Purchase] = workload(3_000, seed=5, cards=300)
    results = get_engine("cython").evaluate(PROGRAM, {}, purchases, {}).results
    written = answers.written_by_engine(results, PROGRAM)
    assert len(written) == len(results)
    by_engine = [
        (ready, result) for ready, result in zip(written, results, strict=True) if ready is not None
    ]
    # Most purchases; the ones that issued awards are written from their results.
    assert len(by_engine) > len(results) // 2
    assert any(
        ready is None and result.awards for ready, result in zip(written, results, strict=True)
    )
    for (result, data), full in by_engine:
        assert data == answers.result_bytes_reference(full, PROGRAM)
        assert result == dataclasses.replace(full, trace=[])


def test_the_reference_engine_leaves_every_answer_to_the_writer() -> None:
    purchases: list[Purchase] = workload(50, seed=5, cards=10)
    results = get_engine("python").evaluate(PROGRAM, {}, purchases, {}).results
    assert answers.written_by_engine(results, PROGRAM) == [None] * len(results)


def test_lengths_are_written_as_protobuf_writes_varints() -> None:
    from google.protobuf.internal.encoder import _VarintBytes

    from processor.wire import answers

    for size in [*range(0, 300), 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, 2**35 + 5, 2**63 - 1]:
        assert answers._varint(size) == _VarintBytes(size), size
    body = b"x" * 200
    assert answers.length_delimited(b"\x0a", body) == b"\x0a" + _VarintBytes(200) + body

"""The stored encodings of account state, receipts and results.

- every generated state, receipt and result decodes to exactly what was encoded;
- a typical card stays well under the 120 bytes the Redis memory budget allows;
- unknown format versions, damaged bytes and values outside the vocabularies are refused
  with a message that names the problem.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor import calendar
from processor.engine import compile_program, get_engine, issue_card
from processor.engine.types import (
    AccountState,
    Award,
    AwardAccount,
    AwardIssue,
    Customer,
    Hold,
    LevelMove,
    LineEarning,
    Lot,
    LoyaltyAccount,
    Posting,
    Receipt,
    Result,
    TenderAccount,
    TenderDecision,
    TraceEntry,
    ValueLot,
)
from processor.program.loader import load_program
from processor.store import codec
from processor.tools.evaluate import prepare

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from engine_bench import DEMO, workload

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TYPICAL_ACCOUNT_BYTES_MAX = 120

names = st.text(min_size=0, max_size=12)
ids = st.text(min_size=1, max_size=20)
days = st.integers(-40_000, 80_000)
maybe_days = st.none() | days
counts = st.integers(-(2**40), 2**40)
small = st.integers(0, 1_000)


def _builds(cls: Any, **fields: Any) -> st.SearchStrategy[Any]:
    return st.builds(cls, **fields)


customers = _builds(
    Customer,
    id=ids,
    birth_day=maybe_days,
    signup_day=maybe_days,
    audiences=st.frozensets(names, max_size=4),
)
holds = _builds(Hold, amount=counts, created_day=days, expires_day=maybe_days)
tenders = _builds(
    TenderAccount,
    status=st.sampled_from(codec.TENDER_STATUSES),
    balance=counts,
    book_value=counts,
    activated_day=maybe_days,
    expires_day=maybe_days,
    usage_day=days,
    day_redeemed=counts,
    day_uses=small,
    lifetime_uses=small,
    holds=st.dictionaries(ids, holds, max_size=3),
)
awards = _builds(
    Award,
    code=ids,
    kind=st.sampled_from(codec.AWARD_KINDS),
    rule=names,
    program=names,
    issued_day=days,
    expires_day=maybe_days,
    redemptions_left=st.integers(-1, 100),
    status=st.sampled_from(codec.AWARD_STATUSES),
)
value_lots = _builds(ValueLot, added_day=days, amount=counts, expires_day=maybe_days, source=names)
lots = _builds(
    Lot,
    earned_day=days,
    rule=names,
    kind=st.sampled_from(codec.LOT_KINDS),
    points=counts,
    available_day=days,
    expires_day=maybe_days,
    program_version=small,
)
day_uses = st.tuples(days, small)


@st.composite
def award_accounts(draw: st.DrawFn, program: str) -> AwardAccount:
    return AwardAccount(
        program,
        draw(st.sampled_from(codec.AWARD_ACCOUNT_STATUSES)),
        draw(days),
        draw(maybe_days),
        draw(days),
        draw(st.booleans()),
        draw(st.lists(value_lots, max_size=3)),
        draw(st.lists(awards, max_size=3)),
    )


@st.composite
def loyalty_accounts(draw: st.DrawFn, program: str) -> LoyaltyAccount:
    return LoyaltyAccount(
        program,
        draw(names),
        draw(days),
        draw(days),
        draw(days),
        draw(st.lists(lots, max_size=5)),
        draw(counts),
        draw(counts),
        draw(counts),
        draw(st.integers(0, 3000)),
        draw(counts),
        draw(st.dictionaries(st.integers(0, 2000), counts, max_size=4)),
        draw(st.dictionaries(names, day_uses, max_size=3)),
        draw(st.dictionaries(names, st.tuples(st.integers(0, 5000), small), max_size=3)),
        draw(st.dictionaries(names, small, max_size=3)),
        draw(maybe_days),
        draw(st.lists(awards, max_size=3)),
        draw(st.dictionaries(st.integers(0, 2000), st.integers(1, 10**12), max_size=4)),
    )


@st.composite
def states(draw: st.DrawFn) -> AccountState:
    award_programs = draw(st.lists(names, max_size=2, unique=True))
    loyalty_programs = draw(st.lists(names, max_size=2, unique=True))
    return AccountState(
        draw(ids),
        draw(st.integers(0, 2**62)),
        draw(st.sampled_from(codec.ACCOUNT_STATUSES)),
        draw(st.none() | customers),
        draw(st.none() | tenders),
        {program: draw(award_accounts(program)) for program in award_programs},
        {program: draw(loyalty_accounts(program)) for program in loyalty_programs},
    )


points_by_rule = st.dictionaries(names, counts, max_size=3)
receipts = _builds(
    Receipt,
    id=ids,
    account=ids,
    kind=names,
    day=days,
    program_version=small,
    lines=st.lists(
        _builds(
            LineEarning,
            number=small,
            quantity=small,
            amount=counts,
            returned_quantity=small,
            points=points_by_rule,
            points_returned=points_by_rule,
        ),
        max_size=4,
    ),
    basket_points=points_by_rule,
    basket_returned=st.booleans(),
    tender_amount=counts,
    awards=st.lists(ids, max_size=3),
    voided=st.booleans(),
    original_id=names,
    points_recovered=points_by_rule,
    spent=points_by_rule,
)
postings = _builds(
    Posting,
    program=names,
    program_version=small,
    balance=st.sampled_from(codec.BALANCES),
    kind=names,
    amount=counts,
    rule=names,
    day=days,
    account=names,
)
results = _builds(
    Result,
    id=ids,
    account=ids,
    status=st.sampled_from(codec.RESULT_STATUSES),
    reason=names,
    postings=st.lists(postings, max_size=4),
    awards=st.lists(
        _builds(
            AwardIssue,
            code=ids,
            kind=st.sampled_from(codec.ISSUE_KINDS),
            rule=names,
            program=names,
            value=counts,
            points_cost=counts,
            expires_day=maybe_days,
        ),
        max_size=2,
    ),
    redeemed=st.lists(ids, max_size=2),
    moves=st.lists(
        _builds(
            LevelMove,
            program=names,
            rule=names,
            kind=st.sampled_from(codec.MOVE_KINDS),
            from_level=names,
            to_level=names,
        ),
        max_size=2,
    ),
    tender=st.none()
    | _builds(
        TenderDecision,
        op=names,
        approved=st.booleans(),
        requested=counts,
        approved_amount=counts,
        balance=counts,
        reason=names,
    ),
    trace=st.lists(
        _builds(
            TraceEntry, program=names, rule=names, fired=st.booleans(), points=counts, reason=names
        ),
        max_size=3,
    ),
    balances=st.dictionaries(names, counts, max_size=3),
)


@given(states())
def test_every_state_round_trips_exactly(state: AccountState) -> None:
    data = codec.encode_state(state)
    assert codec.decode_state(data, state.account) == state


@given(states(), st.integers(0, 2**62))
def test_a_state_is_written_with_the_version_given_in_place_of_its_own(
    state: AccountState, version: int
) -> None:
    data = codec.encode_state(state, version)
    assert data == codec.encode_state(dataclasses.replace(state, version=version))
    assert codec.decode_state(data, state.account).version == version


@given(states(), st.integers(1, 2**62))
def test_a_state_given_as_its_fields_is_written_as_the_state_itself(
    state: AccountState, version: int
) -> None:
    # The commit sets the version of a state the compiled engine wrote as fields.
    fields = codec.state_fields(state, 1)
    assert codec.encode_fields(fields, version) == codec.encode_state(state, version)
    loyalty = [codec.loyalty_fields(one) for one in state.loyalty.values()]
    assert codec.state_fields(state, 1, loyalty) == codec.state_fields(state, 1)


@given(states())
def test_a_state_read_with_its_loyalty_accounts_deferred_is_the_state_itself(
    state: AccountState,
) -> None:
    data = codec.encode_state(state)
    deferred = codec.decode_state_deferred(data, state.account)
    assert deferred == state and state == deferred
    assert codec.encode_state(codec.decode_state_deferred(data, state.account)) == data
    copied = dataclasses.replace(codec.decode_state_deferred(data, state.account), version=9)
    assert copied == dataclasses.replace(state, version=9)
    read = codec.decode_state_deferred(data, state.account)
    assert read.loyalty == state.loyalty and read.stored_loyalty() is None


@pytest.mark.parametrize(
    "loyalty", [7, [7], [[]], [["points", "silver"]], [[1, "silver", 20000]], [list(range(19))]]
)
def test_a_deferred_state_refuses_loyalty_accounts_not_shaped_as_stored(loyalty: Any) -> None:
    data = msgpack.packb([codec.FORMAT_VERSION, 1, 0, loyalty])
    with pytest.raises(codec.CodecError, match="loyalty account"):
        codec.decode_state_deferred(data, "6001200000000010")


@pytest.mark.parametrize("version", [0, -1, 1.5, None])
def test_a_state_given_as_its_fields_is_refused_a_version_below_one(version: Any) -> None:
    with pytest.raises(codec.CodecError, match="version must be at least 1"):
        codec.encode_fields(codec.state_fields(AccountState("6001200000000010"), 1), version)


needs_compiled_lots = pytest.mark.skipif(
    not codec.COMPILED_LOTS, reason="processor._codec not built (LOYALTY_NO_EXTENSIONS=1)"
)


@needs_compiled_lots
@given(st.lists(lots, max_size=12), days, st.lists(names, max_size=3, unique=True))
def test_the_compiled_lots_encode_as_the_reference(
    given_lots: list[Lot], base: int, known: list[str]
) -> None:
    rules = {rule: position for position, rule in enumerate(known)}
    reference_rules = dict(rules)
    fields = codec.lots_fields(given_lots, base, rules)
    assert fields == codec.lots_fields_reference(given_lots, base, reference_rules)
    assert list(rules.items()) == list(reference_rules.items())  # the same rule numbering
    named = list(rules)
    assert codec.lots_from(fields, base, named) == given_lots
    assert codec.lots_from_reference(fields, base, named) == given_lots


# No infinities: inf - inf is NaN, and an account holding NaN equals no account, not even
# the same one decoded by the other decoder.
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-(2**70), 2**70),
    st.text(max_size=3), st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip


def outcome(decode: Any, *arguments: Any) -> Any:
    try:
        return ("ok", decode(*arguments))
    except Exception as error:  # the error is what is compared
        return (type(error), str(error))


@needs_compiled_lots
@given(
    st.one_of(
        # Lots that are nearly right: small numbers make valid days, kinds and rule indexes
        # (negative ones too, which Python's indexing wraps), with junk among them.
        st.lists(
            st.lists(st.one_of(st.integers(-2, 3), st.none(), junk), min_size=3, max_size=8),
            max_size=4,
        ),
        st.lists(st.one_of(st.lists(junk, max_size=9), junk), max_size=4),
        junk,
    ),
    st.integers(-100, 100),
    st.lists(names, max_size=3),
)
def test_damaged_lots_fail_the_compiled_decoder_as_they_fail_the_reference(
    encoded: Any, base: int, rules: list[str]
) -> None:
    assert outcome(codec.lots_from, encoded, base, rules) == outcome(
        codec.lots_from_reference, encoded, base, rules
    )


@needs_compiled_lots
@pytest.mark.parametrize(
    "damage",
    [
        {"kind": "gold"},
        {"earned_day": "x"},
        {"expires_day": "x"},
        {"available_day": None},
    ],
)
def test_a_lot_the_engine_could_not_have_made_fails_both_encoders_alike(
    damage: dict[str, Any],
) -> None:
    lot = Lot(100, "r", "regular", 5, 100, 465, 2)
    for field, value in damage.items():
        setattr(lot, field, value)
    assert outcome(codec.lots_fields, [lot], 90, {}) == outcome(
        codec.lots_fields_reference, [lot], 90, {}
    )


@needs_compiled_lots
@given(names.flatmap(loyalty_accounts))
def test_the_compiled_loyalty_account_codec_writes_and_reads_as_the_reference(
    account: LoyaltyAccount,
) -> None:
    fields = codec.loyalty_fields(account)
    assert fields == codec.loyalty_fields_reference(account)
    # Through msgpack and back, as stored: both decoders rebuild the same account.
    stored = msgpack.unpackb(msgpack.packb(fields), strict_map_key=False)
    again = msgpack.unpackb(msgpack.packb(fields), strict_map_key=False)
    assert codec.loyalty_from(stored) == codec.loyalty_from_reference(again) == account


@needs_compiled_lots
@given(
    st.lists(
        st.one_of(st.integers(-3, 3), st.none(), junk, st.lists(junk, max_size=3), st.just({})),
        max_size=19,
    )
)
def test_damaged_loyalty_accounts_fail_the_compiled_decoder_as_they_fail_the_reference(
    values: list[Any],
) -> None:
    assert outcome(codec.loyalty_from, list(values)) == outcome(
        codec.loyalty_from_reference, list(values)
    )


@needs_compiled_lots
@pytest.mark.parametrize(
    "damage",
    [{"created_day": 2**70}, {"created_day": True}, {"rule_day": {"r": (1,)}}, {"lots": ()}],
)
def test_a_loyalty_account_out_of_the_ordinary_is_encoded_by_the_reference(
    damage: dict[str, Any],
) -> None:
    account = LoyaltyAccount("loyal", "gold", 100, 100, 100)
    for field, value in damage.items():
        setattr(account, field, value)
    assert outcome(codec.loyalty_fields, account) == outcome(
        codec.loyalty_fields_reference, account
    )


@given(receipts)
def test_every_receipt_round_trips_exactly(receipt: Receipt) -> None:
    assert codec.decode_receipt(codec.encode_receipt(receipt)) == receipt


@given(results)
def test_every_result_round_trips_exactly(result: Result) -> None:
    assert codec.decode_result(codec.encode_result(result)) == result


def typical_state() -> AccountState:
    """A card a year into a points program: a level, three lots and the rule counters."""
    opened = calendar.parse_day("2026-03-10")
    expiry = 731
    lots = [
        Lot(opened, "video", "bonus", 20, opened, opened + expiry, 1),
        Lot(opened + 1, "base", "regular", 108, opened + 1, opened + 1 + expiry, 1),
        Lot(opened + 1, "shoes", "bonus", 3, opened + 1, opened + 1 + expiry, 1),
    ]
    account = LoyaltyAccount(
        "points",
        "silver",
        opened,
        opened,
        opened + 1,
        lots,
        earned_ltd=131,
        earned_ytd=131,
        ytd_year=2026,
        earned_since_move=131,
        earned_by_month={calendar.month_index(opened): 131},
        rule_day={"base": (opened + 1, 1), "shoes": (opened + 1, 1)},
        rule_period={"video": (calendar.period_index(opened, "week"), 2)},
        rule_total={"video": 2},
    )
    return AccountState("6001200000000036", 7, loyalty={"points": account})


def test_a_typical_account_is_well_under_the_cache_budget() -> None:
    state = typical_state()
    data = codec.encode_state(state)
    print(f"typical account state: {len(data)} bytes")
    assert len(data) < TYPICAL_ACCOUNT_BYTES_MAX
    assert codec.decode_state(data, state.account) == state


def test_a_new_card_is_a_handful_of_bytes() -> None:
    assert len(codec.encode_state(AccountState("6001200000000010"))) <= 2


def test_every_blob_starts_with_the_format_version() -> None:
    for data in (
        codec.encode_state(typical_state()),
        codec.encode_receipt(Receipt("r1", "a1", "purchase", 20_000, 1)),
        codec.encode_result(Result("r1", "a1")),
    ):
        assert msgpack.unpackb(data, strict_map_key=False)[0] == codec.FORMAT_VERSION


@pytest.mark.parametrize(
    ("decode", "what"),
    [
        (lambda data: codec.decode_state(data, "a1"), "account state"),
        (codec.decode_receipt, "receipt"),
        (codec.decode_result, "result"),
    ],
)
def test_an_unknown_format_version_is_refused_by_name(decode: Any, what: str) -> None:
    data = msgpack.packb([99, "r1", "a1"])
    with pytest.raises(codec.CodecError, match=rf"{what} has format version 99"):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", msgpack.packb({"a": 1}), msgpack.packb(["1"]), msgpack.packb([1, "x", 3])],
    ids=["empty", "reserved-byte", "map", "text-version", "wrong-types"],
)
def test_damaged_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode_receipt(data)


def test_more_fields_than_the_format_knows_are_refused() -> None:
    data = msgpack.packb([codec.FORMAT_VERSION, *([0] * 20)])
    with pytest.raises(codec.CodecError, match="more than"):
        codec.decode_state(data, "a1")


def test_a_value_outside_its_vocabulary_is_refused_when_encoding() -> None:
    posting = Posting("p", 1, "miles", "regular", 5)  # type: ignore[arg-type]
    with pytest.raises(codec.CodecError, match="posting balance 'miles'"):
        codec.encode_result(Result("r1", "a1", postings=[posting]))


def test_an_account_filed_under_another_program_is_refused() -> None:
    state = typical_state()
    state.loyalty = {"other": state.loyalty["points"]}
    with pytest.raises(codec.CodecError, match="filed under 'other'"):
        codec.encode_state(state)


def test_an_amount_beyond_64_bits_is_refused() -> None:
    with pytest.raises(codec.CodecError, match="cannot encode receipt"):
        codec.encode_receipt(Receipt("r1", "a1", "purchase", 1, 1, tender_amount=2**70))


def test_the_demo_run_round_trips_every_state_receipt_and_result() -> None:
    evaluation = prepare(
        EXAMPLES / "programs" / "demo.yaml", EXAMPLES / "transactions" / "demo.jsonl", None
    )
    requests = evaluation.requests
    accounts = {
        request.account: issue_card(evaluation.program, request.account, request.day)
        for request in requests
    }
    outcome = get_engine().evaluate(evaluation.program, accounts, requests, {})
    for account_id, state in outcome.accounts.items():
        assert codec.decode_state(codec.encode_state(state), account_id) == state
    for receipt in outcome.receipts.values():
        assert codec.decode_receipt(codec.encode_receipt(receipt)) == receipt
    for result in outcome.results:
        assert codec.decode_result(codec.encode_result(result)) == result


@pytest.mark.skipif(get_engine().name != "cython", reason="the compiled engine is not built")
def test_receipts_stored_from_the_engines_rows_are_the_encoded_receipts() -> None:
    program = compile_program(load_program(DEMO))
    outcome = get_engine("cython").evaluate(program, {}, workload(2_000, 3, 200), {})
    stored = codec.stored_receipts(outcome.receipts)
    built = list(dict(outcome.receipts).values())
    assert len(stored) == len(built) > 0
    assert any(receipt.lines and receipt.basket_points for receipt in built)
    assert sorted(stored) == sorted((r.account, r.id, codec.encode_receipt(r)) for r in built)


@pytest.mark.skipif(get_engine().name != "cython", reason="the compiled engine is not built")
def test_receipts_the_engine_writes_take_every_msgpack_width_as_msgpack_does() -> None:
    # 20 lines (an array past 15), a long request id (str8), amounts and points past 32
    # bits: the widths a receipt's fields can take.
    program = compile_program(load_program(DEMO))
    template: Any = workload(1, 3, 1)[0]
    lines = tuple(
        dataclasses.replace(template.lines[0], number=n, amount=amount, quantity=1)
        for n, amount in enumerate([5, 200, 70_000, 5_000_000_000, 900_000_000_000] * 4, 1)
    )
    purchases = [
        dataclasses.replace(template, id="r" * 200, lines=lines),
        dataclasses.replace(template, id="short", lines=lines[:1]),
    ]
    outcome = get_engine("cython").evaluate(program, {}, purchases, {})
    stored = codec.stored_receipts(outcome.receipts)
    built = list(dict(outcome.receipts).values())
    assert sorted(stored) == sorted((r.account, r.id, codec.encode_receipt(r)) for r in built)
    assert len(built) == 2 and max(len(r.lines) for r in built) == 20

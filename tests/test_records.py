"""JSON-lines request and account files: exact parsing, and every bad line reported at once."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from processor import calendar
from processor.engine import CompiledProgram, compile_program
from processor.engine.types import (
    AwardRedemption,
    Customer,
    Engagement,
    Line,
    Lot,
    Purchase,
    Return,
    ReturnLine,
    TenderLine,
    TenderRequest,
    Void,
)
from processor.errors import InputFileError, Problem
from processor.limits import AMOUNT_UNITS_MAX, BALANCE_UNITS_MAX
from processor.program.loader import load_program
from processor.tools.records import read_accounts, read_requests

ROOT = Path(__file__).resolve().parent.parent
DEMO_PROGRAM = ROOT / "examples" / "programs" / "demo.yaml"
DEMO_REQUESTS = ROOT / "examples" / "transactions" / "demo.jsonl"

MARCH_2 = calendar.parse_day("2026-03-02")
JANUARY_15 = calendar.parse_day("2026-01-15")


@pytest.fixture(scope="module")
def program() -> CompiledProgram:
    return compile_program(load_program(DEMO_PROGRAM))


def write_lines(tmp_path: Path, *records: dict[str, Any] | str, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records),
        encoding="utf-8",
    )
    return path


def request(**fields: Any) -> dict[str, Any]:
    """A valid tender redemption, changed by ``fields`` (None removes a field)."""
    record: dict[str, Any] = {
        "id": "r-1",
        "type": "tender",
        "op": "redeem",
        "account": "6001200000000010",
        "time": "2026-03-02T09:00:00",
        "amount": "1.00",
    }
    record.update(fields)
    return {key: value for key, value in record.items() if value is not None}


def request_problems(path: Path) -> list[Problem]:
    with pytest.raises(InputFileError) as error:
        read_requests(path)
    assert error.value.file == str(path)
    return error.value.problems


def only_problem(path: Path) -> Problem:
    found = request_problems(path)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- requests


def test_the_demo_requests_are_read_in_file_order() -> None:
    requests = read_requests(DEMO_REQUESTS)
    assert [r.id for r in requests] == [f"t-{n:04d}" for n in range(1, 14)]
    assert [type(r) for r in requests] == [
        TenderRequest,
        Purchase,
        Purchase,
        Purchase,
        Return,
        Engagement,
        Purchase,
        Return,
        TenderRequest,
        TenderRequest,
        Purchase,
        Void,
        TenderRequest,
    ]


def test_a_purchase_parses_to_exact_minor_units() -> None:
    purchase = read_requests(DEMO_REQUESTS)[1]
    assert purchase == Purchase(
        id="t-0002",
        account="6001200000000010",
        day=MARCH_2,
        second=9 * 3600 + 5 * 60,
        location="S001",
        pin_verified=True,
        lines=(
            Line(1, "SHOE-TR-42", 12000, 1, ("SHOES", "SHOES-TRAIL"), (("brand", "trailrun"),)),
            Line(2, "SOCK-3PK", 1500, 3, ("ACCESSORIES",)),
            Line(3, "GIFT-WRAP", 500, merchandise=False),
        ),
        tenders=(TenderLine("northwind-visa", 9000), TenderLine("giftcard", 5000)),
        customer=Customer("C-1", calendar.parse_day("1990-03-04"), None, frozenset({"vip:A"})),
        stored_value=5000,
    )


def test_cents_are_kept_exactly() -> None:
    tent = read_requests(DEMO_REQUESTS)[3]
    assert isinstance(tent, Purchase)
    assert tent.lines[0].amount == 69999  # "699.99"
    assert tent.tenders[0].amount == 69999


def test_a_foreign_currency_purchase_keeps_its_currency_and_rate() -> None:
    boots = read_requests(DEMO_REQUESTS)[6]
    assert isinstance(boots, Purchase)
    assert (boots.currency, boots.exchange_rate) == ("EUR", "1.08")
    assert boots.lines[0].amount == 20000
    assert boots.lines[0].quantity == 2


def test_return_void_and_engagement_records_parse() -> None:
    requests = read_requests(DEMO_REQUESTS)
    whole, partial, void, video = requests[4], requests[7], requests[11], requests[5]
    assert whole == Return(
        "t-0005",
        "6001200000000028",
        calendar.parse_day("2026-03-09"),
        11 * 3600,
        "S002",
        original_id="t-0004",
    )
    assert isinstance(partial, Return)
    assert partial.lines == (ReturnLine(1, 1),)
    assert void == Void(
        "t-0012",
        "6001200000000010",
        calendar.parse_day("2026-03-12"),
        13 * 3600 + 5 * 60,
        "S001",
        original_id="t-0009",
    )
    assert video == Engagement(
        "t-0006",
        "6001200000000036",
        calendar.parse_day("2026-03-10"),
        20 * 3600,
        kind="video",
        count=3,
    )


def test_tender_records_parse_with_their_operation() -> None:
    activate, redeem, balance = (read_requests(DEMO_REQUESTS)[i] for i in (0, 8, 9))
    assert activate == TenderRequest(
        "t-0001",
        "6001200000000010",
        MARCH_2,
        9 * 3600,
        "S001",
        pin_verified=True,
        op="activate",
        amount=10000,
    )
    assert isinstance(redeem, TenderRequest)
    assert (redeem.op, redeem.amount) == ("redeem", 8000)
    assert isinstance(balance, TenderRequest)
    assert (balance.op, balance.amount) == ("balance", 0)


def test_an_award_redemption_parses(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        {
            "id": "w-1",
            "type": "award_redemption",
            "account": "6001200000000010",
            "time": "2026-03-02T10:00:00",
            "program": "rewards",
            "amount": "7.50",
        },
        {
            "id": "w-2",
            "type": "award_redemption",
            "account": "6001200000000010",
            "time": "2026-03-02T10:01:00",
            "code": "NW5-ABC",
        },
    )
    assert read_requests(path) == [
        AwardRedemption(
            "w-1", "6001200000000010", MARCH_2, 10 * 3600, program="rewards", amount=750
        ),
        AwardRedemption("w-2", "6001200000000010", MARCH_2, 10 * 3600 + 60, code="NW5-ABC"),
    ]


def test_yen_amounts_have_no_decimals(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        request(currency="JPY", amount="1500"),
        {
            "id": "p-1",
            "type": "purchase",
            "account": "1",
            "time": "2026-03-02T09:00:00",
            "currency": "jpy",
            "lines": [{"number": 1, "item": "TEA", "amount": "980"}],
        },
    )
    tender, purchase = read_requests(path)
    assert isinstance(tender, TenderRequest)
    assert (tender.currency, tender.amount) == ("JPY", 1500)
    assert isinstance(purchase, Purchase)
    assert (purchase.currency, purchase.lines[0].amount) == ("JPY", 980)


def test_yen_with_decimals_is_rejected(tmp_path: Path) -> None:
    problem = only_problem(write_lines(tmp_path, request(currency="JPY", amount="1.5")))
    assert problem == Problem("line 1.amount", "amount in JPY 1.5 has more than 0 decimal places")


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write_lines(tmp_path, "", request(), "   ", request(id="r-2"))
    assert [r.id for r in read_requests(path)] == ["r-1", "r-2"]


# --------------------------------------------------------------------------- bad request lines


def test_invalid_json_names_its_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path, request(), "{nope")
    assert only_problem(path) == Problem(
        "line 2", "invalid JSON: Expecting property name enclosed in double quotes"
    )


def test_a_line_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    problem = only_problem(write_lines(tmp_path, "[1, 2]"))
    assert problem.path == "line 1"
    assert "valid dictionary" in problem.reason


def test_an_unknown_request_type_names_the_type_field(tmp_path: Path) -> None:
    problem = only_problem(write_lines(tmp_path, request(type="refund")))
    assert problem.path == "line 1"
    assert "'refund'" in problem.reason
    assert "'type'" in problem.reason


def test_an_unknown_field_names_its_line_and_field(tmp_path: Path) -> None:
    path = write_lines(tmp_path, request(), request(id="r-2", colour="red"))
    assert only_problem(path) == Problem("line 2.colour", "unknown field")


def test_a_nested_unknown_field_names_its_path(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        {
            "id": "p-1",
            "type": "purchase",
            "account": "1",
            "time": "2026-03-02T09:00:00",
            "lines": [{"number": 1, "item": "TEA", "amount": "1.00", "size": "L"}],
        },
    )
    assert only_problem(path) == Problem("line 1.lines[0].size", "unknown field")


def test_a_missing_id_is_required(tmp_path: Path) -> None:
    assert only_problem(write_lines(tmp_path, request(id=None))) == Problem(
        "line 1.id", "is required"
    )


def test_a_negative_amount_is_rejected(tmp_path: Path) -> None:
    assert only_problem(write_lines(tmp_path, request(amount="-1.00"))) == Problem(
        "line 1.amount", "Input should be greater than or equal to 0"
    )


def test_an_amount_with_more_decimals_than_the_currency_names_its_line(tmp_path: Path) -> None:
    problem = only_problem(write_lines(tmp_path, request(amount="10.001")))
    reason = "amount in USD 10.001 has more than 2 decimal places"
    assert problem == Problem("line 1.amount", reason)


@pytest.mark.parametrize("currency", ["USD", "JPY", "BHD"])
def test_amounts_are_bounded_in_minor_units_as_on_the_wire(tmp_path: Path, currency: str) -> None:
    exponent = {"USD": 2, "JPY": 0, "BHD": 3}[currency]
    largest = Decimal(AMOUNT_UNITS_MAX).scaleb(-exponent)
    path = write_lines(
        tmp_path,
        request(currency=currency, amount=str(largest)),
        request(id="r-2", currency=currency, amount=str(largest + Decimal(1).scaleb(-exponent))),
    )
    assert only_problem(path) == Problem(
        "line 2.amount", f"must be at most {AMOUNT_UNITS_MAX} units"
    )


def test_an_inexact_purchase_line_amount_names_its_field(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        {
            "id": "p-1",
            "type": "purchase",
            "account": "1",
            "time": "2026-03-02T09:00:00",
            "lines": [{"number": 1, "item": "TEA", "amount": "1.001"}],
        },
    )
    assert only_problem(path).path == "line 1.lines[0].amount"


def test_a_bad_time_names_its_line_and_the_time(tmp_path: Path) -> None:
    problem = only_problem(write_lines(tmp_path, request(time="2026-13-02T09:00")))
    assert problem == Problem("line 1.time", "'2026-13-02T09:00' is not a local ISO date-time")


def test_a_duplicate_id_names_the_first_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path, request(), request(op="balance", amount=None))
    assert only_problem(path) == Problem("line 2.id", "'r-1' repeats line 1")


def test_every_bad_line_is_reported_together(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        request(id="ok-1"),
        "{nope",
        request(id="r-3", colour="red"),
        request(id=None),
        request(id="r-5", amount="-1"),
        request(id="r-6", amount="10.001"),
        request(id="r-7", time="yesterday"),
        request(id="ok-1"),
    )
    found = request_problems(path)
    assert [problem.path for problem in found] == [
        "line 2",
        "line 3.colour",
        "line 4.id",
        "line 5.amount",
        "line 6.amount",
        "line 7.time",
        "line 8.id",
    ]
    with pytest.raises(InputFileError) as error:
        read_requests(path)
    assert str(error.value).splitlines()[0] == (
        f"{path}: line 2: invalid JSON: Expecting property name enclosed in double quotes"
    )
    assert len(str(error.value).splitlines()) == 7


def test_a_missing_requests_file_cannot_be_read(tmp_path: Path) -> None:
    assert only_problem(tmp_path / "absent.jsonl") == Problem(
        "", "cannot be read: No such file or directory"
    )


def test_a_requests_file_that_is_not_utf8_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(json.dumps(request()).encode() + b"\n\xff\n")
    assert only_problem(path) == Problem("", "is not UTF-8 text: invalid start byte")


# --------------------------------------------------------------------------- accounts


def test_opening_points_become_one_lot(tmp_path: Path, program: CompiledProgram) -> None:
    path = write_lines(
        tmp_path,
        {
            "account": "6001",
            "loyalty": {
                "points": {
                    "level": "gold",
                    "points": "1200",
                    "earned_ytd": "300",
                    "created": "2026-01-15",
                }
            },
        },
    )
    state = read_accounts(path, program)["6001"]
    loyalty = state.loyalty["points"]
    assert loyalty.level == "gold"
    assert loyalty.lots == [Lot(JANUARY_15, "opening", "regular", 1200, JANUARY_15, None, 0)]
    assert (loyalty.earned_ltd, loyalty.earned_ytd) == (1200, 300)  # ltd is at least the balance
    assert (loyalty.created_day, loyalty.level_since_day) == (JANUARY_15, JANUARY_15)


def test_an_account_without_points_starts_at_the_start_level_with_no_lots(
    tmp_path: Path, program: CompiledProgram
) -> None:
    opening = {"account": "6001", "loyalty": {"points": {"created": "2026-01-15"}}}
    path = write_lines(tmp_path, opening)
    loyalty = read_accounts(path, program)["6001"].loyalty["points"]
    assert (loyalty.level, loyalty.lots) == ("silver", [])


def test_opening_tender_and_award_balances_are_minor_units(
    tmp_path: Path, program: CompiledProgram
) -> None:
    path = write_lines(
        tmp_path,
        {
            "account": "6001",
            "tender": {"balance": "12.34"},
            "awards": {"rewards": {"balance": "5.00", "created": "2026-01-15"}},
        },
    )
    state = read_accounts(path, program)["6001"]
    assert state.tender is not None
    assert (state.tender.status, state.tender.balance) == ("active", 1234)
    assert state.awards["rewards"].balance == 500


def test_an_opening_balance_is_bounded_as_a_card_import_bounds_it(
    tmp_path: Path, program: CompiledProgram
) -> None:
    largest = Decimal(BALANCE_UNITS_MAX).scaleb(-2)
    over = largest + Decimal("0.01")
    path = write_lines(
        tmp_path,
        {"account": "6001", "tender": {"balance": str(largest)}},
        {"account": "6002", "tender": {"balance": str(over)}},
    )
    with pytest.raises(InputFileError) as error:
        read_accounts(path, program)
    assert error.value.problems == [
        Problem("line 2", f"tender.balance: {over} is larger than the ledger holds")
    ]


def test_account_problems_name_their_lines(tmp_path: Path, program: CompiledProgram) -> None:
    path = write_lines(
        tmp_path,
        {"account": "6001", "loyalty": {"nope": {"created": "2026-01-15"}}},
        "",
        {"account": "6002", "loyalty": {"points": {"level": "ruby", "created": "2026-01-15"}}},
        {"account": "6003"},
        {"account": "6003"},
        {"account": "6004", "loyalty": {"points": {"points": "1.5", "created": "2026-01-15"}}},
        {"account": "6005", "colour": "red"},
    )
    with pytest.raises(InputFileError) as error:
        read_accounts(path, program)
    assert error.value.problems == [
        Problem("line 1", "loyalty.nope: no such loyalty program"),
        Problem("line 3", "loyalty.points.level: unknown level 'ruby'"),
        Problem("line 5.account", "'6003' repeats"),
        Problem("line 6", "points 1.5 has more than 0 decimal places"),
        Problem("line 7.colour", "unknown field"),
    ]

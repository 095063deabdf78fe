"""The tender program model: its options, their field limits and cross-field problems."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from processor import calendar
from processor.errors import Problem
from processor.program.tender import TenderProgram

HEADER: dict[str, Any] = {"id": "gift", "name": "Gift card", "start_date": "2024-01-01"}


def program(**options: Any) -> TenderProgram:
    return TenderProgram.model_validate({**HEADER, **options})


def paths(found: list[Problem]) -> list[str]:
    return [problem.path for problem in found]


# --------------------------------------------------------------------------- options


def test_defaults_turn_every_toggle_off_and_set_no_limit() -> None:
    tender = program()
    assert tender.allow_reloads is False
    assert tender.credit_reversal is False
    assert tender.debit_reversal is False
    assert tender.allow_partial_redemption is False
    assert tender.allow_cash_outs is False
    assert tender.allow_preauthorizations is False
    assert tender.max_redemption_value_per_day is None
    assert tender.max_daily_uses is None
    assert tender.max_lifetime_uses is None
    assert tender.min_activation_amount == Decimal(0)
    assert tender.min_balance == Decimal(0)
    assert tender.max_balance is None
    assert tender.cash_out_limit is None
    assert tender.account_expiry is None
    assert tender.initial_balance is None
    assert tender.initial_book_value is None
    assert tender.preauthorization_expiry is None
    assert tender.problems("tender") == []


def test_every_manual_option_is_read_from_a_program_file() -> None:
    tender = program(
        end_date="2030-12-31",
        currency="EUR",
        allow_foreign_currency=True,
        card_required=True,
        card_merge_permitted=True,
        allow_reloads=True,
        credit_reversal=True,
        debit_reversal=True,
        allow_partial_redemption=True,
        max_redemption_value_per_day="300.00",
        max_daily_uses=5,
        max_lifetime_uses=100,
        min_activation_amount="10.00",
        min_balance="1.00",
        max_balance="500.00",
        allow_cash_outs=True,
        cash_out_limit="20.00",
        account_expiry="2 years",
        initial_balance="5.00",
        initial_book_value="0.50",
        allow_preauthorizations=True,
        preauthorization_expiry={"count": 7, "unit": "day"},
    )
    assert tender.problems("tender") == []
    assert tender.end_date == calendar.days_from_civil(2030, 12, 31)
    assert tender.minor(tender.max_redemption_value_per_day or Decimal(0)) == 30000
    assert (tender.max_daily_uses, tender.max_lifetime_uses) == (5, 100)
    assert tender.minor(tender.min_activation_amount) == 1000
    assert tender.minor(tender.min_balance) == 100
    assert tender.minor_or_none(tender.max_balance) == 50000
    assert tender.minor_or_none(tender.cash_out_limit) == 2000
    assert tender.account_expiry is not None
    assert (tender.account_expiry.count, tender.account_expiry.unit) == (2, "year")
    assert tender.initial_balance_minor() == 500
    assert tender.initial_book_value_minor() == 50
    assert tender.preauthorization_expiry is not None
    assert tender.preauthorization_expiry.after(10) == 17
    assert tender.allow_reloads and tender.credit_reversal and tender.debit_reversal
    assert tender.allow_partial_redemption and tender.allow_cash_outs
    assert tender.allow_preauthorizations and tender.card_merge_permitted


def test_minor_uses_the_currency_exponent() -> None:
    assert program(currency="JPY").minor(Decimal("1500")) == 1500
    assert program(currency="KWD").minor(Decimal("1.234")) == 1234
    assert program().minor(Decimal("12.34")) == 1234


def test_minor_refuses_an_amount_the_currency_cannot_hold() -> None:
    with pytest.raises(ValueError, match="more than 2 decimal places"):
        program().minor(Decimal("0.005"))


def test_minor_or_none_keeps_an_absent_limit_absent() -> None:
    assert program().minor_or_none(None) is None


def test_initial_balance_minor_is_zero_without_an_initial_balance() -> None:
    assert program().initial_balance_minor() == 0
    assert program().initial_book_value_minor() == 0


def test_initial_book_value_defaults_to_the_initial_balance_at_face_value() -> None:
    assert program(initial_balance="25.00").initial_book_value_minor() == 2500


@given(st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False))
def test_minor_is_exact_for_any_two_decimal_amount(value: Decimal) -> None:
    assert program(max_balance=value).minor(value) == int(value * 100)


# --------------------------------------------------------------------------- field limits


@pytest.mark.parametrize(
    ("options", "location"),
    [
        ({"max_daily_uses": 0}, ("max_daily_uses",)),
        ({"max_lifetime_uses": -1}, ("max_lifetime_uses",)),
        ({"max_lifetime_uses": 1_000_001}, ("max_lifetime_uses",)),
        ({"min_balance": "-1"}, ("min_balance",)),
        ({"max_balance": "NaN"}, ("max_balance",)),
        ({"cash_out_limit": "Infinity"}, ("cash_out_limit",)),
        ({"min_activation_amount": "ten"}, ("min_activation_amount",)),
        ({"initial_balance": "-5"}, ("initial_balance",)),
        ({"initial_book_value": "-0.01"}, ("initial_book_value",)),
        ({"max_redemption_value_per_day": "-1"}, ("max_redemption_value_per_day",)),
        ({"account_expiry": "soon"}, ("account_expiry",)),
        (
            {"preauthorization_expiry": {"count": 0, "unit": "day"}},
            ("preauthorization_expiry", "count"),
        ),
        ({"allow_reloads": "perhaps"}, ("allow_reloads",)),
        ({"currency": "US"}, ("currency",)),
        ({"reloads": True}, ("reloads",)),
    ],
)
def test_field_level_bad_input_is_refused_with_its_path(
    options: dict[str, Any], location: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as caught:
        program(**options)
    assert [error["loc"] for error in caught.value.errors()] == [location]


def test_the_model_is_immutable_once_loaded() -> None:
    tender = program()
    with pytest.raises(ValidationError):
        tender.allow_reloads = True  # type: ignore[misc]


# --------------------------------------------------------------------------- cross-field problems


def test_unknown_currency_is_one_problem_and_amounts_are_not_read_in_it() -> None:
    found = program(currency="XYZ", min_balance="0.001").problems("tender")
    assert found == [Problem("tender.currency", "'XYZ' is not an ISO 4217 currency code")]


@pytest.mark.parametrize(
    "name",
    [
        "max_redemption_value_per_day",
        "min_activation_amount",
        "min_balance",
        "max_balance",
        "initial_balance",
        "initial_book_value",
    ],
)
def test_amount_with_more_decimals_than_the_currency_is_a_problem(name: str) -> None:
    options: dict[str, Any] = {"currency": "JPY", name: "10.5"}
    if name == "initial_book_value":
        options["initial_balance"] = "100"
    found = program(**options).problems("tender")
    assert found == [Problem(f"tender.{name}", "amount in JPY 10.5 has more than 0 decimal places")]


def test_cash_out_limit_with_too_many_decimals_is_a_problem() -> None:
    found = program(allow_cash_outs=True, cash_out_limit="1.999").problems("tender")
    assert found == [
        Problem("tender.cash_out_limit", "amount in USD 1.999 has more than 2 decimal places")
    ]


def test_end_date_before_start_date_is_a_problem() -> None:
    found = program(end_date="2023-12-31").problems("tender")
    assert found == [Problem("tender.end_date", "is before start_date")]


def test_end_date_on_start_date_is_a_one_day_program() -> None:
    assert program(end_date="2024-01-01").problems("tender") == []


def test_min_balance_above_max_balance_is_a_problem() -> None:
    found = program(min_balance="50", max_balance="40").problems("tender")
    assert found == [Problem("tender.min_balance", "is above max_balance (40)")]


def test_min_activation_amount_above_max_balance_is_a_problem() -> None:
    found = program(min_activation_amount="50", max_balance="40").problems("tender")
    assert found == [Problem("tender.min_activation_amount", "is above max_balance (40)")]


def test_initial_balance_above_max_balance_is_a_problem() -> None:
    found = program(initial_balance="50", max_balance="40").problems("tender")
    assert found == [Problem("tender.initial_balance", "is above max_balance (40)")]


def test_bounds_equal_to_max_balance_are_allowed() -> None:
    options = {"min_balance": "40", "initial_balance": "40", "min_activation_amount": "40"}
    assert program(max_balance="40", **options).problems("tender") == []


@pytest.mark.parametrize("name", ["max_redemption_value_per_day", "max_balance"])
def test_a_zero_limit_is_a_problem_because_it_refuses_everything(name: str) -> None:
    found = program(**{name: "0"}).problems("tender")
    assert found == [Problem(f"tender.{name}", "must be greater than 0 when set")]


def test_a_zero_cash_out_limit_is_a_problem() -> None:
    found = program(allow_cash_outs=True, cash_out_limit="0").problems("tender")
    assert found == [Problem("tender.cash_out_limit", "must be greater than 0 when set")]


def test_cash_out_limit_without_allow_cash_outs_is_a_problem() -> None:
    found = program(cash_out_limit="20").problems("tender")
    assert found == [Problem("tender.cash_out_limit", "is set but allow_cash_outs is false")]


def test_preauthorization_expiry_without_allow_preauthorizations_is_a_problem() -> None:
    found = program(preauthorization_expiry="3 days").problems("tender")
    reason = "is set but allow_preauthorizations is false"
    assert found == [Problem("tender.preauthorization_expiry", reason)]


def test_initial_book_value_without_initial_balance_is_a_problem() -> None:
    found = program(initial_book_value="1").problems("tender")
    reason = "is set but initial_balance is not: there is nothing to book"
    assert found == [Problem("tender.initial_book_value", reason)]


def test_daily_uses_above_lifetime_uses_is_a_problem() -> None:
    found = program(max_daily_uses=5, max_lifetime_uses=3).problems("tender")
    assert found == [Problem("tender.max_daily_uses", "is above max_lifetime_uses (3)")]


def test_every_problem_is_reported_in_one_pass_with_its_path() -> None:
    tender = program(
        end_date="2023-06-01",
        min_balance="60",
        max_balance="50",
        initial_balance="0.001",
        cash_out_limit="5",
        preauthorization_expiry="1 day",
        max_daily_uses=2,
        max_lifetime_uses=1,
    )
    assert paths(tender.problems("programs[2]")) == [
        "programs[2].end_date",
        "programs[2].initial_balance",
        "programs[2].min_balance",
        "programs[2].cash_out_limit",
        "programs[2].preauthorization_expiry",
        "programs[2].max_daily_uses",
    ]


def test_problems_at_the_top_level_name_the_field_alone() -> None:
    assert paths(program(cash_out_limit="5").problems("")) == ["cash_out_limit"]

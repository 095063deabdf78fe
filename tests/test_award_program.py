"""The award program model: every option it reads, and every problem it reports."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from processor import calendar
from processor.errors import Problem
from processor.program.award import (
    CERTIFICATES_MAX,
    TIME_RULES_MAX,
    AwardCertificate,
    AwardProgram,
    EntitlementOffer,
    TimeRule,
)
from processor.program.base import Period

PATH = "award_programs[0]"
DIRECTORY = {
    "S1": {"region": "north", "format": "mall"},
    "S2": {"region": "south", "format": "street"},
}

PROGRAM_YAML = """
id: rewards
name: Rewards wallet
description: E-awards and certificates
active: true
start_date: 2024-01-01
end_date: 2025-12-31
currency: USD
allow_foreign_currency: true
card_required: true
card_merge_permitted: true
allow_reloads: true
account_expiry: 2 years
initial_balance: "5.00"
award_expiry: {count: 90, unit: day}
extend_expiry_on_activity: true
coupon_prefix: RW-
certificates:
  - id: birthday
    name: Birthday treat
    description: A free coffee
    offer: {id: coffee, name: Free coffee, type: free_item, description: Any size}
    precedence: 2
    issue: account_activated
    expiry: 1 month
    unlimited_redemptions: false
    max_redemptions: 3
    time_rules:
      - name: Weekday mornings
        description: Before the lunch rush
        type: eligibility
        weekdays: [mon, tue, wed, thu, fri]
        start_time: "07:00"
        end_time: "11:30"
        start_date: 2024-02-01
        end_date: 2024-12-31
      - name: Christmas
        type: blackout
        start_date: 2024-12-24
        end_date: 2024-12-26
    location_include: {locations: [S1], attributes: [{name: region, values: [north]}]}
    location_exclude: {attributes: [{name: format, values: [street]}], match: all}
  - id: ten-off
    name: Ten off
    offer: {id: ten, name: Ten dollars off, type: amount_off, value: "10.00"}
    precedence: 1
    unlimited_redemptions: true
"""


def program_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PROGRAM_YAML)
    return data


def build(**changes: Any) -> AwardProgram:
    data = program_data()
    data.update(changes)
    return AwardProgram.model_validate(data)


def certificate_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "c",
        "name": "C",
        "offer": {"id": "o", "name": "O", "type": "percent_off", "value": "15"},
        "precedence": 5,
        "max_redemptions": 1,
    }
    data.update(changes)
    return data


def with_certificates(*certificates: dict[str, Any], **changes: Any) -> AwardProgram:
    return build(certificates=list(certificates), **changes)


def problems_of(program: AwardProgram) -> list[Problem]:
    return program.problems(PATH, DIRECTORY)


# --------------------------------------------------------------------------- every option


def test_program_details_are_read_from_yaml() -> None:
    program = build()
    assert program.id == "rewards"
    assert program.name == "Rewards wallet"
    assert program.description == "E-awards and certificates"
    assert program.active is True
    assert program.start_date == calendar.days_from_civil(2024, 1, 1)
    assert program.end_date == calendar.days_from_civil(2025, 12, 31)
    assert program.currency == "USD"
    assert program.allow_foreign_currency is True
    assert program.card_required is True
    assert program.card_merge_permitted is True


def test_account_details_and_award_expiration_are_read_from_yaml() -> None:
    program = build()
    assert program.allow_reloads is True
    assert program.account_expiry == Period(count=2, unit="year")
    assert program.initial_balance == Decimal("5.00")
    assert program.initial_balance_units() == 500
    assert program.award_expiry == Period(count=90, unit="day")
    assert program.extend_expiry_on_activity is True
    assert program.coupon_prefix == "RW-"


def test_certificate_details_are_read_from_yaml() -> None:
    certificate = build().certificates[0]
    assert certificate.id == "birthday"
    assert certificate.name == "Birthday treat"
    assert certificate.description == "A free coffee"
    assert certificate.offer == EntitlementOffer(
        id="coffee", name="Free coffee", type="free_item", description="Any size"
    )
    assert certificate.precedence == 2
    assert certificate.issue == "account_activated"
    assert certificate.expiry == Period(count=1, unit="month")
    assert certificate.unlimited_redemptions is False
    assert certificate.max_redemptions == 3
    assert certificate.redemptions_allowed == 3


def test_time_rules_read_name_type_and_window() -> None:
    eligibility, blackout = build().certificates[0].time_rules
    assert eligibility.name == "Weekday mornings"
    assert eligibility.description == "Before the lunch rush"
    assert eligibility.type == "eligibility"
    assert eligibility.weekdays == ["mon", "tue", "wed", "thu", "fri"]
    assert eligibility.start_time == 7 * 3600
    assert eligibility.end_time == 11 * 3600 + 30 * 60
    assert eligibility.start_date == calendar.days_from_civil(2024, 2, 1)
    assert eligibility.end_date == calendar.days_from_civil(2024, 12, 31)
    assert blackout.type == "blackout"
    assert blackout.weekdays == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert (blackout.start_time, blackout.end_time) == (0, 86400)


def test_location_rules_read_locations_attributes_and_match() -> None:
    certificate = build().certificates[0]
    assert certificate.location_include is not None
    assert certificate.location_include.locations == ["S1"]
    assert certificate.location_include.attributes[0].name == "region"
    assert certificate.location_include.match == "any"
    assert certificate.location_exclude is not None
    assert certificate.location_exclude.match == "all"


def test_unlimited_certificate_allows_minus_one_redemptions() -> None:
    certificate = build().certificates[1]
    assert certificate.unlimited_redemptions is True
    assert certificate.max_redemptions is None
    assert certificate.redemptions_allowed == -1


def test_defaults_are_closed_and_empty() -> None:
    program = AwardProgram.model_validate({"id": "p", "name": "P", "start_date": "2024-01-01"})
    assert program.allow_reloads is False
    assert program.account_expiry is None
    assert program.initial_balance is None
    assert program.initial_balance_units() == 0
    assert program.award_expiry is None
    assert program.extend_expiry_on_activity is False
    assert program.coupon_prefix == ""
    assert program.certificates == []
    assert program.currency == "USD"
    assert problems_of(program) == []


def test_certificate_defaults_to_on_demand_with_no_rules() -> None:
    certificate = AwardCertificate.model_validate(certificate_data())
    assert certificate.issue == "on_demand"
    assert certificate.expiry is None
    assert certificate.description == ""
    assert certificate.time_rules == []
    assert certificate.location_include is None
    assert certificate.location_exclude is None


def test_certificates_apply_lowest_precedence_first() -> None:
    program = build()
    assert [item.id for item in program.certificates_by_precedence()] == ["ten-off", "birthday"]


def test_certificate_is_found_by_id() -> None:
    program = build()
    assert program.certificate("ten-off") is program.certificates[1]
    assert program.certificate("missing") is None


def test_time_rule_is_a_time_window_that_matches_moments() -> None:
    rule = TimeRule.model_validate(
        {"name": "Sat", "type": "blackout", "weekdays": ["sat"], "start_time": "10:00"}
    )
    saturday = calendar.days_from_civil(2024, 6, 1)
    assert rule.matches(saturday, 10 * 3600) is True
    assert rule.matches(saturday, 9 * 3600) is False
    assert rule.matches(saturday + 1, 10 * 3600) is False


def test_the_full_example_has_no_problems() -> None:
    assert problems_of(build()) == []


# --------------------------------------------------------------------------- problems


def test_duplicate_certificate_id_is_reported_at_the_second() -> None:
    program = with_certificates(certificate_data(), certificate_data(precedence=6))
    assert problems_of(program) == [
        Problem(f"{PATH}.certificates[1].id", "id 'c' is used by an earlier certificate")
    ]


def test_duplicate_precedence_is_reported_at_the_second() -> None:
    program = with_certificates(certificate_data(), certificate_data(id="d"))
    assert problems_of(program) == [
        Problem(
            f"{PATH}.certificates[1].precedence", "precedence 5 is used by an earlier certificate"
        )
    ]


def test_limited_certificate_needs_max_redemptions() -> None:
    program = with_certificates(certificate_data(max_redemptions=None))
    assert problems_of(program) == [
        Problem(
            f"{PATH}.certificates[0].max_redemptions",
            "is required when unlimited_redemptions is false",
        )
    ]


def test_unlimited_certificate_must_not_set_max_redemptions() -> None:
    program = with_certificates(certificate_data(unlimited_redemptions=True))
    assert problems_of(program) == [
        Problem(
            f"{PATH}.certificates[0].max_redemptions",
            "must be absent when unlimited_redemptions is true",
        )
    ]


@pytest.mark.parametrize("issue", ["account_activated", "card_registered"])
def test_automatically_issued_certificate_needs_an_expiry(issue: str) -> None:
    program = with_certificates(certificate_data(issue=issue))
    assert problems_of(program) == [
        Problem(f"{PATH}.certificates[0].expiry", f"is required when issue is {issue}")
    ]


def test_on_demand_certificate_takes_expiry_from_its_issuer() -> None:
    program = with_certificates(certificate_data(expiry="30 days"))
    assert problems_of(program) == [
        Problem(
            f"{PATH}.certificates[0].expiry",
            "must be absent when issue is on_demand: the issuer sets the expiry",
        )
    ]


def test_unknown_currency_is_reported_once() -> None:
    program = build(currency="XYZ")
    assert problems_of(program) == [Problem(f"{PATH}.currency", "unknown currency 'XYZ'")]


def test_initial_balance_with_more_decimals_than_the_currency_is_reported() -> None:
    program = build(initial_balance="1.005")
    assert problems_of(program) == [
        Problem(f"{PATH}.initial_balance", "amount in USD 1.005 has more than 2 decimal places")
    ]


def test_initial_balance_in_yen_must_be_whole() -> None:
    program = with_certificates(currency="JPY", initial_balance="1.5")
    assert problems_of(program) == [
        Problem(f"{PATH}.initial_balance", "amount in JPY 1.5 has more than 0 decimal places")
    ]


def test_end_date_before_start_date_is_reported() -> None:
    program = build(end_date="2023-12-31")
    assert problems_of(program) == [Problem(f"{PATH}.end_date", "is before start_date")]


def test_extending_expiry_needs_an_award_expiry() -> None:
    program = build(award_expiry=None)
    assert problems_of(program) == [
        Problem(
            f"{PATH}.extend_expiry_on_activity",
            "needs award_expiry: there is no award expiry to extend",
        )
    ]


def test_time_window_problems_carry_the_time_rule_path() -> None:
    rule = {"name": "Empty", "type": "eligibility", "start_time": "09:00", "end_time": "09:00"}
    rule_two = {"name": "Twice", "type": "blackout", "weekdays": ["mon", "mon"]}
    program = with_certificates(certificate_data(time_rules=[rule, rule_two]))
    assert problems_of(program) == [
        Problem(
            f"{PATH}.certificates[0].time_rules[0].end_time",
            "equals start_time: the window is empty",
        ),
        Problem(f"{PATH}.certificates[0].time_rules[1].weekdays", "names a day twice"),
    ]


def test_time_rule_ending_before_it_starts_is_reported() -> None:
    rule = {
        "name": "Back",
        "type": "eligibility",
        "start_date": "2024-05-01",
        "end_date": "2024-04-01",
    }
    program = with_certificates(certificate_data(time_rules=[rule]))
    assert problems_of(program) == [
        Problem(f"{PATH}.certificates[0].time_rules[0].end_date", "is before start_date")
    ]


def test_location_rule_problems_carry_their_path() -> None:
    program = with_certificates(
        certificate_data(location_include={"locations": ["S9"]}, location_exclude={})
    )
    assert problems_of(program) == [
        Problem(f"{PATH}.certificates[0].location_include.locations[0]", "unknown location 'S9'"),
        Problem(f"{PATH}.certificates[0].location_exclude", "names no locations and no attributes"),
    ]


def test_location_both_included_and_excluded_is_reported() -> None:
    program = with_certificates(
        certificate_data(
            location_include={"locations": ["S1", "S2"]}, location_exclude={"locations": ["S2"]}
        )
    )
    assert problems_of(program) == [
        Problem(
            f"{PATH}.certificates[0].location_exclude.locations[0]",
            "location 'S2' is also included",
        )
    ]


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        ({"type": "free_item", "value": "1"}, "must be absent for free_item"),
        ({"type": "percent_off"}, "must be greater than 0 for percent_off"),
        ({"type": "percent_off", "value": "0"}, "must be greater than 0 for percent_off"),
        ({"type": "percent_off", "value": "100.5"}, "a percentage cannot exceed 100"),
        (
            {"type": "percent_off", "value": "12.345"},
            "percentage 12.345 has more than 2 decimal places",
        ),
        ({"type": "amount_off"}, "must be greater than 0 for amount_off"),
        (
            {"type": "amount_off", "value": "2.999"},
            "amount in USD 2.999 has more than 2 decimal places",
        ),
    ],
)
def test_offer_value_must_fit_its_type(offer: dict[str, Any], reason: str) -> None:
    program = with_certificates(certificate_data(offer={"id": "o", "name": "O", **offer}))
    assert problems_of(program) == [Problem(f"{PATH}.certificates[0].offer.value", reason)]


def test_offer_values_that_fit_have_no_problems() -> None:
    offers = [
        {"type": "percent_off", "value": "100"},
        {"type": "percent_off", "value": "12.5"},
        {"type": "amount_off", "value": "0.01"},
        {"type": "free_item"},
    ]
    certificates = [
        certificate_data(id=f"c{index}", precedence=index, offer={"id": "o", "name": "O", **offer})
        for index, offer in enumerate(offers)
    ]
    assert problems_of(with_certificates(*certificates)) == []


def test_every_problem_is_reported_in_one_pass() -> None:
    program = with_certificates(
        certificate_data(issue="card_registered", max_redemptions=None),
        certificate_data(),
        end_date="2023-01-01",
        award_expiry=None,
    )
    assert [problem.path for problem in problems_of(program)] == [
        f"{PATH}.end_date",
        f"{PATH}.extend_expiry_on_activity",
        f"{PATH}.certificates[1].id",
        f"{PATH}.certificates[1].precedence",
        f"{PATH}.certificates[0].expiry",
        f"{PATH}.certificates[0].max_redemptions",
    ]


# --------------------------------------------------------------------------- bad input


def error_locations(data: dict[str, Any]) -> list[tuple[str | int, ...]]:
    with pytest.raises(ValidationError) as caught:
        AwardProgram.model_validate(data)
    return [error["loc"] for error in caught.value.errors()]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("allow_reloads", "sometimes"),
        ("account_expiry", "forever"),
        ("initial_balance", "-1"),
        ("initial_balance", "NaN"),
        ("award_expiry", {"count": 0, "unit": "day"}),
        ("extend_expiry_on_activity", "maybe"),
        ("coupon_prefix", "has space"),
        ("coupon_prefix", "X" * 17),
        ("currency", "US"),
        ("start_date", "2024-13-01"),
        ("surprise", 1),
    ],
)
def test_bad_program_field_is_rejected_at_its_path(field: str, value: Any) -> None:
    data = program_data()
    data[field] = value
    locations = error_locations(data)
    assert locations
    assert all(location[0] == field for location in locations)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "has space"),
        ("name", ""),
        ("precedence", -1),
        ("issue", "at_checkout"),
        ("expiry", "3 fortnights"),
        ("max_redemptions", 0),
        ("max_redemptions", 1_000_001),
        ("unlimited_redemptions", "lots"),
        ("offer", {"id": "o", "name": "O", "type": "bogo"}),
        ("time_rules", [{"name": "T", "type": "sometimes"}]),
        ("time_rules", [{"name": "T", "type": "blackout", "weekdays": ["funday"]}]),
        ("time_rules", [{"name": "T", "type": "blackout", "start_time": "25:00"}]),
        ("time_rules", [{"type": "blackout"}]),
        ("location_include", {"locations": ["S1"], "match": "some"}),
        ("surprise", True),
    ],
)
def test_bad_certificate_field_is_rejected_under_its_certificate(field: str, value: Any) -> None:
    data = program_data()
    data["certificates"][1][field] = value
    locations = error_locations(data)
    assert locations
    assert all(location[:3] == ("certificates", 1, field) for location in locations)


def test_program_without_id_name_or_start_date_is_rejected() -> None:
    locations = error_locations({"currency": "USD"})
    assert locations == [("id",), ("name",), ("start_date",)]


def test_certificate_count_is_limited() -> None:
    data = program_data()
    data["certificates"] = [
        certificate_data(id=f"c{index}", precedence=index) for index in range(CERTIFICATES_MAX + 1)
    ]
    assert error_locations(data) == [("certificates",)]


def test_time_rule_count_is_limited() -> None:
    data = program_data()
    rules = [{"name": f"T{index}", "type": "blackout"} for index in range(TIME_RULES_MAX + 1)]
    data["certificates"][1]["time_rules"] = rules
    assert error_locations(data) == [("certificates", 1, "time_rules")]


def test_program_is_immutable() -> None:
    program = build()
    with pytest.raises(ValidationError):
        program.allow_reloads = False  # type: ignore[misc]

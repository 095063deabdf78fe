"""The card definition and card series model: fields, limits and cross-field problems."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from processor import calendar
from processor.errors import Problem
from processor.program.cards import (
    CardBatch,
    CardDefinition,
    CardSeries,
    CardSupplier,
    card_problems,
    series_cards_max,
)


def definition(**changes: Any) -> CardDefinition:
    fields: dict[str, Any] = {"type": "Gift Card", "serial_prefix": "60012"}
    fields.update(changes)
    return CardDefinition.model_validate(fields)


def series(**changes: Any) -> CardSeries:
    fields: dict[str, Any] = {
        "id": "spring",
        "name": "Spring distribution",
        "total_cards": 30,
        "batches": [{"name": "stores", "count": 20}, {"name": "online", "count": 10}],
    }
    fields.update(changes)
    return CardSeries.model_validate(fields)


def error_locations(error: pytest.ExceptionInfo[ValidationError]) -> list[tuple[Any, ...]]:
    return [tuple(detail["loc"]) for detail in error.value.errors()]


# --------------------------------------------------------------------------- definition fields


def test_definition_defaults_have_no_pins_and_sixteen_digit_numbers() -> None:
    card = definition()
    assert card.active is True
    assert card.generate_pin is False
    assert card.pin_length == 0
    assert card.pin_required_always is False
    assert card.pin_required_without_card is False
    assert card.number_length == 16
    assert card.supplier is None
    assert card.image_url is None
    assert card.attributes == {}
    assert card.has_pins is False
    assert card.problems("card") == []


def test_definition_reads_every_manual_option() -> None:
    card = definition(
        description="Plastic gift card",
        active=False,
        generate_pin=True,
        pin_length=6,
        pin_required_always=True,
        pin_required_without_card=True,
        image_url="https://cdn.example.com/cards/gift.png",
        supplier={
            "name": "Card Printers Inc.",
            "address_line_1": "1 Main St",
            "address_line_2": "Suite 2",
            "address_line_3": "Building C",
            "city": "Solon",
            "state": "OH",
            "postal_code": "44139",
            "country": "US",
            "phone": "+1 (440) 555-0100",
        },
        attributes={"TIER": "gold"},
    )
    assert card.description == "Plastic gift card"
    assert card.active is False
    assert card.has_pins is True
    assert card.pin_length == 6
    assert card.image_url == "https://cdn.example.com/cards/gift.png"
    assert card.supplier == CardSupplier(
        name="Card Printers Inc.",
        address_line_1="1 Main St",
        address_line_2="Suite 2",
        address_line_3="Building C",
        city="Solon",
        state="OH",
        postal_code="44139",
        country="US",
        phone="+1 (440) 555-0100",
    )
    assert card.attributes == {"TIER": "gold"}
    assert card.problems("card") == []


@pytest.mark.parametrize("prefix", ["6001", "600123", "6001a", "", " 6001", "６００１２"])
def test_serial_prefix_must_be_exactly_five_digits(prefix: str) -> None:
    with pytest.raises(ValidationError) as error:
        definition(serial_prefix=prefix)
    assert error_locations(error) == [("serial_prefix",)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pin_length", -1),
        ("pin_length", 13),
        ("number_length", 7),
        ("number_length", 20),
        ("type", ""),
        ("image_url", "ftp://example.com/card.png"),
        ("image_url", "https://example.com/a card.png"),
        ("attributes", {"bad name": "x"}),
        ("colour", "red"),
    ],
)
def test_definition_rejects_out_of_range_fields(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as error:
        definition(**{field: value})
    assert error_locations(error)[0][0] == field


def test_supplier_needs_a_name_and_a_plausible_phone() -> None:
    with pytest.raises(ValidationError) as error:
        CardSupplier.model_validate({"name": "", "phone": "call us"})
    assert error_locations(error) == [("name",), ("phone",)]


def test_definition_is_frozen() -> None:
    card = definition()
    with pytest.raises(ValidationError):
        card.active = False  # type: ignore[misc]


def test_sequence_capacity_follows_number_length_and_prefix() -> None:
    assert definition().sequence_digits == 10
    assert definition().sequence_capacity == 9_999_999_999
    assert definition(number_length=8).sequence_capacity == 99


# --------------------------------------------------------------------------- PIN problems


def test_generate_pin_without_pin_length_is_a_problem() -> None:
    assert definition(generate_pin=True).problems("card") == [
        Problem("card.pin_length", "must be at least 1 when generate_pin is on")
    ]


def test_pin_length_without_generate_pin_is_a_problem() -> None:
    assert definition(pin_length=4).problems("card") == [
        Problem("card.pin_length", "is set but generate_pin is off")
    ]


def test_pin_required_options_without_generate_pin_are_problems() -> None:
    card = definition(pin_required_always=True, pin_required_without_card=True)
    assert card.problems("programs[2].card") == [
        Problem("programs[2].card.pin_required_always", "requires generate_pin"),
        Problem("programs[2].card.pin_required_without_card", "requires generate_pin"),
    ]


def test_pin_required_with_pin_length_zero_is_a_problem() -> None:
    card = definition(generate_pin=True, pin_required_without_card=True)
    assert card.problems("card") == [
        Problem("card.pin_length", "must be at least 1 when generate_pin is on"),
        Problem("card.pin_required_without_card", "requires a pin_length of at least 1"),
    ]


def test_consistent_pin_options_have_no_problems() -> None:
    card = definition(generate_pin=True, pin_length=4, pin_required_without_card=True)
    assert card.problems("card") == []


# --------------------------------------------------------------------------- series fields


def test_series_defaults_generate_on_demand_without_expiry() -> None:
    one = series()
    assert one.generate is False
    assert one.expiry_type is None
    assert one.import_file is None
    assert one.attributes == {}
    assert one.description == ""
    assert len(one.batches) == 2
    assert one.batches[0] == CardBatch(name="stores", count=20)
    assert one.batches[0].activate is False
    assert one.batches[0].description == ""
    assert one.problems("series[0]") == []


def test_series_reads_every_manual_option() -> None:
    one = series(
        description="Cards for the spring campaign",
        generate=True,
        expiry_type="relative",
        expire_after="18 months",
        attributes={"CAMPAIGN": "spring"},
        batches=[
            {"name": "stores", "description": "Shipped to stores", "count": 20, "activate": True},
            {"name": "online", "count": 10},
        ],
    )
    assert one.description == "Cards for the spring campaign"
    assert one.generate is True
    assert one.expire_after is not None
    assert (one.expire_after.count, one.expire_after.unit) == (18, "month")
    assert one.attributes == {"CAMPAIGN": "spring"}
    assert one.batches[0].description == "Shipped to stores"
    assert one.batches[0].activate is True
    assert one.problems("series[0]") == []


@pytest.mark.parametrize(
    ("changes", "location"),
    [
        ({"id": "has space"}, ("id",)),
        ({"name": ""}, ("name",)),
        ({"total_cards": 0}, ("total_cards",)),
        ({"total_cards": series_cards_max + 1}, ("total_cards",)),
        ({"batches": []}, ("batches",)),
        ({"batches": [{"name": "a", "count": 0}]}, ("batches", 0, "count")),
        ({"batches": [{"name": "", "count": 1}]}, ("batches", 0, "name")),
        ({"expiry_type": "rolling"}, ("expiry_type",)),
        ({"expiry_end": "2025-02-30"}, ("expiry_end",)),
        ({"expire_after": "soon"}, ("expire_after",)),
        ({"import_file": ""}, ("import_file",)),
        ({"size": 3}, ("size",)),
    ],
)
def test_series_rejects_bad_fields(changes: dict[str, Any], location: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as error:
        series(**changes)
    assert error_locations(error)[0] == location


def test_relative_expiry_counts_from_activation() -> None:
    one = series(expiry_type="relative", expire_after={"count": 1, "unit": "month"})
    activated = calendar.days_from_civil(2025, 1, 31)
    assert one.expires_day(activated) == calendar.days_from_civil(2025, 2, 28)


def test_fixed_expiry_is_the_end_date_whatever_the_activation() -> None:
    one = series(expiry_type="fixed", expiry_start="2025-01-01", expiry_end="2026-12-31")
    assert one.expiry_start == calendar.days_from_civil(2025, 1, 1)
    assert one.expires_day(calendar.days_from_civil(2025, 6, 1)) == calendar.days_from_civil(
        2026, 12, 31
    )
    assert one.problems("series[0]") == []


def test_series_without_expiry_never_expires() -> None:
    assert series().expires_day(20_000) is None


def test_relative_expiry_without_expire_after_is_a_problem() -> None:
    assert series(expiry_type="relative").problems("series[1]") == [
        Problem("series[1].expire_after", "is required with expiry_type relative")
    ]


def test_fixed_expiry_needs_both_dates_and_no_period() -> None:
    one = series(expiry_type="fixed", expire_after="1 year")
    assert one.problems("series[0]") == [
        Problem("series[0].expire_after", "is not used with expiry_type fixed"),
        Problem("series[0].expiry_start", "is required with expiry_type fixed"),
        Problem("series[0].expiry_end", "is required with expiry_type fixed"),
    ]


def test_fixed_expiry_ending_before_it_starts_is_a_problem() -> None:
    one = series(expiry_type="fixed", expiry_start="2025-06-01", expiry_end="2025-05-31")
    assert one.problems("series[0]") == [Problem("series[0].expiry_end", "is before expiry_start")]


def test_expiry_dates_without_expiry_type_are_problems() -> None:
    one = series(expiry_start="2025-01-01", expiry_end="2025-12-31")
    assert one.problems("series[0]") == [
        Problem("series[0].expiry_start", "is not used with no expiry_type"),
        Problem("series[0].expiry_end", "is not used with no expiry_type"),
    ]


def test_relative_expiry_with_fixed_dates_is_a_problem() -> None:
    one = series(expiry_type="relative", expire_after="2 years", expiry_end="2030-01-01")
    assert one.problems("series[0]") == [
        Problem("series[0].expiry_end", "is not used with expiry_type relative")
    ]


def test_batch_counts_must_sum_to_total_cards() -> None:
    assert series(total_cards=31).problems("series[1]") == [
        Problem("series[1].batches", "batch counts sum to 30, not total_cards 31")
    ]


def test_duplicate_batch_names_are_problems() -> None:
    one = series(
        total_cards=3,
        batches=[
            {"name": "a", "count": 1},
            {"name": "b", "count": 1},
            {"name": "a", "count": 1},
        ],
    )
    assert one.problems("series[1]") == [
        Problem("series[1].batches[2].name", "duplicate of batches[0].name")
    ]


def test_import_file_with_generate_is_a_problem() -> None:
    one = series(generate=True, import_file="cards/spring.csv")
    assert one.problems("series[0]") == [
        Problem(
            "series[0].import_file",
            "cannot be combined with generate: numbers are either generated or imported",
        )
    ]


def test_total_cards_is_required_without_an_import_file() -> None:
    assert series(total_cards=None).problems("series[0]") == [
        Problem("series[0].total_cards", "required unless import_file lists the cards")
    ]


def test_import_file_may_leave_total_cards_to_the_file() -> None:
    one = series(total_cards=None, import_file="cards/spring.csv")
    assert one.problems("series[0]") == []
    assert one.count_problems(30, "series[0]") == []
    assert one.count_problems(29, "series[0]") == [
        Problem("series[0].batches", "batch counts sum to 30, the import file lists 29")
    ]


def test_stated_total_cards_must_match_the_import_file() -> None:
    one = series(import_file="cards/spring.csv")
    assert one.count_problems(30, "series[0]") == []
    assert one.count_problems(31, "series[0]") == [
        Problem("series[0].total_cards", "is 30 but the import file lists 31 cards")
    ]


def test_batch_at_maps_card_indexes_to_batches() -> None:
    one = series()
    assert [one.batch_at(index).name for index in (0, 19, 20, 29)] == [
        "stores",
        "stores",
        "online",
        "online",
    ]
    with pytest.raises(IndexError):
        one.batch_at(30)
    with pytest.raises(IndexError):
        one.batch_at(-1)


# --------------------------------------------------------------------------- definition with series


def test_card_problems_collects_definition_and_series_problems_with_paths() -> None:
    found = card_problems(
        definition(pin_length=4),
        [series(), series(id="summer", total_cards=5), series()],
        definition_path="card",
        series_path="card.series",
    )
    assert found == [
        Problem("card.pin_length", "is set but generate_pin is off"),
        Problem("card.series[1].batches", "batch counts sum to 30, not total_cards 5"),
        Problem("card.series[2].id", "duplicate of card.series[0].id"),
    ]


def test_generated_series_must_fit_the_number_space() -> None:
    small = definition(number_length=8)
    found = card_problems(
        small,
        [
            series(id="a", total_cards=60, batches=[{"name": "all", "count": 60}]),
            series(id="b", total_cards=40, batches=[{"name": "all", "count": 40}]),
            series(id="c", total_cards=None, import_file="c.csv"),
        ],
        definition_path="card",
        series_path="series",
    )
    assert found == [
        Problem(
            "series[1].total_cards",
            "brings the generated cards to 100, more than the 99 numbers of 8 digits "
            "with prefix 60012",
        )
    ]


def test_card_problems_of_a_clean_card_are_empty() -> None:
    found = card_problems(
        definition(), [series(), series(id="b")], definition_path="card", series_path="series"
    )
    assert found == []

"""Card numbers, PINs, generated series and the PIN check."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import luhn

from processor.cards import (
    PIN_REQUIRED,
    GeneratedCard,
    card_number,
    first_sequences,
    generate_series,
    iter_series,
    pin_problem,
    random_pin,
)
from processor.program import cards as card_model
from processor.program.cards import CardDefinition, CardSeries


def definition(**changes: Any) -> CardDefinition:
    fields: dict[str, Any] = {"type": "Gift Card", "serial_prefix": "60012"}
    fields.update(changes)
    return CardDefinition.model_validate(fields)


def series(**changes: Any) -> CardSeries:
    fields: dict[str, Any] = {
        "id": "spring",
        "name": "Spring distribution",
        "total_cards": 3,
        "batches": [
            {"name": "stores", "count": 2, "activate": True},
            {"name": "online", "count": 1},
        ],
    }
    fields.update(changes)
    return CardSeries.model_validate(fields)


# --------------------------------------------------------------------------- PIN check


def test_no_definition_needs_no_pin() -> None:
    assert pin_problem(None, card_present=False, pin_verified=False) == ""


def test_pin_required_always_declines_without_a_verified_pin() -> None:
    card = definition(generate_pin=True, pin_length=4, pin_required_always=True)
    assert pin_problem(card, card_present=True, pin_verified=False) == PIN_REQUIRED
    assert pin_problem(card, card_present=False, pin_verified=False) == "PIN_REQUIRED"
    assert pin_problem(card, card_present=True, pin_verified=True) == ""


def test_pin_required_without_card_only_applies_when_the_card_is_absent() -> None:
    card = definition(generate_pin=True, pin_length=4, pin_required_without_card=True)
    assert pin_problem(card, card_present=True, pin_verified=False) == ""
    assert pin_problem(card, card_present=False, pin_verified=False) == "PIN_REQUIRED"
    assert pin_problem(card, card_present=False, pin_verified=True) == ""


def test_pins_not_required_never_decline() -> None:
    card = definition(generate_pin=True, pin_length=4)
    assert pin_problem(card, card_present=False, pin_verified=False) == ""


# --------------------------------------------------------------------------- card numbers


def test_card_number_is_prefix_padded_sequence_and_luhn_digit() -> None:
    assert card_number("60012", 1) == "6001200000000010"
    assert card_number("60012", 900001) == "6001200009000011"
    assert card_number("12345", 7, length=8) == "12345070"


def test_card_number_fills_the_whole_sequence_space() -> None:
    assert card_number("60012", 99, length=8) == "60012994"
    with pytest.raises(ValueError, match="does not fit in 2 digits"):
        card_number("60012", 100, length=8)


@pytest.mark.parametrize(
    ("prefix", "sequence", "length", "message"),
    [
        ("6001a", 1, 16, "not all digits"),
        ("", 1, 16, "not all digits"),
        ("60012", -1, 16, "does not fit"),
        ("60012", 1, 6, "leaves no room"),
    ],
)
def test_card_number_rejects_bad_arguments(
    prefix: str, sequence: int, length: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        card_number(prefix, sequence, length)


@given(
    prefix=st.from_regex(r"[0-9]{5}", fullmatch=True),
    length=st.integers(min_value=8, max_value=19),
    data=st.data(),
)
def test_every_card_number_passes_luhn_and_keeps_prefix_and_length(
    prefix: str, length: int, data: st.DataObject
) -> None:
    sequence = data.draw(st.integers(min_value=0, max_value=10 ** (length - 6) - 1))
    number = card_number(prefix, sequence, length)
    assert luhn.is_valid(number)
    assert number.startswith(prefix)
    assert len(number) == length
    assert int(number[len(prefix) : -1]) == sequence


# --------------------------------------------------------------------------- PINs


def test_random_pin_has_the_requested_digits() -> None:
    pins = {random_pin(6) for _ in range(50)}
    assert all(len(pin) == 6 and pin.isdigit() for pin in pins)
    assert len(pins) > 1


def test_random_pin_rejects_zero_length() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        random_pin(0)


# --------------------------------------------------------------------------- generated series


def test_generate_series_numbers_batches_and_activation() -> None:
    cards = generate_series(definition(), series(), start_sequence=41)
    assert cards == [
        GeneratedCard("6001200000000416", None, "stores", True),
        GeneratedCard("6001200000000424", None, "stores", True),
        GeneratedCard("6001200000000432", None, "online", False),
    ]


def test_generate_series_gives_pins_of_the_definition_length() -> None:
    cards = generate_series(definition(generate_pin=True, pin_length=5), series())
    pins = [card.pin for card in cards]
    assert all(pin is not None and len(pin) == 5 and pin.isdigit() for pin in pins)


def test_generate_series_uses_the_definition_number_length() -> None:
    cards = generate_series(definition(number_length=10), series())
    assert [card.number for card in cards] == ["6001200010", "6001200028", "6001200036"]


def test_an_inactive_definition_issues_only_inactive_cards() -> None:
    cards = generate_series(definition(active=False), series())
    assert [card.active for card in cards] == [False, False, False]


def test_generate_series_refuses_an_imported_series() -> None:
    imported = series(import_file="cards.csv", total_cards=None)
    with pytest.raises(ValueError, match=r"takes its cards from 'cards\.csv'"):
        generate_series(definition(), imported)


def test_generate_series_refuses_sequences_beyond_the_number_space() -> None:
    small = definition(number_length=8)
    assert len(generate_series(small, series(), start_sequence=97)) == 3
    with pytest.raises(ValueError, match=r"sequences 98\.\.100 .* do not fit in 1\.\.99"):
        generate_series(small, series(), start_sequence=98)
    with pytest.raises(ValueError, match="do not fit"):
        generate_series(small, series(), start_sequence=0)


def test_generate_series_refuses_more_than_the_series_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("processor.cards.series_cards_max", 2)
    with pytest.raises(ValueError, match="has 3 cards, more than 2"):
        generate_series(definition(), series())


def test_series_cards_max_is_ten_million() -> None:
    assert card_model.series_cards_max == 10_000_000


def test_iter_series_generates_lazily() -> None:
    cards = iter_series(definition(), series())
    assert next(cards).number == "6001200000000010"


def test_first_sequences_lay_generated_series_end_to_end() -> None:
    layout = [
        series(id="a"),
        series(id="b", import_file="b.csv", total_cards=None),
        series(id="c"),
    ]
    assert first_sequences(layout) == [1, None, 4]
    assert first_sequences(layout, start=100) == [100, None, 103]


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=5),
    start=st.integers(min_value=1, max_value=10**9),
)
def test_generated_series_numbers_are_unique_and_luhn_valid(counts: list[int], start: int) -> None:
    one = series(
        total_cards=sum(counts),
        batches=[{"name": f"b{index}", "count": count} for index, count in enumerate(counts)],
    )
    cards = generate_series(definition(), one, start_sequence=start)
    numbers = [card.number for card in cards]
    assert len(numbers) == sum(counts)
    assert len(set(numbers)) == len(numbers)
    assert all(luhn.is_valid(number) for number in numbers)
    assert [card.batch for card in cards] == [
        f"b{index}" for index, count in enumerate(counts) for _ in range(count)
    ]

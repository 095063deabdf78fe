"""The card import file: the manual's layout, its validation rules and its limits."""

from __future__ import annotations

import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.cards import IMPORT_FIELDS, ImportedCard, import_rows_max, read_card_import
from processor.errors import InputFileError, Problem
from processor.program.cards import CardDefinition

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "cards"
MANUAL_LINE = '1234567890123456,123456,10,20,30,CARD_REDEMPTION_INFO,"Redeemed Solon, OH",,,,,,,'
EMPTY_ATTRIBUTES = ",,,,,,,,,"


def definition(**changes: Any) -> CardDefinition:
    fields: dict[str, Any] = {"type": "Gift Card", "serial_prefix": "60012"}
    fields.update(changes)
    return CardDefinition.model_validate(fields)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cards.csv"
    path.write_text(text, encoding="utf-8")
    return path


def read(path: Path, card: CardDefinition | None = None, **options: Any) -> list[ImportedCard]:
    settings: dict[str, Any] = {"currency": "USD", "points_precision": 0}
    settings.update(options)
    return read_card_import(path, card or definition(), **settings)


def problems(path: Path, card: CardDefinition | None = None, **options: Any) -> list[Problem]:
    with pytest.raises(InputFileError) as error:
        read(path, card, **options)
    assert error.value.file == str(path)
    return error.value.problems


def line(number: str = "6001200000000010", pin: str = "", balances: str = ",,") -> str:
    return f"{number},{pin},{balances},{EMPTY_ATTRIBUTES}\n"


# --------------------------------------------------------------------------- the layout


def test_the_manual_example_line_parses(tmp_path: Path) -> None:
    card = definition(serial_prefix="12345", generate_pin=True, pin_length=6)
    cards = read(write(tmp_path, MANUAL_LINE + "\n"), card)
    assert cards == [
        ImportedCard(
            number="1234567890123456",
            pin="123456",
            tender_balance=1000,
            loyalty_balance=20,
            award_balance=3000,
            attributes=(("CARD_REDEMPTION_INFO", "Redeemed Solon, OH"),),
            activate=True,
        )
    ]


def test_the_layout_has_fifteen_named_fields() -> None:
    assert IMPORT_FIELDS[:5] == (
        "CARD_NUMBER",
        "CARD_PIN_NUMBER",
        "TENDER_BALANCE",
        "LOYALTY_BALANCE",
        "AWARD_BALANCE",
    )
    assert IMPORT_FIELDS[5:7] == ("ATTRIBUTE_NAME_1", "ATTRIBUTE_VALUE_1")
    assert IMPORT_FIELDS[-1] == "ATTRIBUTE_VALUE_5"
    assert len(IMPORT_FIELDS) == 15


def test_the_demo_import_file_is_valid() -> None:
    cards = read(EXAMPLES / "demo_import.csv", definition(generate_pin=True, pin_length=4))
    assert cards == [
        ImportedCard(
            "6001200009000011",
            None,
            2500,
            100,
            None,
            (("CARD_REDEMPTION_INFO", "Redeemed Solon, OH"),),
            True,
        ),
        ImportedCard(
            "6001200009000029",
            None,
            1000,
            None,
            550,
            (("CARD_REDEMPTION_INFO", "Redeemed Akron, OH"), ("CAMPAIGN", "SPRING")),
            True,
        ),
        ImportedCard("6001200009000037", None, None, 250, None, (("CAMPAIGN", "SPRING"),), True),
        ImportedCard("6001200009000045", None, None, None, None, (), False),
        ImportedCard("60012777", None, 0, None, None, (("LEGACY_SYSTEM", "POS-7"),), True),
    ]


def test_a_header_line_is_skipped_only_as_the_first_line(tmp_path: Path) -> None:
    header = ",".join(IMPORT_FIELDS) + "\n"
    assert [card.number for card in read(write(tmp_path, header + line()))] == ["6001200000000010"]
    assert problems(write(tmp_path, line() + header)) == [
        Problem("line 2, CARD_NUMBER", "'CARD_NUMBER' is not all digits"),
        Problem("line 2, CARD_PIN_NUMBER", "is given but the card definition has no PINs"),
        Problem("line 2, TENDER_BALANCE", "'TENDER_BALANCE' is not a number"),
        Problem("line 2, LOYALTY_BALANCE", "'LOYALTY_BALANCE' is not a number"),
        Problem("line 2, AWARD_BALANCE", "'AWARD_BALANCE' is not a number"),
    ]


def test_blank_lines_and_surrounding_spaces_are_ignored(tmp_path: Path) -> None:
    text = "\n" + line(" 6001200000000010 ", " ", " 5.25 ,, ") + "\n   \n"
    assert read(write(tmp_path, text)) == [
        ImportedCard("6001200000000010", None, 525, None, None, (), True)
    ]


def test_a_line_without_balances_leaves_the_card_inactive(tmp_path: Path) -> None:
    assert read(write(tmp_path, line())) == [
        ImportedCard("6001200000000010", None, None, None, None, (), False)
    ]


def test_a_zero_balance_still_activates(tmp_path: Path) -> None:
    assert read(write(tmp_path, line(balances=",0,")))[0].activate is True


def test_an_inactive_definition_imports_inactive_cards(tmp_path: Path) -> None:
    cards = read(write(tmp_path, line(balances="10,,")), definition(active=False))
    assert cards[0].activate is False
    assert cards[0].tender_balance == 1000


def test_card_numbers_need_not_match_the_definition_length(tmp_path: Path) -> None:
    text = line("600121") + line("6001212345678901234567")
    assert [card.number for card in read(write(tmp_path, text))] == [
        "600121",
        "6001212345678901234567",
    ]


def test_balances_use_the_currency_and_points_precision(tmp_path: Path) -> None:
    path = write(tmp_path, line(balances="12.5,3.25,7"))
    assert problems(path, currency="JPY", points_precision=2) == [
        Problem("line 1, TENDER_BALANCE", "amount in JPY 12.5 has more than 0 decimal places")
    ]
    card = read(write(tmp_path, line(balances="12,3.25,7")), currency="JPY", points_precision=2)[0]
    assert (card.tender_balance, card.loyalty_balance, card.award_balance) == (12, 325, 7)
    card = read(write(tmp_path, line(balances="1.234,3,0.001")), currency="KWD")[0]
    assert (card.tender_balance, card.loyalty_balance, card.award_balance) == (1234, 3, 1)


def test_a_path_may_be_given_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, line())
    cards = read_card_import(str(path), definition(), currency="USD", points_precision=0)
    assert [card.number for card in cards] == ["6001200000000010"]


def test_a_quoted_value_may_span_lines_and_later_lines_keep_their_numbers(
    tmp_path: Path,
) -> None:
    text = '6001200000000010,,,,,NOTE,"two\nlines",,,,,,,,\n60012x,,,,,' + EMPTY_ATTRIBUTES + "\n"
    assert problems(write(tmp_path, text)) == [
        Problem("line 3, CARD_NUMBER", "'60012x' is not all digits")
    ]


# --------------------------------------------------------------------------- card numbers


def test_missing_card_number_is_a_problem(tmp_path: Path) -> None:
    assert problems(write(tmp_path, line(""))) == [Problem("line 1, CARD_NUMBER", "is required")]


@pytest.mark.parametrize("number", ["60012-0001", "6001２0001", "60012 0001", "-600120001"])
def test_non_digit_card_number_is_a_problem(tmp_path: Path, number: str) -> None:
    assert problems(write(tmp_path, line(number))) == [
        Problem("line 1, CARD_NUMBER", f"{number!r} is not all digits")
    ]


@pytest.mark.parametrize("number", ["60013000000001", "6001", "16001200000001"])
def test_card_number_without_the_definition_prefix_is_a_problem(
    tmp_path: Path, number: str
) -> None:
    assert problems(write(tmp_path, line(number))) == [
        Problem("line 1, CARD_NUMBER", f"{number} does not start with the prefix 60012")
    ]


def test_a_card_number_that_is_only_the_prefix_is_a_problem(tmp_path: Path) -> None:
    assert problems(write(tmp_path, line("60012"))) == [
        Problem("line 1, CARD_NUMBER", "60012 is only the prefix, with no card digits")
    ]


def test_overlong_card_number_is_a_problem(tmp_path: Path) -> None:
    assert problems(write(tmp_path, line("60012" + "0" * 28))) == [
        Problem("line 1, CARD_NUMBER", "has more than 32 digits")
    ]


def test_duplicate_card_numbers_within_the_file_are_problems(tmp_path: Path) -> None:
    text = line("600121") + line("600122") + line("600121") + line("600121")
    assert problems(write(tmp_path, text)) == [
        Problem("line 3, CARD_NUMBER", "duplicate of line 1"),
        Problem("line 4, CARD_NUMBER", "duplicate of line 1"),
    ]


def test_card_numbers_already_in_the_database_are_problems(tmp_path: Path) -> None:
    path = write(tmp_path, line("600121") + line("600122"))
    assert problems(path, existing={"600122", "600999"}) == [
        Problem("line 2, CARD_NUMBER", "card 600122 already exists")
    ]


# --------------------------------------------------------------------------- PINs


def test_pins_must_have_the_definition_length(tmp_path: Path) -> None:
    card = definition(generate_pin=True, pin_length=4)
    assert read(write(tmp_path, line(pin="0042")), card)[0].pin == "0042"
    assert problems(write(tmp_path, line(pin="042")), card) == [
        Problem("line 1, CARD_PIN_NUMBER", "has 3 digits, the definition's PINs have 4")
    ]


def test_pins_must_be_digits(tmp_path: Path) -> None:
    card = definition(generate_pin=True, pin_length=4)
    assert problems(write(tmp_path, line(pin="12a4")), card) == [
        Problem("line 1, CARD_PIN_NUMBER", "is not all digits")
    ]


def test_a_missing_pin_is_left_for_the_definition_to_generate(tmp_path: Path) -> None:
    card = definition(generate_pin=True, pin_length=4)
    assert read(write(tmp_path, line()), card)[0].pin is None


def test_a_pin_for_a_definition_without_pins_is_a_problem(tmp_path: Path) -> None:
    assert problems(write(tmp_path, line(pin="1234"))) == [
        Problem("line 1, CARD_PIN_NUMBER", "is given but the card definition has no PINs")
    ]


# --------------------------------------------------------------------------- balances


@pytest.mark.parametrize(
    ("balances", "field", "reason"),
    [
        ("ten,,", "TENDER_BALANCE", "'ten' is not a number"),
        (",1e3,", "LOYALTY_BALANCE", "'1e3' is not a number"),
        (",,NaN", "AWARD_BALANCE", "'NaN' is not a number"),
        ("1_000,,", "TENDER_BALANCE", "'1_000' is not a number"),
        ("+5,,", "TENDER_BALANCE", "'+5' is not a number"),
        ("5.,,", "TENDER_BALANCE", "'5.' is not a number"),
        (".5,,", "TENDER_BALANCE", "'.5' is not a number"),
        ("-5,,", "TENDER_BALANCE", "-5 is negative"),
        (",-0.5,", "LOYALTY_BALANCE", "-0.5 is negative"),
        ("1.001,,", "TENDER_BALANCE", "amount in USD 1.001 has more than 2 decimal places"),
        (",1.5,", "LOYALTY_BALANCE", "points 1.5 has more than 0 decimal places"),
        (",,0.125", "AWARD_BALANCE", "amount in USD 0.125 has more than 2 decimal places"),
        (
            "10000000000000.01,,",
            "TENDER_BALANCE",
            "10000000000000.01 is larger than the ledger holds",
        ),
    ],
)
def test_invalid_balances_are_problems(
    tmp_path: Path, balances: str, field: str, reason: str
) -> None:
    assert problems(write(tmp_path, line(balances=balances))) == [
        Problem(f"line 1, {field}", reason)
    ]


def test_the_largest_balance_the_ledger_holds_is_accepted(tmp_path: Path) -> None:
    card = read(write(tmp_path, line(balances="10000000000000.00,,")))[0]
    assert card.tender_balance == 10**15


# --------------------------------------------------------------------------- attributes


def attribute_line(*pairs: str) -> str:
    fields = ["6001200000000010", "", "", "", "", *pairs]
    fields += [""] * (len(IMPORT_FIELDS) - len(fields))
    return ",".join(fields) + "\n"


def test_five_attribute_pairs_are_read_in_order(tmp_path: Path) -> None:
    pairs = [part for number in range(1, 6) for part in (f"A{number}", f"v{number}")]
    card = read(write(tmp_path, attribute_line(*pairs)))[0]
    assert card.attributes == tuple((f"A{number}", f"v{number}") for number in range(1, 6))


def test_an_attribute_pair_may_skip_a_slot(tmp_path: Path) -> None:
    card = read(write(tmp_path, attribute_line("", "", "A2", "v2")))[0]
    assert card.attributes == (("A2", "v2"),)


def test_attribute_name_without_value_is_a_problem(tmp_path: Path) -> None:
    assert problems(write(tmp_path, attribute_line("A1", "v1", "A2", ""))) == [
        Problem("line 1, ATTRIBUTE_VALUE_2", "is required when ATTRIBUTE_NAME_2 is given")
    ]


def test_attribute_value_without_name_is_a_problem(tmp_path: Path) -> None:
    assert problems(write(tmp_path, attribute_line("", "", "", "", "", "v3"))) == [
        Problem("line 1, ATTRIBUTE_NAME_3", "is required when ATTRIBUTE_VALUE_3 is given")
    ]


def test_invalid_attribute_name_is_a_problem(tmp_path: Path) -> None:
    assert problems(write(tmp_path, attribute_line("Card Info", "x"))) == [
        Problem("line 1, ATTRIBUTE_NAME_1", "'Card Info' is not a valid attribute name")
    ]


def test_duplicate_attribute_name_in_a_line_is_a_problem(tmp_path: Path) -> None:
    assert problems(write(tmp_path, attribute_line("A", "1", "B", "2", "A", "3"))) == [
        Problem("line 1, ATTRIBUTE_NAME_3", "duplicate of ATTRIBUTE_NAME_1")
    ]


def test_overlong_attribute_value_is_a_problem(tmp_path: Path) -> None:
    assert problems(write(tmp_path, attribute_line("A", "x" * 501))) == [
        Problem("line 1, ATTRIBUTE_VALUE_1", "is longer than 500 characters")
    ]


def test_attribute_name_5_needs_its_value_even_when_the_last_field_is_left_off(
    tmp_path: Path,
) -> None:
    text = "6001200000000010,,,,,,,,,,,,,A5\n"
    assert problems(write(tmp_path, text)) == [
        Problem("line 1, ATTRIBUTE_VALUE_5", "is required when ATTRIBUTE_NAME_5 is given")
    ]


# --------------------------------------------------------------------------- the file


@pytest.mark.parametrize("count", [1, 5, 13, 16])
def test_wrong_field_count_is_a_problem(tmp_path: Path, count: int) -> None:
    text = ",".join(["6001200000000010"] + [""] * (count - 1)) + "\n"
    assert problems(write(tmp_path, text)) == [
        Problem("line 1", f"has {count} fields, expected 15 (keep empty placeholders)")
    ]


def test_every_problem_of_every_line_is_reported(tmp_path: Path) -> None:
    text = (
        line("600121", pin="77", balances="x,-1,")
        + "600122,,\n"
        + line("600121")
        + line("70012", balances=",,1.005")
    )
    assert problems(write(tmp_path, text), existing={"9"}) == [
        Problem("line 1, CARD_PIN_NUMBER", "is given but the card definition has no PINs"),
        Problem("line 1, TENDER_BALANCE", "'x' is not a number"),
        Problem("line 1, LOYALTY_BALANCE", "-1 is negative"),
        Problem("line 2", "has 3 fields, expected 15 (keep empty placeholders)"),
        Problem("line 3, CARD_NUMBER", "duplicate of line 1"),
        Problem("line 4, CARD_NUMBER", "70012 does not start with the prefix 60012"),
        Problem("line 4, AWARD_BALANCE", "amount in USD 1.005 has more than 2 decimal places"),
    ]


def test_the_error_message_names_the_file_and_each_problem(tmp_path: Path) -> None:
    path = write(tmp_path, line(""))
    with pytest.raises(InputFileError) as error:
        read(path)
    assert str(error.value) == f"{path}: line 1, CARD_NUMBER: is required"
    assert error.value.reason == "INVALID_FILE"


@pytest.mark.parametrize("text", ["", "\n\n", ",".join(IMPORT_FIELDS) + "\n"])
def test_a_file_without_cards_is_a_problem(tmp_path: Path, text: str) -> None:
    assert problems(write(tmp_path, text)) == [Problem("", "lists no cards")]


def test_a_missing_file_is_an_input_file_error(tmp_path: Path) -> None:
    assert problems(tmp_path / "absent.csv") == [
        Problem("", "cannot be read: No such file or directory")
    ]


def test_a_directory_is_an_input_file_error(tmp_path: Path) -> None:
    assert problems(tmp_path) == [Problem("", "cannot be read: Is a directory")]


def test_a_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "cards.csv"
    path.write_bytes(b"600121,,,,,NAME,caf\xe9" + b"," * 8 + b"\n")
    assert problems(path) == [Problem("", "is not UTF-8 text")]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "cards.csv"
    path.write_bytes(b"\xef\xbb\xbf" + line().encode())
    assert [card.number for card in read(path)] == ["6001200000000010"]


def test_broken_csv_quoting_is_a_problem(tmp_path: Path) -> None:
    text = line("600121") + '600122,,,,,A,"open"x,,,,,,,,\n'
    assert problems(write(tmp_path, text)) == [
        Problem("line 2", "is not valid CSV: ',' expected after '\"'")
    ]


def test_more_cards_than_the_limit_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("processor.cards.import_rows_max", 2)
    text = line("600121") + line("600122") + line("600123") + line("600124")
    assert problems(write(tmp_path, text)) == [Problem("line 3", "more than 2 cards")]


def test_import_rows_max_is_one_million() -> None:
    assert import_rows_max == 1_000_000


def test_unknown_currency_or_negative_precision_is_the_callers_mistake(tmp_path: Path) -> None:
    path = write(tmp_path, line())
    with pytest.raises(ValueError, match="unknown currency"):
        read(path, currency="XYZ")
    with pytest.raises(ValueError, match="negative"):
        read(path, points_precision=-1)


# --------------------------------------------------------------------------- property


@given(
    amounts=st.lists(
        st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=20,
    )
)
def test_tender_balances_round_trip_exactly_as_cents(amounts: list[Decimal]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "cards.csv"
        text = "".join(
            line(f"60012{index:06d}", balances=f"{amount:f},,")
            for index, amount in enumerate(amounts)
        )
        path.write_text(text, encoding="utf-8")
        cards = read(path)
    assert [card.tender_balance for card in cards] == [int(amount * 100) for amount in amounts]
    assert all(card.activate for card in cards)

"""Cards: numbers, PINs, generated series, imported series and PIN checks.

A generated card number is the definition's serial prefix, a zero-padded
sequence number and a Luhn check digit, so that a mistyped number is caught at
the till. PINs are random (``secrets``); generating them is outside the
deterministic engine, which only learns whether the service verified one.
"""

from __future__ import annotations

import csv
import re
import secrets
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from stdnum import luhn

from processor.errors import InputFileError, Problem
from processor.limits import BALANCE_UNITS_MAX, CARD_DIGITS_MAX, IDENTIFIER_CHARS_MAX
from processor.money import currency_exponent, to_minor, to_points
from processor.program.cards import (
    CardDefinition,
    CardSeries,
    attribute_value_chars_max,
    series_cards_max,
)

PIN_REQUIRED = "PIN_REQUIRED"
"""The decline reason when a card's definition needs a PIN and none was verified."""

import_rows_max = 1_000_000
"""Most cards one import file may list."""

import_attributes_max = 5
"""Attribute name/value pairs in each line of the manual's import layout."""

IMPORT_FIELDS: tuple[str, ...] = (
    "CARD_NUMBER",
    "CARD_PIN_NUMBER",
    "TENDER_BALANCE",
    "LOYALTY_BALANCE",
    "AWARD_BALANCE",
    *(
        f"ATTRIBUTE_{part}_{number}"
        for number in range(1, import_attributes_max + 1)
        for part in ("NAME", "VALUE")
    ),
)
"""The manual's import layout, in order; every line has exactly these fields."""

_DIGITS = re.compile(r"[0-9]+")
_AMOUNT = re.compile(r"[0-9]+(\.[0-9]+)?")
_ATTRIBUTE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{IDENTIFIER_CHARS_MAX - 1}}}")


def pin_problem(definition: CardDefinition | None, card_present: bool, pin_verified: bool) -> str:
    """``PIN_REQUIRED`` when the definition demands a PIN that was not verified, else "".

    A card without a definition never needs a PIN.
    """
    if definition is None or pin_verified:
        return ""
    if definition.pin_required_always:
        return PIN_REQUIRED
    if definition.pin_required_without_card and not card_present:
        return PIN_REQUIRED
    return ""


# --------------------------------------------------------------------------- generated cards


@dataclass(frozen=True, slots=True)
class GeneratedCard:
    """One card of a generated series: its number, PIN (if any) and batch."""

    number: str
    pin: str | None
    batch: str
    active: bool


def card_number(prefix: str, sequence: int, length: int = 16) -> str:
    """``prefix``, ``sequence`` zero-padded to fill ``length``, and a Luhn check digit."""
    if not _DIGITS.fullmatch(prefix):
        raise ValueError(f"card number prefix {prefix!r} is not all digits")
    digits = length - len(prefix) - 1
    if digits < 1:
        raise ValueError(f"length {length} leaves no room for a sequence after {prefix!r}")
    if not 0 <= sequence < 10**digits:
        raise ValueError(f"sequence {sequence} does not fit in {digits} digits")
    body = f"{prefix}{sequence:0{digits}d}"
    return body + luhn.calc_check_digit(body)


def random_pin(length: int) -> str:
    """A uniformly random PIN of ``length`` digits, from the operating system's CSPRNG."""
    if length < 1:
        raise ValueError(f"PIN length {length} must be at least 1")
    return f"{secrets.randbelow(10**length):0{length}d}"


def first_sequences(series: Sequence[CardSeries], start: int = 1) -> list[int | None]:
    """The first sequence number of each generated series, so that none overlap.

    Series are laid out one after another in program-file order; an imported
    series takes no sequence numbers and gets None.
    """
    firsts: list[int | None] = []
    for one in series:
        if one.import_file is not None or one.total_cards is None:
            firsts.append(None)
            continue
        firsts.append(start)
        start += one.total_cards
    return firsts


def iter_series(
    definition: CardDefinition, series: CardSeries, start_sequence: int = 1
) -> Iterator[GeneratedCard]:
    """The cards of a generated series, batch by batch, one at a time.

    A card is active on creation when its batch says so and the definition is
    active: an inactive definition issues only inactive cards.
    """
    _check_generated(definition, series, start_sequence)
    sequence = start_sequence
    for batch in series.batches:
        active = definition.active and batch.activate
        for _ in range(batch.count):
            number = card_number(definition.serial_prefix, sequence, definition.number_length)
            pin = random_pin(definition.pin_length) if definition.has_pins else None
            yield GeneratedCard(number, pin, batch.name, active)
            sequence += 1


def generate_series(
    definition: CardDefinition, series: CardSeries, start_sequence: int = 1
) -> list[GeneratedCard]:
    """Every card of a generated series (see ``iter_series``)."""
    return list(iter_series(definition, series, start_sequence))


def _check_generated(definition: CardDefinition, series: CardSeries, start_sequence: int) -> None:
    if series.import_file is not None:
        raise ValueError(f"series {series.id!r} takes its cards from {series.import_file!r}")
    total = series.batch_total
    if total > series_cards_max:
        raise ValueError(f"series {series.id!r} has {total} cards, more than {series_cards_max}")
    if start_sequence < 1 or start_sequence + total - 1 > definition.sequence_capacity:
        raise ValueError(
            f"sequences {start_sequence}..{start_sequence + total - 1} of series {series.id!r} "
            f"do not fit in 1..{definition.sequence_capacity}"
        )


# --------------------------------------------------------------------------- imported cards


@dataclass(frozen=True, slots=True)
class ImportedCard:
    """One line of a card import file, converted to integer units.

    Balances are minor units of the program currency (tender and award value)
    or point units (loyalty); None where the file left them empty.
    """

    number: str
    pin: str | None
    tender_balance: int | None
    loyalty_balance: int | None
    award_balance: int | None
    attributes: tuple[tuple[str, str], ...]
    activate: bool


@dataclass(slots=True)
class _ImportContext:
    definition: CardDefinition
    currency: str
    points_precision: int
    existing: Container[str]
    seen: dict[str, int]
    problems: list[Problem]


def read_card_import(
    path: str | Path,
    definition: CardDefinition,
    *,
    currency: str,
    points_precision: int,
    existing: Container[str] = frozenset(),
) -> list[ImportedCard]:
    """The cards of an import file in the manual's layout, or every problem it has.

    Each line is ``CARD_NUMBER,CARD_PIN_NUMBER,tender,loyalty,award`` and five
    attribute name/value pairs, empty fields kept as placeholders (the very last
    one may be left off, as in the manual's own example). A first line
    starting with ``CARD_NUMBER`` is a header; blank lines are ignored and
    surrounding spaces in a field are not significant. A card is activated on
    creation when any balance is given and the definition is active.
    Raises InputFileError listing every problem found, and ValueError for an
    unknown ``currency`` or a negative ``points_precision`` (the caller's mistakes).
    """
    currency_exponent(currency)
    if points_precision < 0:
        raise ValueError(f"points precision {points_precision} is negative")
    name = str(path)
    context = _ImportContext(definition, currency, points_precision, existing, {}, [])
    cards: list[ImportedCard] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for line, row in _rows(handle, context):
                card = _card(line, row, context)
                if card is not None:
                    cards.append(card)
    except OSError as error:
        reason = f"cannot be read: {error.strerror or error}"
        raise InputFileError(name, [Problem("", reason)]) from None
    except UnicodeDecodeError:
        context.problems.append(Problem("", "is not UTF-8 text"))
    if not cards and not context.problems:
        context.problems.append(Problem("", "lists no cards"))
    if context.problems:
        raise InputFileError(name, context.problems)
    return cards


def _rows(handle: Iterable[str], context: _ImportContext) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records with the line each starts on, header skipped, bounded."""
    reader = csv.reader(handle, strict=True)
    line_end = 0
    count = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            reason = f"is not valid CSV: {error}"
            context.problems.append(Problem(f"line {reader.line_num}", reason))
            return
        line, line_end = line_end + 1, reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if line == 1 and row[0].strip().upper() == IMPORT_FIELDS[0]:
            continue
        count += 1
        if count > import_rows_max:
            context.problems.append(Problem(f"line {line}", f"more than {import_rows_max} cards"))
            return
        yield line, row


def _card(line: int, row: list[str], context: _ImportContext) -> ImportedCard | None:
    """The card of one record, or None after recording its problems.

    The last field, ATTRIBUTE_VALUE_5, may be left off entirely: the manual's
    own example line has one placeholder fewer than its field list.
    """
    if len(row) == len(IMPORT_FIELDS) - 1:
        row = [*row, ""]
    if len(row) != len(IMPORT_FIELDS):
        reason = f"has {len(row)} fields, expected {len(IMPORT_FIELDS)} (keep empty placeholders)"
        context.problems.append(Problem(f"line {line}", reason))
        return None
    fields = dict(zip(IMPORT_FIELDS, (value.strip() for value in row), strict=True))
    before = len(context.problems)
    number = _number(line, fields["CARD_NUMBER"], context)
    pin = _pin(line, fields["CARD_PIN_NUMBER"], context)
    tender = _amount(line, "TENDER_BALANCE", fields, context, points=False)
    loyalty = _amount(line, "LOYALTY_BALANCE", fields, context, points=True)
    award = _amount(line, "AWARD_BALANCE", fields, context, points=False)
    attributes = _attributes(line, fields, context)
    if len(context.problems) > before:
        return None
    given = (tender, loyalty, award)
    activate = context.definition.active and any(value is not None for value in given)
    return ImportedCard(number, pin, tender, loyalty, award, attributes, activate)


def _problem(context: _ImportContext, line: int, field: str, reason: str) -> None:
    context.problems.append(Problem(f"line {line}, {field}", reason))


def _number(line: int, number: str, context: _ImportContext) -> str:
    field = "CARD_NUMBER"
    prefix = context.definition.serial_prefix
    if not number:
        _problem(context, line, field, "is required")
    elif not _DIGITS.fullmatch(number):
        _problem(context, line, field, f"{number!r} is not all digits")
    elif len(number) > CARD_DIGITS_MAX:
        _problem(context, line, field, f"has more than {CARD_DIGITS_MAX} digits")
    elif not number.startswith(prefix):
        _problem(context, line, field, f"{number} does not start with the prefix {prefix}")
    elif len(number) == len(prefix):
        _problem(context, line, field, f"{number} is only the prefix, with no card digits")
    elif number in context.seen:
        _problem(context, line, field, f"duplicate of line {context.seen[number]}")
    elif number in context.existing:
        _problem(context, line, field, f"card {number} already exists")
    else:
        context.seen[number] = line
    return number


def _pin(line: int, pin: str, context: _ImportContext) -> str | None:
    field = "CARD_PIN_NUMBER"
    length = context.definition.pin_length
    if not pin:
        return None
    if not context.definition.has_pins:
        _problem(context, line, field, "is given but the card definition has no PINs")
    elif not _DIGITS.fullmatch(pin):
        _problem(context, line, field, "is not all digits")
    elif len(pin) != length:
        reason = f"has {len(pin)} digits, the definition's PINs have {length}"
        _problem(context, line, field, reason)
    return pin


def _amount(
    line: int, field: str, fields: dict[str, str], context: _ImportContext, *, points: bool
) -> int | None:
    text = fields[field]
    if not text:
        return None
    if text.startswith("-") and _AMOUNT.fullmatch(text[1:]):
        _problem(context, line, field, f"{text} is negative")
        return None
    if not _AMOUNT.fullmatch(text):
        _problem(context, line, field, f"{text!r} is not a number")
        return None
    try:
        if points:
            units = to_points(text, context.points_precision)
        else:
            units = to_minor(text, context.currency)
    except ValueError as error:
        _problem(context, line, field, str(error))
        return None
    if units > BALANCE_UNITS_MAX:
        _problem(context, line, field, f"{text} is larger than the ledger holds")
        return None
    return units


def _attributes(
    line: int, fields: dict[str, str], context: _ImportContext
) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    first: dict[str, int] = {}
    for number in range(1, import_attributes_max + 1):
        name_field, value_field = f"ATTRIBUTE_NAME_{number}", f"ATTRIBUTE_VALUE_{number}"
        name, value = fields[name_field], fields[value_field]
        if not name and not value:
            continue
        if not name:
            _problem(context, line, name_field, f"is required when {value_field} is given")
        elif not value:
            _problem(context, line, value_field, f"is required when {name_field} is given")
        elif not _ATTRIBUTE_NAME.fullmatch(name):
            _problem(context, line, name_field, f"{name!r} is not a valid attribute name")
        elif name in first:
            _problem(context, line, name_field, f"duplicate of ATTRIBUTE_NAME_{first[name]}")
        elif len(value) > attribute_value_chars_max:
            reason = f"is longer than {attribute_value_chars_max} characters"
            _problem(context, line, value_field, reason)
        else:
            first[name] = number
            pairs.append((name, value))
    return tuple(pairs)

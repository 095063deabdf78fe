"""The card model: a card definition and the card series issued under it.

A card definition says what the cards of a program look like (number prefix
and length, PINs, supplier, image); a card series is one distribution of cards
under that definition, split into batches that can be activated separately,
whose numbers are either generated or imported from a file.

Rules that span fields are methods named ``problems`` returning every problem
with its dotted path, so that a loader can report them all in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field

from processor.errors import Problem
from processor.limits import (
    CARD_DIGITS_MIN,
    CARD_SERIAL_PREFIX_DIGITS,
    GENERATED_CARD_DIGITS_MAX,
    PIN_DIGITS_MAX,
    TEXT_CHARS_MAX,
)
from processor.program.base import Day, Identifier, Model, Period

series_cards_max = 10_000_000
"""Most cards one series may hold, so that generating a series stays bounded."""

series_batches_max = 1_000
"""Most batches one series may be split into."""

attribute_value_chars_max = 500
"""Longest value of a card or series attribute."""

AttributeValue = Annotated[str, Field(max_length=attribute_value_chars_max)]
Text = Annotated[str, Field(max_length=TEXT_CHARS_MAX)]
Name = Annotated[str, Field(min_length=1, max_length=TEXT_CHARS_MAX)]


class CardSupplier(Model):
    """Who supplies the physical cards, and how to reach them."""

    name: Name
    address_line_1: Text = ""
    address_line_2: Text = ""
    address_line_3: Text = ""
    city: Text = ""
    state: Text = ""
    postal_code: Text = ""
    country: Text = ""
    phone: str = Field(default="", max_length=40, pattern=r"^[0-9+() .-]*$")


class CardDefinition(Model):
    """What every card of a program looks like: the manual's Card Definition tab.

    ``number_length`` is the length of the numbers this definition generates;
    imported numbers need only share the prefix, not the length.
    """

    type: Name
    description: Text = ""
    serial_prefix: str = Field(pattern=rf"^[0-9]{{{CARD_SERIAL_PREFIX_DIGITS}}}$")
    number_length: int = Field(default=16, ge=CARD_DIGITS_MIN, le=GENERATED_CARD_DIGITS_MAX)
    active: bool = True
    generate_pin: bool = False
    pin_length: int = Field(default=0, ge=0, le=PIN_DIGITS_MAX)
    pin_required_always: bool = False
    pin_required_without_card: bool = False
    supplier: CardSupplier | None = None
    image_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://\S+$")
    attributes: dict[Identifier, AttributeValue] = Field(default_factory=dict)

    @property
    def has_pins(self) -> bool:
        """Whether cards of this definition carry PINs at all."""
        return self.generate_pin and self.pin_length > 0

    @property
    def sequence_digits(self) -> int:
        """Digits between the prefix and the check digit of a generated number."""
        return self.number_length - len(self.serial_prefix) - 1

    @property
    def sequence_capacity(self) -> int:
        """How many numbers this definition can generate, sequences starting at 1."""
        return int(10**self.sequence_digits) - 1

    def problems(self, path: str) -> list[Problem]:
        """Every inconsistency among the PIN options (they only mean something with PINs)."""
        found = []
        if self.generate_pin and self.pin_length == 0:
            reason = "must be at least 1 when generate_pin is on"
            found.append(Problem(f"{path}.pin_length", reason))
        if not self.generate_pin and self.pin_length > 0:
            found.append(Problem(f"{path}.pin_length", "is set but generate_pin is off"))
        for name in ("pin_required_always", "pin_required_without_card"):
            if not getattr(self, name):
                continue
            if not self.generate_pin:
                found.append(Problem(f"{path}.{name}", "requires generate_pin"))
            elif self.pin_length == 0:
                found.append(Problem(f"{path}.{name}", "requires a pin_length of at least 1"))
        return found


class CardBatch(Model):
    """A part of a series that is activated (or not) together."""

    name: Name
    description: Text = ""
    count: int = Field(ge=1, le=series_cards_max)
    activate: bool = False


class CardSeries(Model):
    """One distribution of cards under a definition: the manual's Card Series tab.

    ``generate`` creates every number when the program is created; otherwise
    numbers are generated one by one on demand. ``total_cards`` may be left out
    only when ``import_file`` lists the cards, as the manual fills it in then.
    Cards expire either ``expire_after`` their activation (``relative``) or on
    ``expiry_end`` (``fixed``, valid from ``expiry_start``); without an
    ``expiry_type`` they do not expire.
    """

    id: Identifier
    name: Name
    description: Text = ""
    generate: bool = False
    expiry_type: Literal["relative", "fixed"] | None = None
    expire_after: Period | None = None
    expiry_start: Day | None = None
    expiry_end: Day | None = None
    total_cards: int | None = Field(default=None, ge=1, le=series_cards_max)
    batches: list[CardBatch] = Field(min_length=1, max_length=series_batches_max)
    import_file: str | None = Field(default=None, min_length=1)
    attributes: dict[Identifier, AttributeValue] = Field(default_factory=dict)

    def expires_day(self, activated_day: int) -> int | None:
        """The last day a card of this series activated on ``activated_day`` is usable."""
        if self.expiry_type == "relative" and self.expire_after is not None:
            return self.expire_after.after(activated_day)
        if self.expiry_type == "fixed":
            return self.expiry_end
        return None

    def batch_at(self, index: int) -> CardBatch:
        """The batch holding the ``index``-th card (from 0) of the series."""
        if index >= 0:
            for batch in self.batches:
                if index < batch.count:
                    return batch
                index -= batch.count
        raise IndexError(f"series {self.id!r} has no card at index {index}")

    @property
    def batch_total(self) -> int:
        return sum(batch.count for batch in self.batches)

    def problems(self, path: str) -> list[Problem]:
        """Every inconsistency within the series."""
        return [
            *self._expiry_problems(path),
            *self._source_problems(path),
            *self._batch_problems(path),
        ]

    def count_problems(self, card_count: int, path: str) -> list[Problem]:
        """Whether ``card_count`` cards read from the import file fit the series."""
        if self.total_cards is not None:
            if self.total_cards == card_count:
                return []
            reason = f"is {self.total_cards} but the import file lists {card_count} cards"
            return [Problem(f"{path}.total_cards", reason)]
        if self.batch_total == card_count:
            return []
        reason = f"batch counts sum to {self.batch_total}, the import file lists {card_count}"
        return [Problem(f"{path}.batches", reason)]

    def _expiry_problems(self, path: str) -> list[Problem]:
        wanted = {
            "expire_after": self.expiry_type == "relative",
            "expiry_start": self.expiry_type == "fixed",
            "expiry_end": self.expiry_type == "fixed",
        }
        kind = f"expiry_type {self.expiry_type}" if self.expiry_type else "no expiry_type"
        found = []
        for name, needed in wanted.items():
            given = getattr(self, name) is not None
            if needed and not given:
                found.append(Problem(f"{path}.{name}", f"is required with {kind}"))
            elif given and not needed:
                found.append(Problem(f"{path}.{name}", f"is not used with {kind}"))
        if (
            self.expiry_start is not None
            and self.expiry_end is not None
            and self.expiry_end < self.expiry_start
        ):
            found.append(Problem(f"{path}.expiry_end", "is before expiry_start"))
        return found

    def _source_problems(self, path: str) -> list[Problem]:
        found = []
        if self.import_file is not None and self.generate:
            reason = "cannot be combined with generate: numbers are either generated or imported"
            found.append(Problem(f"{path}.import_file", reason))
        if self.import_file is None and self.total_cards is None:
            reason = "required unless import_file lists the cards"
            found.append(Problem(f"{path}.total_cards", reason))
        return found

    def _batch_problems(self, path: str) -> list[Problem]:
        found = []
        if self.total_cards is not None and self.batch_total != self.total_cards:
            reason = f"batch counts sum to {self.batch_total}, not total_cards {self.total_cards}"
            found.append(Problem(f"{path}.batches", reason))
        first: dict[str, int] = {}
        for index, batch in enumerate(self.batches):
            if batch.name in first:
                reason = f"duplicate of batches[{first[batch.name]}].name"
                found.append(Problem(f"{path}.batches[{index}].name", reason))
            first.setdefault(batch.name, index)
        return found


def card_problems(
    definition: CardDefinition,
    series: Sequence[CardSeries],
    *,
    definition_path: str,
    series_path: str,
) -> list[Problem]:
    """Every problem of a definition and its series, each with its full path.

    Beyond each part's own rules: series ids are unique, and the generated
    series together fit the definition's number space (imported series use
    numbers of their own and take none of it).
    """
    found = definition.problems(definition_path)
    first: dict[str, int] = {}
    used = 0
    for index, one in enumerate(series):
        path = f"{series_path}[{index}]"
        found.extend(one.problems(path))
        if one.id in first:
            found.append(Problem(f"{path}.id", f"duplicate of {series_path}[{first[one.id]}].id"))
        first.setdefault(one.id, index)
        if one.import_file is None and one.total_cards is not None:
            used += one.total_cards
            if used > definition.sequence_capacity:
                reason = (
                    f"brings the generated cards to {used}, more than the "
                    f"{definition.sequence_capacity} numbers of {definition.number_length} digits "
                    f"with prefix {definition.serial_prefix}"
                )
                found.append(Problem(f"{path}.total_cards", reason))
    return found

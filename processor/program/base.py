"""Building blocks shared by every part of the program model.

The model is written with pydantic: it gives exact field paths in its errors,
rejects unknown fields (``extra="forbid"``) and keeps the model declarative.
Rules that span fields (a movement rule naming an unknown level, windows that
overlap) are checked after parsing by ``processor.program.checks`` so that each
problem names its own path.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from processor import calendar
from processor.limits import IDENTIFIER_CHARS_MAX, TEXT_CHARS_MAX


class Model(BaseModel):
    """Base of every model class: strict about unknown fields, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _day(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return calendar.parse_day(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date (expected YYYY-MM-DD)") from None
    if hasattr(value, "isoformat") and hasattr(value, "year"):
        return calendar.to_day(value)
    return value


def _time_of_day(value: Any) -> Any:
    if isinstance(value, str):
        if value.strip() in ("24:00", "24:00:00"):
            return 86400
        try:
            return calendar.parse_time_of_day(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a time of day (expected HH:MM)") from None
    return value


Day = Annotated[int, BeforeValidator(_day)]
"""A date, written ``YYYY-MM-DD``, held as a day number (see processor.calendar)."""

TimeOfDay = Annotated[int, BeforeValidator(_time_of_day), Field(ge=0, le=86400)]
"""A local time of day, written ``HH:MM``, held as seconds since midnight (24:00 allowed).

An integer is taken as seconds since midnight. The loader reads YAML without
YAML 1.1's base-60 integers, so an unquoted 10:30 is the text "10:30", not 630.
"""

Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
"""A non-negative amount in the program's currency, in major units ("25.00").

Converted to integer minor units when the program is compiled; more decimals
than the currency has is reported by ``processor.program.checks``.
"""

PointsValue = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
"""A non-negative number of points; at most the program's decimal precision."""

Factor = Annotated[Decimal, Field(ge=0, le=1_000_000, allow_inf_nan=False, decimal_places=6)]
"""A multiplier or conversion factor with at most six decimals."""

Identifier = Annotated[
    str,
    Field(min_length=1, max_length=IDENTIFIER_CHARS_MAX, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"),
]
"""An id a program file gives to a program, level, rule or list."""

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_PERIOD_TEXT = re.compile(r"^\s*(\d+)\s*(day|week|month|year)s?\s*$")


class Period(Model):
    """A length of time: ``count`` periods of ``unit``.

    Written ``{count: 3, unit: month}`` or ``"3 months"``.
    """

    count: int = Field(ge=1, le=10_000)
    unit: calendar.PeriodUnit

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _PERIOD_TEXT.match(value)
            if match is None:
                raise ValueError(f"{value!r} is not a period (expected e.g. '3 months')")
            return {"count": int(match.group(1)), "unit": match.group(2)}
        return value

    def after(self, day: int) -> int:
        """The day number this period after ``day``."""
        return calendar.add_period(day, self.count, self.unit)


class DateRange(Model):
    """Start date and optional end date, both inclusive."""

    start_date: Day
    end_date: Day | None = None

    def contains(self, day: int) -> bool:
        return self.start_date <= day and (self.end_date is None or day <= self.end_date)


class ProgramHeader(Model):
    """Fields every program type shares (the manual's "Program Details")."""

    id: Identifier
    name: str = Field(min_length=1, max_length=TEXT_CHARS_MAX)
    description: str = ""
    active: bool = True
    start_date: Day
    end_date: Day | None = None
    currency: str = Field(default="USD", pattern=r"^[A-Za-z]{3}$")
    allow_foreign_currency: bool = False
    card_required: bool = False
    card_merge_permitted: bool = False

    def in_effect(self, day: int) -> bool:
        """Active and within its dates (both inclusive) on ``day``."""
        return (
            self.active
            and self.start_date <= day
            and (self.end_date is None or day <= self.end_date)
        )

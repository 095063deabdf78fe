"""Calendar arithmetic: known dates, negative day numbers, and properties.

Every test runs on the pure-Python reference and on the compiled twin the engine uses;
the properties also hold the two against each other and against ``datetime``.
"""

from __future__ import annotations

import calendar as stdlib_calendar
import datetime as dt
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

import processor.calendar as reference
from processor.calendar import PERIOD_UNITS

EPOCH = dt.date(1970, 1, 1)
YEAR_ZERO_MARCH_1 = -719_468  # 0000-03-01, the first day of Hinnant's era 0
# Years 53 to 9909, and periods from there reach before year 0.
DAY_NUMBERS = st.integers(min_value=-700_000, max_value=2_900_000)
# Every day datetime.date can represent, 0001-01-01 to 9999-12-31.
DATE_DAY_NUMBERS = st.integers(
    min_value=(dt.date.min - EPOCH).days, max_value=(dt.date.max - EPOCH).days
)
UNIT_COUNTS = {
    "day": st.integers(-100_000, 100_000),
    "week": st.integers(-10_000, 10_000),
    "month": st.integers(-1_200, 1_200),
    "year": st.integers(-100, 100),
}
PERIODS = st.sampled_from(PERIOD_UNITS).flatmap(
    lambda unit: st.tuples(UNIT_COUNTS[unit], st.just(unit))
)


def day(year: int, month: int, day_of_month: int) -> int:
    return (dt.date(year, month, day_of_month) - EPOCH).days


# Known dates


@pytest.mark.parametrize(
    ("date", "number"),
    [
        ((1970, 1, 1), 0),
        ((1970, 1, 2), 1),
        ((1969, 12, 31), -1),
        ((2000, 2, 29), 11_016),
        ((2000, 3, 1), 11_017),
        ((1900, 3, 1), -25_508),
        ((1, 1, 1), -719_162),
        ((9999, 12, 31), 2_932_896),
    ],
)
def test_known_day_numbers(calendar_impl: ModuleType, date: tuple[int, int, int], number: int):
    assert number == day(*date)  # the table itself, against datetime
    assert calendar_impl.days_from_civil(*date) == number
    assert calendar_impl.civil_from_days(number) == date


@pytest.mark.parametrize(
    ("year", "leap"), [(2000, True), (1900, False), (2024, True), (2023, False), (2100, False)]
)
def test_leap_years(calendar_impl: ModuleType, year: int, leap: bool):
    assert calendar_impl.is_leap_year(year) is leap
    assert calendar_impl.days_in_month(year, 2) == (29 if leap else 28)


def test_days_in_month(calendar_impl: ModuleType):
    lengths = [calendar_impl.days_in_month(2023, month) for month in range(1, 13)]
    assert lengths == [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


@pytest.mark.parametrize(
    ("start", "count", "unit", "expected"),
    [
        ((2024, 1, 31), 1, "month", (2024, 2, 29)),
        ((2023, 1, 31), 1, "month", (2023, 2, 28)),
        ((2024, 3, 31), -1, "month", (2024, 2, 29)),
        ((2024, 1, 31), 3, "month", (2024, 4, 30)),
        ((2023, 11, 15), 2, "month", (2024, 1, 15)),
        ((2024, 1, 15), -13, "month", (2022, 12, 15)),
        ((2024, 2, 29), 1, "year", (2025, 2, 28)),
        ((2024, 2, 29), 4, "year", (2028, 2, 29)),
        ((2024, 2, 29), -100, "year", (1924, 2, 29)),
        ((2024, 12, 31), 1, "day", (2025, 1, 1)),
        ((2024, 2, 26), 1, "week", (2024, 3, 4)),
        ((1970, 1, 1), -1, "month", (1969, 12, 1)),
        ((1969, 12, 31), 2, "month", (1970, 2, 28)),
    ],
)
def test_add_period_known(
    calendar_impl: ModuleType,
    start: tuple[int, int, int],
    count: int,
    unit: str,
    expected: tuple[int, int, int],
):
    assert calendar_impl.add_period(day(*start), count, unit) == day(*expected)


def test_weekday_of_known_days(calendar_impl: ModuleType):
    assert calendar_impl.weekday(day(2024, 1, 1)) == 0  # a Monday
    assert calendar_impl.weekday(0) == 3  # 1970-01-01, a Thursday
    assert calendar_impl.weekday(day(2024, 6, 16)) == 6  # a Sunday


def test_period_index_known(calendar_impl: ModuleType):
    may_17 = day(2024, 5, 17)
    assert calendar_impl.period_index(may_17, "day") == may_17
    assert calendar_impl.period_index(may_17, "month") == (2024 - 1970) * 12 + 4
    assert calendar_impl.period_index(may_17, "year") == 2024
    # Weeks start on Monday: Monday 13 May to Sunday 19 May 2024 share an index.
    week = {calendar_impl.period_index(day(2024, 5, d), "week") for d in range(13, 20)}
    assert len(week) == 1
    assert calendar_impl.period_index(day(2024, 5, 20), "week") == week.pop() + 1


@pytest.mark.parametrize("function", ["add_period", "period_index"])
@pytest.mark.parametrize("unit", ["fortnight", "", "Month", None])
def test_unknown_unit_is_rejected(calendar_impl: ModuleType, function: str, unit: object):
    arguments = (100, 1, unit) if function == "add_period" else (100, unit)
    with pytest.raises(ValueError, match="unknown period unit"):
        getattr(calendar_impl, function)(*arguments)


# Negative day numbers: C truncates where Python floors, so these are where a careless
# port goes wrong.


def test_negative_day_numbers(calendar_impl: ModuleType):
    assert calendar_impl.civil_from_days(-365) == (1969, 1, 1)
    assert calendar_impl.civil_from_days(-25_508) == (1900, 3, 1)
    assert calendar_impl.weekday(-1) == 2  # 1969-12-31, a Wednesday
    assert calendar_impl.weekday(-4) == 6  # 1969-12-28, a Sunday
    assert calendar_impl.weekday(-7) == 3
    assert calendar_impl.period_index(-3, "week") == 0  # Monday 1969-12-29, the epoch's week
    assert calendar_impl.period_index(-4, "week") == -1
    assert calendar_impl.period_index(-1, "month") == -1
    assert calendar_impl.period_index(day(1969, 1, 1), "month") == -12
    assert calendar_impl.period_index(day(1968, 12, 31), "month") == -13
    assert calendar_impl.month_index(day(1900, 1, 1)) == -840
    assert calendar_impl.year_of(-1) == 1969
    assert calendar_impl.add_period(-1, 1, "month") == day(1970, 1, 31)
    assert calendar_impl.add_period(day(1960, 3, 31), -1, "month") == day(1960, 2, 29)


@pytest.mark.parametrize("number", range(-30, 30))
def test_weekday_cycles_through_negative_days(calendar_impl: ModuleType, number: int):
    assert calendar_impl.weekday(number) == (EPOCH + dt.timedelta(days=number)).weekday()


def test_dates_before_year_zero(calendar_impl: ModuleType):
    # Proleptic Gregorian dates before 0000-03-01, where a truncating division in place of
    # a floor shows: known dates, and conversions that invert each other.
    assert calendar_impl.civil_from_days(YEAR_ZERO_MARCH_1) == (0, 3, 1)
    assert calendar_impl.civil_from_days(YEAR_ZERO_MARCH_1 - 1) == (0, 2, 29)
    assert calendar_impl.civil_from_days(YEAR_ZERO_MARCH_1 - 366) == (-1, 3, 1)
    assert calendar_impl.civil_from_days(YEAR_ZERO_MARCH_1 - 146_097) == (-400, 3, 1)
    for number in range(-900_000, -719_000, 997):
        assert calendar_impl.days_from_civil(*calendar_impl.civil_from_days(number)) == number


# Properties


@given(number=DATE_DAY_NUMBERS)
def test_matches_datetime(calendar_impl: ModuleType, number: int):
    date = EPOCH + dt.timedelta(days=number)
    assert calendar_impl.civil_from_days(number) == (date.year, date.month, date.day)
    assert calendar_impl.days_from_civil(date.year, date.month, date.day) == number
    assert calendar_impl.weekday(number) == date.weekday()
    assert (
        calendar_impl.days_in_month(date.year, date.month)
        == stdlib_calendar.monthrange(date.year, date.month)[1]
    )
    assert calendar_impl.year_of(number) == date.year


@given(number=DATE_DAY_NUMBERS, months=st.integers(-120, 120))
def test_add_months_clamps_to_month_end(calendar_impl: ModuleType, number: int, months: int):
    start = EPOCH + dt.timedelta(days=number)
    index = start.year * 12 + start.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    if not dt.MINYEAR <= year <= dt.MAXYEAR:
        return
    last = stdlib_calendar.monthrange(year, month)[1]
    expected = dt.date(year, month, min(start.day, last))
    assert calendar_impl.add_period(number, months, "month") == (expected - EPOCH).days


@given(number=DAY_NUMBERS)
def test_compiled_matches_reference_on_days(calendar_c: ModuleType, number: int):
    assert calendar_c.civil_from_days(number) == reference.civil_from_days(number)
    assert calendar_c.days_from_civil(
        *reference.civil_from_days(number)
    ) == reference.days_from_civil(*reference.civil_from_days(number))
    assert calendar_c.weekday(number) == reference.weekday(number)
    assert calendar_c.month_index(number) == reference.month_index(number)
    assert calendar_c.year_of(number) == reference.year_of(number)
    for unit in PERIOD_UNITS:
        assert calendar_c.period_index(number, unit) == reference.period_index(number, unit)


@given(number=DAY_NUMBERS, period=PERIODS)
def test_compiled_matches_reference_on_periods(
    calendar_c: ModuleType, number: int, period: tuple[int, str]
):
    count, unit = period
    assert calendar_c.add_period(number, count, unit) == reference.add_period(number, count, unit)


@given(year=st.integers(1, 9999), month=st.integers(1, 12))
def test_compiled_matches_reference_on_months(calendar_c: ModuleType, year: int, month: int):
    assert calendar_c.days_in_month(year, month) == reference.days_in_month(year, month)
    assert calendar_c.is_leap_year(year) == reference.is_leap_year(year)


@pytest.mark.parametrize("number", [2**41, -(2**41), 2**63, -(2**64)])
def test_compiled_refuses_numbers_that_could_overflow(calendar_c: ModuleType, number: int):
    # The reference computes with unbounded ints; the C code would wrap around silently.
    with pytest.raises(OverflowError):
        calendar_c.civil_from_days(number)
    with pytest.raises(OverflowError):
        calendar_c.add_period(0, number, "day")


@given(st.text(max_size=12) | st.from_regex(r"\A[0-9]{4}-[0-9]{2}\Z"))
def test_a_month_is_parsed_to_its_first_day_or_refused_with_value_error(text: str) -> None:
    # GetScorecard and `loyalty report scorecard` take months as text: anything else than a
    # month they can hold is a ValueError (INVALID_ARGUMENT), never another exception.
    try:
        first = reference.parse_month(text)
    except ValueError:
        return
    date = reference.to_date(first)
    assert (date.day, f"{date.year:04d}-{date.month:02d}") == (1, text)
    assert reference.MONTH_YEAR_MIN <= date.year <= reference.MONTH_YEAR_MAX
    # Three years on from it is still a date (the longest span a scorecard reads).
    reference.to_date(reference.add_period(first, 37, "month"))
    assert reference.format_month(first) == text

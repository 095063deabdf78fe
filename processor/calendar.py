"""Calendar arithmetic on day numbers, the engine's only notion of time.

The engine counts days as integers since 1970-01-01 (a "day number") and times
of day as seconds since midnight, local to the store. Integers keep the account
state small, make the Cython engine's arithmetic identical to this one, and
leave no room for time-zone surprises inside the engine: the caller converts
wall-clock times to the store's local time once, at admission.

The civil-date conversions are Howard Hinnant's ``days_from_civil`` /
``civil_from_days`` algorithms, chosen because they are branch-light integer
code that translates to C line for line.
"""

from __future__ import annotations

import datetime as _dt
from typing import Literal

PeriodUnit = Literal["day", "week", "month", "year"]
PERIOD_UNITS: tuple[PeriodUnit, ...] = ("day", "week", "month", "year")

_EPOCH = _dt.date(1970, 1, 1)


def days_from_civil(year: int, month: int, day: int) -> int:
    """Day number of a proleptic Gregorian date."""
    year -= month <= 2
    era = year // 400  # floor division: the C original corrects truncation by hand
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number."""
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096
    ) // 365
    year = year_of_era + era * 400
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return year + (month <= 2), month, day


def is_leap_year(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if is_leap_year(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def weekday(days: int) -> int:
    """ISO weekday of a day number: Monday is 0, Sunday is 6."""
    return (days + 3) % 7


def add_period(days: int, count: int, unit: str) -> int:
    """The day number ``count`` periods after ``days``.

    Months and years clamp to the end of a shorter month (31 January plus one
    month is 28 or 29 February), the convention customers expect of expiry dates.
    """
    if unit == "day":
        return days + count
    if unit == "week":
        return days + 7 * count
    year, month, day = civil_from_days(days)
    if unit == "year":
        year += count
    elif unit == "month":
        months = year * 12 + (month - 1) + count
        year, month = months // 12, months % 12 + 1
    else:
        raise ValueError(f"unknown period unit {unit!r}")
    return days_from_civil(year, month, min(day, days_in_month(year, month)))


def month_index(days: int) -> int:
    """Months since January 1970 of a day number, used for monthly buckets."""
    year, month, _ = civil_from_days(days)
    return (year - 1970) * 12 + (month - 1)


MONTH_YEAR_MIN = 1970
MONTH_YEAR_MAX = 9990
"""The years a month given as text may fall in: the day numbers' epoch, and far enough from
the calendar's end that a range of months after it stays a date."""


def month_start(days: int) -> int:
    """The day number of the first of the month of a day number."""
    year, month, _ = civil_from_days(days)
    return days_from_civil(year, month, 1)


def parse_month(text: str) -> int:
    """The first day of a month written ``YYYY-MM``; raises ValueError otherwise."""
    digits = "0123456789"
    if len(text) != 7 or text[4] != "-" or any(c not in digits for c in text[:4] + text[5:]):
        raise ValueError(f"{text!r} is not a month YYYY-MM")
    year, month = int(text[:4]), int(text[5:])
    if not 1 <= month <= 12:
        raise ValueError(f"{text!r} is not a month YYYY-MM")
    if not MONTH_YEAR_MIN <= year <= MONTH_YEAR_MAX:
        raise ValueError(f"{text!r} is not between {MONTH_YEAR_MIN} and {MONTH_YEAR_MAX}")
    return days_from_civil(year, month, 1)


def format_month(days: int) -> str:
    """``YYYY-MM`` of a day number."""
    return format_day(days)[:7]


def year_of(days: int) -> int:
    return civil_from_days(days)[0]


def period_index(days: int, unit: str) -> int:
    """Index of the calendar period that contains a day (for frequency limits).

    Weeks start on Monday; "once" periods are handled by the caller.
    """
    if unit == "day":
        return days
    if unit == "week":
        return (days + 3) // 7
    if unit == "month":
        return month_index(days)
    if unit == "year":
        return year_of(days)
    raise ValueError(f"unknown period unit {unit!r}")


def to_day(value: _dt.date) -> int:
    return (value - _EPOCH).days


def to_date(days: int) -> _dt.date:
    return _EPOCH + _dt.timedelta(days=days)


def parse_day(text: str) -> int:
    """Day number of an ISO date ``YYYY-MM-DD``; raises ValueError otherwise."""
    return to_day(_dt.date.fromisoformat(text))


def format_day(days: int) -> str:
    return to_date(days).isoformat()


def parse_local_time(text: str) -> tuple[int, int]:
    """(day number, second of day) of a local ISO date-time ``YYYY-MM-DDTHH:MM[:SS]``.

    An offset, if given, is ignored: times are the store's local wall clock.
    """
    moment = _dt.datetime.fromisoformat(text)
    seconds = moment.hour * 3600 + moment.minute * 60 + moment.second
    return to_day(moment.date()), seconds


def parse_time_of_day(text: str) -> int:
    """Seconds since midnight of ``HH:MM`` or ``HH:MM:SS``."""
    moment = _dt.time.fromisoformat(text)
    return moment.hour * 3600 + moment.minute * 60 + moment.second

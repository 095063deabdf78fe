# Python-callable wrappers around the inline calendar functions of calendar.pxd, with the
# names and signatures of processor/calendar.py. They exist so the test suite can hold the
# C arithmetic the engine compiles in against the pure-Python definition; the engine itself
# cimports calendar.pxd and never calls through here.

cimport calendar as c_calendar
from libc.stdint cimport int64_t

# Beyond this magnitude the int64 intermediates of the C functions could overflow; Python
# ints never do, so the wrappers refuse rather than answer differently from the reference.
cdef int64_t _MAGNITUDE_MAX = <int64_t>1 << 40

_PERIOD_UNITS = {
    "day": c_calendar.PERIOD_DAY,
    "week": c_calendar.PERIOD_WEEK,
    "month": c_calendar.PERIOD_MONTH,
    "year": c_calendar.PERIOD_YEAR,
}


cdef int64_t _bounded(int64_t value, str name) except? -1:
    if value > _MAGNITUDE_MAX or value < -_MAGNITUDE_MAX:
        raise OverflowError(f"{name} {value} is outside the range the compiled calendar handles")
    return value


cdef c_calendar.PeriodUnit _period_unit(object unit) except? c_calendar.PERIOD_DAY:
    try:
        return _PERIOD_UNITS[unit]
    except (KeyError, TypeError):
        raise ValueError(f"unknown period unit {unit!r}") from None


def days_from_civil(int64_t year, int64_t month, int64_t day):
    """Day number of a proleptic Gregorian date."""
    return c_calendar.days_from_civil(
        _bounded(year, "year"), _bounded(month, "month"), _bounded(day, "day")
    )


def civil_from_days(int64_t days):
    """(year, month, day) of a day number."""
    return c_calendar.civil_from_days(_bounded(days, "day number"))


def is_leap_year(int64_t year):
    return c_calendar.is_leap_year(year)


def days_in_month(int64_t year, int64_t month):
    return c_calendar.days_in_month(year, month)


def weekday(int64_t days):
    """ISO weekday of a day number: Monday is 0, Sunday is 6."""
    return c_calendar.weekday(_bounded(days, "day number"))


def add_period(int64_t days, int64_t count, unit):
    """The day number ``count`` periods after ``days``; months and years clamp to month end."""
    return c_calendar.add_period(
        _bounded(days, "day number"), _bounded(count, "count"), _period_unit(unit)
    )


def month_index(int64_t days):
    """Months since January 1970 of a day number, used for monthly buckets."""
    return c_calendar.month_index(_bounded(days, "day number"))


def year_of(int64_t days):
    return c_calendar.year_of(_bounded(days, "day number"))


def period_index(int64_t days, unit):
    """Index of the calendar period that contains a day; weeks start on Monday."""
    return c_calendar.period_index(_bounded(days, "day number"), _period_unit(unit))

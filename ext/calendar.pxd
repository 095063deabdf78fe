# Calendar arithmetic on day numbers for the compiled engine: C twins of
# processor/calendar.py, which stays the readable definition. Tests compare the two
# through the wrappers in _calendar.pyx.
#
# Everything here is `cdef inline ... noexcept nogil`, so a module that cimports it gets
# the code compiled into itself: no runtime import, no call through the C-API.
#
# C division truncates towards zero, Python's floors. Day numbers before 1970 and months
# before year 0 are negative, so every division whose dividend can be negative goes
# through floor_div / floor_mod; the rest divide non-negative values, where the two agree.
#
# Inputs must stay within +-2**40 (days, years, months, counts) so no intermediate
# overflows int64; the Python wrappers enforce that, callers in C must too. Dates the
# engine sees (years 1..9999) are far inside.

cimport cython
from libc.stdint cimport int64_t


cdef enum PeriodUnit:
    PERIOD_DAY = 0
    PERIOD_WEEK = 1
    PERIOD_MONTH = 2
    PERIOD_YEAR = 3


@cython.cdivision(True)
cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    """a // b with Python's rounding towards minus infinity; b must be positive."""
    cdef int64_t quotient = a / b
    if a % b < 0:
        quotient -= 1
    return quotient


@cython.cdivision(True)
cdef inline int64_t floor_mod(int64_t a, int64_t b) noexcept nogil:
    """a % b with the sign of b, as in Python; b must be positive."""
    cdef int64_t remainder = a % b
    if remainder < 0:
        remainder += b
    return remainder


@cython.cdivision(True)
cdef inline int64_t days_from_civil(int64_t year, int64_t month, int64_t day) noexcept nogil:
    """Day number of a proleptic Gregorian date."""
    cdef int64_t era, year_of_era, day_of_year, day_of_era
    if month <= 2:
        year -= 1
    # Shifting a negative year down by 399 makes truncation agree with flooring.
    era = (year if year >= 0 else year - 399) / 400
    year_of_era = year - era * 400
    day_of_year = floor_div(153 * (month + (-3 if month > 2 else 9)) + 2, 5) + day - 1
    day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year
    return era * 146097 + day_of_era - 719468


@cython.cdivision(True)
cdef inline (int64_t, int64_t, int64_t) civil_from_days(int64_t days) noexcept nogil:
    """(year, month, day) of a day number."""
    cdef int64_t era, day_of_era, year_of_era, year, day_of_year, mp, day, month
    days += 719468
    era = (days if days >= 0 else days - 146096) / 146097
    day_of_era = days - era * 146097
    year_of_era = (
        day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096
    ) / 365
    year = year_of_era + era * 400
    day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100)
    mp = (5 * day_of_year + 2) / 153
    day = day_of_year - (153 * mp + 2) / 5 + 1
    month = mp + (3 if mp < 10 else -9)
    if month <= 2:
        year += 1
    return year, month, day


@cython.cdivision(True)
cdef inline bint is_leap_year(int64_t year) noexcept nogil:
    # Only compared with zero, where truncated and floored remainders agree.
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


cdef inline int64_t days_in_month(int64_t year, int64_t month) noexcept nogil:
    if month == 2:
        return 29 if is_leap_year(year) else 28
    if month == 4 or month == 6 or month == 9 or month == 11:
        return 30
    return 31


cdef inline int64_t weekday(int64_t days) noexcept nogil:
    """ISO weekday of a day number: Monday is 0, Sunday is 6."""
    return floor_mod(days + 3, 7)


cdef inline int64_t add_period(int64_t days, int64_t count, PeriodUnit unit) noexcept nogil:
    """The day number `count` periods after `days`; months and years clamp to month end."""
    cdef int64_t year, month, day, months
    if unit == PERIOD_DAY:
        return days + count
    if unit == PERIOD_WEEK:
        return days + 7 * count
    year, month, day = civil_from_days(days)
    if unit == PERIOD_YEAR:
        year += count
    else:
        months = year * 12 + (month - 1) + count
        year = floor_div(months, 12)
        month = floor_mod(months, 12) + 1
    return days_from_civil(year, month, min(day, days_in_month(year, month)))


cdef inline int64_t month_index(int64_t days) noexcept nogil:
    """Months since January 1970 of a day number, used for monthly buckets."""
    cdef int64_t year, month, day
    year, month, day = civil_from_days(days)
    return (year - 1970) * 12 + (month - 1)


cdef inline int64_t year_of(int64_t days) noexcept nogil:
    cdef int64_t year, month, day
    year, month, day = civil_from_days(days)
    return year


cdef inline int64_t period_index(int64_t days, PeriodUnit unit) noexcept nogil:
    """Index of the calendar period that contains a day; weeks start on Monday."""
    if unit == PERIOD_DAY:
        return days
    if unit == PERIOD_WEEK:
        return floor_div(days + 3, 7)
    if unit == PERIOD_MONTH:
        return month_index(days)
    return year_of(days)

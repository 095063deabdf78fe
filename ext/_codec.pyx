# cython: language_level=3
"""A loyalty account's lots, encoded and decoded in C: the compiled twin of
processor.store.codec's ``lots_fields_reference`` and ``lots_from_reference``, which define
the format and are tested equal to this, error for error.

Lots are most of an account's state (a card earns one per purchase, kept until spent or
expired), so they are most of the codec's work: here the per-lot Python calls (the lot's
fields, the trim and pad of its defaults, the vocabulary checks) are one C loop. Values
stay Python objects throughout, so arithmetic, indexing and errors on damaged input are
Python's, as in the reference; bounds and wraparound checks stay on for the same reason.
"""

from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF

from libc.stdint cimport int64_t

from calendar cimport month_index, year_of

include "lots.pxi"

from processor.engine.types import Lot, LoyaltyAccount

# Defined before codec imports this module (at its end).
from processor.store.codec import (
    _LOYALTY,
    _REQUIRED,
    CodecError,
    _award_fields,
    _award_from,
    _pad,
    loyalty_fields_reference,
    loyalty_from_reference,
)

# The lot kinds in their wire order (codec.LOT_KINDS): a kind's position is its code.
cdef tuple LOT_KINDS = ("regular", "bonus")
cdef Py_ssize_t LOT_FIELDS = 7


cdef object _kind_word(object code):
    if type(code) is not int or not 0 <= code < 2:
        raise CodecError(f"lot kind code {code!r} is not one of 0..1")
    return LOT_KINDS[code]


cdef int _kind_code(object kind) except -1:
    if kind == "regular":
        return 0
    if kind == "bonus":
        return 1
    raise CodecError(f"lot kind {kind!r} is not one of {LOT_KINDS}")




def lots_fields(list lots, object base, dict rules):
    """Each lot as its trimmed field list; a rule's position in ``rules`` is added on first
    sight (``rules.setdefault(rule, len(rules))``), in lot order."""
    cdef Py_ssize_t count = len(lots), index
    cdef list out = PyList_New(count)
    cdef list values
    cdef object lot, earned, shifted, expires, reference
    for index in range(count):
        lot = lots[index]
        earned = lot.earned_day
        shifted = earned - base
        reference = rules.setdefault(lot.rule, len(rules))
        expires = lot.expires_day
        values = [
            shifted,
            reference,
            _kind_code(lot.kind),
            lot.points,
            lot.available_day - earned,
            None if expires is None else expires - earned,
            lot.program_version,
        ]
        values = trimmed_lot(values)
        Py_INCREF(values)
        PyList_SET_ITEM(out, index, values)
    return out


def lots_from(object encoded, object base, object rules):
    """The lots ``lots_fields`` wrote, their rules named again from ``rules``."""
    cdef list out = []
    cdef Py_ssize_t count
    cdef object values, earned, rule, kind, points, available, expires, version, earned_day
    for values in encoded:
        if type(values) is not list:
            raise CodecError("lot is not an array")
        count = len(values)
        if count == LOT_FIELDS:
            earned, rule, kind, points, available, expires, version = values
        elif count > LOT_FIELDS:
            raise CodecError(f"lot has {count} fields, more than {LOT_FIELDS}")
        elif count < 4:
            raise CodecError("lot lacks required fields")
        else:
            earned, rule, kind, points = values[0], values[1], values[2], values[3]
            available = values[4] if count > 4 else 0
            expires = values[5] if count > 5 else None
            version = 0
        earned_day = base + earned
        out.append(
            Lot(
                earned_day,
                rules[rule],
                _kind_word(kind),
                points,
                earned_day + available,
                None if expires is None else earned_day + expires,
                version,
            )
        )
    return out


# --------------------------------------------------------------------------- loyalty accounts

# A loyalty account is most of a state: codec's loyalty_fields_reference and
# loyalty_from_reference, compiled for the records they take as they are. Anything out of
# the ordinary (a value of an unexpected type, a day beyond the C calendar, damage) is
# handed to the reference, so every error is the reference's own.


cdef class _RuleRef:
    """``rules.setdefault(rule, len(rules))``, callable: an award's rule by position."""

    cdef dict rules

    def __init__(self, dict rules):
        self.rules = rules

    def __call__(self, rule):
        return self.rules.setdefault(rule, len(self.rules))


cdef list _trimmed(list values, tuple defaults):
    cdef Py_ssize_t end = len(values)
    while end and defaults[end - 1] is not _REQUIRED and values[end - 1] == defaults[end - 1]:
        end -= 1
    return values if end == len(values) else values[:end]


cdef bint _usable_day(object day):
    return type(day) is int and -DAY_LIMIT < day < DAY_LIMIT


def loyalty_fields(account):
    """codec.loyalty_fields_reference's fields of a loyalty account."""
    base = account.created_day
    if not _usable_day(base) or type(account.lots) is not list:
        return loyalty_fields_reference(account)
    try:
        return _loyalty_fields(account, base)
    except Exception:
        return loyalty_fields_reference(account)


cdef list _loyalty_fields(object account, object base):
    cdef dict rules = {}
    cdef dict rule_day = {}, rule_period = {}, rule_total = {}, by_month = {}, spent = {}
    cdef int64_t base_day = base
    cdef int64_t base_month = month_index(base_day)
    cdef object sustain = account.sustain_extended_until
    lots = lots_fields(account.lots, base, rules)
    for rule, (day, uses) in account.rule_day.items():
        rule_day[rules.setdefault(rule, len(rules))] = [day - base, uses]
    for rule, counts in account.rule_period.items():
        rule_period[rules.setdefault(rule, len(rules))] = list(counts)
    for rule, uses in account.rule_total.items():
        rule_total[rules.setdefault(rule, len(rules))] = uses
    awards = []
    if account.awards:
        reference = _RuleRef(rules)
        awards = [_award_fields(award, account.program, base, reference) for award in account.awards]
    for month, points in account.earned_by_month.items():
        by_month[month - base_month] = points
    for month, amount in account.spent_by_month.items():
        spent[month - base_month] = amount
    return _trimmed(
        [
            account.program,
            account.level,
            base,
            account.level_since_day - base,
            account.last_activity_day - base,
            list(rules),
            lots,
            account.debt,
            account.earned_ltd,
            account.earned_ytd,
            account.ytd_year - year_of(base_day),
            account.earned_since_move,
            by_month,
            rule_day,
            rule_period,
            rule_total,
            None if sustain is None else sustain - base,
            awards,
            spent,
        ],
        _LOYALTY,
    )


def loyalty_from(values):
    """codec.loyalty_from_reference's loyalty account from its fields."""
    try:
        return _loyalty_from(values)
    except Exception:
        return loyalty_from_reference(values)


cdef object _loyalty_from(object values):
    (
        program, level, base, level_since, last_activity, rules, lots, debt, earned_ltd,
        earned_ytd, ytd_year, earned_since_move, by_month, rule_day, rule_period,
        rule_total, sustain_until, awards, spent,
    ) = _pad(values, _LOYALTY, "loyalty account")
    if not _usable_day(base):
        raise ValueError("for the reference")
    cdef int64_t base_day = base
    cdef int64_t base_month = month_index(base_day)
    cdef dict months = {}, days = {}, periods = {}, totals = {}, spent_months = {}
    for month, points in by_month.items():
        months[base_month + month] = points
    for month, amount in spent.items():
        spent_months[base_month + month] = amount
    for rule, (day, uses) in rule_day.items():
        days[rules[rule]] = (base + day, uses)
    for rule, (period, uses) in rule_period.items():
        periods[rules[rule]] = (period, uses)
    for rule, uses in rule_total.items():
        totals[rules[rule]] = uses
    named = []
    if awards:
        name = rules.__getitem__
        named = [_award_from(award, program, base, name) for award in awards]
    return LoyaltyAccount(
        program,
        level,
        base,
        base + level_since,
        base + last_activity,
        lots_from(lots, base, rules),
        debt,
        earned_ltd,
        earned_ytd,
        year_of(base_day) + ytd_year,
        earned_since_move,
        months,
        days,
        periods,
        totals,
        None if sustain_until is None else base + sustain_until,
        named,
        spent_months,
    )

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

from processor.engine.types import Lot
from processor.store.codec import CodecError  # defined before codec imports this module

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
    cdef Py_ssize_t count = len(lots), index, end
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
        # Trailing fields at their defaults are left off (codec._trim over codec._LOT).
        end = LOT_FIELDS
        if values[6] == 0:
            end = 6
            if values[5] is None:
                end = 5
                if values[4] == 0:
                    end = 4
        if end < LOT_FIELDS:
            values = values[:end]
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

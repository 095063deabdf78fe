# cython: language_level=3
"""A purchase's admission in compiled code, for the requests that are as they should be:
the compiled twin of processor.wire.admission's transaction_from_proto on its busiest
path.

Every posted transaction is admitted once, on the hot path. ``purchase`` checks a
Transaction holding a purchase by the same rules as the reference and builds the same
Context and Purchase, or answers None for anything out of the common case (a PIN, a
customer, stored value, an exchange rate, and every field the reference would refuse),
and the caller then runs the reference, which accepts the request or names the field at
fault. So every error, and every request this does not take, is the reference's
(tests/test_wire.py holds the two equal).
"""

from libc.stdint cimport int64_t

from calendar cimport days_from_civil, days_in_month

from processor.engine.types import Line, Purchase, TenderLine
from processor.limits import (
    AMOUNT_UNITS_MAX,
    CARD_DIGITS_MAX,
    CARD_DIGITS_MIN,
    HIERARCHY_NODES_MAX,
    JOB_REQUEST_ID_PREFIX,
    LINE_ATTRIBUTES_MAX,
    LINE_QUANTITY_MAX,
    LINES_MAX,
    LOCATION_CHARS_MAX,
    NAME_CHARS_MAX,
    REDEEM_CODES_MAX,
    REQUEST_ID_CHARS_MAX,
    TENDER_TYPE_CHARS_MAX,
    TENDERS_MAX,
)
from processor.money import is_currency

# Defined before admission imports this module (at its end).
from processor.wire.admission import Context


include "slots.pxi"


cdef _Maker _LINE = _Maker(Line)
cdef _Maker _TENDER = _Maker(TenderLine)
cdef _Maker _PURCHASE = _Maker(Purchase)
cdef _Maker _CONTEXT = _Maker(Context)


cdef bint _text(object value, Py_ssize_t chars_max, bint required):
    """What admission.checked_text accepts, as a yes or no."""
    if type(value) is not str:
        return False
    if not value:
        return not required
    return len(<str>value) <= chars_max and (<str>value).isprintable()


cdef int _digits(str text, Py_ssize_t start, Py_ssize_t count):
    """The number written by ``count`` ASCII digits at ``start``; -1 if any is not one."""
    cdef int value = 0
    cdef Py_UCS4 character
    cdef Py_ssize_t index
    for index in range(start, start + count):
        character = text[index]
        if character < 48 or character > 57:  # '0' and '9'
            return -1
        value = value * 10 + (<int>character - 48)
    return value


cdef bint _local_time(object value, int64_t* day, int64_t* second):
    """``YYYY-MM-DDTHH:MM:SS`` as a day number and a second of the day, for the values
    calendar.parse_local_time takes (years 1 to 9999, real dates and times)."""
    if type(value) is not str or len(<str>value) != 19:
        return False
    cdef str text = <str>value
    if text[4] != u'-' or text[7] != u'-' or text[10] != u'T' or text[13] != u':' \
            or text[16] != u':':
        return False
    cdef int year = _digits(text, 0, 4), month = _digits(text, 5, 2)
    cdef int date = _digits(text, 8, 2), hour = _digits(text, 11, 2)
    cdef int minute = _digits(text, 14, 2), sec = _digits(text, 17, 2)
    if year < 1 or not 1 <= month <= 12 or date < 1 or hour < 0 or minute < 0 or sec < 0:
        return False
    if date > days_in_month(year, month) or hour > 23 or minute > 59 or sec > 59:
        return False
    day[0] = days_from_civil(year, month, date)
    second[0] = hour * 3600 + minute * 60 + sec
    return True


cdef object _lines(object messages):
    """The purchase's lines in the common form, or None."""
    cdef list lines = []
    cdef set seen = set()
    for message in messages:
        number, quantity, amount, item = (
            message.number, message.quantity, message.amount, message.item
        )
        nodes = message.hierarchy
        # Most lines name one node: indexing it costs half of copying the container.
        hierarchy = (nodes[0],) if len(nodes) == 1 else tuple(nodes)
        attributes = message.attributes
        count = len(attributes)
        if not (
            number >= 1
            and number not in seen
            and 1 <= quantity <= LINE_QUANTITY_MAX
            and 0 <= amount <= AMOUNT_UNITS_MAX
            and _text(item, NAME_CHARS_MAX, True)
            and len(hierarchy) <= HIERARCHY_NODES_MAX
            and count <= LINE_ATTRIBUTES_MAX
        ):
            return None
        for node in hierarchy:
            if not _text(node, NAME_CHARS_MAX, True):
                return None
        if count:  # most lines have none: a map's items cost more than the line
            for key in attributes:
                if not _text(key, NAME_CHARS_MAX, True):
                    return None
            pairs = tuple(sorted(attributes.items()))
        else:
            pairs = ()
        seen.add(number)
        lines.append(
            _LINE.make(
                (number, item, amount, quantity, hierarchy, pairs, not message.non_merchandise)
            )
        )
    return tuple(lines)


def purchase(message):
    """(Context, Purchase) of a Transaction holding a purchase in the common form, or None
    for the reference to decide."""
    cdef int64_t day, second
    if not message.HasField("context") or message.WhichOneof("kind") != "purchase":
        return None
    context = message.context
    request_id, account, location = context.request_id, context.account, context.location
    if (
        context.HasField("pin")
        or not _text(request_id, REQUEST_ID_CHARS_MAX, True)
        or request_id.startswith(JOB_REQUEST_ID_PREFIX)
        or not CARD_DIGITS_MIN <= len(account) <= CARD_DIGITS_MAX
        or not (account.isascii() and account.isdigit())
        or not _local_time(context.local_time, &day, &second)
        or not _text(location, LOCATION_CHARS_MAX, False)
    ):
        return None
    card_present = context.card_present if context.HasField("card_present") else True
    sale = message.purchase
    currency = sale.currency
    # Each read of a repeated field makes its container anew: each is read once.
    sale_lines, sale_tenders, sale_codes = sale.lines, sale.tenders, sale.redeem_codes
    if (
        len(currency) != 3
        or not (currency.isascii() and currency.isalpha())
        or not is_currency(currency)
        or sale.exchange_rate
        or sale.HasField("stored_value")
        or sale.HasField("customer")
        or len(sale_lines) > LINES_MAX
        or len(sale_tenders) > TENDERS_MAX
        or len(sale_codes) > REDEEM_CODES_MAX
    ):
        return None
    lines = _lines(sale_lines)
    if lines is None:
        return None
    tenders = []
    for item in sale_tenders:
        amount = item.amount
        if not _text(item.type, TENDER_TYPE_CHARS_MAX, True) or not 0 <= amount <= AMOUNT_UNITS_MAX:
            return None
        tenders.append(_TENDER.make((item.type, amount)))
    codes = tuple(sale_codes) if len(sale_codes) else ()
    for code in codes:
        if not _text(code, NAME_CHARS_MAX, True):
            return None
    checked = _CONTEXT.make(
        (request_id, account, day, second, location, card_present, None, context.dry_run)
    )
    return checked, _PURCHASE.make(
        (
            request_id,
            account,
            day,
            second,
            location,
            card_present,
            False,
            currency.upper(),
            None,
            lines,
            tuple(tenders),
            None,
            0,
            codes,
        )
    )

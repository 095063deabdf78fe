# cython: language_level=3
"""A Result's loyalty.v1 bytes written in C: the compiled twin of
processor.wire.answers' ``result_bytes_reference``, which defines the bytes (protobuf's own
deterministic serialization of the message it builds) and is tested equal to this, byte
for byte (tests/test_answers.py).

Every transaction's answer is built once, sent as it is and stored for replays, so its
cost is paid on the hot path per transaction: here the message objects the reference
builds (a Result, its postings, a Points per trace entry) are skipped, and each field is
written straight into one buffer, in the order and form protobuf's serializer writes them:
fields by number, proto3 defaults left out, submessages that are set written even when
empty, map entries with both key and value, in the serializer's key order (_map_order). What depends on the program
(award currencies and precisions, the tender decision's currencies) is looked up by the
Python caller, which hands it in ready.
"""

from processor.wire.answers import _MOVE_KINDS, _POSTING_BALANCES, _STATUSES, balance_name


include "wire.pxi"


cdef bytes _trace_field(object entry, object precision):
    cdef _Buffer out = _Buffer()
    cdef Py_ssize_t start = out.mark()
    out.text(1, entry.program, False)
    out.text(2, entry.rule, False)
    out.bool_field(3, entry.fired)
    _points(out, 4, entry.points, precision)
    out.text(5, entry.reason, False)
    out.close(10, start)
    return out.result()


def result_bytes(
    object result,
    dict exponents,
    list award_details,
    tuple tender,
    bint replayed,
    dict trace_fields,
    Py_ssize_t trace_fields_max,
):
    """The Result's bytes; see processor.wire.answers.result_bytes, which prepares
    ``award_details`` (per award: kind code, currency, rule precision, expires date) and
    ``tender`` (None, or the decision's fields in order, currencies resolved)."""
    cdef _Buffer out = _Buffer()
    cdef Py_ssize_t start
    cdef str name
    cdef set names
    out.text(1, result.id, False)
    out.text(2, result.account, False)
    out.int_field(3, _STATUSES[result.status])
    out.text(4, result.reason, False)
    names = set(result.balances)
    for posting in result.postings:
        name = balance_name(posting)
        names.add(name)
        start = out.mark()
        out.text(1, posting.program, False)
        out.int_field(2, posting.program_version)
        out.int_field(3, _POSTING_BALANCES[posting.balance])
        out.text(4, posting.kind, False)
        out.int_field(5, posting.amount)
        out.text(6, name, False)
        out.text(7, posting.rule, False)
        out.text(8, _date(posting.day), False)
        out.text(9, posting.account, False)
        out.close(5, start)
    for award, (kind, currency, precision, expires) in zip(result.awards, award_details):
        start = out.mark()
        out.text(1, award.code, False)
        out.int_field(2, kind)
        out.text(3, award.rule, False)
        out.text(4, award.program, False)
        _money(out, 5, award.value, currency)
        _points(out, 6, award.points_cost, precision)
        out.text(7, expires, False)
        out.close(6, start)
    for code in result.redeemed:
        out.text(7, code, True)
    for move in result.moves:
        start = out.mark()
        out.text(1, move.program, False)
        out.text(2, move.rule, False)
        out.int_field(3, _MOVE_KINDS[move.kind])
        out.text(4, move.from_level, False)
        out.text(5, move.to_level, False)
        out.close(8, start)
    if tender is not None:
        operation, approved, requested, sent, approved_amount, currency, balance, reason = tender
        start = out.mark()
        out.int_field(1, operation)
        out.bool_field(2, approved)
        _money(out, 3, requested, sent)
        _money(out, 4, approved_amount, currency)
        _money(out, 5, balance, currency)
        out.text(6, reason, False)
        out.close(9, start)
    _balance_maps(out, result.balances, names, exponents)
    out.bool_field(13, replayed)
    # The trace after the rest, as the reference appends it: each distinct entry is
    # written once and kept (a bounded cache shared with the reference).
    for entry in result.trace:
        precision = exponents.get("points:" + entry.program, 0)
        key = (entry.program, entry.rule, entry.fired, entry.points, entry.reason, precision)
        field = trace_fields.get(key)
        if field is None:
            if len(trace_fields) >= trace_fields_max:
                trace_fields.clear()
            field = trace_fields[key] = _trace_field(entry, precision)
        out.raw(<bytes>field, len(<bytes>field))
    return out.result()

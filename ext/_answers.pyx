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

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memmove

from calendar cimport civil_from_days

from processor.calendar import format_day
from processor.wire.answers import _MOVE_KINDS, _POSTING_BALANCES, _STATUSES, balance_name


# Wire types: VARINT 0, LEN 2.
cdef enum:
    VARINT = 0
    LEN = 2


cdef inline Py_ssize_t _put_varint(unsigned char* out, uint64_t value) noexcept:
    """``value`` as a protobuf varint at ``out`` (room for 10 bytes); the bytes written."""
    cdef Py_ssize_t size = 0
    while value > 0x7F:
        out[size] = (value & 0x7F) | 0x80
        size += 1
        value >>= 7
    out[size] = value
    return size + 1


cdef class _Buffer:
    """A growing byte buffer; ``mark``/``close`` frame a submessage with its length."""

    cdef char* data
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    def __cinit__(self):
        self.capacity = 512
        self.size = 0
        self.data = <char*>PyMem_Malloc(self.capacity)
        if self.data == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.data)

    cdef int reserve(self, Py_ssize_t more) except -1:
        cdef Py_ssize_t wanted = self.size + more
        cdef char* grown
        if wanted <= self.capacity:
            return 0
        while self.capacity < wanted:
            self.capacity *= 2
        grown = <char*>PyMem_Realloc(self.data, self.capacity)
        if grown == NULL:
            raise MemoryError()
        self.data = grown
        return 0

    cdef int raw(self, const char* source, Py_ssize_t length) except -1:
        self.reserve(length)
        memcpy(self.data + self.size, source, length)
        self.size += length
        return 0

    cdef int varint(self, uint64_t value) except -1:
        self.reserve(10)
        self.size += _put_varint(<unsigned char*>self.data + self.size, value)
        return 0

    cdef int tag(self, int number, int wire_type) except -1:
        return self.varint(<uint64_t>((number << 3) | wire_type))

    cdef int int_field(self, int number, object value) except -1:
        """An int64/uint32/enum field: left out when 0."""
        cdef int64_t number_value = value
        if number_value != 0:
            self.tag(number, VARINT)
            self.varint(<uint64_t>number_value)
        return 0

    cdef int bool_field(self, int number, object value) except -1:
        if value:
            self.tag(number, VARINT)
            self.varint(1)
        return 0

    cdef int text(self, int number, str value, bint always) except -1:
        """A string field (left out when empty, unless ``always``: repeated and map keys)."""
        cdef Py_ssize_t length
        cdef const char* utf8 = PyUnicode_AsUTF8AndSize(value, &length)
        if length or always:
            self.tag(number, LEN)
            self.varint(<uint64_t>length)
            self.raw(utf8, length)
        return 0

    cdef Py_ssize_t mark(self) except -1:
        """Start a submessage: room for its length is made when it is closed."""
        return self.size

    cdef int close(self, int number, Py_ssize_t start) except -1:
        """Frame what was written since ``start`` as field ``number``'s submessage."""
        cdef Py_ssize_t body = self.size - start
        cdef unsigned char head[20]
        cdef Py_ssize_t head_size = _put_varint(head, <uint64_t>((number << 3) | LEN))
        head_size += _put_varint(head + head_size, <uint64_t>body)
        self.reserve(head_size)
        memmove(self.data + start + head_size, self.data + start, body)
        memcpy(self.data + start, head, head_size)
        self.size += head_size
        return 0

    cdef bytes result(self):
        return PyBytes_FromStringAndSize(self.data, self.size)


cdef str _date(object day):
    """calendar.format_day in C for the years 1..9999 it can write; Python's otherwise."""
    cdef int64_t year, month, date
    if type(day) is int and -719162 <= day <= 2932896:
        year, month, date = civil_from_days(<int64_t>day)
        return f"{year:04d}-{month:02d}-{date:02d}"
    return format_day(day)


def _map_order(str key):
    """The order protobuf's (upb's) deterministic serializer writes string map keys in: by
    their UTF-8 bytes, a key before the keys it is a prefix of ("ab" before "a", "" last).
    0xFF never occurs in UTF-8, so it stands for the end of a key."""
    return key.encode() + b"\xff"


cdef int _money(_Buffer out, int number, object units, str currency) except -1:
    cdef Py_ssize_t start = out.mark()
    out.int_field(1, units)
    out.text(2, currency, False)
    return out.close(number, start)


cdef int _points(_Buffer out, int number, object units, object precision) except -1:
    cdef Py_ssize_t start = out.mark()
    out.int_field(1, units)
    out.int_field(2, precision)
    return out.close(number, start)


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
    for name in sorted(result.balances, key=_map_order):
        start = out.mark()
        out.text(1, name, True)
        out.tag(2, VARINT)
        out.varint(<uint64_t><int64_t>result.balances[name])
        out.close(11, start)
    for name in sorted(names, key=_map_order):
        if name in exponents:
            start = out.mark()
            out.text(1, name, True)
            out.tag(2, VARINT)
            out.varint(<uint64_t><int64_t>exponents[name])
            out.close(12, start)
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

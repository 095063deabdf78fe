# The protobuf writer shared by the compiled answer writers (included, not imported: the
# engine's writer of fast-path answers and processor._answers inline the same functions).
# What it writes is defined by processor.wire.answers' ``result_bytes_reference``.

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memmove

from calendar cimport civil_from_days

from processor.calendar import format_day


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


cdef int _balance_maps(_Buffer out, dict balances, set names, dict exponents) except -1:
    """Result.balances (field 11) and Result.balance_exponents (field 12, the exponents of
    ``names`` that have one), each in the serializer's key order."""
    cdef str name
    cdef Py_ssize_t start
    for name in sorted(balances, key=_map_order):
        start = out.mark()
        out.text(1, name, True)
        out.tag(2, VARINT)
        out.varint(<uint64_t><int64_t>balances[name])
        out.close(11, start)
    for name in sorted(names, key=_map_order):
        if name in exponents:
            start = out.mark()
            out.text(1, name, True)
            out.tag(2, VARINT)
            out.varint(<uint64_t><int64_t>exponents[name])
            out.close(12, start)
    return 0

# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""PostgreSQL's binary array format, packed in C: the compiled twin of
processor.store.arrays' reference packer, which defines the bytes and is tested equal.

One call packs a whole list (two passes: the size, then the bytes into one allocation),
where psycopg's list dumper runs a Python loop with a dumper call per element.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, INT32_MAX, INT32_MIN
from libc.string cimport memcpy

# The element kinds, as processor.store.arrays numbers them.
cdef enum Kind:
    KIND_TEXT = 0
    KIND_BYTEA = 1
    KIND_INT4 = 2
    KIND_INT8 = 3

cdef inline char* put32(char* at, uint32_t value) noexcept:
    at[0] = <char>((value >> 24) & 0xFF)
    at[1] = <char>((value >> 16) & 0xFF)
    at[2] = <char>((value >> 8) & 0xFF)
    at[3] = <char>(value & 0xFF)
    return at + 4

cdef inline char* put64(char* at, uint64_t value) noexcept:
    put32(at, <uint32_t>(value >> 32))
    put32(at + 4, <uint32_t>(value & 0xFFFFFFFF))
    return at + 8


def pack(list values, int kind, uint32_t element_oid):
    """``values`` as one-dimensional array_send bytes of ``element_oid`` elements."""
    cdef Py_ssize_t count = len(values), index, size, length
    cdef Py_ssize_t total = 12
    cdef int hasnull = 0
    cdef const char* text
    cdef char* at
    cdef int64_t number
    cdef object value
    if count == 0:
        data = PyBytes_FromStringAndSize(NULL, 12)
        at = PyBytes_AS_STRING(data)
        at = put32(at, 0)
        at = put32(at, 0)
        put32(at, element_oid)
        return data
    if count > INT32_MAX:
        raise OverflowError(f"an array of {count} elements is longer than PostgreSQL's")
    total += 8
    for index in range(count):
        value = values[index]
        if value is None:
            hasnull = 1
            total += 4
        elif kind == KIND_TEXT:
            if type(value) is not str:
                raise TypeError(f"element {index} is {type(value).__name__}, not str")
            PyUnicode_AsUTF8AndSize(value, &size)
            total += 4 + size
        elif kind == KIND_BYTEA:
            if type(value) is not bytes:
                raise TypeError(f"element {index} is {type(value).__name__}, not bytes")
            total += 4 + PyBytes_GET_SIZE(value)
        elif kind == KIND_INT4:
            if type(value) is not int:
                raise TypeError(f"element {index} is {type(value).__name__}, not int")
            number = value
            if not INT32_MIN <= number <= INT32_MAX:
                raise OverflowError(f"element {index} ({number}) does not fit in int4")
            total += 8
        elif kind == KIND_INT8:
            if type(value) is not int:
                raise TypeError(f"element {index} is {type(value).__name__}, not int")
            number = value  # OverflowError beyond 64 bits
            total += 12
        else:
            raise ValueError(f"unknown element kind {kind}")
    data = PyBytes_FromStringAndSize(NULL, total)
    at = PyBytes_AS_STRING(data)
    at = put32(at, 1)
    at = put32(at, hasnull)
    at = put32(at, element_oid)
    at = put32(at, <uint32_t>count)
    at = put32(at, 1)
    for index in range(count):
        value = values[index]
        if value is None:
            at = put32(at, 0xFFFFFFFF)
        elif kind == KIND_TEXT:
            text = PyUnicode_AsUTF8AndSize(value, &size)
            at = put32(at, <uint32_t>size)
            memcpy(at, text, size)
            at += size
        elif kind == KIND_BYTEA:
            length = PyBytes_GET_SIZE(value)
            at = put32(at, <uint32_t>length)
            memcpy(at, PyBytes_AS_STRING(value), length)
            at += length
        elif kind == KIND_INT4:
            at = put32(at, 4)
            at = put32(at, <uint32_t><int32_t><int64_t>value)
        else:
            at = put32(at, 8)
            at = put64(at, <uint64_t><int64_t>value)
    return data

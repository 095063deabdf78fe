# msgpack, written the way msgpack-python's packer writes it (use_bin_type=True): every
# integer, string, array and map in its shortest form. For records the compiled code
# writes whole (a fast-path purchase's receipt, a packed card's state); processor.store.
# codec packs everything else with msgpack itself, and tests hold the bytes of the two
# equal. Needs wire.pxi.

cdef inline int _mp_byte(_Buffer out, unsigned char value) except -1:
    out.reserve(1)
    out.data[out.size] = <char>value
    out.size += 1
    return 0


cdef int _mp_sized(_Buffer out, unsigned char code, uint64_t value, int width) except -1:
    """``code`` then ``value`` big-endian in ``width`` bytes."""
    cdef int shift
    out.reserve(1 + width)
    out.data[out.size] = <char>code
    out.size += 1
    for shift in range(width - 1, -1, -1):
        out.data[out.size] = <char>((value >> (8 * shift)) & 0xFF)
        out.size += 1
    return 0


cdef int _mp_int(_Buffer out, int64_t value) except -1:
    if value >= 0:
        if value < 128:
            return _mp_byte(out, <unsigned char>value)
        if value <= 0xFF:
            return _mp_sized(out, 0xCC, <uint64_t>value, 1)
        if value <= 0xFFFF:
            return _mp_sized(out, 0xCD, <uint64_t>value, 2)
        if value <= 0xFFFFFFFF:
            return _mp_sized(out, 0xCE, <uint64_t>value, 4)
        return _mp_sized(out, 0xCF, <uint64_t>value, 8)
    if value >= -32:
        return _mp_byte(out, <unsigned char>(<int>value & 0xFF))
    if value >= -128:
        return _mp_sized(out, 0xD0, <uint64_t>value, 1)
    if value >= -32768:
        return _mp_sized(out, 0xD1, <uint64_t>value, 2)
    if value >= -2147483648:
        return _mp_sized(out, 0xD2, <uint64_t>value, 4)
    return _mp_sized(out, 0xD3, <uint64_t>value, 8)


cdef int _mp_str(_Buffer out, str value) except -1:
    cdef Py_ssize_t length
    cdef const char* utf8 = PyUnicode_AsUTF8AndSize(value, &length)
    if length < 32:
        _mp_byte(out, <unsigned char>(0xA0 | length))
    elif length <= 0xFF:
        _mp_sized(out, 0xD9, <uint64_t>length, 1)
    elif length <= 0xFFFF:
        _mp_sized(out, 0xDA, <uint64_t>length, 2)
    else:
        _mp_sized(out, 0xDB, <uint64_t>length, 4)
    return out.raw(utf8, length)


cdef int _mp_array(_Buffer out, Py_ssize_t count) except -1:
    if count < 16:
        return _mp_byte(out, <unsigned char>(0x90 | count))
    if count <= 0xFFFF:
        return _mp_sized(out, 0xDC, <uint64_t>count, 2)
    return _mp_sized(out, 0xDD, <uint64_t>count, 4)


cdef int _mp_map(_Buffer out, Py_ssize_t count) except -1:
    if count < 16:
        return _mp_byte(out, <unsigned char>(0x80 | count))
    if count <= 0xFFFF:
        return _mp_sized(out, 0xDE, <uint64_t>count, 2)
    return _mp_sized(out, 0xDF, <uint64_t>count, 4)


cdef int _mp_value(_Buffer out, object value) except -1:
    """None, a bool, an int (64-bit), str, list or dict of them; anything else is a
    TypeError (an int beyond 64 bits an OverflowError): the caller packs with msgpack."""
    if value is None:
        return _mp_byte(out, 0xC0)
    if value is True:
        return _mp_byte(out, 0xC3)
    if value is False:
        return _mp_byte(out, 0xC2)
    if type(value) is int:
        return _mp_int(out, <int64_t>value)
    if type(value) is str:
        return _mp_str(out, <str>value)
    if type(value) is list:
        _mp_array(out, len(<list>value))
        for item in <list>value:
            _mp_value(out, item)
        return 0
    if type(value) is dict:
        _mp_map(out, len(<dict>value))
        for key, item in (<dict>value).items():
            _mp_value(out, key)
            _mp_value(out, item)
        return 0
    raise TypeError(f"cannot write {type(value).__name__} as msgpack here")

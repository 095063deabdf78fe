# A lot's fields as the codec writes them (processor.store.codec's _LOT), for the two
# compiled writers of lots: processor._codec (from Lot objects) and processor._engine (from
# its arrays).


# Day numbers the C calendar takes without overflow; a lot or account beyond them is left
# to the Python path.
cdef int64_t DAY_LIMIT = 1 << 40


cdef inline list trimmed_lot(list values):
    """A lot's seven fields without the trailing ones at their defaults (version 0, no
    expiry, available at once), as codec._trim over codec._LOT leaves them."""
    cdef Py_ssize_t end = 7
    if values[6] == 0:
        end = 6
        if values[5] is None:
            end = 5
            if values[4] == 0:
                end = 4
    return values if end == 7 else values[:end]

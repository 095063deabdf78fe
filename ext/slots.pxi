# Making instances of frozen, slotted dataclasses without their generated __init__: see
# _Maker. Included by the modules that make such objects on the hot path.

import dataclasses


cdef extern from *:
    """
    /* Set one slot of an instance through its member descriptor, as object.__setattr__
       ends up doing, without the attribute lookup and call around it. */
    static int loyalty_set_slot(PyObject *descriptor, PyObject *instance, PyObject *value) {
        return Py_TYPE(descriptor)->tp_descr_set(descriptor, instance, value);
    }
    """
    int loyalty_set_slot(object descriptor, object instance, object value) except -1


cdef class _Maker:
    """Makes instances of a frozen, slotted dataclass without its generated ``__init__``,
    which sets each field through ``object.__setattr__`` (about 0.1 µs a field: a
    purchase's Context, Purchase and lines cost more in their ``__init__``s than in all
    their checks). Only for classes without ``__post_init__``, given every field in order;
    the result equals the one ``__init__`` makes (tests/test_wire.py, and the engines'
    equality tests for the results)."""

    cdef object cls
    cdef tuple slots

    def __init__(self, cls):
        if hasattr(cls, "__post_init__"):
            raise TypeError(f"{cls.__name__} has a __post_init__: make it with its __init__")
        self.cls = cls
        self.slots = tuple(getattr(cls, field.name) for field in dataclasses.fields(cls))

    cdef object make(self, tuple values):
        if len(values) != len(self.slots):  # a field added to the class and not here
            raise TypeError(f"{self.cls.__name__} has {len(self.slots)} fields, given {len(values)}")
        cdef object instance = self.cls.__new__(self.cls)
        cdef Py_ssize_t index
        for index in range(len(self.slots)):
            loyalty_set_slot(self.slots[index], instance, values[index])
        return instance

# The limits the compiled engine enforces itself, for `from limits cimport ...`: a hand-kept
# copy of processor/limits.py, the one definition. tests/test_limits.py fails when a value
# here differs from its namesake there, so change both together.
#
# An anonymous enum makes each a compile-time C constant, as a DEF did, without a runtime
# import.

cdef enum:
    # Lines of one purchase; a longer one is handed to the reference engine, which refuses it.
    LINES_MAX = 1000

"""What the compiled engine (ext/_engine.pyx) takes from the reference engine.

The compiled engine runs purchases over packed arrays and hands every other path (returns,
voids, tender, award value) to the reference, on the same account states, so the two
cannot drift apart. These are the reference's pieces it calls for that: named here, in one
public module, so that a rename in the reference fails mypy and tests/test_engine_shared.py
instead of the build, and a reader of either side sees the whole seam.
"""

from __future__ import annotations

from processor.engine.awards import add_value, issue_certificate, refusal, touch_activity
from processor.engine.loyalty import MONTH_SPEND_REASON, audience_reason
from processor.engine.reference import Batch, BatchOutcome
from processor.limits import SPENT_MONTH_UNITS_MAX

__all__ = [
    "MONTH_SPEND_REASON",
    "SPENT_MONTH_UNITS_MAX",
    "Batch",
    "BatchOutcome",
    "add_value",
    "audience_reason",
    "issue_certificate",
    "refusal",
    "touch_activity",
]

"""The rule engine's front door: compile a program, pick an engine, evaluate batches.

Callers import from here and nowhere deeper, so the engine behind the door can
change (the reference today, a compiled one beside it) without touching them.
"""

from __future__ import annotations

from processor.engine.plan import CompiledProgram, compile_program
from processor.engine.reference import BatchOutcome, ReferenceEngine, issue_card, run_job

__all__ = [
    "BatchOutcome",
    "CompiledProgram",
    "ReferenceEngine",
    "compile_program",
    "get_engine",
    "issue_card",
    "run_job",
]


def get_engine(name: str = "python") -> ReferenceEngine:
    """The engine called ``name``."""
    if name != "python":
        raise ValueError(f"unknown engine {name!r} (known: python)")
    return ReferenceEngine()

"""The rule engine's front door: compile a program, pick an engine, evaluate batches.

Callers import from here and nowhere deeper, so the engine behind the door can
change without touching them. Two engines give identical results:

- ``python``: processor.engine.reference, the readable definition of behaviour;
- ``cython``: processor._engine, the same behaviour over packed arrays, used by
  default when the extension is built.

``LOYALTY_ENGINE=python`` (or ``LOYALTY_NO_EXTENSIONS=1``) forces the reference.
This module is the only one that imports the compiled engine.

Request ids are unique per card only; a call keys its receipts by request id, so callers
cut their requests with ``engine_calls`` and keep receipts by (card, id) between calls
(processor.engine.calls).
"""

from __future__ import annotations

import os
from typing import Protocol

from processor.engine.calls import Receipts, engine_calls, keyed, receipts_of
from processor.engine.plan import CompiledProgram, compile_program
from processor.engine.reference import (
    JOB_STEPS,
    BatchOutcome,
    OpeningBalances,
    ReferenceEngine,
    issue_card,
    open_balances,
    run_job,
)
from processor.engine.types import AccountState, Receipt, Request

__all__ = [
    "ENGINES",
    "JOB_STEPS",
    "BatchOutcome",
    "CompiledProgram",
    "Engine",
    "OpeningBalances",
    "Receipts",
    "ReferenceEngine",
    "compile_program",
    "default_engine_name",
    "engine_calls",
    "get_engine",
    "issue_card",
    "keyed",
    "open_balances",
    "receipts_of",
    "run_job",
]

ENGINES = ("python", "cython")


class Engine(Protocol):
    """What every engine offers: a name and the batch evaluation."""

    name: str

    def evaluate(
        self,
        program: CompiledProgram,
        accounts: dict[str, AccountState],
        requests: list[Request],
        receipts: dict[str, Receipt] | None = None,
    ) -> BatchOutcome: ...


def _compiled_available() -> bool:
    try:
        import processor._engine  # noqa: F401
    except ImportError:
        return False
    return True


def default_engine_name() -> str:
    """The engine used when none is named: the environment's choice, else the compiled
    one when it is built, else the reference."""
    chosen = os.environ.get("LOYALTY_ENGINE", "").strip().lower()
    if chosen:
        if chosen not in ENGINES:
            raise ValueError(f"LOYALTY_ENGINE={chosen!r} is not one of {', '.join(ENGINES)}")
        return chosen
    if os.environ.get("LOYALTY_NO_EXTENSIONS", "") == "1":
        return "python"
    return "cython" if _compiled_available() else "python"


def get_engine(name: str | None = None) -> Engine:
    """The engine called ``name`` (see ``default_engine_name`` when it is None)."""
    name = name or default_engine_name()
    if name == "python":
        return ReferenceEngine()
    if name == "cython":
        from processor._engine import CythonEngine

        engine: Engine = CythonEngine()
        return engine
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")

"""Stubs of the compiled engine (ext/_engine.pyx)."""

from collections.abc import Mapping, Sequence

from processor.engine.plan import CompiledProgram
from processor.engine.reference import BatchOutcome
from processor.engine.types import AccountState, Receipt, Request

class CythonEngine:
    name: str
    def pack(self, program: CompiledProgram) -> object: ...
    def evaluate(
        self,
        program: CompiledProgram,
        accounts: Mapping[str, AccountState],
        requests: Sequence[Request],
        receipts: Mapping[str, Receipt] | None = None,
    ) -> BatchOutcome: ...

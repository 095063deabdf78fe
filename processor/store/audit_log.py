"""The audit log's rows, and the one written in a change's own transaction.

An administrative call being served holds its row in :data:`pending` (set by
processor.service.audit for the call). Every transaction of the catalog
(``CatalogBase._transaction``) ends by writing that row, once, before it commits: the row of
a change and the change commit together or not at all. A call that changed nothing (a read,
a refusal) has its row written on its own after it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg

from processor.limits import AUDIT_TEXT_CHARS_MAX

_INSERT: Final = (
    "INSERT INTO audit_log (principal, method, roles, rpc, target, outcome, request_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
OK: Final = "OK"


@dataclass(slots=True)
class AuditEntry:
    """The audit row of one call: who, with which roles, which RPC on what, under which
    request id; its outcome is given when it is written."""

    principal: str
    method: str
    roles: Sequence[str]
    rpc: str
    target: str
    request_id: str
    written: bool = field(default=False)


pending: ContextVar[AuditEntry | None] = ContextVar("pending_audit", default=None)
"""The audit row of the administrative call being served (None outside one)."""


def _cut(text: str) -> str:
    return text[:AUDIT_TEXT_CHARS_MAX]


async def append(cursor: psycopg.AsyncCursor[Any], entry: AuditEntry, outcome: str) -> None:
    """Write ``entry`` with ``outcome`` on ``cursor``, in the transaction it is in."""
    await cursor.execute(
        _INSERT,
        (
            _cut(entry.principal),
            entry.method,
            sorted(entry.roles),
            entry.rpc,
            _cut(entry.target),
            _cut(outcome),
            _cut(entry.request_id),
        ),
    )


async def append_pending(cursor: psycopg.AsyncCursor[Any]) -> AuditEntry | None:
    """Write the pending call's row, unless none is pending or it is written already; the
    entry written (to be marked so once its transaction commits)."""
    entry = pending.get()
    if entry is None or entry.written:
        return None
    await append(cursor, entry, OK)
    return entry

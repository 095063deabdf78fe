"""The audit log of administrative calls: every AdminService call, who made it and how it ended.

:func:`audited` wraps an AdminService method (inside authentication, so the principal is
known): the call's row is held as pending while it runs, so that a change writes it in its
own transaction (processor.store.audit_log); a call that changed nothing (a read, a refusal
by role, a bad request, a failure) has its row written on its own when it ends, with the
status it ended with. A call that was not authenticated has no principal to write: it is
logged, not audited (rows anyone could make without a credential would let them fill the
table); they are logged at debug level and counted with the gRPC status metrics. PINs never
reach a row: the target names programs, series, batches, cards (masked, as in the logs) and
customers only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from processor.errors import LoyaltyError, mask_card
from processor.service import errors
from processor.service.auth import Principal
from processor.service.handlers import Behaviour, Undecodable
from processor.store import audit_log
from processor.store.credentials import Credentials

log = logging.getLogger(__name__)

_TARGET_FIELDS: Final = (
    "program_id",
    "version",
    "series_id",
    "batch",
    "account",
    "customer_id",
    "file_name",
    "principal",
    "rpc",
    "task_id",
)
"""The request fields that say what a call acts on, in the order the target names them."""


def target_of(request: Any) -> str:
    """What an administrative request acts on, as ``field=value`` pairs of the fields set."""
    if isinstance(request, Undecodable):
        return "the request did not parse"
    parts = []
    for name in _TARGET_FIELDS:
        value = getattr(request, name, None)
        if value not in (None, "", 0):
            parts.append(f"{name}={mask_card(value) if name == 'account' else value}")
    return " ".join(parts) or "-"


def outcome_of(error: BaseException) -> str:
    """A failed call's outcome: its status code and reason."""
    code = errors.status_code_of(error)
    reason = error.reason if isinstance(error, LoyaltyError) else "INTERNAL"
    return f"{code.name} {reason}"


def audited(
    behaviour: Behaviour,
    *,
    rpc: str,
    credentials: Credentials,
    principal: Any,
    request_id: Any,
) -> Behaviour:
    """``behaviour`` (a coroutine, or an async generator for a server-streaming call) with
    its audit row written. ``principal`` and ``request_id`` give the call's, read when it
    runs. A stream changes nothing: its row is written when it ends, CANCELLED when the
    caller ended it (how a WatchEvents call ends)."""

    def entry_of(request: Any) -> audit_log.AuditEntry:
        who: Principal = principal()
        return audit_log.AuditEntry(
            who.name, who.method, sorted(who.roles), rpc, target_of(request), request_id()
        )

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            entry = entry_of(request)
            outcome = audit_log.OK
            try:
                async for response in behaviour(request, context):
                    yield response
            except (asyncio.CancelledError, GeneratorExit):
                outcome = "CANCELLED"
                raise
            except BaseException as error:
                outcome = outcome_of(error)
                raise
            finally:
                await _finish(credentials, entry, outcome)

        return stream
    if not inspect.iscoroutinefunction(behaviour):
        raise TypeError(f"{rpc}: only unary and server-streaming calls are audited")

    async def unary(request: Any, context: Any) -> Any:
        entry = entry_of(request)
        token = audit_log.pending.set(entry)
        try:
            response = await behaviour(request, context)
        except BaseException as error:
            await _finish(credentials, entry, outcome_of(error))
            raise
        finally:
            audit_log.pending.reset(token)
        await _finish(credentials, entry, audit_log.OK)
        return response

    return unary


async def _finish(credentials: Credentials, entry: audit_log.AuditEntry, outcome: str) -> None:
    """Write the call's row unless its change wrote it; a call that failed after its change
    committed (a refresh, a read after it) gets a second row saying so."""
    if entry.written:
        if outcome == audit_log.OK:
            return
        outcome = f"{outcome} after its change committed"
    try:
        await credentials.append(entry, outcome)
    except LoyaltyError as error:  # the call's own answer stands; the gap is logged
        log.error(
            "audit row of %s by %s (request id %s, %s) not written: %s",
            entry.rpc,
            entry.principal,
            entry.request_id,
            outcome,
            error,
        )

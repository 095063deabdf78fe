"""What the catalog's modules share: the connection pool they all read and write through (the
Store's, in autocommit mode, so every change runs in an explicit transaction), the
transaction and read helpers that turn PostgreSQL failures into ``DatabaseUnavailableError``
(code 1001) as the ledger does, the advisory locks that serialize changes to one program
file or series, ``ConflictError``, and the opaque page tokens of paged answers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Final

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from processor.errors import DeclinedError, InternalError, InvalidFieldError
from processor.store import audit_log
from processor.store.ledger import Store, database_error

_LOCK_NAMESPACE: Final = 0x4341  # "CA": the first key of the catalog's advisory locks


class ConflictError(DeclinedError):
    """The request is well formed but the catalog's state refuses it (a version not newer, a
    serial prefix in use, a card registered elsewhere, a series used up)."""

    reason = "FAILED_PRECONDITION"


def encode_page_token(values: list[Any]) -> str:
    """An opaque page token carrying ``values`` (JSON in URL-safe base64)."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_page_token(token: str, length: int) -> list[Any]:
    """The ``length`` values of a token ``encode_page_token`` made; InvalidFieldError else."""
    try:
        values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        values = None
    if not isinstance(values, list) or len(values) != length:
        raise InvalidFieldError("page_token", "is not a token a previous page returned")
    return values


async def one_row(cursor: psycopg.AsyncCursor[Any]) -> Any:
    """The next row of a query that always returns one; InternalError when it returned none."""
    row = await cursor.fetchone()
    if row is None:
        raise InternalError("a query that always returns a row returned none")
    return row


class CatalogBase:
    """The pool of the Store (or the pool given) and the catalog's plumbing over it.

    The pool's connections are in autocommit mode (as the Store configures them); every
    change runs in an explicit transaction.
    """

    def __init__(self, store: Store | AsyncConnectionPool[Any]) -> None:
        pool = store if isinstance(store, AsyncConnectionPool) else store.pool
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = pool

    @contextlib.asynccontextmanager
    async def _transaction(self, action: str) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor in a transaction, which ends by writing the audit row of the
        administrative call being served, if any (processor.store.audit_log)."""
        try:
            async with self._pool.connection() as connection:
                async with connection.transaction():
                    cursor = connection.cursor()
                    yield cursor
                    audited = await audit_log.append_pending(cursor)
                # Committed: marked at once, before the connection goes back to the pool (a
                # failure there must not have the row written again as the call's failure).
                if audited is not None:
                    audited.written = True
        except psycopg.Error as error:
            raise database_error(error, action, self._pool.timeout) from error

    @contextlib.asynccontextmanager
    async def _reading(self, action: str) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor outside any transaction, for reads (one round trip per statement)."""
        try:
            async with self._pool.connection() as connection:
                yield connection.cursor()
        except psycopg.Error as error:
            raise database_error(error, action, self._pool.timeout) from error

    async def _lock(self, cursor: psycopg.AsyncCursor[Any], *parts: str) -> None:
        """Serialize the transactions that change one program file or series."""
        key = "/".join(parts)
        await cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_NAMESPACE, key)
        )

"""API keys and the audit log in PostgreSQL (migration 0007).

An API key is ``lk_<key_id>_<secret>``: ``key_id`` names it in lists, logs and the audit
log; only the SHA-256 of ``secret`` (32 random bytes) is stored, so the key is shown once,
when it is created, and never again. A key is revoked, never deleted. The server holds
every live key in memory (processor.service.auth.KeyTable) and reads them again often, so
a revocation reaches every process within ``auth_keys_refresh_seconds``.

The audit log is append-only (a trigger refuses UPDATE, DELETE and TRUNCATE);
processor.store.audit_log writes its rows, a change's in the change's own transaction.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from processor.errors import InvalidFieldError, NotFoundError
from processor.limits import (
    API_KEY_CARDS_MAX,
    API_KEY_NAME_CHARS_MAX,
    AUDIT_PAGE_SIZE_MAX,
    CARD_DIGITS_MAX,
)
from processor.store import audit_log
from processor.store.catalog_base import CatalogBase

KEY_PREFIX: Final = "lk_"
KEY_ID_CHARS: Final = 12
_SECRET_BYTES: Final = 32
KEY_PATTERN: Final = re.compile(r"lk_([a-z0-9-]{1,32})_([A-Za-z0-9_-]{16,64})")
"""A presented key: the id (made keys have 12 hex digits; the demo's are named) and the
secret (43 URL-safe base64 characters for a made key)."""


def new_key_id() -> str:
    """A new key's id: 12 random hex digits."""
    return secrets.token_hex(KEY_ID_CHARS // 2)


def secret_hash(secret: str) -> bytes:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode("ascii")).digest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored API key, without its secret."""

    key_id: str
    name: str
    roles: tuple[str, ...]
    cards: tuple[str, ...] | None
    secret_hash: bytes
    demo: bool
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One row of the audit log."""

    sequence: int
    at: datetime.datetime
    principal: str
    method: str
    roles: tuple[str, ...]
    rpc: str
    target: str
    outcome: str
    request_id: str


_KEY_COLUMNS: Final = "key_id, name, roles, cards, secret_hash, demo, created_at, revoked_at"


def check_cards(cards: Sequence[str], field: str) -> None:
    """A card scope: 1 to API_KEY_CARDS_MAX card numbers; InvalidFieldError naming ``field``."""
    if not 1 <= len(cards) <= API_KEY_CARDS_MAX:
        raise InvalidFieldError(field, f"a card scope names 1 to {API_KEY_CARDS_MAX} cards")
    for card in cards:
        if not (isinstance(card, str) and card.isdigit() and len(card) <= CARD_DIGITS_MAX):
            raise InvalidFieldError(field, "holds something other than a card number")


def _key_record(row: Sequence[Any]) -> KeyRecord:
    key_id, name, roles, cards, hashed, demo, created, revoked = row
    return KeyRecord(
        key_id,
        name,
        tuple(roles),
        None if cards is None else tuple(cards),
        bytes(hashed),
        demo,
        created,
        revoked,
    )


class Credentials(CatalogBase):
    """API keys and the audit log over the Store's pool."""

    async def create_key(
        self,
        name: str,
        roles: Sequence[str],
        *,
        cards: Sequence[str] | None = None,
        key_id: str | None = None,
        secret: str | None = None,
        demo: bool = False,
    ) -> tuple[KeyRecord, str]:
        """Store a new key; the record and the key to hand to its holder (shown once).
        ``key_id`` and ``secret`` are given for the demo's published keys (and a key id by
        a caller that names the key in its audit row before it is made)."""
        if not name or len(name) > API_KEY_NAME_CHARS_MAX or not name.isprintable():
            raise InvalidFieldError(
                "name", f"must be 1 to {API_KEY_NAME_CHARS_MAX} printable characters"
            )
        if cards is not None:
            check_cards(cards, "cards")
        key_id = key_id or new_key_id()
        secret = secret or base64.urlsafe_b64encode(
            secrets.token_bytes(_SECRET_BYTES)
        ).decode().rstrip("=")
        key = f"{KEY_PREFIX}{key_id}_{secret}"
        if KEY_PATTERN.fullmatch(key) is None:
            raise InvalidFieldError("key", "the key id or secret has characters a key cannot")
        async with self._transaction("create an API key") as cursor:
            await cursor.execute(
                f"INSERT INTO api_keys (key_id, name, roles, cards, secret_hash, demo)"
                f" VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key_id) DO NOTHING"
                f" RETURNING {_KEY_COLUMNS}",
                (
                    key_id,
                    name,
                    list(roles),
                    None if cards is None else list(cards),
                    secret_hash(secret),
                    demo,
                ),
            )
            row = await cursor.fetchone()
            if row is None:
                raise InvalidFieldError("key_id", f"a key {key_id!r} exists already")
        return _key_record(row), key

    async def keys(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        """Every stored key, oldest first."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        async with self._reading("list API keys") as cursor:
            await cursor.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at")
            return [_key_record(row) for row in await cursor.fetchall()]

    async def key(self, key_id: str) -> KeyRecord | None:
        """One key by its id (revoked or not); None when there is none."""
        async with self._reading("read an API key") as cursor:
            await cursor.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,)
            )
            row = await cursor.fetchone()
        return None if row is None else _key_record(row)

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False when it was revoked already. NotFoundError for none."""
        async with self._transaction("revoke an API key") as cursor:
            await cursor.execute(
                "UPDATE api_keys SET revoked_at = now()"
                " WHERE key_id = %s AND revoked_at IS NULL RETURNING key_id",
                (key_id,),
            )
            if await cursor.fetchone() is None:
                await cursor.execute("SELECT 1 FROM api_keys WHERE key_id = %s", (key_id,))
                if await cursor.fetchone() is None:
                    raise NotFoundError(f"no API key {key_id!r}")
                return False
            return True

    async def audit(
        self,
        *,
        page_size: int,
        before_sequence: int | None = None,
        principal: str = "",
        rpc: str = "",
    ) -> list[AuditRow]:
        """Audit rows, newest first, before ``before_sequence`` (a page), of one principal
        or RPC when given."""
        if not 1 <= page_size <= AUDIT_PAGE_SIZE_MAX:
            raise InvalidFieldError("page_size", f"must be 1 to {AUDIT_PAGE_SIZE_MAX}")
        async with self._reading("read the audit log") as cursor:
            await cursor.execute(
                "SELECT sequence, at, principal, method, roles, rpc, target, outcome,"
                " request_id FROM audit_log"
                " WHERE (%(before)s::bigint IS NULL OR sequence < %(before)s)"
                " AND (%(principal)s = '' OR principal = %(principal)s)"
                " AND (%(rpc)s = '' OR rpc = %(rpc)s)"
                " ORDER BY sequence DESC LIMIT %(limit)s",
                {"before": before_sequence, "principal": principal, "rpc": rpc, "limit": page_size},
            )
            rows = await cursor.fetchall()
        return [AuditRow(row[0], row[1], row[2], row[3], tuple(row[4]), *row[5:9]) for row in rows]

    async def append(self, entry: audit_log.AuditEntry, outcome: str) -> None:
        """``entry``'s row in a transaction of its own (a call that changed nothing)."""
        entry.written = True  # not again by the transaction's own end
        async with self._transaction("write the audit log") as cursor:
            await audit_log.append(cursor, entry, outcome)

"""The catalog in PostgreSQL: program files, cards and customers.

- **Program files** are stored as submitted (YAML or JSON text), every version kept, after
  the loader validated them; at most one version of a program file is active, and two active
  program files never share a card serial prefix (a card is served by the active program of
  its five-digit prefix). Every change of the active versions increases one counter in the
  same transaction (``registry_token``), which is how every server process notices it.
- **Cards** of a generated series are numbered as ``processor.cards`` does (serial prefix,
  sequence, Luhn check digit), each series continuing after its highest sequence; imported
  cards come from the manual's import layout. Only an HMAC of each PIN is stored.
  Opening balances of imported cards (and batch activation amounts) are *not* posted here:
  they are queued in ``card_opening_balances`` for a job that posts them through the ledger,
  so that balances keep equalling their ledger rows.
- **Customers**: birth and signup days and audience lists, and the cards registered to them.

``cards`` and ``customers`` are on the transaction path: one query per batch for any number
of keys. Everything else is administration. PostgreSQL failures become
``DatabaseUnavailableError`` (code 1001), as in the ledger.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from processor import calendar
from processor.cards import (
    GeneratedCard,
    ImportedCard,
    card_number,
    first_sequences,
    random_pin,
    read_card_import,
)
from processor.engine.types import Customer, Posting
from processor.errors import (
    DeclinedError,
    InputFileError,
    InternalError,
    InvalidFieldError,
    NotFoundError,
    Problem,
)
from processor.limits import (
    AUDIENCE_CHARS_MAX,
    AUDIENCES_MAX,
    CARD_IMPORT_BYTES_MAX,
    CARD_SERIAL_PREFIX_DIGITS,
    CUSTOMER_ID_CHARS_MAX,
    GENERATE_CARDS_MAX,
    LEDGER_PAGE_SIZE_MAX,
    LOOKUP_KEYS_MAX,
    PROGRAM_FILE_BYTES_MAX,
    SEARCH_PAGE_SIZE_MAX,
)
from processor.money import is_currency
from processor.program.cards import CardBatch, CardSeries
from processor.program.loader import parse_document, validate_program
from processor.program.model import ProgramFile
from processor.store.ledger import Store, database_error

PIN_KEY_ENV: Final = "LOYALTY_PIN_KEY"
"""The environment variable holding the server secret PIN hashes are keyed with."""

DEVELOPMENT_PIN_KEY: Final = b"loyalty-development-pin-key (not a secret: set LOYALTY_PIN_KEY)"
"""The key used when ``LOYALTY_PIN_KEY`` is not set: fine for development and tests, never
for production, since anyone can read it here. Changing the key invalidates every stored
PIN hash, so a deployment sets it once and keeps it."""

_LOCK_NAMESPACE: Final = 0x4341  # "CA": the first key of the catalog's advisory locks

ProgramType = Literal["tender", "award", "loyalty"]
CardStatus = Literal["active", "inactive"]


# --------------------------------------------------------------------------- errors


class AlreadyExistsError(DeclinedError):
    """What the request would create exists already (a program file id taken)."""

    reason = "ALREADY_EXISTS"


class ConflictError(DeclinedError):
    """The request is well formed but the catalog's state refuses it (a version not newer, a
    serial prefix in use, a card registered elsewhere, a series used up)."""

    reason = "FAILED_PRECONDITION"


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class ProgramPart:
    """One tender, award or loyalty program of a program file."""

    id: str
    type: ProgramType
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    """One stored version of a program file."""

    id: str
    version: int
    status: str  # "active" or "inactive"
    name: str
    description: str
    card_type: str
    serial_prefix: str
    source: str
    parts: tuple[ProgramPart, ...]
    versions: tuple[int, ...]  # every stored version of the file, ascending
    account_count: int  # cards of the program file
    member_count: int  # registered customers holding one


@dataclass(frozen=True, slots=True)
class ProgramSummary:
    """One row of a program search: a program of a program file at the version shown."""

    part: ProgramPart
    program_id: str
    version: int  # the active version, else the latest
    status: str
    card_type: str
    serial_prefix: str
    member_count: int
    account_count: int


@dataclass(frozen=True, slots=True)
class SearchPage:
    programs: list[ProgramSummary]
    next_page_token: str  # empty on the last page


@dataclass(frozen=True, slots=True)
class CardRecord:
    """What the transaction path needs to know about a card.

    ``status`` is "expired" for an active card past ``expires_day`` (the last usable day).
    """

    number: str
    program_id: str
    series: str
    batch: str
    status: str  # active, inactive, expired or closed
    pin_hash: bytes | None
    customer_id: str | None
    expires_day: int | None


@dataclass(frozen=True, slots=True)
class ImportSummary:
    imported_count: int
    activated_count: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One ledger row of a card, numbered in commit order from 1."""

    sequence: int
    request_id: str
    posting: Posting
    committed_at: datetime.datetime


# --------------------------------------------------------------------------- helpers


def pin_key_from_environment() -> bytes:
    """``LOYALTY_PIN_KEY`` as bytes, or the documented development key when unset."""
    value = os.environ.get(PIN_KEY_ENV, "")
    return value.encode("utf-8") if value else DEVELOPMENT_PIN_KEY


def pin_hash(key: bytes, number: str, pin: str) -> bytes:
    """HMAC-SHA256 of the card number and PIN under the server's key.

    The card number is part of the message, so two cards with the same PIN have different
    hashes; the key keeps a stolen table of hashes from being searched offline.
    """
    return hmac.new(key, f"{number}:{pin}".encode(), hashlib.sha256).digest()


def parse_program_text(text: str, file_name: str = "program.yaml") -> ProgramFile:
    """Validate a program file given as text; InputFileError names every problem."""
    raw = text.encode("utf-8")
    if len(raw) > PROGRAM_FILE_BYTES_MAX:
        problem = Problem("", f"is larger than {PROGRAM_FILE_BYTES_MAX} bytes")
        raise InputFileError(file_name, [problem])
    return validate_program(file_name, parse_document(file_name, raw))


def parse_stored_program(program_id: str, version: int, source: str) -> ProgramFile:
    """A stored program file, read back: JSON when it parses as JSON, else YAML."""
    name = f"{program_id}@{version}"
    stripped = source.lstrip()
    if stripped.startswith("{"):
        with contextlib.suppress(json.JSONDecodeError):
            return validate_program(name, json.loads(source))
    return validate_program(name, parse_document(f"{name}.yaml", source.encode("utf-8")))


def read_card_import_text(
    text: str,
    file_name: str,
    program: ProgramFile,
    *,
    existing: Iterable[str] = (),
) -> list[ImportedCard]:
    """``processor.cards.read_card_import`` over text: the cards, or InputFileError naming
    ``file_name`` and every bad line.

    Balances are read in the program's first currency (tender, else award, else loyalty) and
    its first loyalty program's points precision, as the loader reads a series' import file.
    """
    raw = text.encode("utf-8")
    if len(raw) > CARD_IMPORT_BYTES_MAX:
        raise InputFileError(
            file_name, [Problem("", f"is larger than {CARD_IMPORT_BYTES_MAX} bytes")]
        )
    currency, precision = _import_units(program)
    with tempfile.TemporaryDirectory(prefix="loyalty-import-") as folder:
        path = Path(folder) / "cards.csv"
        path.write_bytes(raw)
        try:
            return read_card_import(
                path,
                program.card,
                currency=currency,
                points_precision=precision,
                existing=frozenset(existing),
            )
        except InputFileError as error:
            raise InputFileError(file_name, error.problems) from None


def _import_units(program: ProgramFile) -> tuple[str, int]:
    currencies = [] if program.tender is None else [program.tender.currency]
    currencies += [award.currency for award in program.award_programs]
    currencies += [loyalty.currency for loyalty in program.loyalty_programs]
    currency = currencies[0] if currencies and is_currency(currencies[0]) else "USD"
    precision = program.loyalty_programs[0].points_precision if program.loyalty_programs else 0
    return currency, precision


def program_parts(program: ProgramFile) -> list[ProgramPart]:
    parts: list[ProgramPart] = []
    if program.tender is not None:
        tender = program.tender
        parts.append(ProgramPart(tender.id, "tender", tender.name, tender.description))
    for award in program.award_programs:
        parts.append(ProgramPart(award.id, "award", award.name, award.description))
    for loyalty in program.loyalty_programs:
        parts.append(ProgramPart(loyalty.id, "loyalty", loyalty.name, loyalty.description))
    return parts


def today() -> int:
    """The server's local business day, as a day number."""
    return calendar.to_day(datetime.date.today())


def _as_day(value: int | str | datetime.date | None, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, datetime.date):
        return calendar.to_day(value)
    try:
        return calendar.parse_day(value)
    except ValueError:
        raise InvalidFieldError(field, f"{value!r} is not a date (YYYY-MM-DD)") from None


def _check_text(value: object, field: str, chars_max: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= chars_max:
        raise InvalidFieldError(field, f"must be 1 to {chars_max} characters")
    # PostgreSQL refuses NUL in text; other control characters have no place in a name.
    if not value.isprintable():
        raise InvalidFieldError(field, "must be printable text")
    return value


def _check_audiences(audiences: Iterable[str]) -> list[str]:
    unique = sorted(set(audiences))
    if len(unique) > AUDIENCES_MAX:
        raise InvalidFieldError("audiences", f"more than {AUDIENCES_MAX} lists")
    for name in unique:
        _check_text(name, "audiences", AUDIENCE_CHARS_MAX)
    return unique


def _number_key(number: str) -> tuple[int, str]:
    """Card numbers are digits of varying lengths: order them as numbers."""
    return len(number), number


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


# --------------------------------------------------------------------------- SQL

_PROGRAM_COLUMNS = "id, version, status, name, description, card_type, serial_prefix, source"

_INSERT_PROGRAM = """
INSERT INTO programs (id, version, status, source, name, description, card_type, serial_prefix)
VALUES (%s, %s, 'inactive', %s, %s, %s, %s, %s)
"""
_INSERT_PARTS = """
INSERT INTO program_parts (program_id, version, part_id, type, name, description)
SELECT %s, %s, * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
"""
_BUMP_GENERATION = """
UPDATE program_activations SET generation = generation + 1, updated_at = now()
RETURNING generation
"""
_SEARCH = """
WITH shown AS (
    SELECT DISTINCT ON (id) id, version, status, name, card_type, serial_prefix
    FROM programs
    ORDER BY id, status = 'active' DESC, version DESC
)
SELECT s.id, s.version, s.status, s.card_type, s.serial_prefix,
       p.part_id, p.type, p.name, p.description
FROM shown AS s
JOIN program_parts AS p ON p.program_id = s.id AND p.version = s.version
WHERE {conditions}
ORDER BY s.id DESC, p.part_id DESC
LIMIT %(limit)s
"""
_TEXT_FIELDS = ("s.id", "s.name", "p.part_id", "p.name")
_COUNTS = """
SELECT definition, count(*), count(DISTINCT customer_id) FROM cards
WHERE definition = ANY(%s::text[]) GROUP BY definition
"""
_SELECT_CARDS = """
SELECT card_number, program, series, batch, status, pin_hash, customer_id, expires_day
FROM cards WHERE card_number = ANY(%b::text[])
"""
_INSERT_CARDS = """
INSERT INTO cards (card_number, definition, program, series, batch, status, pin_hash,
                   expires_day, sequence, attributes)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::bytea[], %s::int4[], %s::int8[], %s::jsonb[])
ON CONFLICT (card_number) DO NOTHING
RETURNING card_number
"""
_INSERT_OPENING = """
INSERT INTO card_opening_balances (card_number, program_id, version, tender, loyalty, award,
                                   location)
SELECT * FROM unnest(%s::text[], %s::text[], %s::int4[], %s::int8[], %s::int8[], %s::int8[],
                     %s::text[])
ON CONFLICT (card_number) DO NOTHING
"""
_RANGE = (
    " AND (length(card_number), card_number) BETWEEN (%(first_length)s, %(first)s)"
    " AND (%(last_length)s, %(last)s)"
)
_LEDGER_PAGE = """
SELECT sequence, request_id, program, program_version, balance, kind, amount, rule, day,
       created_at
FROM (
    SELECT row_number() OVER (ORDER BY created_at, request_id, seq) AS sequence,
           request_id, program, program_version, balance, kind, amount, rule, day, created_at
    FROM ledger WHERE account_id = %(account)s
) AS numbered
WHERE (%(program)s = '' OR program = %(program)s) AND sequence < %(before)s
ORDER BY sequence DESC
LIMIT %(limit)s
"""
_UPSERT_CUSTOMER = """
INSERT INTO customers (customer_id, birth_day, signup_day, audiences)
VALUES (%(id)s, %(birth)s, %(signup)s, %(audiences)s::text[])
ON CONFLICT (customer_id) DO UPDATE SET
    birth_day = excluded.birth_day,
    signup_day = excluded.signup_day,
    audiences = CASE WHEN %(keep_audiences)s THEN customers.audiences
                     ELSE excluded.audiences END,
    updated_at = now()
RETURNING birth_day, signup_day, audiences, (xmax = 0) AS created
"""


# --------------------------------------------------------------------------- the catalog


class Catalog:
    """Program files, cards and customers, over the Store's connection pool.

    The pool's connections are in autocommit mode (as the Store configures them); every
    change here runs in an explicit transaction.
    """

    def __init__(self, store: Store | AsyncConnectionPool[Any], *, pin_key: bytes | None = None):
        pool = store if isinstance(store, AsyncConnectionPool) else store.pool
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = pool
        self._pin_key = pin_key if pin_key is not None else pin_key_from_environment()
        if not self._pin_key:
            raise ValueError("the PIN key is empty")

    # ----------------------------------------------------------------------- plumbing

    @contextlib.asynccontextmanager
    async def _transaction(self, action: str) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        try:
            async with self._pool.connection() as connection, connection.transaction():
                yield connection.cursor()
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

    # ----------------------------------------------------------------------- programs

    async def create_program(self, text: str, file_name: str = "program.yaml") -> tuple[str, int]:
        """Store a new program file, inactive; (id, version). PROGRAM_EXISTS if the id is taken."""
        return await self._store_program(text, file_name, new=True)

    async def update_program(self, text: str, file_name: str = "program.yaml") -> tuple[str, int]:
        """Store a new version of a program file, inactive; VERSION_EXISTS unless it is newer
        than every stored version."""
        return await self._store_program(text, file_name, new=False)

    async def _store_program(self, text: str, file_name: str, *, new: bool) -> tuple[str, int]:
        program = parse_program_text(text, file_name or "program.yaml")
        parts = program_parts(program)
        try:
            async with self._transaction("store a program file") as cursor:
                await self._lock(cursor, "program", program.id)
                await cursor.execute(
                    "SELECT max(version) FROM programs WHERE id = %s", (program.id,)
                )
                row = await cursor.fetchone()
                latest = row[0] if row else None
                _check_new_version(program, latest, new=new)
                await cursor.execute(
                    _INSERT_PROGRAM,
                    (
                        program.id,
                        program.version,
                        text,
                        program.name,
                        program.description,
                        program.card.type,
                        program.card.serial_prefix,
                    ),
                )
                await cursor.execute(
                    _INSERT_PARTS,
                    (
                        program.id,
                        program.version,
                        [part.id for part in parts],
                        [part.type for part in parts],
                        [part.name for part in parts],
                        [part.description for part in parts],
                    ),
                )
        except InternalError as error:
            if isinstance(error.__cause__, psycopg.errors.UniqueViolation):
                raise ConflictError(
                    f"program {program.id} version {program.version} is stored already",
                    reason="VERSION_EXISTS",
                ) from error
            raise
        return program.id, program.version

    async def activate(self, program_id: str, version: int) -> int:
        """Make ``version`` the active one; the version active before (0 for none).

        One transaction deactivates the other versions, activates this one and increases the
        registry token. PREFIX_IN_USE when another active program file has its serial prefix.
        """
        try:
            async with self._transaction("activate a program") as cursor:
                await self._lock(cursor, "program", program_id)
                rows = await self._versions_for_update(cursor, program_id)
                if version not in rows:
                    raise _unknown_version(program_id, version)
                previous = next((v for v, status in rows.items() if status == "active"), 0)
                if previous == version:
                    return previous
                await cursor.execute(
                    "SELECT serial_prefix FROM programs WHERE id = %s AND version = %s",
                    (program_id, version),
                )
                prefix = (await _one(cursor))[0]
                await cursor.execute(
                    "SELECT id FROM programs WHERE status = 'active' AND serial_prefix = %s"
                    " AND id <> %s",
                    (prefix, program_id),
                )
                clash = await cursor.fetchone()
                if clash is not None:
                    raise _prefix_in_use(prefix, clash[0])
                await cursor.execute(
                    "UPDATE programs SET status = 'inactive', updated_at = now()"
                    " WHERE id = %s AND status = 'active'",
                    (program_id,),
                )
                await cursor.execute(
                    "UPDATE programs SET status = 'active', updated_at = now()"
                    " WHERE id = %s AND version = %s",
                    (program_id, version),
                )
                await cursor.execute(_BUMP_GENERATION)
                return previous
        except InternalError as error:
            if isinstance(error.__cause__, psycopg.errors.UniqueViolation):
                # Another program file with this prefix was activated at the same moment.
                raise _prefix_in_use("", "another program") from error
            raise

    async def deactivate(self, program_id: str, version: int) -> bool:
        """Stop ``version``; False when it was not active (nothing changes)."""
        async with self._transaction("deactivate a program") as cursor:
            await self._lock(cursor, "program", program_id)
            rows = await self._versions_for_update(cursor, program_id)
            if version not in rows:
                raise _unknown_version(program_id, version)
            if rows[version] != "active":
                return False
            await cursor.execute(
                "UPDATE programs SET status = 'inactive', updated_at = now()"
                " WHERE id = %s AND version = %s",
                (program_id, version),
            )
            await cursor.execute(_BUMP_GENERATION)
            return True

    async def _versions_for_update(
        self, cursor: psycopg.AsyncCursor[Any], program_id: str
    ) -> dict[int, str]:
        await cursor.execute(
            "SELECT version, status FROM programs WHERE id = %s ORDER BY version FOR UPDATE",
            (program_id,),
        )
        rows = dict(await cursor.fetchall())
        if not rows:
            raise NotFoundError(f"no program file {program_id!r}", reason="UNKNOWN_PROGRAM")
        return rows

    async def get(self, program_id: str, version: int = 0, *, counts: bool = True) -> ProgramRecord:
        """One version of a program file: ``version`` 0 reads the active one, else the latest.

        ``counts`` False leaves ``account_count`` and ``member_count`` at 0: counting scans
        every card of the program, seconds for ten million, which a caller that only needs
        the file should not pay."""
        async with self._reading("read a program") as cursor:
            await cursor.execute(
                f"SELECT {_PROGRAM_COLUMNS} FROM programs WHERE id = %s"
                " ORDER BY status = 'active' DESC, version DESC",
                (program_id,),
            )
            rows = await cursor.fetchall()
            if not rows:
                raise NotFoundError(f"no program file {program_id!r}", reason="UNKNOWN_PROGRAM")
            chosen = rows[0] if version == 0 else next((r for r in rows if r[1] == version), None)
            if chosen is None:
                raise _unknown_version(program_id, version)
            await cursor.execute(
                "SELECT part_id, type, name, description FROM program_parts"
                " WHERE program_id = %s AND version = %s ORDER BY part_id",
                (program_id, chosen[1]),
            )
            parts = tuple(ProgramPart(*row) for row in await cursor.fetchall())
            counted = await _counts(cursor, [program_id]) if counts else {}
        accounts, members = counted.get(program_id, (0, 0))
        program, chosen_version, status, name, description, card_type, prefix, source = chosen
        return ProgramRecord(
            id=program,
            version=chosen_version,
            status="active" if status == "active" else "inactive",
            name=name,
            description=description,
            card_type=card_type,
            serial_prefix=prefix,
            source=source,
            parts=parts,
            versions=tuple(sorted(row[1] for row in rows)),
            account_count=accounts,
            member_count=members,
        )

    async def search(
        self,
        *,
        text: str = "",
        exact: bool = False,
        type: ProgramType | None = None,
        status: CardStatus | None = None,
        serial_prefix: str = "",
        page_size: int = SEARCH_PAGE_SIZE_MAX,
        page_token: str = "",
    ) -> SearchPage:
        """The programs (tender, award, loyalty) of every program file at the version shown
        (the active one, else the latest), by program file id descending.

        ``text`` matches the id or name of the program or of its file, ignoring case:
        equal with ``exact``, contained otherwise. ``page_size`` is at most 25.
        """
        if serial_prefix and not (
            len(serial_prefix) == CARD_SERIAL_PREFIX_DIGITS and serial_prefix.isdigit()
        ):
            raise InvalidFieldError("card_serial_prefix", "must be exactly five digits")
        if not 1 <= page_size <= SEARCH_PAGE_SIZE_MAX:
            raise InvalidFieldError("page_size", f"must be 1 to {SEARCH_PAGE_SIZE_MAX}")
        conditions = ["true"]
        params: dict[str, Any] = {"limit": page_size + 1, "text": text.lower()}
        if text:
            compare = "lower({}) = %(text)s" if exact else "strpos(lower({}), %(text)s) > 0"
            conditions.append("(" + " OR ".join(compare.format(f) for f in _TEXT_FIELDS) + ")")
        if type is not None:
            conditions.append("p.type = %(type)s")
            params["type"] = type
        if status == "active":
            conditions.append("s.status = 'active'")
        elif status is not None:
            conditions.append("s.status <> 'active'")
        if serial_prefix:
            conditions.append("s.serial_prefix = %(prefix)s")
            params["prefix"] = serial_prefix
        if page_token:
            after_id, after_part = decode_page_token(page_token, 2)
            conditions.append("(s.id, p.part_id) < (%(after_id)s, %(after_part)s)")
            params.update(after_id=str(after_id), after_part=str(after_part))
        query = _SEARCH.format(conditions=" AND ".join(conditions))
        async with self._reading("search programs") as cursor:
            await cursor.execute(query, params)
            rows = await cursor.fetchall()
            page = rows[:page_size]
            counts = await _counts(cursor, sorted({row[0] for row in page}))
        programs = [
            ProgramSummary(
                part=ProgramPart(part_id, part_type, name, description),
                program_id=program_id,
                version=version,
                status="active" if row_status == "active" else "inactive",
                card_type=card_type,
                serial_prefix=prefix,
                account_count=counts.get(program_id, (0, 0))[0],
                member_count=counts.get(program_id, (0, 0))[1],
            )
            for (
                program_id, version, row_status, card_type, prefix,
                part_id, part_type, name, description,
            ) in page
        ]  # fmt: skip
        token = ""
        if len(rows) > page_size:
            token = encode_page_token([page[-1][0], page[-1][5]])
        return SearchPage(programs, token)

    async def active_programs(self) -> list[tuple[str, int, str]]:
        """(id, version, source) of every active program file."""
        async with self._reading("read the active programs") as cursor:
            await cursor.execute(
                "SELECT id, version, source FROM programs WHERE status = 'active' ORDER BY id"
            )
            return [(row[0], row[1], row[2]) for row in await cursor.fetchall()]

    async def program_source(self, program_id: str, version: int) -> str:
        """The stored text of one version of a program file."""
        async with self._reading("read a program") as cursor:
            await cursor.execute(
                "SELECT source FROM programs WHERE id = %s AND version = %s", (program_id, version)
            )
            row = await cursor.fetchone()
        if row is None:
            raise _unknown_version(program_id, version)
        return str(row[0])

    async def registry_token(self) -> int:
        """A number that changes whenever the active versions change (a cheap read)."""
        async with self._reading("read the registry token") as cursor:
            await cursor.execute("SELECT generation FROM program_activations")
            return int((await _one(cursor))[0])

    async def _program_for_cards(
        self, program_id: str, series_id: str
    ) -> tuple[ProgramRecord, ProgramFile, CardSeries, int]:
        """The version cards are made under (active, else latest), its series and index."""
        record = await self.get(program_id, counts=False)
        program = parse_stored_program(record.id, record.version, record.source)
        for index, series in enumerate(program.series):
            if series.id == series_id:
                return record, program, series, index
        raise NotFoundError(
            f"program file {program_id} version {record.version} has no series {series_id!r}",
            reason="UNKNOWN_SERIES",
        )

    # ----------------------------------------------------------------------- cards

    async def generate_cards(
        self, program_id: str, series_id: str, count: int
    ) -> list[GeneratedCard]:
        """The next ``count`` cards (1 to 10,000) of a generated series, in sequence order.

        Numbers continue after the highest sequence the series used; PINs (when the card
        definition generates them) are returned here once and only their hashes stored.
        SERIES_EXHAUSTED when fewer than ``count`` cards are left.
        """
        if not 1 <= count <= GENERATE_CARDS_MAX:
            raise InvalidFieldError("count", f"must be 1 to {GENERATE_CARDS_MAX}")
        _, program, series, index = await self._program_for_cards(program_id, series_id)
        first = first_sequences(program.series)[index]
        if first is None or series.total_cards is None:
            raise InvalidFieldError(
                "series_id", f"series {series_id} is imported, not generated",
                reason="SERIES_IMPORTED",
            )  # fmt: skip
        definition = program.card
        day = today()
        async with self._transaction("generate cards") as cursor:
            await self._lock(cursor, "series", program_id, series_id)
            await cursor.execute(
                "SELECT max(sequence) FROM cards WHERE definition = %s AND series = %s"
                " AND sequence IS NOT NULL",
                (program_id, series_id),
            )
            highest = (await _one(cursor))[0]
            start = first if highest is None else int(highest) + 1
            remaining = first + series.total_cards - start
            if count > remaining:
                raise ConflictError(
                    f"series {series_id} has {max(remaining, 0)} cards left, not {count}",
                    reason="SERIES_EXHAUSTED",
                )
            cards = []
            batches = _Batches(series)
            rows: tuple[list[Any], ...] = tuple([] for _ in range(10))
            for sequence in range(start, start + count):
                batch = batches.at(sequence - first)
                active = definition.active and batch.activate
                try:
                    number = card_number(
                        definition.serial_prefix, sequence, definition.number_length
                    )
                except ValueError as error:
                    raise ConflictError(str(error), reason="SERIES_EXHAUSTED") from None
                pin = random_pin(definition.pin_length) if definition.has_pins else None
                cards.append(GeneratedCard(number, pin, batch.name, active))
                expires = _expiry(series, day) if active or series.expiry_type == "fixed" else None
                for column, value in zip(
                    rows,
                    (
                        number, program_id, program_id, series_id, batch.name,
                        "active" if active else "inactive",
                        None if pin is None else pin_hash(self._pin_key, number, pin),
                        expires, sequence, "{}",
                    ),
                    strict=True,
                ):  # fmt: skip
                    column.append(value)
            await cursor.execute(_INSERT_CARDS, rows)
            inserted = len(await cursor.fetchall())
            if inserted != count:
                raise ConflictError(
                    f"{count - inserted} of the card numbers {cards[0].number}.."
                    f"{cards[-1].number} exist already (another program file uses the prefix "
                    f"{definition.serial_prefix})",
                    reason="CARD_EXISTS",
                )
        return cards

    async def remaining_cards(self, program_id: str, series_id: str) -> int:
        """How many cards of a series are still to be generated (or imported)."""
        _, program, series, index = await self._program_for_cards(program_id, series_id)
        first = first_sequences(program.series)[index]
        async with self._reading("count cards") as cursor:
            if first is not None and series.total_cards is not None:
                await cursor.execute(
                    "SELECT max(sequence) FROM cards WHERE definition = %s AND series = %s"
                    " AND sequence IS NOT NULL",
                    (program_id, series_id),
                )
                highest = (await _one(cursor))[0]
                start = first if highest is None else int(highest) + 1
                return max(first + series.total_cards - start, 0)
            used = await _series_count(cursor, program_id, series_id)
        return max(_series_capacity(series) - used, 0)

    async def import_cards(
        self, program_id: str, series_id: str, text: str, file_name: str = "cards.csv"
    ) -> ImportSummary:
        """Create the cards of an imported series from the manual's card import layout.

        The file is checked whole first (InputFileError naming every bad line; nothing is
        written). Cards with an opening balance are activated; the balances themselves are
        not posted here but queued in ``card_opening_balances`` for the job that posts them
        through the ledger.
        """
        record, program, series, _ = await self._program_for_cards(program_id, series_id)
        if series.import_file is None:
            raise InvalidFieldError(
                "series_id", f"series {series_id} is generated, not imported",
                reason="SERIES_GENERATED",
            )  # fmt: skip
        name = file_name or "cards.csv"
        cards = await asyncio.to_thread(read_card_import_text, text, name, program)
        taken = set(await self.cards([card.number for card in cards])) if cards else set()
        if taken:
            # Read again knowing which numbers exist, so that each is reported at its line.
            await asyncio.to_thread(read_card_import_text, text, name, program, existing=taken)
        day = today()
        activated = 0
        async with self._transaction("import cards") as cursor:
            await self._lock(cursor, "series", program_id, series_id)
            used = await _series_count(cursor, program_id, series_id)
            room = _series_capacity(series) - used
            if len(cards) > room:
                reason = f"lists {len(cards)} cards; series {series_id} has room for {room}"
                raise InputFileError(name, [Problem("", reason)])
            rows: tuple[list[Any], ...] = tuple([] for _ in range(10))
            opening: tuple[list[Any], ...] = tuple([] for _ in range(7))
            batches = _Batches(series)
            for offset, card in enumerate(cards):
                batch = batches.at(used + offset)
                active = card.activate or (program.card.active and batch.activate)
                activated += active
                expires = _expiry(series, day) if active or series.expiry_type == "fixed" else None
                pin = None if card.pin is None else pin_hash(self._pin_key, card.number, card.pin)
                values = (
                    card.number, program_id, program_id, series_id, batch.name,
                    "active" if active else "inactive", pin, expires, None,
                    json.dumps(dict(card.attributes)),
                )  # fmt: skip
                for column, value in zip(rows, values, strict=True):
                    column.append(value)
                balances = (card.tender_balance, card.loyalty_balance, card.award_balance)
                if any(value is not None for value in balances):
                    entry = (card.number, program_id, record.version, *balances, "")
                    for column, value in zip(opening, entry, strict=True):
                        column.append(value)
            await cursor.execute(_INSERT_CARDS, rows)
            if len(await cursor.fetchall()) != len(cards):
                raise ConflictError(
                    "some of the cards were created meanwhile; import the file again to see which",
                    reason="CARD_EXISTS",
                )
            if opening[0]:
                await cursor.execute(_INSERT_OPENING, opening)
        return ImportSummary(len(cards), activated)

    async def set_batch_status(
        self,
        program_id: str,
        series_id: str,
        batch: str,
        status: CardStatus,
        *,
        first_number: str = "",
        last_number: str = "",
        location: str = "",
        activation_amount: int | None = None,
        activation_currency: str = "",
    ) -> int:
        """Activate or deactivate the cards of a batch (or of a number range in it); how many
        changed. Cards activated get their series' relative expiry from today; the activation
        amount (else the tender program's initial balance) is queued for posting, as imported
        balances are."""
        if status not in ("active", "inactive"):
            raise InvalidFieldError("status", "must be active or inactive")
        record, program, series = await self._batch(program_id, series_id, batch)
        where, params = _batch_where(program_id, series_id, batch, first_number, last_number)
        params["expires"] = _expiry(series, today()) if series.expiry_type == "relative" else None
        if status == "active":
            update = (
                "UPDATE cards SET status = 'active', expires_day = coalesce(expires_day,"
                f" %(expires)s) WHERE {where} AND status = 'inactive' RETURNING card_number"
            )
        else:
            update = (
                "UPDATE cards SET status = 'inactive'"
                f" WHERE {where} AND status = 'active' RETURNING card_number"
            )
        amount = _activation_amount(program, status, activation_amount, activation_currency)
        async with self._transaction("change a batch's status") as cursor:
            await cursor.execute(update, params)
            numbers = [row[0] for row in await cursor.fetchall()]
            if status == "active" and numbers and amount:
                size = len(numbers)
                await cursor.execute(
                    _INSERT_OPENING,
                    (
                        numbers, [program_id] * size, [record.version] * size, [amount] * size,
                        [None] * size, [None] * size, [location] * size,
                    ),
                )  # fmt: skip
        return len(numbers)

    async def set_number_range_status(
        self,
        program_id: str,
        series_id: str,
        batch: str,
        first_number: str,
        last_number: str,
        status: CardStatus,
    ) -> int:
        """``set_batch_status`` for the cards of a number range (inclusive) of a batch."""
        return await self.set_batch_status(
            program_id, series_id, batch, status, first_number=first_number, last_number=last_number
        )

    async def set_batch_expiry(
        self,
        program_id: str,
        series_id: str,
        batch: str,
        expires_day: int,
        *,
        first_number: str = "",
        last_number: str = "",
    ) -> int:
        """Set the last usable day of the cards of a batch (or a range of it); how many changed."""
        await self._batch(program_id, series_id, batch)
        where, params = _batch_where(program_id, series_id, batch, first_number, last_number)
        params["expires"] = expires_day
        async with self._transaction("change a batch's expiry") as cursor:
            await cursor.execute(
                f"UPDATE cards SET expires_day = %(expires)s WHERE {where}"
                " AND expires_day IS DISTINCT FROM %(expires)s",
                params,
            )
            return cursor.rowcount

    async def _batch(
        self, program_id: str, series_id: str, batch: str
    ) -> tuple[ProgramRecord, ProgramFile, CardSeries]:
        record, program, series, _ = await self._program_for_cards(program_id, series_id)
        if all(one.name != batch for one in series.batches):
            raise NotFoundError(
                f"series {series_id} has no batch {batch!r}", reason="UNKNOWN_BATCH"
            )
        return record, program, series

    async def cards(self, numbers: Sequence[str]) -> dict[str, CardRecord]:
        """The cards of these numbers that exist, in one query (the transaction path's)."""
        if len(numbers) > LOOKUP_KEYS_MAX:
            raise InternalError(f"a lookup of {len(numbers)} cards is over {LOOKUP_KEYS_MAX}")
        if not numbers:
            return {}
        try:
            async with self._pool.connection() as connection:
                cursor = connection.cursor(binary=True)
                await cursor.execute(_SELECT_CARDS, (list(numbers),))
                rows = await cursor.fetchall()
        except psycopg.Error as error:
            raise database_error(error, "look up cards", self._pool.timeout) from error
        day = today()
        found = {}
        for number, program_id, series, batch, status, hashed, customer_id, expires in rows:
            if status == "active" and expires is not None and expires < day:
                status = "expired"
            found[number] = CardRecord(
                number, program_id, series, batch, status,
                None if hashed is None else bytes(hashed), customer_id, expires,
            )  # fmt: skip
        return found

    def verify_pin(self, record: CardRecord, pin: str) -> bool:
        """Whether ``pin`` is the card's PIN (constant-time); False for a card without one."""
        if record.pin_hash is None:
            return False
        return hmac.compare_digest(pin_hash(self._pin_key, record.number, pin), record.pin_hash)

    # ----------------------------------------------------------------------- customers

    async def enroll(
        self,
        customer_id: str,
        birth_date: int | str | datetime.date | None = None,
        signup_date: int | str | datetime.date | None = None,
        audiences: Sequence[str] | None = None,
    ) -> tuple[Customer, bool]:
        """Create a customer, or update the one with this id; (customer as stored, created).

        ``audiences`` None keeps an existing customer's memberships.
        """
        _check_text(customer_id, "customer.id", CUSTOMER_ID_CHARS_MAX)
        params = {
            "id": customer_id,
            "birth": _as_day(birth_date, "customer.birth_date"),
            "signup": _as_day(signup_date, "customer.signup_date"),
            "audiences": _check_audiences(audiences or ()),
            "keep_audiences": audiences is None,
        }
        async with self._transaction("enroll a customer") as cursor:
            await cursor.execute(_UPSERT_CUSTOMER, params)
            birth, signup, stored, created = await _one(cursor)
        return Customer(customer_id, birth, signup, frozenset(stored)), bool(created)

    async def register_card(self, card_number: str, customer_id: str) -> None:
        """Register a card to an enrolled customer; CARD_REGISTERED if another holds it."""
        async with self._transaction("register a card") as cursor:
            await cursor.execute("SELECT 1 FROM customers WHERE customer_id = %s", (customer_id,))
            if await cursor.fetchone() is None:
                raise NotFoundError(f"no customer {customer_id!r}", reason="UNKNOWN_CUSTOMER")
            await cursor.execute(
                "SELECT customer_id FROM cards WHERE card_number = %s FOR UPDATE", (card_number,)
            )
            row = await cursor.fetchone()
            if row is None:
                raise NotFoundError(f"no card {card_number}", reason="UNKNOWN_CARD")
            if row[0] == customer_id:
                return
            if row[0] is not None:
                raise ConflictError(
                    f"card {card_number} is registered to another customer",
                    reason="CARD_REGISTERED",
                )
            await cursor.execute(
                "UPDATE cards SET customer_id = %s WHERE card_number = %s",
                (customer_id, card_number),
            )

    async def set_audiences(self, customer_id: str, audiences: Iterable[str]) -> tuple[str, ...]:
        """Replace a customer's audience memberships; the memberships as stored, sorted."""
        lists = _check_audiences(audiences)
        async with self._transaction("set audiences") as cursor:
            await cursor.execute(
                "UPDATE customers SET audiences = %s::text[], updated_at = now()"
                " WHERE customer_id = %s",
                (lists, customer_id),
            )
            if cursor.rowcount == 0:
                raise NotFoundError(f"no customer {customer_id!r}", reason="UNKNOWN_CUSTOMER")
        return tuple(lists)

    async def customers(self, ids: Sequence[str]) -> dict[str, Customer]:
        """The customers of these ids that exist, in one query (the transaction path's)."""
        if len(ids) > LOOKUP_KEYS_MAX:
            raise InternalError(f"a lookup of {len(ids)} customers is over {LOOKUP_KEYS_MAX}")
        if not ids:
            return {}
        try:
            async with self._pool.connection() as connection:
                cursor = connection.cursor(binary=True)
                await cursor.execute(
                    "SELECT customer_id, birth_day, signup_day, audiences FROM customers"
                    " WHERE customer_id = ANY(%b::text[])",
                    (list(ids),),
                )
                rows = await cursor.fetchall()
        except psycopg.Error as error:
            raise database_error(error, "look up customers", self._pool.timeout) from error
        return {
            customer_id: Customer(customer_id, birth, signup, frozenset(audiences or ()))
            for customer_id, birth, signup, audiences in rows
        }

    # ----------------------------------------------------------------------- ledger

    async def ledger_page(
        self,
        account_id: str,
        *,
        program: str = "",
        before_sequence: int | None = None,
        page_size: int = 100,
    ) -> list[LedgerRow]:
        """A card's ledger rows, newest first, numbered from 1 in commit order; only the rows
        numbered below ``before_sequence`` (the last row of the previous page) when given."""
        if not 1 <= page_size <= LEDGER_PAGE_SIZE_MAX:
            raise InvalidFieldError("page_size", f"must be 1 to {LEDGER_PAGE_SIZE_MAX}")
        params = {
            "account": account_id,
            "program": program,
            "before": 2**62 if before_sequence is None else before_sequence,
            "limit": page_size,
        }
        async with self._reading("list the ledger") as cursor:
            await cursor.execute(_LEDGER_PAGE, params)
            rows = await cursor.fetchall()
        return [
            LedgerRow(
                sequence, request_id,
                Posting(program_id, version, balance, kind, amount, rule, day), committed_at,
            )
            for (
                sequence, request_id, program_id, version, balance, kind, amount, rule, day,
                committed_at,
            ) in rows
        ]  # fmt: skip

    async def opening_balances(self, *, limit: int = 1_000) -> list[tuple[Any, ...]]:
        """Queued opening balances not posted yet: (card, program file, version, tender,
        loyalty, award, location), oldest first."""
        async with self._reading("read opening balances") as cursor:
            await cursor.execute(
                "SELECT card_number, program_id, version, tender, loyalty, award, location"
                " FROM card_opening_balances WHERE posted_at IS NULL"
                " ORDER BY created_at, card_number LIMIT %s",
                (limit,),
            )
            return [tuple(row) for row in await cursor.fetchall()]


# --------------------------------------------------------------------------- internals


async def _one(cursor: psycopg.AsyncCursor[Any]) -> Any:
    row = await cursor.fetchone()
    if row is None:
        raise InternalError("a query that always returns a row returned none")
    return row


async def _counts(
    cursor: psycopg.AsyncCursor[Any], program_ids: list[str]
) -> dict[str, tuple[int, int]]:
    """(cards, registered customers) of each program file."""
    if not program_ids:
        return {}
    await cursor.execute(_COUNTS, (program_ids,))
    return {row[0]: (int(row[1]), int(row[2])) for row in await cursor.fetchall()}


async def _series_count(cursor: psycopg.AsyncCursor[Any], program_id: str, series_id: str) -> int:
    await cursor.execute(
        "SELECT count(*) FROM cards WHERE definition = %s AND series = %s", (program_id, series_id)
    )
    return int((await _one(cursor))[0])


class _Batches:
    """The batch of each card index of a series, by bisection (a series has up to 1,000)."""

    def __init__(self, series: CardSeries) -> None:
        self._batches = list(series.batches)
        self._ends: list[int] = []
        end = 0
        for batch in self._batches:
            end += batch.count
            self._ends.append(end)

    def at(self, index: int) -> CardBatch:
        position = bisect.bisect_right(self._ends, index)
        if index < 0 or position >= len(self._batches):
            raise InternalError(f"a series of {self._ends[-1]} cards has no card {index}")
        return self._batches[position]


def _series_capacity(series: CardSeries) -> int:
    return series.total_cards if series.total_cards is not None else series.batch_total


def _expiry(series: CardSeries, day: int) -> int | None:
    return series.expires_day(day)


def _check_new_version(program: ProgramFile, latest: int | None, *, new: bool) -> None:
    if new and latest is not None:
        raise AlreadyExistsError(
            f"program file {program.id!r} exists (version {latest}); store a new version with"
            " UpdateProgram",
            reason="PROGRAM_EXISTS",
        )
    if not new and latest is None:
        raise NotFoundError(f"no program file {program.id!r}", reason="UNKNOWN_PROGRAM")
    if not new and latest is not None and program.version <= latest:
        raise ConflictError(
            f"program file {program.id!r} version {program.version} is not newer than the"
            f" stored version {latest}",
            reason="VERSION_EXISTS",
        )


def _unknown_version(program_id: str, version: int) -> NotFoundError:
    return NotFoundError(
        f"program file {program_id!r} has no version {version}", reason="UNKNOWN_PROGRAM"
    )


def _prefix_in_use(prefix: str, holder: str) -> ConflictError:
    return ConflictError(
        f"card serial prefix {prefix or 'of this program file'} is served by the active"
        f" program file {holder}",
        reason="PREFIX_IN_USE",
    )


def _activation_amount(
    program: ProgramFile, status: str, amount: int | None, currency: str
) -> int | None:
    """The value each activated card is to receive: the amount given, else the tender
    program's initial balance; None for none."""
    if amount is None:
        if status != "active" or program.tender is None:
            return None
        return program.tender.initial_balance_minor() or None
    field = "activation_amount"
    if status != "active":
        raise InvalidFieldError(field, "is only given with an activation")
    if program.tender is None:
        raise InvalidFieldError(field, f"program file {program.id} has no tender program")
    if currency and currency.upper() != program.tender.currency.upper():
        raise InvalidFieldError(
            f"{field}.currency", f"must be the tender program's {program.tender.currency}"
        )
    if amount < 0:
        raise InvalidFieldError(f"{field}.units", "must not be negative")
    return amount or None


def _batch_where(
    program_id: str, series_id: str, batch: str, first: str, last: str
) -> tuple[str, dict[str, Any]]:
    where = "definition = %(program)s AND series = %(series)s AND batch = %(batch)s"
    params: dict[str, Any] = {"program": program_id, "series": series_id, "batch": batch}
    if first or last:
        if not (first.isdigit() and last.isdigit()):
            raise InvalidFieldError(
                "range", "first_number and last_number must both be card numbers"
            )
        if _number_key(last) < _number_key(first):
            raise InvalidFieldError("range.last_number", "is before first_number")
        where += _RANGE
        params.update(first=first, last=last, first_length=len(first), last_length=len(last))
    return where, params

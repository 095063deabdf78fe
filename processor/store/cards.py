"""Cards in PostgreSQL. Cards of a generated series are numbered as ``processor.cards`` does
(serial prefix, sequence, Luhn check digit), each series continuing after its highest
sequence; imported cards come from the manual's import layout. Only an HMAC of each PIN is
stored. Opening balances of imported cards (and batch activation amounts) are *not* posted
here: they are queued in ``card_opening_balances`` for a job that posts them through the
ledger, so that balances keep equalling their ledger rows. Here are ``CardCatalog`` (over
the program files the cards are made under), its values and the PIN and import helpers;
``CardCatalog.cards`` is on the transaction path, one query per batch for any number of
cards, and everything else is administration.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import psycopg
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
from processor.errors import (
    InputFileError,
    InternalError,
    InvalidFieldError,
    NotFoundError,
    Problem,
    mask_card,
)
from processor.limits import (
    CARD_IMPORT_BYTES_MAX,
    GENERATE_CARDS_MAX,
    LOOKUP_KEYS_MAX,
    PIN_ATTEMPTS_MAX,
)
from processor.money import is_currency
from processor.program.cards import CardBatch, CardSeries
from processor.program.model import ProgramFile
from processor.store.catalog_base import ConflictError, one_row
from processor.store.ledger import Store, database_error
from processor.store.programs import ProgramFiles, ProgramRecord, parse_stored_program

PIN_KEY_ENV: Final = "LOYALTY_PIN_KEY"
"""The environment variable holding the server secret PIN hashes are keyed with."""

DEVELOPMENT_PIN_KEY: Final = b"loyalty-development-pin-key (not a secret: set LOYALTY_PIN_KEY)"
"""The key used when ``LOYALTY_PIN_KEY`` is not set: fine for development and tests, never
for production, since anyone can read it here. Changing the key invalidates every stored
PIN hash, so a deployment sets it once and keeps it."""

CardStatus = Literal["active", "inactive"]


# --------------------------------------------------------------------------- values


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


def today() -> int:
    """The server's local business day, as a day number."""
    return calendar.to_day(datetime.date.today())


def _number_key(number: str) -> tuple[int, str]:
    """Card numbers are digits of varying lengths: order them as numbers."""
    return len(number), number


# --------------------------------------------------------------------------- SQL

SELECT_CARD_COLUMNS: Final = (
    "card_number, program, series, batch, status, pin_hash, customer_id, expires_day"
)
_SELECT_CARDS = f"SELECT {SELECT_CARD_COLUMNS} FROM cards WHERE card_number = ANY(%b::text[])"
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

# --------------------------------------------------------------------------- cards


def card_record(row: Sequence[Any], day: int) -> CardRecord:
    """A card as the transaction path reads it (the columns of ``SELECT_CARD_COLUMNS``), its
    status ``expired`` once ``day`` is past its last usable day."""
    number, program_id, series, batch, status, hashed, customer_id, expires = row[:8]
    if status == "active" and expires is not None and expires < day:
        status = "expired"
    return CardRecord(
        number, program_id, series, batch, status,
        None if hashed is None else bytes(hashed), customer_id, expires,
    )  # fmt: skip


class CardCatalog(ProgramFiles):
    """Cards of the program files, over the Store's connection pool and one PIN key.

    A card catalog is a ``ProgramFiles`` too: cards are made under a program file's active
    (else latest) version and one of its series, read through ``get``.
    """

    def __init__(
        self,
        store: Store | AsyncConnectionPool[Any],
        *,
        pin_key: bytes | None = None,
        pin_attempts_max: int = PIN_ATTEMPTS_MAX,
    ) -> None:
        super().__init__(store)
        self._pin_key = pin_key if pin_key is not None else pin_key_from_environment()
        if not self._pin_key:
            raise ValueError("the PIN key is empty")
        self._pin_attempts_max = pin_attempts_max

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
            start = await _next_sequence(cursor, program_id, series_id, first)
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
                start = await _next_sequence(cursor, program_id, series_id, first)
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
        return {row[0]: card_record(row, day) for row in rows}

    def verify_pin(self, record: CardRecord, pin: str) -> bool:
        """Whether ``pin`` is the card's PIN (constant-time); False for a card without one."""
        if record.pin_hash is None:
            return False
        return hmac.compare_digest(pin_hash(self._pin_key, record.number, pin), record.pin_hash)

    async def pin_attempts(self, attempts: Sequence[tuple[CardRecord, str]]) -> list[str]:
        """Each (card, PIN) tried in order and counted: "ok", "invalid" (wrong, counted),
        "locked" (wrong ``pin_attempts_max`` times in a row, this one included, until
        ``unlock_pin``) or "unknown" (no such card). One statement for all of them."""
        if not attempts:
            return []
        numbers = [record.number for record, _ in attempts]
        matched = [self.verify_pin(record, pin) for record, pin in attempts]
        # One autocommitted statement (the function is its own transaction): no BEGIN and
        # COMMIT round trips on the transaction path, as _transaction would add.
        try:
            async with self._pool.connection() as connection:
                cursor = await connection.execute(
                    "SELECT pin_attempts(%s, %s, %s)", (numbers, matched, self._pin_attempts_max)
                )
                return list((await one_row(cursor))[0])
        except psycopg.Error as error:
            raise database_error(error, "count PIN attempts", self._pool.timeout) from error

    async def set_pin(self, number: str, pin: str) -> bool:
        """Give a card a known PIN (the demo's published one); whether the card exists."""
        hashed = pin_hash(self._pin_key, number, pin)
        async with self._transaction("set a PIN") as cursor:
            await cursor.execute(
                "UPDATE cards SET pin_hash = %s WHERE card_number = %s"
                " AND pin_hash IS DISTINCT FROM %s",
                (hashed, number, hashed),
            )
            if cursor.rowcount:
                return True
            await cursor.execute("SELECT 1 FROM cards WHERE card_number = %s", (number,))
            return await cursor.fetchone() is not None

    async def unlock_pin(self, number: str) -> None:
        """Clear a card's wrong-PIN count (a locked PIN works again); NotFoundError
        (UNKNOWN_CARD) for no such card, raised inside the transaction, so that nothing is
        kept of it (its audit row included)."""
        async with self._transaction("unlock a PIN") as cursor:
            await cursor.execute("SELECT pin_unlock(%s)", (number,))
            if not (await one_row(cursor))[0]:
                raise NotFoundError(f"no card {mask_card(number)}", reason="UNKNOWN_CARD")

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


async def _next_sequence(
    cursor: psycopg.AsyncCursor[Any], program_id: str, series_id: str, first: int
) -> int:
    """The sequence the next generated card of a series takes: after its highest, else its
    first."""
    await cursor.execute(
        "SELECT max(sequence) FROM cards WHERE definition = %s AND series = %s"
        " AND sequence IS NOT NULL",
        (program_id, series_id),
    )
    highest = (await one_row(cursor))[0]
    return first if highest is None else int(highest) + 1


async def _series_count(cursor: psycopg.AsyncCursor[Any], program_id: str, series_id: str) -> int:
    await cursor.execute(
        "SELECT count(*) FROM cards WHERE definition = %s AND series = %s", (program_id, series_id)
    )
    return int((await one_row(cursor))[0])


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

"""Bulk-load customers, cards and accounts for load tests: ``loyalty seed --accounts N``.

Seeded cards continue the numbering of the demo program's first generated series (serial
prefix, sequence, Luhn check digit), after the highest sequence it has used, in a batch of
their own (:data:`SEED_BATCH`), active, each registered to a customer of its own. Each card
gets an account whose state looks like a real one: a seeded mix of levels (70% silver, 22%
gold, 8% platinum), a few point lots earned over the past months with their escrow and
expiry as the program sets them, counters, some coupons, and for some cards a gift-card
balance or e-award value. Every balance has one ``opening`` ledger row, so that balances
still equal the sum of their ledger rows (``loyalty reconcile`` passes on a seeded
database).

Speed. Rows go in with binary COPY, four tables per chunk in one transaction, on
:data:`COPY_JOBS` connections while the next chunk is encoded. A chunk is assembled from
ready-made pieces by C-level joins, with no Python loop per row: every column that does
not change from card to card is encoded once; account states are drawn from a pool of
:data:`TEMPLATES` distinct states, each encoded once with :mod:`processor.store.codec`
together with its opening ledger rows (a state does not hold its card number, so one
encoding serves any card); birth and signup days are drawn from lists of encoded days; card
numbers come from a table of last three digits with their check digit.

Deferred indexes. A load of at least :data:`DEFER_INDEXES_MIN_ACCOUNTS` accounts defers
the indexes of each table it fills that holds at most a tenth as many rows as it loads:
every index of ``customers``, ``cards`` and ``accounts``, primary keys included
(:data:`DEFERRABLE_INDEXES`), and the primary key of the ledger's month partition. That key
belongs to the partitioned ``ledger`` and cannot be dropped from one partition, so the
partition is detached for the load, its key dropped, and attached again after (see
:data:`DETACHED_MARK`). All of it is dropped in one transaction before the first chunk.
After the last, each index is built by one sort (``CREATE INDEX``, :data:`INDEX_JOBS` at
once, with :data:`INDEX_MAINTENANCE_WORK_MEM` and PostgreSQL's parallel workers), each key
becomes its table's primary key again (``ADD CONSTRAINT ... USING INDEX``) and the
partition is attached (its bound kept as a constraint, so the attach does not scan it).
One sort costs about half the CPU of inserting every row into the index as it arrives.

The trade: while such a load runs, those tables have no keys. Nothing stops a duplicate
row, ``ON CONFLICT`` upserts fail, the month's ledger rows are out of ``ledger`` and
postings into that month fail: a deferring load wants the database to itself (the
service stopped), as a database a tenth the size of the load usually is. The load never
writes a duplicate itself (cards are numbered after the series' highest sequence, and
chunks commit whole); if another writer did, building the unique index fails: the other
indexes are built, :class:`SeedError` names the index, its table and the duplicated key,
and the run loads nothing more (the next run tries again before it loads anything).

Resuming. A chunk commits whole or not at all and the seeded cards are recognised by their
batch, so running the command again counts what is there and loads only the rest:
``--accounts`` is the total wanted, not an increment. A run killed between dropping and
building indexes leaves them, and the detached partition, to the next run, which builds
every missing index and attaches the partition before anything else.

``--warm`` then copies the seeded accounts' states into the Redis cache
(:meth:`processor.cache.accounts.AccountCache.put_many`, pipelined), so a load test starts hot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import itertools
import random
import re
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

import psycopg
from stdnum import luhn

from processor import calendar
from processor.cache.accounts import CIRCUIT_COOLDOWN_SECONDS, AccountCache
from processor.cards import first_sequences
from processor.engine import samples
from processor.engine.types import (
    AccountState,
)
from processor.errors import BadRequestError, present
from processor.program.model import ProgramFile
from processor.runtime import serve
from processor.store import codec
from processor.store.ledger import ledger_month
from processor.store.programs import parse_stored_program

SEED_BATCH: Final = "seed"
"""The card batch of seeded cards: how a later run finds what an earlier one loaded."""

OPENING_REQUEST_ID: Final = "seed-opening"
"""The request id of the opening ledger rows of seeded balances."""

OPENING_KIND: Final = "opening"

CHUNK_ACCOUNTS: Final = 50_000
"""Accounts per chunk: one transaction of four COPYs."""

CHUNK_ACCOUNTS_MAX: Final = 1_000_000
ACCOUNTS_MAX: Final = 100_000_000

TEMPLATES: Final = 4_096
"""Distinct account states per run; each card draws one at random."""

AUDIENCE_MIX: Final = ((0.85, ()), (0.13, ("newsletter",)), (0.02, ("newsletter", "vip:A")))
"""Share of customers in each combination of audience lists."""

COPY_JOBS: Final = 2
"""Connections copying chunks at once, while the next chunk is encoded."""

WARM_CHUNK_ACCOUNTS: Final = 2_000
"""Accounts read from PostgreSQL and written to Redis per call: small enough that one
call stays well inside the cache's operation deadline."""

WARM_ATTEMPTS: Final = 4

WARM_CALLS_IN_FLIGHT: Final = 4

DEFER_INDEXES_MIN_ACCOUNTS: Final = 200_000
"""Loads at least this large defer the indexes of each table at most a tenth their size."""

INDEX_JOBS: Final = 2
"""Connections building deferred indexes at once (each index also sorts in parallel, as
``max_parallel_maintenance_workers`` allows)."""

INDEX_MAINTENANCE_WORK_MEM: Final = "1GB"
"""``maintenance_work_mem`` of the connections building indexes (shared by each build's
parallel workers): the keys of a million rows sort in memory, those of ten million spill
some runs to disk. Three gigabytes cut the CPU of a ten-million build by about 15% but
stalled on page-cache pressure on a 24 GB machine, two builds at once."""


@dataclass(frozen=True, slots=True)
class DeferrableIndex:
    """An index of the migrations (0001, 0002) that a large load may drop and build after.

    ``create`` builds it as migrated; a primary key is built as a unique index, then
    attached as the table's primary key (``ADD CONSTRAINT ... USING INDEX``)."""

    table: str
    name: str
    create: str
    primary_key: bool = False


DEFERRABLE_INDEXES: Final = (
    # Longest to build first: the builds share INDEX_JOBS connections.
    DeferrableIndex(
        "cards",
        "cards_series_batch",
        "CREATE INDEX cards_series_batch ON cards (definition, series, batch)",
    ),
    DeferrableIndex(
        "cards",
        "cards_series_sequence",
        "CREATE UNIQUE INDEX cards_series_sequence ON cards (definition, series, sequence)"
        " WHERE sequence IS NOT NULL",
    ),
    DeferrableIndex(
        "accounts",
        "accounts_pkey",
        "CREATE UNIQUE INDEX accounts_pkey ON accounts (account_id)",
        primary_key=True,
    ),
    DeferrableIndex(
        "customers",
        "customers_pkey",
        "CREATE UNIQUE INDEX customers_pkey ON customers (customer_id)",
        primary_key=True,
    ),
    DeferrableIndex(
        "cards",
        "cards_customer",
        "CREATE INDEX cards_customer ON cards (customer_id) WHERE customer_id IS NOT NULL",
    ),
    DeferrableIndex(
        "cards",
        "cards_pkey",
        "CREATE UNIQUE INDEX cards_pkey ON cards (card_number)",
        primary_key=True,
    ),
)
"""Every index of the three tables a load fills whole. The ledger's primary key belongs to
the partitioned table and cannot be dropped from the month's partition alone: the load
detaches that partition instead (:data:`DETACHED_MARK`)."""

_DEFERRABLE_TABLES: Final = ("customers", "cards", "accounts")

DETACHED_MARK: Final = "seed_detached"
"""The CHECK constraint a ledger partition carries while a load has it detached from
``ledger`` (its primary key dropped): the partition's bound, so that attaching it again
need not scan it. The next run repairs a partition left so (builds its key, attaches it)."""

_COPY_CUSTOMERS: Final = (
    "COPY customers (customer_id, birth_day, signup_day, audiences) FROM STDIN (FORMAT BINARY)"
)
_COPY_CARDS: Final = (
    "COPY cards (card_number, customer_id, sequence, definition, program, series, batch,"
    " status, expires_day) FROM STDIN (FORMAT BINARY)"
)
_COPY_ACCOUNTS: Final = "COPY accounts (account_id, version, state) FROM STDIN (FORMAT BINARY)"
_COPY_LEDGER: Final = (
    "COPY ledger (account_id, month, request_id, seq, program, program_version, balance, kind,"
    " amount, day) FROM STDIN (FORMAT BINARY)"
)
_COPY_STATEMENTS: Final = (_COPY_CUSTOMERS, _COPY_CARDS, _COPY_ACCOUNTS, _COPY_LEDGER)
_SEEDED: Final = (
    "SELECT count(*), max(sequence) FROM cards WHERE definition = %s AND series = %s AND batch = %s"
)
_HIGHEST: Final = (
    "SELECT max(sequence) FROM cards WHERE definition = %s AND series = %s AND sequence IS NOT NULL"
)
_SEEDED_RANGE: Final = (
    "SELECT min(card_number), max(card_number) FROM cards"
    " WHERE definition = %s AND series = %s AND batch = %s"
)
_ACCOUNTS_FROM: Final = (
    "SELECT account_id, version, state FROM accounts"
    " WHERE account_id >= %s AND account_id <= %s ORDER BY account_id LIMIT %s"
)
_ACCOUNTS_AFTER: Final = (
    "SELECT account_id, version, state FROM accounts"
    " WHERE account_id > %s AND account_id <= %s ORDER BY account_id LIMIT %s"
)

# PostgreSQL's binary COPY framing: signature, flags, header extension length; trailer.
_COPY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER: Final = struct.pack(">h", -1)
_NULL: Final = struct.pack(">i", -1)
_TEXT_OID: Final = 25


class SeedError(BadRequestError):
    """The database cannot be seeded as asked (no program, a full card range)."""

    reason = "CANNOT_SEED"


@dataclass(frozen=True, slots=True)
class SeedTarget:
    """Where seeded cards go: the program file, its series and numbering."""

    program: ProgramFile
    version: int
    series_id: str
    first_sequence: int  # the series' first sequence number
    today: int

    @property
    def program_id(self) -> str:
        return self.program.id

    @property
    def prefix(self) -> str:
        return self.program.card.serial_prefix

    @property
    def number_length(self) -> int:
        return self.program.card.number_length


@dataclass(slots=True)
class SeedReport:
    """What a run did and how fast."""

    wanted: int
    present_before: int
    loaded: int = 0
    rows: int = 0
    seconds: float = 0.0
    index_seconds: float = 0.0
    deferred_indexes: bool = False
    warmed: int = 0
    warm_seconds: float = 0.0
    first_card: str = ""
    last_card: str = ""

    @property
    def accounts_per_second(self) -> float:
        return self.loaded / self.seconds if self.seconds else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {
            **fields,
            "accounts_per_second": round(self.accounts_per_second),
            "rows_per_second": round(self.rows_per_second),
        }


# --------------------------------------------------------------------------- card numbers


def card_numbers(prefix: str, first: int, count: int, length: int) -> list[str]:
    """``count`` card numbers from sequence ``first``: prefix, padded sequence, check digit.

    The same numbers as :func:`processor.cards.card_number`, about fifty times faster: the
    Luhn sum of the prefix and of the leading digits is computed once per thousand
    sequences, and the last three digits with their check digit come from a table.
    """
    numbers: list[str] = []
    for head, residue, tail, run in _number_runs(prefix, first, count, length):
        if residue is None:
            numbers.append(head + luhn.calc_check_digit(head))
        else:
            numbers.extend(map(head.__add__, _digit_tails(residue)[tail : tail + run]))
    return numbers


def card_number_bytes(prefix: str, first: int, count: int, length: int) -> list[bytes]:
    """:func:`card_numbers` as ASCII bytes, what the COPY streams carry."""
    numbers: list[bytes] = []
    for head, residue, tail, run in _number_runs(prefix, first, count, length):
        if residue is None:
            numbers.append((head + luhn.calc_check_digit(head)).encode())
        else:
            tails = _digit_tails_bytes(residue)[tail : tail + run]
            numbers.extend(map(head.encode().__add__, tails))
    return numbers


def _number_runs(
    prefix: str, first: int, count: int, length: int
) -> Iterator[tuple[str, int | None, int, int]]:
    """(head, Luhn residue of the head, first tail, tail count) per run of sequences that
    share all but their last three digits; a number too short for that is a run of its
    own: (body, None, 0, 1)."""
    digits = length - len(prefix) - 1
    if digits < 1 or first < 0 or first + count > 10**digits:
        raise SeedError(
            f"sequences {first}..{first + count - 1} do not fit {digits} digits of a "
            f"{length}-digit card number with prefix {prefix}"
        )
    if digits <= 3:
        for sequence in range(first, first + count):
            yield f"{prefix}{sequence:0{digits}d}", None, 0, 1
        return
    sequence = first
    end = first + count
    while sequence < end:
        head_value, tail = divmod(sequence, 1000)
        run = min(end - sequence, 1000 - tail)
        head = f"{prefix}{head_value:0{digits - 3}d}"
        # The head's last digit is the fourth from the end of the body: not doubled.
        yield head, _luhn_sum(head, double_last=False) % 10, tail, run
        sequence += run


@functools.cache
def _digit_tails(residue: int) -> list[str]:
    """The last three digits of a body and its check digit, ``000c`` to ``999c``, for a
    head whose Luhn sum is ``residue`` modulo 10 (the last digit of the body is doubled)."""
    return [
        f"{tail:03d}{-(residue + _luhn_sum(f'{tail:03d}', double_last=True)) % 10}"
        for tail in range(1000)
    ]


@functools.cache
def _digit_tails_bytes(residue: int) -> list[bytes]:
    return [tail.encode() for tail in _digit_tails(residue)]


def _luhn_sum(text: str, *, double_last: bool) -> int:
    total = 0
    double = double_last
    for char in reversed(text):
        digit = ord(char) - 48
        if double:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
        double = not double
    return total


# --------------------------------------------------------------------------- states


def opening_postings(state: AccountState, program: ProgramFile) -> list[tuple[str, str, int]]:
    """(program, balance, amount) of the opening ledger rows that make ``state`` reconcile."""
    rows = []
    for program_id, loyalty in state.loyalty.items():
        points = sum(lot.points for lot in loyalty.lots) - loyalty.debt
        if points:
            rows.append((program_id, "points", points))
    for program_id, award in state.awards.items():
        if award.balance:
            rows.append((program_id, "award_value", award.balance))
    if state.tender is not None and state.tender.balance:
        tender_id = program.tender.id if program.tender is not None else ""
        rows.append((tender_id, "tender", state.tender.balance))
    return rows


# --------------------------------------------------------------------------- binary rows


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">i", len(data)) + data


def _bytea(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


def _int4(value: int) -> bytes:
    return b"\x00\x00\x00\x04" + struct.pack(">i", value)


def _int8(value: int) -> bytes:
    return b"\x00\x00\x00\x08" + struct.pack(">q", value)


def _text_array(values: Sequence[str]) -> bytes:
    """A ``text[]`` in PostgreSQL's binary array format (one dimension, no NULLs)."""
    if not values:
        body = struct.pack(">iii", 0, 0, _TEXT_OID)
    else:
        body = struct.pack(">iiiii", 1, 0, _TEXT_OID, len(values), 1)
        body += b"".join(_text(value) for value in values)
    return _bytea(body)


_FIELDS_4 = struct.pack(">h", 4)
_FIELDS_3 = struct.pack(">h", 3)
_FIELDS_9 = struct.pack(">h", 9)
_FIELDS_10 = struct.pack(">h", 10)


class _RowMaker:
    """Binary COPY tuples for the four tables, with every constant part encoded once.

    A chunk is assembled from pieces with C-level joins, never a Python loop per row: the
    pieces that vary are the card number (twice per card), the customer's birth and signup
    days and audiences (drawn from lists of encoded values), the sequence, and the
    account's template, which brings its encoded state and its ledger rows whole.
    """

    def __init__(self, target: SeedTarget, templates: Sequence[AccountState], seed: int) -> None:
        self.target = target
        program = target.program
        self.seed = seed
        series = next(one for one in program.series if one.id == target.series_id)
        expires = series.expires_day(target.today)
        number_length = struct.pack(">i", target.number_length)
        customer_length = struct.pack(">i", target.number_length + 1)  # "C" + number
        today = target.today
        # customers (customer_id, birth_day, signup_day, audiences)
        self.customer_head = _FIELDS_4 + customer_length + b"C"
        self.births = [_int4(today - days) for days in range(18 * 365, 80 * 365 + 1)]
        self.signups = [_int4(today - days) for days in range(30, 6 * 365 + 1)]
        audiences, weights = zip(
            *((_text_array(lists), share) for share, lists in AUDIENCE_MIX), strict=True
        )
        self.audiences = list(audiences)
        self.audience_weights = list(itertools.accumulate(weights))
        # cards (card_number, customer_id, sequence, then the constant columns); pin_hash
        # (NULL) and attributes ('{}') are left to their defaults.
        self.card_head = _FIELDS_9 + number_length
        self.card_middle = customer_length + b"C"
        card_tail = b"".join(
            (
                _text(program.id),
                _text(program.id),
                _text(target.series_id),
                _text(SEED_BATCH),
                _text("active"),
                _NULL if expires is None else _int4(expires),
            )
        )
        # One call per card packs its sequence and everything after it.
        self.card_sequence_tail = functools.partial(struct.Struct(f">iq{len(card_tail)}s").pack, 8)
        self.card_tail = card_tail
        # accounts (account_id, version, state): the head, the number, then the template's
        # encoded version and state.
        self.account_head = _FIELDS_3 + number_length
        self.account_tails = [_int8(1) + _bytea(codec.encode_state(state)) for state in templates]
        # ledger (account_id, month, request_id, seq, program, program_version, balance,
        # kind, amount, day); rule is left to its default ''. A template's rows are the
        # number joined by [head, tail_0 + head, ..., tail_n]: number.join(pieces).
        month = ledger_month(today)
        ledger_head = _FIELDS_10 + number_length
        self.ledger_pieces: list[list[bytes]] = []
        self.ledger_counts: list[int] = []
        for state in templates:
            tails = [
                b"".join(
                    (
                        _int4(month),
                        _text(OPENING_REQUEST_ID),
                        _int4(seq),
                        _text(posting_program),
                        _int4(target.version),
                        _text(balance),
                        _text(OPENING_KIND),
                        _int8(amount),
                        _int4(today),
                    )
                )
                for seq, (posting_program, balance, amount) in enumerate(
                    opening_postings(state, program)
                )
            ]
            pieces = [ledger_head] + [tail + ledger_head for tail in tails[:-1]] + tails[-1:]
            self.ledger_pieces.append(pieces if tails else [b""])
            self.ledger_counts.append(len(tails))

    def chunk(self, first_sequence: int, count: int) -> tuple[list[bytes], int]:
        """The four COPY streams of ``count`` cards from ``first_sequence`` and their row
        count."""
        target = self.target
        rng = random.Random(f"{self.seed}:{target.program_id}:{first_sequence}")
        numbers = card_number_bytes(target.prefix, first_sequence, count, target.number_length)
        picks = rng.choices(range(len(self.account_tails)), k=count)
        births = rng.choices(self.births, k=count)
        signups = rng.choices(self.signups, k=count)
        audiences = rng.choices(self.audiences, cum_weights=self.audience_weights, k=count)
        sequences = map(
            self.card_sequence_tail,
            range(first_sequence, first_sequence + count),
            itertools.repeat(self.card_tail, count),
        )
        customers = _stream(
            zip(
                itertools.repeat(self.customer_head, count),
                numbers,
                births,
                signups,
                audiences,
                strict=True,
            )
        )
        cards = _stream(
            zip(
                itertools.repeat(self.card_head, count),
                numbers,
                itertools.repeat(self.card_middle, count),
                numbers,
                sequences,
                strict=True,
            )
        )
        accounts = _stream(
            zip(
                itertools.repeat(self.account_head, count),
                numbers,
                map(self.account_tails.__getitem__, picks),
                strict=True,
            )
        )
        ledger = b"".join(
            (
                _COPY_HEADER,
                b"".join(map(bytes.join, numbers, map(self.ledger_pieces.__getitem__, picks))),
                _COPY_TRAILER,
            )
        )
        ledger_rows = sum(map(self.ledger_counts.__getitem__, picks))
        return [customers, cards, accounts, ledger], 3 * count + ledger_rows


def _stream(rows: Iterable[tuple[bytes, ...]]) -> bytes:
    """A binary COPY stream of rows given as their pieces."""
    return b"".join(
        itertools.chain((_COPY_HEADER,), itertools.chain.from_iterable(rows), (_COPY_TRAILER,))
    )


# --------------------------------------------------------------------------- the load


def find_target(connection: psycopg.Connection[Any], program_id: str | None = None) -> SeedTarget:
    """The active program file (``program_id``, else the only or first active one) and its
    first generated series."""
    rows = connection.execute(
        "SELECT id, version, source FROM programs WHERE status = 'active' ORDER BY id"
    ).fetchall()
    if program_id is not None:
        rows = [row for row in rows if row[0] == program_id]
    if not rows:
        raise SeedError(
            f"no active program file {program_id or ''} to seed cards of; load the demo "
            "(`loyalty serve --demo`) or activate one first".replace("  ", " ")
        )
    found_id, version, source = rows[0]
    program = parse_stored_program(found_id, version, source)
    for series, first in zip(program.series, first_sequences(program.series), strict=True):
        if first is not None:
            return SeedTarget(program, version, series.id, first, _today())
    raise SeedError(f"program file {found_id} has no generated card series")


async def _put(cache: AccountCache, entries: dict[str, tuple[int, bytes]]) -> int:
    """``put_many``, tried again when Redis failed it (the cache absorbs failures as 0)."""
    written = 0
    for attempt in range(WARM_ATTEMPTS):
        failures = cache.errors_total + cache.skipped_total
        written = await cache.put_many(entries)
        if cache.errors_total + cache.skipped_total == failures:
            return written
        await asyncio.sleep(CIRCUIT_COOLDOWN_SECONDS if cache.circuit_open else 0.2 * (attempt + 1))
    return written


def _today() -> int:
    import datetime

    return calendar.to_day(datetime.date.today())


def seed(
    database_url: str,
    accounts: int,
    *,
    program_id: str | None = None,
    chunk_accounts: int = CHUNK_ACCOUNTS,
    seed_value: int = 7,
    templates: int = TEMPLATES,
    defer_indexes: bool | None = None,
    jobs: int = COPY_JOBS,
    progress: IO[str] | None = None,
) -> SeedReport:
    """Load seeded cards, customers and accounts until ``accounts`` seeded cards exist.

    ``defer_indexes`` None decides by size (:data:`DEFER_INDEXES_MIN_ACCOUNTS`).
    """
    if not 0 <= accounts <= ACCOUNTS_MAX:
        raise ValueError(f"accounts {accounts} is not in 0..{ACCOUNTS_MAX}")
    if not 1 <= chunk_accounts <= CHUNK_ACCOUNTS_MAX:
        raise ValueError(f"chunk_accounts {chunk_accounts} is not in 1..{CHUNK_ACCOUNTS_MAX}")
    with psycopg.connect(database_url, autocommit=True) as connection:
        _configure(connection)
        target = find_target(connection, program_id)
        # A run stopped between dropping and building indexes left them to this one: build
        # them before anything else, so that a duplicate row stops the run here.
        _build_missing_indexes(database_url, connection)
        present, _ = _seeded(connection, target)
        report = SeedReport(wanted=accounts, present_before=present)
        missing = max(accounts - present, 0)
        if missing == 0:
            _fill_range(connection, target, report)
            return report
        month = ledger_month(target.today)
        partition = _one(connection, "SELECT ensure_ledger_partition(%s)", (month,))
        deferred = _deferrable(connection, missing, defer_indexes)
        detach = _detachable(connection, partition, missing, defer_indexes)
        rng = random.Random(f"{seed_value}:{target.program_id}:templates")
        if not target.program.loyalty_programs:
            raise SeedError(
                f"program file {target.program_id} has no loyalty program to seed accounts in"
            )
        states = samples.account_templates(
            target.program, target.version, target.today, rng, templates
        )
        maker = _RowMaker(target, states, seed_value)
        meter = _Progress(progress, missing)
        started = time.perf_counter()
        statements = _COPY_STATEMENTS
        if deferred or detach:
            report.deferred_indexes = True
            _drop_indexes(connection, deferred, partition if detach else None)
        if detach:
            statements = (*_COPY_STATEMENTS[:3], _COPY_LEDGER.replace("ledger", partition, 1))
        # Numbers continue after the highest sequence the series used, counted once: the
        # load is the series' only writer while it runs (a card generated meanwhile fails
        # the chunk on its primary key, or, with the keys deferred, the build of the key
        # after the load).
        next_sequence = _next_sequence(connection, target)
        try:
            _load(
                database_url,
                maker,
                statements,
                next_sequence,
                missing,
                chunk_accounts,
                jobs,
                report,
                meter,
            )
        finally:
            report.seconds = time.perf_counter() - started
            if report.deferred_indexes:
                index_started = time.perf_counter()
                count = len(deferred) + int(detach)
                meter.note(f"building {count} index{'es' if count > 1 else ''}")
                try:
                    _build_missing_indexes(database_url, connection)
                finally:
                    report.index_seconds = time.perf_counter() - index_started
                    report.seconds += report.index_seconds
            connection.execute("ANALYZE customers, cards, accounts")
            meter.done(report)
        _fill_range(connection, target, report)
    return report


def _configure(connection: psycopg.Connection[Any]) -> None:
    # Seeded rows can be loaded again: a commit lost to a crash costs a resumed chunk,
    # never a wrong row, so the load need not wait for each WAL flush.
    connection.execute("SET synchronous_commit = off")
    connection.execute("SET statement_timeout = 0")


def _deferrable(
    connection: psycopg.Connection[Any], missing: int, defer: bool | None
) -> list[DeferrableIndex]:
    """The indexes this load drops and builds after it: ``defer`` True, all that can be;
    None, those of each table at most a tenth the size of a load of at least
    :data:`DEFER_INDEXES_MIN_ACCOUNTS`; False, none.

    A primary key is deferred only under its migrated name and while no foreign key refers
    to it (dropping it would need CASCADE)."""
    if defer is False or (defer is None and missing < DEFER_INDEXES_MIN_ACCOUNTS):
        return []
    small = set(_DEFERRABLE_TABLES)
    if defer is None:
        # Count no further than the limit: a big table is not counted whole.
        limit = missing // 10
        small = {
            table
            for table in _DEFERRABLE_TABLES
            if _one(
                connection, f"SELECT count(*) FROM (SELECT FROM {table} LIMIT %s) t", (limit + 1,)
            )
            <= limit
        }
    state = _index_state(connection, _DEFERRABLE_TABLES)
    referenced = {
        table
        for (table,) in connection.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint"
            " WHERE contype = 'f' AND confrelid = ANY(%s::text[]::regclass[])",
            (list(_DEFERRABLE_TABLES),),
        )
    }
    return [
        index
        for index in DEFERRABLE_INDEXES
        if index.table in small
        and index.name in state.valid
        and (
            not index.primary_key
            or (state.primary_keys.get(index.table) == index.name and index.table not in referenced)
        )
    ]


def _detachable(
    connection: psycopg.Connection[Any], partition: str, missing: int, defer: bool | None
) -> bool:
    """Whether the load detaches the ledger partition it writes into, to build its primary
    key after: by the rule of :func:`_deferrable`, counting the partition's rows."""
    if defer is False or (defer is None and missing < DEFER_INDEXES_MIN_ACCOUNTS):
        return False
    if _one(connection, _PRIMARY_KEY, (partition,)) is None:
        return False  # not as migrated: left alone
    if defer is None:
        limit = missing // 10
        rows = _one(
            connection, f"SELECT count(*) FROM (SELECT FROM {partition} LIMIT %s) t", (limit + 1,)
        )
        return bool(rows <= limit)
    return True


_PRIMARY_KEY: Final = (
    "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'"
)


@dataclass(frozen=True, slots=True)
class _IndexState:
    valid: set[str]  # index names
    invalid: set[str]
    primary_keys: dict[str, str]  # table: constraint name


def _index_state(connection: psycopg.Connection[Any], tables: Sequence[str]) -> _IndexState:
    """The indexes and primary keys of ``tables``, as they are now."""
    rows = connection.execute(
        "SELECT t.relname, c.relname, i.indisvalid, p.conname"
        " FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_class t ON t.oid = i.indrelid"
        " LEFT JOIN pg_constraint p ON p.conindid = i.indexrelid AND p.contype = 'p'"
        " WHERE i.indrelid = ANY(%s::text[]::regclass[])",
        (list(tables),),
    ).fetchall()
    state = _IndexState(set(), set(), {})
    for table, name, valid, primary_key in rows:
        (state.valid if valid else state.invalid).add(name)
        if primary_key is not None:
            state.primary_keys[table] = primary_key
    return state


def _drop_indexes(
    connection: psycopg.Connection[Any], indexes: Sequence[DeferrableIndex], partition: str | None
) -> None:
    """Drop ``indexes`` and detach ``partition`` from the ledger, dropping its primary key,
    in one transaction: all of it or none."""
    with connection.transaction():
        for index in indexes:
            if index.primary_key:
                connection.execute(f"ALTER TABLE {index.table} DROP CONSTRAINT {index.name}")
            else:
                connection.execute(f"DROP INDEX {index.name}")
        if partition is not None:
            key = _one(connection, _PRIMARY_KEY, (partition,))
            bound = _one(
                connection,
                "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = %s::regclass",
                (partition,),
            )
            lower, upper = _bounds(partition, bound)
            connection.execute(f"ALTER TABLE ledger DETACH PARTITION {partition}")
            # The partition's bound, kept as a constraint (validated now, while the
            # partition is small): attaching it again trusts it instead of a scan.
            connection.execute(
                f"ALTER TABLE {partition} ADD CONSTRAINT {DETACHED_MARK}"
                f" CHECK (month >= {lower} AND month < {upper})"
            )
            connection.execute(f"ALTER TABLE {partition} DROP CONSTRAINT {key}")


def _bounds(partition: str, text: str) -> tuple[int, int]:
    """(lower, upper) of a month range: ``FOR VALUES FROM (202611) TO (202612)``, or the
    detached mark's ``CHECK (month >= 202611 AND month < 202612)``."""
    numbers = [int(number) for number in re.findall(r"\d+", text)]
    if len(numbers) != 2:
        raise SeedError(
            f"cannot read the month range of ledger partition {partition} from {text!r};"
            f" attach it to ledger by hand (and drop its constraint {DETACHED_MARK})"
        )
    return numbers[0], numbers[1]


def _detached_partitions(connection: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """The ledger partitions a load detached, with their bounds (from their mark)."""
    rows = connection.execute(
        "SELECT t.relname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " JOIN pg_class t ON t.oid = c.conrelid"
        " WHERE c.conname = %s AND c.contype = 'c'"
        " AND t.relnamespace = current_schema()::regnamespace",
        (DETACHED_MARK,),
    ).fetchall()
    return {name: _bounds(name, definition) for name, definition in rows}


def _partition_key(connection: psycopg.Connection[Any], partition: str) -> DeferrableIndex:
    """The primary key of a detached ledger partition, as the ledger's own."""
    columns = [
        name
        for (name,) in connection.execute(
            "SELECT a.attname FROM pg_constraint c"
            " CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, position)"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
            " WHERE c.conrelid = 'ledger'::regclass AND c.contype = 'p' ORDER BY k.position"
        )
    ]
    name = f"{partition}_pkey"
    return DeferrableIndex(
        partition,
        name,
        f"CREATE UNIQUE INDEX {name} ON {partition} ({', '.join(columns)})",
        primary_key=True,
    )


def _build_missing_indexes(database_url: str, connection: psycopg.Connection[Any]) -> None:
    """Build each deferrable index that is missing (or left invalid), on
    :data:`INDEX_JOBS` connections at once, make each primary key index its table's
    primary key again, and attach each detached ledger partition again.

    A unique index that meets duplicate rows is not built (nor its partition attached):
    the others are, then :class:`SeedError` names it, its table and the duplicated key."""
    partitions = _detached_partitions(connection)
    keys = [_partition_key(connection, name) for name in partitions]
    # Longest builds first (they share INDEX_JOBS connections): a month's ledger key,
    # about 1.4 rows per account and four columns, comes third.
    wanted = [*DEFERRABLE_INDEXES[:2], *keys, *DEFERRABLE_INDEXES[2:]]
    state = _index_state(connection, [*_DEFERRABLE_TABLES, *partitions])
    for index in wanted:
        if index.name in state.invalid:  # a build that did not finish: start it again
            connection.execute(f"DROP INDEX {index.name}")
    build = [
        index
        for index in wanted
        if index.name not in state.valid
        and not (index.primary_key and index.table in state.primary_keys)
    ]
    failures = _build_indexes(database_url, build) if build else {}
    for index in wanted:
        if (
            index.primary_key
            and index.table not in state.primary_keys
            and index.name not in failures
        ):
            connection.execute(
                f"ALTER TABLE {index.table} ADD CONSTRAINT {index.name}"
                f" PRIMARY KEY USING INDEX {index.name}"
            )
    for partition, (lower, upper) in partitions.items():
        if f"{partition}_pkey" in failures:
            failures[f"{partition}_pkey"] += f" (until then {partition} stays detached from ledger)"
            continue
        with connection.transaction():
            connection.execute(
                f"ALTER TABLE ledger ATTACH PARTITION {partition}"
                f" FOR VALUES FROM ({lower}) TO ({upper})"
            )
            connection.execute(f"ALTER TABLE {partition} DROP CONSTRAINT {DETACHED_MARK}")
    if failures:
        raise SeedError("; ".join(failures.values()))


def _build_indexes(database_url: str, indexes: Sequence[DeferrableIndex]) -> dict[str, str]:
    """Build ``indexes`` (``CREATE INDEX``, each a sort of the table) on up to
    :data:`INDEX_JOBS` connections; what failed on duplicate rows: index name, message."""
    local = threading.local()
    connections: list[psycopg.Connection[Any]] = []
    lock = threading.Lock()

    def create(index: DeferrableIndex) -> str | None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = psycopg.connect(database_url, autocommit=True)
            with lock:
                connections.append(connection)
            _configure(connection)
            connection.execute(f"SET maintenance_work_mem = '{INDEX_MAINTENANCE_WORK_MEM}'")
            local.connection = connection
        try:
            connection.execute(index.create)
        except psycopg.errors.UniqueViolation as error:
            detail = error.diag.message_detail or ""
            return (
                f"cannot build the unique index {index.name} of table {index.table}: the"
                f" table holds duplicate rows ({detail.rstrip('.')}); remove them and run"
                " the seed again to build it"
            )
        return None

    try:
        with concurrent.futures.ThreadPoolExecutor(
            min(INDEX_JOBS, len(indexes)), "seed-index"
        ) as pool:
            futures = [pool.submit(create, index) for index in indexes]
        return {
            index.name: failure
            for index, future in zip(indexes, futures, strict=True)
            if (failure := future.result()) is not None
        }
    finally:
        for connection in connections:
            connection.close()


def _load(
    database_url: str,
    maker: _RowMaker,
    statements: Sequence[str],
    first_sequence: int,
    missing: int,
    chunk_accounts: int,
    jobs: int,
    report: SeedReport,
    meter: _Progress,
) -> None:
    """Generate chunks here while ``jobs`` threads, a connection each, copy earlier ones:
    PostgreSQL parses and indexes one chunk while Python encodes the next."""
    local = threading.local()
    connections: list[psycopg.Connection[Any]] = []
    lock = threading.Lock()

    def write(streams: list[bytes]) -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = psycopg.connect(database_url, autocommit=True)
            _configure(connection)
            local.connection = connection
            with lock:
                connections.append(connection)
        with connection.transaction(), connection.cursor() as cursor:
            for statement, data in zip(statements, streams, strict=True):
                with cursor.copy(statement) as copy:
                    copy.write(data)

    pending: deque[tuple[concurrent.futures.Future[None], int, int]] = deque()

    def settle_oldest() -> None:
        future, count, rows = pending.popleft()
        future.result()
        report.loaded += count
        report.rows += rows
        meter.update(report.loaded, report.rows)

    try:
        with concurrent.futures.ThreadPoolExecutor(jobs, "seed-copy") as pool:
            try:
                sequence, queued = first_sequence, 0
                while queued < missing:
                    count = min(chunk_accounts, missing - queued)
                    streams, rows = maker.chunk(sequence, count)
                    while len(pending) > jobs:
                        settle_oldest()
                    pending.append((pool.submit(write, streams), count, rows))
                    sequence += count
                    queued += count
                while pending:
                    settle_oldest()
            except BaseException:
                for future, _, _ in pending:
                    future.cancel()
                raise
    finally:
        for connection in connections:
            connection.close()


def _one(connection: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> Any:
    row = connection.execute(query, params).fetchone()
    return None if row is None else row[0]


def _seeded(connection: psycopg.Connection[Any], target: SeedTarget) -> tuple[int, int | None]:
    row = present(
        connection.execute(_SEEDED, (target.program_id, target.series_id, SEED_BATCH)).fetchone(),
        "the count of seeded cards",
    )
    return int(row[0]), row[1]


def _next_sequence(connection: psycopg.Connection[Any], target: SeedTarget) -> int:
    highest = _one(connection, _HIGHEST, (target.program_id, target.series_id))
    return target.first_sequence if highest is None else int(highest) + 1


def _fill_range(
    connection: psycopg.Connection[Any], target: SeedTarget, report: SeedReport
) -> None:
    row = connection.execute(
        _SEEDED_RANGE, (target.program_id, target.series_id, SEED_BATCH)
    ).fetchone()
    if row is not None and row[0] is not None:
        report.first_card, report.last_card = row


def seeded_cards(database_url: str, program_id: str | None = None) -> tuple[int, str, str]:
    """(count, first, last card number) of the seeded cards."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        target = find_target(connection, program_id)
        count, _ = _seeded(connection, target)
        report = SeedReport(wanted=count, present_before=count)
        _fill_range(connection, target, report)
    return count, report.first_card, report.last_card


# --------------------------------------------------------------------------- warming


async def warm(
    database_url: str,
    cache: AccountCache,
    first_card: str,
    last_card: str,
    *,
    chunk_accounts: int = WARM_CHUNK_ACCOUNTS,
    progress: IO[str] | None = None,
) -> int:
    """Copy the stored states of the accounts ``first_card``..``last_card`` into the cache;
    how many were written (an entry holding a newer version is left alone)."""
    if not first_card:
        return 0
    written = 0
    read = 0
    in_flight: set[asyncio.Task[int]] = set()
    meter = _Progress(progress, None, what="warmed")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        query, after = _ACCOUNTS_FROM, first_card
        while True:
            cursor = connection.cursor(binary=True)
            await cursor.execute(query, (after, last_card, chunk_accounts))
            rows = await cursor.fetchall()
            if not rows:
                break
            query, after = _ACCOUNTS_AFTER, rows[-1][0]
            entries = {account: (int(version), bytes(state)) for account, version, state in rows}
            read += len(entries)
            in_flight.add(asyncio.ensure_future(_put(cache, entries)))
            if len(in_flight) >= WARM_CALLS_IN_FLIGHT:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                written += sum(task.result() for task in done)
            meter.update(read, read)
        for task in in_flight:
            written += await task
    meter.done(None)
    return written


# --------------------------------------------------------------------------- progress


class _Progress:
    """A one-line progress meter with rates, redrawn in place on a terminal."""

    def __init__(self, stream: IO[str] | None, total: int | None, what: str = "accounts") -> None:
        self.stream = stream
        self.total = total
        self.what = what
        self.started = time.perf_counter()
        self.last = 0.0
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def update(self, done: int, rows: int) -> None:
        if self.stream is None:
            return
        now = time.perf_counter()
        if self.tty and now - self.last < 0.2 and done != self.total:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        share = f"/{self.total:,} ({100 * done / self.total:.0f}%)" if self.total else ""
        line = (
            f"seed: {done:,}{share} {self.what}, {done / elapsed:,.0f} {self.what}/s, "
            f"{rows / elapsed:,.0f} rows/s, {elapsed:.1f} s"
        )
        self._write(line)

    def note(self, text: str) -> None:
        if self.stream is not None:
            self._write(f"seed: {text}")

    def _write(self, line: str) -> None:
        stream = present(self.stream, "the progress stream")
        if self.tty:
            stream.write("\r\x1b[2K" + line)
        else:
            stream.write(line + "\n")
        stream.flush()

    def done(self, report: SeedReport | None) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\n")
        if report is not None:
            self.stream.write(
                f"seed: loaded {report.loaded:,} accounts ({report.rows:,} rows) in "
                f"{report.seconds:.1f} s: {report.accounts_per_second:,.0f} accounts/s, "
                f"{report.rows_per_second:,.0f} rows/s"
                + (
                    f", indexes built in {report.index_seconds:.1f} s"
                    if report.deferred_indexes
                    else ""
                )
                + "\n"
            )
        self.stream.flush()


# --------------------------------------------------------------------------- command


def run(
    settings: Any,
    accounts: int,
    *,
    warm_cache: bool = False,
    chunk_accounts: int = CHUNK_ACCOUNTS,
    seed_value: int = 7,
    progress: IO[str] | None = sys.stderr,
    prepare: Callable[[Any], Any] | None = None,
) -> SeedReport:
    """``loyalty seed``: servers (embedded when no URLs), migrations, the demo program,
    then the load and, with ``warm_cache``, the cache."""

    resolved = (prepare or serve.resolve_servers)(settings)
    try:
        from processor.store.migrate import migrate

        migrate(resolved.database_url)
        asyncio.run(serve.load_demo(settings, resolved.database_url))
        report = seed(
            resolved.database_url,
            accounts,
            chunk_accounts=chunk_accounts,
            seed_value=seed_value,
            progress=progress,
        )
        if warm_cache:
            if not resolved.redis_url:
                raise SeedError("--warm needs a Redis server")
            report.warmed, report.warm_seconds = asyncio.run(
                _warm_all(settings, resolved.database_url, resolved.redis_url, report, progress)
            )
    finally:
        resolved.stop()
    return report


async def _warm_all(
    settings: Any, database_url: str, redis_url: str, report: SeedReport, progress: IO[str] | None
) -> tuple[int, float]:
    started = time.perf_counter()
    from processor.cache import compression as cache_dictionary

    # The same candidate dictionary the server offers: whoever stores one first, every
    # writer compresses with it (processor.cache.accounts, "Compression").
    dictionary = (
        await cache_dictionary.active_programs_dictionary(database_url)
        if settings.cache_compression
        else None
    )
    cache = AccountCache.from_url(
        redis_url, key_prefix=settings.cache_key_prefix, dictionary=dictionary
    )
    try:
        written = await warm(
            database_url, cache, report.first_card, report.last_card, progress=progress
        )
    finally:
        await cache.aclose()
    return written, time.perf_counter() - started

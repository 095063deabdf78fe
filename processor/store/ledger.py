"""The PostgreSQL system of record: account state, the ledger, receipts and idempotency.

A batch of evaluated requests is committed in ONE transaction (``Store.commit``), one
call of the ``commit_batch`` function (migrations/0003_commit_batch.sql), so a batch costs
one message to PostgreSQL and one answer:

1. the accounts the batch changed are locked in account-id order and their versions
   compared with the versions the batch was evaluated at (optimistic concurrency: the
   cache may be stale, the commit never is); new accounts are inserted, changed ones
   updated to version + 1, each from one array-bound statement;
2. every request id is inserted into ``idempotency``: an id that is already there was
   posted by someone else in the meantime (a concurrent replay);
3. if any account or request id conflicts, the whole transaction is rolled back and the
   outcome names them, so the caller re-evaluates those requests on fresh state (or
   answers replays with the stored response) and commits the rest again;
4. otherwise the postings are inserted into the ledger, receipts upserted, and the
   transaction committed before ``commit`` returns. Clients are answered only after.

If the commit itself fails with the connection (``DatabaseUnavailableError``), the batch
may or may not have been committed: retrying it is safe, since its request ids then come
back as replays.

Every input is checked before a connection is taken (``InvalidBatchError``, nothing
written), and the schema's constraints check the same properties again on the way in.
Every PostgreSQL failure to answer becomes ``DatabaseUnavailableError`` (code 1001) with
the cause chained; a refusal PostgreSQL should never have had to make is an
``InternalError``.

``ledger_page`` reads a card's ledger rows back (``LedgerRow``), newest first and numbered
in commit order, a page at a time, through the pool the Store and the catalog share.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from processor import calendar
from processor.engine.types import AccountState, Posting, Receipt, Result
from processor.errors import (
    DatabaseUnavailableError,
    InternalError,
    InvalidBatchError,
    InvalidFieldError,
    LoyaltyError,
    check,
    present,
)
from processor.limits import (
    BATCH_ROWS_MAX,
    CARD_NUMBER_STORED_CHARS_MAX,
    EXPECTED_VERSION_MAX,
    LEDGER_DAY_MAX,
    LEDGER_PAGE_SIZE_MAX,
    LOOKUP_KEYS_MAX,
    PAYLOAD_HASH_BYTES_MAX,
    REQUEST_ID_STORED_CHARS_MAX,
    RESPONSE_BYTES_MAX,
)
from processor.store import arrays, codec
from processor.store.events import Event, event_columns

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- limits

POOL_SIZE_MIN: Final = 1
"""Connections the pool keeps open when idle."""

POOL_SIZE_MAX: Final = 8
"""Connections one process may hold; the batcher commits a few batches at a time at most."""

POOL_SIZE_LIMIT: Final = 64
"""Largest pool a Store accepts; PostgreSQL's connections are a shared, scarce resource."""

POOL_WAITING_MAX: Final = 256
"""Callers that may queue for a connection before the next one is refused at once."""

POOL_ACQUIRE_TIMEOUT_SECONDS: Final = 2.0
"""Longest wait for a connection; then the caller fails fast with code 1001."""

CONNECT_TIMEOUT_SECONDS: Final = 5
"""Longest wait for PostgreSQL to accept one new connection."""

RECONNECT_ATTEMPT_SECONDS: Final = 5.0
"""How long one reconnection attempt lasts: the pool tries after 1 s, then waits twice as
long each time until this is up, then the store starts a new attempt (see
``Store._reconnect_failed``). So while PostgreSQL is down a try comes at least every
RECONNECT_ATTEMPT_SECONDS / 2 seconds, for as long as the server runs."""

STATEMENT_TIMEOUT_MS: Final = 5_000
"""Longest any one statement may run, row-lock waits included."""

IDLE_IN_TRANSACTION_TIMEOUT_MS: Final = 30_000
"""A transaction left idle this long (a stuck client) is ended by the server."""

COMMIT_ATTEMPTS_MAX: Final = 3
"""Tries of one batch when PostgreSQL breaks a deadlock or serialization failure by
aborting it; lock order makes both rare, not impossible."""

INT32_MAX: Final = 2**31 - 1
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

RECONCILE_CHUNK_ACCOUNTS: Final = 5_000
"""Accounts reconciled per round trip."""

RECONCILE_MISMATCHES_MAX: Final = 10_000
"""Mismatches ``reconcile`` reports before it stops looking."""

PROBE_TIMEOUT_SECONDS: Final = 2.0
"""Longest a probe of PostgreSQL waits for a connection and its answer."""

SCAN_STATEMENT_TIMEOUT_MS: Final = 600_000
"""Longest one statement of a whole-ledger scan (reconcile, ledger sums) may run."""

BALANCES: Final = frozenset(codec.BALANCES)


# --------------------------------------------------------------------------- errors


class PoolExhaustedError(DatabaseUnavailableError):
    """No database connection came free within the pool's timeout (code 1001)."""


# --------------------------------------------------------------------------- values


# The records a commit is given are made for every transaction (LedgerEntry, IdempotencyRecord)
# or account (AccountWrite) and never changed after: plain slotted dataclasses, since a
# frozen one's __init__ sets each field through object.__setattr__, about six times the cost
# (BENCHMARKS.md, "Frozen records").
@dataclass(slots=True)
class AccountWrite:
    """An account's new state, written only if its row is still at ``expected_version``.

    ``expected_version`` 0 means the account must not exist yet. The row is written at
    ``expected_version + 1``, and so is the version inside the stored state.

    The state comes as objects (``state``) or, from the compiled engine, as a function that
    writes its stored bytes at a version (``AccountWrite.of_encoder``, with
    ``codec.encode_evaluated``): a card the engine evaluated in its arrays is written from
    them and never made into objects.
    """

    state: AccountState | None
    expected_version: int
    encode: Callable[[int], bytes] | None = None
    account: str = ""

    @classmethod
    def of_encoder(
        cls, account: str, encode: Callable[[int], bytes], expected_version: int
    ) -> AccountWrite:
        """The write of ``account``'s state whose stored bytes ``encode(version)`` gives."""
        return cls(None, expected_version, encode, account)

    @property
    def account_id(self) -> str:
        return self.account or present(self.state, "the state of an account write").account

    def encoded(self, version: int) -> bytes:
        """The stored state at ``version``."""
        if self.encode is not None:
            return self.encode(version)
        return codec.encode_state(present(self.state, "the state of an account write"), version)


@dataclass(slots=True)
class LedgerEntry:
    """One ledger row: a posting of one request to one account."""

    account_id: str
    request_id: str
    seq: int  # the posting's position among its request's postings
    posting: Posting


@dataclass(slots=True)
class IdempotencyRecord:
    """A posted client transaction id, the hash of its payload and the answer given."""

    account_id: str
    request_id: str
    payload_hash: bytes
    response: bytes


@dataclass(slots=True)
class CommitBatch:
    """Everything one batch writes, committed together or not at all."""

    accounts: list[AccountWrite] = field(default_factory=list)
    postings: list[LedgerEntry] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    # Receipts already in their stored form: (account, request id, codec.encode_receipt's
    # bytes), as codec.stored_receipts gives a batch's.
    stored_receipts: list[tuple[str, str, bytes]] = field(default_factory=list)
    idempotency: list[IdempotencyRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # processor.store.events


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """What became of a batch: committed, or rolled back naming every conflict."""

    committed: bool
    conflicts: tuple[str, ...] = ()  # account ids whose version did not match
    replayed: tuple[str, ...] = ()  # request ids someone else posted first
    versions: Mapping[str, int] = field(default_factory=dict)  # new version per account
    encoded: Mapping[str, bytes] = field(default_factory=dict)  # stored state per account


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A balance that differs from the sum of its ledger rows.

    ``program`` is empty for the tender balance: a card has one tender account, whose
    postings may name any tender program.
    """

    account_id: str
    program: str
    balance: str
    state_balance: int
    ledger_sum: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One ledger row of a card, numbered in commit order from 1."""

    sequence: int
    request_id: str
    posting: Posting
    committed_at: datetime.datetime


def ledger_entries(result: Result) -> list[LedgerEntry]:
    """The ledger rows of one result: its postings, in order, each on its own account."""
    return [
        LedgerEntry(posting.account or result.account, result.id, seq, posting)
        for seq, posting in enumerate(result.postings)
    ]


def ledger_month(day: int) -> int:
    """The ledger partition key of a day number: its month as yyyymm."""
    year, month, _ = calendar.civil_from_days(day)
    return year * 100 + month


def state_balances(state: AccountState) -> dict[tuple[str, str], int]:
    """The balances of one account that the ledger must sum to, by (program, balance)."""
    balances: dict[tuple[str, str], int] = {}
    for program, loyalty in state.loyalty.items():
        balances[program, "points"] = sum(lot.points for lot in loyalty.lots) - loyalty.debt
    for program, award in state.awards.items():
        balances[program, "award_value"] = award.balance
    if state.tender is not None:
        balances["", "tender"] = state.tender.balance
    return balances


# --------------------------------------------------------------------------- the store

# Array parameters are bound in binary (%b): no text quoting of every element and no hex
# escaping of bytea, which made a 1,000-request commit about 1.6 times faster.
_SELECT_STATES = (
    "SELECT account_id, version, state FROM accounts WHERE account_id = ANY(%b::text[])"
)
_SELECT_BY_KEYS = """
SELECT t.account_id, t.request_id, {columns} FROM {table} AS t
JOIN unnest(%b::text[], %b::text[]) AS k(account_id, request_id)
  ON t.account_id = k.account_id AND t.request_id = k.request_id
"""
# commit_batch's parameters, in order: each a packed array of its SQL type.
_COMMIT_PARAMETERS: Final = (
    arrays.text, arrays.int8,  # the accounts written, and the versions the batch read
    arrays.text, arrays.int8, arrays.bytea,  # changed accounts: id, new version, state
    arrays.text, arrays.int8, arrays.bytea,  # new accounts: the same
    arrays.text, arrays.text, arrays.bytea, arrays.bytea,  # idempotency rows
    arrays.text, arrays.int4, arrays.text, arrays.int4, arrays.text, arrays.int4,  # ledger
    arrays.text, arrays.text, arrays.int8, arrays.text, arrays.int4,
    arrays.text, arrays.text, arrays.bytea,  # receipts
    arrays.text, arrays.text, arrays.int4, arrays.text,  # events (migrations/0011_events.sql)
)  # fmt: skip
_COMMIT_BATCH: Final = (
    "SELECT * FROM commit_batch("
    + ", ".join(f"%b::{parameter.sql_type}[]" for parameter in _COMMIT_PARAMETERS)
    + ")"
)
"""One call commits a whole batch and its events (migrations/0003_commit_batch.sql says how;
0011_events.sql adds the events)."""
_LEDGER_COLUMNS: Final = 11
_RACED: Final = "LY001"  # commit_batch: an account or request id appeared after the lock
_UPDATE_MISSED: Final = "LY002"  # commit_batch: a locked account was not updated (a bug)

_LEDGER_SUMS = """
SELECT account_id, program, balance, sum(amount)::bigint FROM ledger
GROUP BY account_id, program, balance
"""
_LEDGER_SUMS_OF_ONE = """
SELECT account_id, program, balance, sum(amount)::bigint FROM ledger WHERE account_id = %s
GROUP BY account_id, program, balance
"""
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
_SCAN_TIMEOUT = f"SET LOCAL statement_timeout = {SCAN_STATEMENT_TIMEOUT_MS}"
_ACCOUNTS_AFTER = """
SELECT account_id, version, state FROM accounts WHERE account_id > %s
ORDER BY account_id LIMIT %s
"""
_SUMS_OF = """
SELECT account_id, program, balance, sum(amount)::bigint FROM ledger
WHERE account_id = ANY(%b::text[]) GROUP BY account_id, program, balance
"""
_SUMS_WITHOUT_ACCOUNT = """
SELECT l.account_id, l.program, l.balance, sum(l.amount)::bigint FROM ledger AS l
WHERE NOT EXISTS (SELECT 1 FROM accounts AS a WHERE a.account_id = l.account_id)
GROUP BY l.account_id, l.program, l.balance
"""


class _FailFastPool(AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]):
    """The pool, refusing at once while PostgreSQL is known unreachable (see Store.reachable).

    Known unreachable: a caller timed out waiting for a connection while attempts to connect
    were failing. Reachable again: a connection was made (Store._configure says so).
    """

    reachable = True
    connect_errors_seen = 0  # the pool's count of failed connects at the last success

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[TupleRow]:
        if not self.reachable and not self.get_stats().get("pool_available"):
            raise PoolTimeout(f"PostgreSQL is unreachable (pool {self.name!r} is reconnecting)")
        try:
            return await super().getconn(timeout)
        except PoolTimeout:
            if self.reachable and self._connect_errors() > self.connect_errors_seen:
                log.warning("PostgreSQL is unreachable: calls fail at once with 1001")
                self.reachable = False
            raise

    def connected(self) -> None:
        """A connection was just made: PostgreSQL answers."""
        if not self.reachable:
            log.warning("PostgreSQL is reachable again")
        self.reachable = True
        self.connect_errors_seen = self._connect_errors()

    def _connect_errors(self) -> int:
        return int(self.get_stats().get("connections_errors", 0))


class Store:
    """Account state, ledger, receipts and idempotency in PostgreSQL, over a bounded pool.

    Open it before use (``await store.open()`` or ``async with Store(...)``); opening does
    not wait for the database, so a server starts while PostgreSQL is down and serves as
    soon as it is back. Fork before opening, never after: a forked child would share the
    parent's sockets, and two processes writing one connection interleave their protocol
    messages and corrupt both sessions.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size_min: int = POOL_SIZE_MIN,
        pool_size_max: int = POOL_SIZE_MAX,
        acquire_timeout_seconds: float = POOL_ACQUIRE_TIMEOUT_SECONDS,
        statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
        reconnect_attempt_seconds: float = RECONNECT_ATTEMPT_SECONDS,
        name: str = "loyalty-store",
    ) -> None:
        if not 1 <= pool_size_max <= POOL_SIZE_LIMIT:
            raise ValueError(f"pool_size_max {pool_size_max} is not in 1..{POOL_SIZE_LIMIT}")
        if not 0 <= pool_size_min <= pool_size_max:
            raise ValueError(f"pool_size_min {pool_size_min} is not in 0..{pool_size_max}")
        if not 0 < acquire_timeout_seconds <= 60:
            raise ValueError(f"acquire_timeout_seconds {acquire_timeout_seconds} not in (0, 60]")
        if not 0 < statement_timeout_ms <= 600_000:
            raise ValueError(f"statement_timeout_ms {statement_timeout_ms} not in 1..600000")
        if not 0 < reconnect_attempt_seconds <= 600:
            raise ValueError(
                f"reconnect_attempt_seconds {reconnect_attempt_seconds} not in (0, 600]"
            )
        self._conninfo = conninfo
        self._statement_timeout_ms = statement_timeout_ms
        self._acquire_timeout_seconds = acquire_timeout_seconds
        # Called after a commit that wrote events: a serving process's relay numbers them
        # then (an in-process call, not a NOTIFY: a notifying commit takes a lock every
        # other notifying commit waits on; migration 0014).
        self.on_events_written: Callable[[], None] | None = None
        self._pool: _FailFastPool = _FailFastPool(
            conninfo,
            min_size=pool_size_min,
            max_size=pool_size_max,
            open=False,
            name=name,
            timeout=acquire_timeout_seconds,
            max_waiting=POOL_WAITING_MAX,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
            reconnect_timeout=reconnect_attempt_seconds,
            reconnect_failed=self._reconnect_failed,
            configure=self._configure,
            # A local check only: a round trip per checkout would double the batch's
            # latency. A connection that died unnoticed fails its first statement (1001),
            # is marked broken and is replaced when it returns to the pool.
            check=_check_locally,
        )
        self._months: set[int] = set()  # ledger partitions known to exist

    @property
    def conninfo(self) -> str:
        """Where the pool connects (for a connection of one's own, as a listener needs)."""
        return self._conninfo

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The bounded pool; the catalog shares its connections, limits and timeouts."""
        return self._pool

    @property
    def reachable(self) -> bool:
        """False from a failed attempt to connect to PostgreSQL until one succeeds. Meanwhile
        a call that finds no idle connection fails at once with 1001 instead of waiting for
        one that cannot come (the client's deadline would pass first, with no reason)."""
        return self._pool.reachable

    async def probe(self, timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> bool:
        """Whether PostgreSQL answers a trivial statement now, through the pool (the probe
        behind loyalty_database_up: a dead database is seen without any traffic)."""
        try:
            async with self._pool.connection(timeout=timeout_seconds) as connection:
                await connection.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    async def _configure(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._pool.connected()
        await connection.set_autocommit(True)
        await connection.execute(
            f"SET statement_timeout = {int(self._statement_timeout_ms)}; "
            f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}"
        )

    async def _reconnect_failed(self, pool: AsyncConnectionPool[Any]) -> None:
        # psycopg_pool gives a connection up after one attempt and tries again only when a
        # caller queues for one; once the callers that timed out during the outage fill
        # its waiting list, none can queue, and the pool would stay empty for good after
        # PostgreSQL is back. check() grows an empty pool again: a new attempt, at once.
        if pool.closed:
            return
        log.warning("PostgreSQL still unreachable; trying to reconnect again")
        await pool.check()

    async def open(self) -> None:
        """Start the pool; connections are made in the background."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        """Close every connection; calls after this fail with DatabaseUnavailableError."""
        await self._pool.close()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ----------------------------------------------------------------------- reads

    async def load(self, account_ids: Sequence[str]) -> dict[str, tuple[int, AccountState]]:
        """(version, state) of each account that exists; missing ids are absent."""
        loaded: dict[str, tuple[int, AccountState]] = {}
        for account_id, (version, blob) in (await self.load_encoded(account_ids)).items():
            state = codec.decode_state(blob, account_id)
            message = f"account {account_id} at version {version} holds a state {state.version}"
            check(state.version == version, message)
            loaded[account_id] = (version, state)
        return loaded

    async def load_encoded(self, account_ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """(version, stored state bytes) of each account that exists, as the cache keeps them."""
        _check_lookup(len(account_ids), "account ids")
        try:
            async with self._pool.connection() as connection:
                cursor = connection.cursor(binary=True)
                await cursor.execute(_SELECT_STATES, (arrays.text(account_ids),))
                rows = await cursor.fetchall()
        except psycopg.Error as error:
            _raise_database_error(error, "load accounts", self._acquire_timeout_seconds)
        return {account_id: (version, blob) for account_id, version, blob in rows}

    async def load_receipts(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Receipt]:
        """The receipts of earlier requests, by (account, request id), of those keys."""
        rows = await self._by_keys("receipts", "t.state", keys, "load receipts")
        return {
            (account, request_id): codec.decode_receipt(blob) for account, request_id, blob in rows
        }

    async def seen(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[bytes, bytes]]:
        """(payload hash, response) of every (account, request id) of those already posted."""
        rows = await self._by_keys(
            "idempotency", "t.payload_hash, t.response", keys, "look up request ids"
        )
        return {
            (account, request_id): (payload_hash, response)
            for account, request_id, payload_hash, response in rows
        }

    async def _by_keys(
        self, table: str, columns: str, keys: Sequence[tuple[str, str]], action: str
    ) -> list[tuple[Any, ...]]:
        _check_lookup(len(keys), "keys")
        accounts = [account for account, _ in keys]
        requests = [request for _, request in keys]
        query = _SELECT_BY_KEYS.format(columns=columns, table=table)
        try:
            async with self._pool.connection() as connection:
                cursor = connection.cursor(binary=True)
                await cursor.execute(query, (arrays.text(accounts), arrays.text(requests)))
                return await cursor.fetchall()
        except psycopg.Error as error:
            _raise_database_error(error, action, self._acquire_timeout_seconds)

    # ----------------------------------------------------------------------- commit

    async def commit(self, batch: CommitBatch) -> CommitOutcome:
        """Write the whole batch in one transaction, or nothing and name the conflicts."""
        staged = _stage(batch)
        if not (staged.account_ids or staged.idempotency_rows[0] or staged.receipt_rows[0]):
            return CommitOutcome(True)
        await self.ensure_ledger_partitions(staged.months)
        for attempt in range(1, COMMIT_ATTEMPTS_MAX + 1):
            try:
                outcome = await self._commit_once(staged)
                if outcome.committed and batch.events and self.on_events_written is not None:
                    self.on_events_written()
                return outcome
            except psycopg.errors.TransactionRollback as error:
                # A deadlock or serialization failure aborted the whole transaction; the
                # batch is intact and trying it again is safe.
                if attempt == COMMIT_ATTEMPTS_MAX:
                    _raise_database_error(error, "commit a batch", self._acquire_timeout_seconds)
                await asyncio.sleep(0.005 * attempt)
            except psycopg.Error as error:
                _raise_database_error(error, "commit a batch", self._acquire_timeout_seconds)
        raise InternalError("unreachable: the commit loop ended without an outcome")

    async def _commit_once(self, staged: _Staged) -> CommitOutcome:
        columns: tuple[Sequence[Any], ...] = (
            staged.account_ids, [staged.expected[one] for one in staged.account_ids],
            *staged.changed_rows, *staged.new_rows, *staged.idempotency_rows,
            *_ledger_columns(staged.ledger_rows), *staged.receipt_rows, *staged.event_rows,
        )  # fmt: skip
        arguments = [pack(column) for pack, column in zip(_COMMIT_PARAMETERS, columns, strict=True)]
        async with self._pool.connection() as connection:
            cursor = connection.cursor(binary=True)
            try:
                await cursor.execute(_COMMIT_BATCH, arguments)
            except psycopg.Error as error:
                if error.sqlstate == _RACED:
                    raced = json.loads(error.diag.message_detail or "{}")
                    return CommitOutcome(
                        False, tuple(raced.get("conflicts", ())), tuple(raced.get("replayed", ()))
                    )
                if error.sqlstate == _UPDATE_MISSED:
                    raise InternalError(f"the batch commit lost its locks: {error}") from error
                raise
            row = await cursor.fetchone()
            if row is None:
                raise InternalError("commit_batch returned no row")
            # The function is the transaction (autocommit): nothing may be left open.
            check(
                connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE,
                "the batch transaction did not end",
            )
        conflicts = tuple(row[0])
        if conflicts:
            return CommitOutcome(False, conflicts)
        return CommitOutcome(True, versions=staged.versions, encoded=staged.encoded)

    async def ensure_ledger_partitions(self, months: Iterable[int]) -> None:
        """Create the ledger partitions of these months (yyyymm) that do not exist yet.

        Each is created in its own short transaction, outside any batch: creating a
        partition locks the whole ledger for a moment, which a batch must never wait on
        while it holds row locks of its own.
        """
        missing = sorted(set(months) - self._months)
        if not missing:
            return
        try:
            async with self._pool.connection() as connection:
                for month in missing:
                    await connection.execute("SELECT ensure_ledger_partition(%s)", (month,))
                    self._months.add(month)
        except psycopg.Error as error:
            _raise_database_error(error, "create ledger partitions", self._acquire_timeout_seconds)

    # ----------------------------------------------------------------------- reconcile

    async def ledger_sums(self, account_id: str | None = None) -> dict[tuple[str, str, str], int]:
        """Sum of the ledger by (account, program, balance), of one account or all."""
        try:
            async with self._pool.connection() as connection, connection.transaction():
                await connection.execute(_SCAN_TIMEOUT)
                if account_id is None:
                    cursor = await connection.execute(_LEDGER_SUMS)
                else:
                    cursor = await connection.execute(_LEDGER_SUMS_OF_ONE, (account_id,))
                rows = await cursor.fetchall()
        except psycopg.Error as error:
            _raise_database_error(error, "sum the ledger", self._acquire_timeout_seconds)
        return {(account, program, balance): total for account, program, balance, total in rows}

    async def reconcile(self) -> list[Mismatch]:
        """Every balance that differs from the sum of its ledger rows; empty when all agree.

        Reads one consistent snapshot (a read-only, repeatable-read transaction), a chunk
        of accounts per round trip, so it is safe to run while the processor is posting.
        Stops after ``RECONCILE_MISMATCHES_MAX`` mismatches.
        """
        mismatches: list[Mismatch] = []
        try:
            async with self._pool.connection() as connection, connection.transaction():
                await connection.execute(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                )
                await connection.execute(_SCAN_TIMEOUT)
                await _reconcile(connection, mismatches)
        except psycopg.Error as error:
            _raise_database_error(error, "reconcile the ledger", self._acquire_timeout_seconds)
        return mismatches[:RECONCILE_MISMATCHES_MAX]


# --------------------------------------------------------------------------- ledger pages


async def ledger_page(
    pool: AsyncConnectionPool[Any],
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
    try:
        async with pool.connection() as connection:
            cursor = connection.cursor()
            await cursor.execute(_LEDGER_PAGE, params)
            rows = await cursor.fetchall()
    except psycopg.Error as error:
        _raise_database_error(error, "list the ledger", pool.timeout)
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


# --------------------------------------------------------------------------- commit steps


@dataclass(slots=True)
class _Staged:
    """A validated batch, encoded and laid out as the statements bind it."""

    account_ids: list[str]
    new_rows: tuple[list[str], list[int], list[bytes]]
    changed_rows: tuple[list[str], list[int], list[bytes]]
    expected: dict[str, int]
    versions: dict[str, int]
    encoded: dict[str, bytes]
    ledger_rows: list[tuple[Any, ...]]
    months: set[int]
    receipt_rows: tuple[list[str], list[str], list[bytes]]
    idempotency_rows: tuple[list[str], list[str], list[bytes], list[bytes]]
    event_rows: tuple[list[str], list[str], list[int], list[str]]


def _ledger_columns(rows: list[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """The ledger rows as the column arrays commit_batch unnests (eleven, empty or not)."""
    if not rows:
        return tuple([] for _ in range(_LEDGER_COLUMNS))
    return tuple(list(column) for column in zip(*rows, strict=True))


async def _reconcile(connection: psycopg.AsyncConnection[Any], found: list[Mismatch]) -> None:
    after = ""
    while len(found) < RECONCILE_MISMATCHES_MAX:
        cursor = connection.cursor(binary=True)
        await cursor.execute(_ACCOUNTS_AFTER, (after, RECONCILE_CHUNK_ACCOUNTS))
        accounts = await cursor.fetchall()
        if not accounts:
            break
        after = accounts[-1][0]
        await cursor.execute(_SUMS_OF, ([row[0] for row in accounts],))
        sums: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        for account_id, program, balance, total in await cursor.fetchall():
            key = ("", balance) if balance == "tender" else (program, balance)
            sums[account_id][key] = sums[account_id].get(key, 0) + total
        for account_id, _, blob in accounts:
            expected = state_balances(codec.decode_state(blob, account_id))
            found.extend(_compare(account_id, expected, sums.get(account_id, {})))
    cursor = await connection.execute(_SUMS_WITHOUT_ACCOUNT)
    for account_id, program, balance, total in await cursor.fetchall():
        if total != 0:
            found.append(Mismatch(account_id, program, balance, 0, total))


def _compare(
    account_id: str, expected: Mapping[tuple[str, str], int], sums: Mapping[tuple[str, str], int]
) -> list[Mismatch]:
    return [
        Mismatch(account_id, program, balance, expected.get(key, 0), sums.get(key, 0))
        for key in sorted(set(expected) | set(sums))
        for program, balance in [key]
        if expected.get(key, 0) != sums.get(key, 0)
    ]


# --------------------------------------------------------------------------- validation


def _stage(batch: CommitBatch) -> _Staged:
    """Check every row of ``batch`` and encode it; raises InvalidBatchError, writes nothing."""
    for count, what in (
        (len(batch.accounts), "accounts"),
        (len(batch.postings), "postings"),
        (len(batch.receipts) + len(batch.stored_receipts), "receipts"),
        (len(batch.idempotency), "request ids"),
    ):
        if count > BATCH_ROWS_MAX:
            raise InvalidBatchError(f"a batch of {count} {what} is over {BATCH_ROWS_MAX}")
    expected: dict[str, int] = {}
    encoded: dict[str, bytes] = {}
    new_rows: tuple[list[str], list[int], list[bytes]] = ([], [], [])
    changed_rows: tuple[list[str], list[int], list[bytes]] = ([], [], [])
    for write in sorted(batch.accounts, key=lambda write: write.account_id):
        account_id = write.account_id
        _check_id(account_id, CARD_NUMBER_STORED_CHARS_MAX, "account id")
        version = write.expected_version
        if type(version) is not int or not 0 <= version <= EXPECTED_VERSION_MAX:
            raise InvalidBatchError(
                f"account {account_id}: expected version {version!r} "
                f"is not in 0..{EXPECTED_VERSION_MAX}"
            )
        if account_id in expected:
            raise InvalidBatchError(f"account {account_id} is written twice in one batch")
        expected[account_id] = version
        # The next version, written without copying the state to carry it.
        blob = write.encoded(version + 1)
        encoded[account_id] = blob
        rows = new_rows if version == 0 else changed_rows
        rows[0].append(account_id)
        rows[1].append(version + 1)
        rows[2].append(blob)
    ledger_rows, months = _ledger_rows(batch.postings, expected)
    return _Staged(
        account_ids=list(expected),
        new_rows=new_rows,
        changed_rows=changed_rows,
        expected=expected,
        versions={account_id: version + 1 for account_id, version in expected.items()},
        encoded=encoded,
        ledger_rows=ledger_rows,
        months=months,
        receipt_rows=_receipt_rows(batch.receipts, batch.stored_receipts),
        idempotency_rows=_idempotency_rows(batch.idempotency),
        event_rows=event_columns(batch.events, expected),
    )


def _ledger_rows(
    entries: Sequence[LedgerEntry], written: Mapping[str, int]
) -> tuple[list[tuple[Any, ...]], set[int]]:
    rows: list[tuple[Any, ...]] = []
    months: set[int] = set()
    keys: set[tuple[str, str, int]] = set()
    for entry in entries:
        posting = entry.posting
        account_id, request_id, seq = entry.account_id, entry.request_id, entry.seq
        # Checked without building a message first (they cost more than the checks);
        # anything doubtful goes through _check_posting, which is the rule and says why.
        if not (
            type(account_id) is str
            and 0 < len(account_id) <= CARD_NUMBER_STORED_CHARS_MAX
            and type(request_id) is str
            and 0 < len(request_id) <= REQUEST_ID_STORED_CHARS_MAX
            and account_id in written
            and posting.balance in BALANCES
            and posting.kind
            and type(seq) is int
            and 0 <= seq <= INT32_MAX
            and type(posting.program_version) is int
            and 0 <= posting.program_version <= INT32_MAX
            and type(posting.amount) is int
            and INT64_MIN <= posting.amount <= INT64_MAX
            and type(posting.day) is int
            and 0 <= posting.day <= LEDGER_DAY_MAX
        ):
            _check_posting(entry, written)
        key = (account_id, request_id, seq)
        if key in keys:
            raise InvalidBatchError(f"{_posting_name(entry)} appears twice in one batch")
        keys.add(key)
        month = ledger_month(posting.day)
        months.add(month)
        rows.append(
            (
                entry.account_id,
                month,
                entry.request_id,
                entry.seq,
                posting.program,
                posting.program_version,
                posting.balance,
                posting.kind,
                posting.amount,
                posting.rule,
                posting.day,
            )
        )
    return rows, months


def _posting_name(entry: LedgerEntry) -> str:
    return f"posting {entry.request_id}#{entry.seq} of account {entry.account_id}"


def _check_posting(entry: LedgerEntry, written: Mapping[str, int]) -> None:
    """Every rule of a ledger row, in order; InvalidBatchError naming the first broken."""
    posting = entry.posting
    where = _posting_name(entry)
    _check_id(entry.account_id, CARD_NUMBER_STORED_CHARS_MAX, f"{where}: account id")
    _check_id(entry.request_id, REQUEST_ID_STORED_CHARS_MAX, f"{where}: request id")
    if entry.account_id not in written:
        # A posting changes a balance, so its account's state must change with it, or
        # the balance and the ledger would part ways.
        raise InvalidBatchError(f"{where}: the batch does not write that account's state")
    if posting.balance not in BALANCES:
        raise InvalidBatchError(
            f"{where}: balance {posting.balance!r} is not one of {sorted(BALANCES)}"
        )
    if not posting.kind:
        raise InvalidBatchError(f"{where}: the posting has no kind")
    _check_int(entry.seq, 0, INT32_MAX, f"{where}: seq")
    _check_int(posting.program_version, 0, INT32_MAX, f"{where}: program version")
    _check_int(posting.amount, INT64_MIN, INT64_MAX, f"{where}: amount")
    _check_int(posting.day, 0, LEDGER_DAY_MAX, f"{where}: day")


def _receipt_rows(
    receipts: Sequence[Receipt], stored: Sequence[tuple[str, str, bytes]] = ()
) -> tuple[list[str], list[str], list[bytes]]:
    """The receipts' rows, sorted: ``receipts`` encoded here, ``stored`` already encoded."""
    encoded: list[tuple[str, str, Receipt | bytes]] = [
        (receipt.account, receipt.id, receipt) for receipt in receipts
    ]
    rows: tuple[list[str], list[str], list[bytes]] = ([], [], [])
    keys: set[tuple[str, str]] = set()
    for account, request_id, receipt in sorted([*encoded, *stored], key=lambda row: row[:2]):
        if not (
            type(account) is str
            and 0 < len(account) <= CARD_NUMBER_STORED_CHARS_MAX
            and type(request_id) is str
            and 0 < len(request_id) <= REQUEST_ID_STORED_CHARS_MAX
        ):
            _check_id(account, CARD_NUMBER_STORED_CHARS_MAX, f"receipt {request_id}: account id")
            _check_id(request_id, REQUEST_ID_STORED_CHARS_MAX, f"receipt of {account}: request id")
        if (account, request_id) in keys:
            raise InvalidBatchError(f"receipt {request_id} of {account} appears twice")
        keys.add((account, request_id))
        rows[0].append(account)
        rows[1].append(request_id)
        rows[2].append(receipt if isinstance(receipt, bytes) else codec.encode_receipt(receipt))
    return rows


def _idempotency_rows(
    records: Sequence[IdempotencyRecord],
) -> tuple[list[str], list[str], list[bytes], list[bytes]]:
    rows: tuple[list[str], list[str], list[bytes], list[bytes]] = ([], [], [], [])
    request_ids: set[tuple[str, str]] = set()  # request ids are unique per card only
    for record in sorted(records, key=lambda record: (record.account_id, record.request_id)):
        if not (
            type(record.account_id) is str
            and 0 < len(record.account_id) <= CARD_NUMBER_STORED_CHARS_MAX
            and type(record.request_id) is str
            and 0 < len(record.request_id) <= REQUEST_ID_STORED_CHARS_MAX
            and type(record.payload_hash) is bytes
            and 1 <= len(record.payload_hash) <= PAYLOAD_HASH_BYTES_MAX
            and type(record.response) is bytes
            and len(record.response) <= RESPONSE_BYTES_MAX
        ):
            where = f"request {record.request_id} of {record.account_id}"
            _check_id(record.account_id, CARD_NUMBER_STORED_CHARS_MAX, f"{where}: account id")
            _check_id(record.request_id, REQUEST_ID_STORED_CHARS_MAX, f"{where}: request id")
            _check_bytes(record.payload_hash, 1, PAYLOAD_HASH_BYTES_MAX, f"{where}: payload hash")
            _check_bytes(record.response, 0, RESPONSE_BYTES_MAX, f"{where}: response")
        key = (record.account_id, record.request_id)
        if key in request_ids:
            raise InvalidBatchError(
                f"request {record.request_id} of {record.account_id} appears twice in one batch"
            )
        request_ids.add(key)
        rows[0].append(record.account_id)
        rows[1].append(record.request_id)
        rows[2].append(bytes(record.payload_hash))
        rows[3].append(bytes(record.response))
    return rows


async def _check_locally(connection: psycopg.AsyncConnection[Any]) -> None:
    if connection.closed or connection.broken:
        raise psycopg.OperationalError("the pooled connection is broken")


def _check_lookup(count: int, what: str) -> None:
    if count > LOOKUP_KEYS_MAX:
        raise InvalidBatchError(f"a lookup of {count} {what} is over {LOOKUP_KEYS_MAX}")


def _check_id(value: object, chars_max: int, what: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= chars_max:
        raise InvalidBatchError(f"{what} {value!r} is not a text of 1..{chars_max} characters")


def _check_int(value: object, low: int, high: int, what: str) -> None:
    if type(value) is not int or not low <= value <= high:
        raise InvalidBatchError(f"{what} {value!r} is not an integer in {low}..{high}")


def _check_bytes(value: object, low: int, high: int, what: str) -> None:
    if not isinstance(value, bytes | bytearray | memoryview) or not low <= len(value) <= high:
        raise InvalidBatchError(f"{what} is not {low}..{high} bytes")


def _raise_database_error(error: psycopg.Error, action: str, timeout_seconds: float) -> NoReturn:
    raise database_error(error, action, timeout_seconds) from error


def database_error(error: psycopg.Error, action: str, timeout_seconds: float) -> LoyaltyError:
    """The processor's error for a psycopg failure while doing ``action``."""
    if isinstance(error, PoolTimeout | TooManyRequests):
        return PoolExhaustedError(
            f"cannot {action}: no database connection within {timeout_seconds} s "
            f"(PostgreSQL unreachable, or every pooled connection busy): {error}"
        )
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return DatabaseUnavailableError(f"cannot {action}: PostgreSQL is unavailable: {error}")
    return InternalError(f"PostgreSQL refused to {action}: {error}")

"""The PostgreSQL system of record, against a real server.

- migrations apply once, even when two processes start at the same moment;
- a batch commits whole or not at all: a stale version or a replayed request id rolls it
  back and is named, and a bad input is refused before anything is written;
- the ledger is partitioned by month, created on demand;
- every balance equals the sum of its ledger rows, and ``reconcile`` finds one that does not;
- an unreachable database is ``DatabaseUnavailableError`` (code 1001), and the store serves
  again by itself once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from plugins.postgres import with_search_path
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from processor import calendar
from processor.engine import BatchOutcome, get_engine, issue_card
from processor.engine.types import AccountState, Lot, LoyaltyAccount, Posting, Request, Result
from processor.errors import DatabaseUnavailableError
from processor.store import (
    AccountWrite,
    CommitBatch,
    IdempotencyRecord,
    InvalidBatchError,
    Mismatch,
    PoolExhaustedError,
    Store,
    codec,
    ledger_entries,
    migrate,
)
from processor.store.migrate import (
    JOB_QUEUE_MIGRATION,
    MIGRATION_LOCK_KEY,
    MigrationError,
    migrations,
)
from processor.tools.evaluate import prepare

# Ours, then procrastinate's schema (the jobs' queue), which is its release's own.
ALL_MIGRATIONS = [*(migration.name for migration in migrations()), JOB_QUEUE_MIGRATION]

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
JANUARY = calendar.parse_day("2026-01-20")
FEBRUARY = calendar.parse_day("2026-02-03")


# --------------------------------------------------------------------------- builders


def payload_hash(request: object) -> bytes:
    return hashlib.sha256(repr(request).encode()).digest()


def batch_from(
    outcome: BatchOutcome, requests: Sequence[Request], versions: dict[str, int]
) -> CommitBatch:
    """What the batcher commits for one engine call."""
    return CommitBatch(
        accounts=[
            AccountWrite(state, versions.get(account_id, 0))
            for account_id, state in outcome.accounts.items()
        ],
        postings=[entry for result in outcome.results for entry in ledger_entries(result)],
        receipts=list(outcome.receipts.values()),
        idempotency=[
            IdempotencyRecord(
                result.account, result.id, payload_hash(request), codec.encode_result(result)
            )
            for result, request in zip(outcome.results, requests, strict=True)
        ],
    )


def points_account(account_id: str, points: list[tuple[int, int]]) -> AccountState:
    """A card whose points program holds one lot per (day, points)."""
    lots = [Lot(day, "base", "regular", amount, day, None, 1) for day, amount in points]
    first = points[0][0] if points else JANUARY
    loyalty = LoyaltyAccount("points", "silver", first, first, first, lots)
    return AccountState(account_id, loyalty={"points": loyalty})


def earn(
    account_id: str,
    request_id: str,
    points: list[tuple[int, int]],
    *,
    before: Sequence[tuple[int, int]] = (),
    expected_version: int = 0,
) -> CommitBatch:
    """A batch posting one lot per (day, points) to a card that held the lots ``before``."""
    result = Result(
        request_id,
        account_id,
        postings=[
            Posting("points", 1, "points", "regular", amount, "base", day) for day, amount in points
        ],
    )
    state = points_account(account_id, [*before, *points])
    return CommitBatch(
        accounts=[AccountWrite(state, expected_version)],
        postings=ledger_entries(result),
        idempotency=[
            IdempotencyRecord(account_id, request_id, b"\x01" * 32, codec.encode_result(result))
        ],
    )


async def count_rows(url: str, table: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as connection:
        cursor = await connection.execute(f"SELECT count(*) FROM {table}")
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


# --------------------------------------------------------------------------- migrations


def test_migrating_twice_applies_nothing_the_second_time(fresh_schema_url: str) -> None:
    assert migrate(fresh_schema_url) == ALL_MIGRATIONS
    assert migrate(fresh_schema_url) == []
    with psycopg.connect(fresh_schema_url) as connection:
        rows = connection.execute("SELECT name FROM schema_migrations").fetchall()
    assert rows == [(name,) for name in ALL_MIGRATIONS]


def test_a_job_queue_schema_other_than_the_one_applied_is_refused(fresh_schema_url: str) -> None:
    migrate(fresh_schema_url)
    with psycopg.connect(fresh_schema_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE schema_migrations SET sha256 = 'another release' WHERE name = %s",
            (JOB_QUEUE_MIGRATION,),
        )
    with pytest.raises(MigrationError, match="procrastinate's schema differs"):
        migrate(fresh_schema_url)


def test_two_processes_migrating_at_once_apply_each_migration_once(
    fresh_schema_url: str, database_url: str
) -> None:
    script = (
        "import json, sys; from processor.store import migrate; "
        "print(json.dumps(migrate(sys.argv[1])))"
    )
    with psycopg.connect(database_url, autocommit=True) as holder:
        # Hold the migration lock so both processes are provably waiting on it together.
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, fresh_schema_url],
                cwd=ROOT,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            deadline = time.monotonic() + 30
            while _advisory_waiters(holder) < 2:
                assert time.monotonic() < deadline, "the migrating processes never queued"
                time.sleep(0.05)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        outputs = [process.communicate(timeout=60) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    applied = sorted(json.loads(stdout) for stdout, _ in outputs)
    assert applied == [[], ALL_MIGRATIONS]


def _advisory_waiters(connection: psycopg.Connection) -> int:
    row = connection.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()
    return int(row[0]) if row else 0


def test_the_schema_refuses_what_the_store_would_never_write(schema_url: str) -> None:
    with psycopg.connect(schema_url) as connection, pytest.raises(psycopg.errors.CheckViolation):
        connection.execute("SELECT ensure_ledger_partition(202601)")
        connection.execute(
            "INSERT INTO ledger (account_id, month, request_id, seq, program, "
            "program_version, balance, kind, amount, day) "
            "VALUES ('a', 202601, 'r', 0, 'p', 1, 'miles', 'regular', 5, %s)",
            (JANUARY,),
        )


# --------------------------------------------------------------------------- commit


async def test_a_committed_demo_run_loads_back_and_reconciles(
    store: Store, schema_url: str
) -> None:
    evaluation = prepare(
        EXAMPLES / "programs" / "demo.yaml", EXAMPLES / "transactions" / "demo.jsonl", None
    )
    program = evaluation.program
    requests = evaluation.requests
    accounts = {
        request.account: issue_card(program, request.account, request.day) for request in requests
    }
    outcome = get_engine().evaluate(program, accounts, requests, {})

    result = await store.commit(batch_from(outcome, requests, {}))

    assert result.committed, result
    assert set(result.versions.values()) == {1}
    loaded = await store.load([*outcome.accounts, "6001209999999999"])
    assert set(loaded) == set(outcome.accounts)
    for account_id, state in outcome.accounts.items():
        version, stored = loaded[account_id]
        assert version == 1
        assert stored == dataclasses.replace(state, version=1)
    keys = [(receipt.account, receipt.id) for receipt in outcome.receipts.values()]
    assert await store.load_receipts(keys) == {
        (receipt.account, receipt.id): receipt for receipt in outcome.receipts.values()
    }
    seen = await store.seen([(request.account, request.id) for request in requests])
    for answer, request in zip(outcome.results, requests, strict=True):
        stored_hash, response = seen[request.account, request.id]
        assert stored_hash == payload_hash(request)
        assert codec.decode_result(response) == answer
    postings = sum(len(answer.postings) for answer in outcome.results)
    assert await count_rows(schema_url, "ledger") == postings > 0
    assert await store.reconcile() == []


async def test_a_second_commit_moves_the_version_on(store: Store) -> None:
    first = await store.commit(earn("A", "r1", [(JANUARY, 100)]))
    second = await store.commit(
        earn("A", "r2", [(JANUARY, 50)], before=[(JANUARY, 100)], expected_version=1)
    )
    assert first.committed and second.committed
    assert second.versions == {"A": 2}
    version, state = (await store.load(["A"]))["A"]
    assert version == state.version == 2
    # The committed bytes are what the cache is refreshed with, and what a miss reads back.
    assert await store.load_encoded(["A"]) == {"A": (2, second.encoded["A"])}
    assert await store.ledger_sums("A") == {("A", "points", "points"): 150}
    assert await store.reconcile() == []


async def test_a_stale_version_commits_nothing_and_names_the_account(store: Store) -> None:
    assert (await store.commit(earn("A", "r1", [(JANUARY, 100)]))).committed
    stale = earn("A", "r2", [(JANUARY, 5)], before=[(JANUARY, 100)], expected_version=0)
    fresh = earn("B", "r3", [(JANUARY, 70)])
    batch = CommitBatch(
        accounts=stale.accounts + fresh.accounts,
        postings=stale.postings + fresh.postings,
        idempotency=stale.idempotency + fresh.idempotency,
    )

    outcome = await store.commit(batch)

    assert not outcome.committed
    assert outcome.conflicts == ("A",)
    assert outcome.replayed == ()
    assert set(await store.load(["A", "B"])) == {"A"}
    assert await store.seen([("A", "r2"), ("B", "r3")]) == {}
    assert await store.ledger_sums() == {("A", "points", "points"): 100}
    # The caller re-evaluates A on fresh state and commits the rest again.
    assert (await store.commit(fresh)).committed


async def test_an_account_version_ahead_of_the_row_is_a_conflict_too(store: Store) -> None:
    outcome = await store.commit(earn("A", "r1", [(JANUARY, 100)], expected_version=3))
    assert outcome.conflicts == ("A",)
    assert await store.load(["A"]) == {}


async def test_a_replayed_request_id_is_reported_and_nothing_is_written(store: Store) -> None:
    assert (await store.commit(earn("A", "r1", [(JANUARY, 100)]))).committed
    replay = earn("B", "r1", [(JANUARY, 100)])
    replay.idempotency = [dataclasses.replace(replay.idempotency[0], account_id="A")]
    outcome = await store.commit(replay)
    assert not outcome.committed
    assert outcome.replayed == ("r1",)
    assert outcome.conflicts == ()
    assert await store.load(["B"]) == {}


async def test_a_replayed_request_id_is_reported_when_the_same_id_is_new_on_another_card(
    store: Store,
) -> None:
    # Request ids are unique per card: ("A", "r1") posted before, ("B", "r1") new. A batch
    # holding both (as a raced batch would) must see A's as replayed, not B's as A's.
    assert (await store.commit(earn("A", "r1", [(JANUARY, 100)]))).committed
    both = earn("B", "r1", [(JANUARY, 50)])
    again = earn("A", "r1", [(JANUARY, 100)], before=[(JANUARY, 100)], expected_version=1)
    both.accounts += again.accounts
    both.postings += again.postings
    both.idempotency += again.idempotency
    outcome = await store.commit(both)
    assert not outcome.committed
    assert outcome.replayed == ("r1",)
    assert await store.load(["B"]) == {}
    assert await store.reconcile() == []


async def test_two_stores_racing_on_one_account_commit_exactly_one(schema_url: str) -> None:
    async with Store(schema_url) as first, Store(schema_url) as second:
        assert (await first.commit(earn("A", "r0", [(JANUARY, 1)]))).committed
        outcomes = await asyncio.gather(
            first.commit(
                earn("A", "r1", [(JANUARY, 10)], before=[(JANUARY, 1)], expected_version=1)
            ),
            second.commit(
                earn("A", "r2", [(JANUARY, 20)], before=[(JANUARY, 1)], expected_version=1)
            ),
        )
        assert sorted(outcome.committed for outcome in outcomes) == [False, True]
        assert [outcome.conflicts for outcome in outcomes if not outcome.committed] == [("A",)]
        assert await first.reconcile() == []


async def test_an_account_created_after_the_lock_looked_rolls_the_whole_batch_back(
    store: Store, schema_url: str
) -> None:
    # A lock cannot hold a row that does not exist yet: another writer's uncommitted A makes
    # the batch's insert wait, then find A taken. The batch's other account goes too.
    other = earn("B", "r2", [(JANUARY, 5)])
    racing = earn("A", "r3", [(JANUARY, 20)])
    batch = CommitBatch(
        accounts=racing.accounts + other.accounts,
        postings=racing.postings + other.postings,
        idempotency=racing.idempotency + other.idempotency,
    )
    state = codec.encode_state(dataclasses.replace(racing.accounts[0].state, version=1))
    async with await psycopg.AsyncConnection.connect(schema_url) as writer:
        await writer.execute(
            "INSERT INTO accounts (account_id, version, state) VALUES ('A', 1, %s)", (state,)
        )
        committing = asyncio.create_task(store.commit(batch))
        async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as probe:
            await wait_for_lock_wait(probe)
        await writer.commit()
        outcome = await committing
    assert (outcome.committed, outcome.conflicts, outcome.replayed) == (False, ("A",), ())
    assert set(await store.load(["A", "B"])) == {"A"}
    assert await store.seen([("A", "r3"), ("B", "r2")]) == {}
    assert await store.ledger_sums() == {}


async def wait_for_lock_wait(probe: psycopg.AsyncConnection[Any]) -> None:
    """Return once some session of this database waits on a lock (the batch's insert)."""
    for _ in range(1_000):
        cursor = await probe.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = await cursor.fetchone()
        if row is not None and row[0]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the batch never waited on the uncommitted account")


async def test_the_ledger_is_partitioned_by_month_on_demand(store: Store, schema_url: str) -> None:
    outcome = await store.commit(earn("A", "r1", [(JANUARY, 100), (FEBRUARY, 40)]))
    assert outcome.committed
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT tableoid::regclass::text, month, amount FROM ledger ORDER BY month"
        )
        rows = await cursor.fetchall()
    assert rows == [("ledger_202601", 202601, 100), ("ledger_202602", 202602, 40)]


async def test_reconcile_finds_an_injected_mismatch(store: Store, schema_url: str) -> None:
    assert (await store.commit(earn("A", "r1", [(JANUARY, 100)]))).committed
    assert (await store.commit(earn("B", "r2", [(JANUARY, 30)]))).committed
    assert await store.reconcile() == []
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as connection:
        await connection.execute(
            "INSERT INTO ledger (account_id, month, request_id, seq, program, program_version,"
            " balance, kind, amount, day) VALUES"
            " ('A', 202601, 'forged', 0, 'points', 1, 'points', 'regular', 7, %(day)s),"
            " ('Z', 202601, 'forged', 0, 'points', 1, 'points', 'regular', 3, %(day)s)",
            {"day": JANUARY},
        )
    assert await store.reconcile() == [
        Mismatch("A", "points", "points", state_balance=100, ledger_sum=107),
        Mismatch("Z", "points", "points", state_balance=0, ledger_sum=3),
    ]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda batch: _version(batch, -1), "expected version -1"),
        (lambda batch: _balance(batch, "miles"), "balance 'miles'"),
        (lambda batch: _posting_account(batch, "elsewhere"), "does not write that account"),
        (lambda batch: batch.accounts.append(batch.accounts[0]), "written twice"),
        (lambda batch: batch.idempotency.append(batch.idempotency[0]), "appears twice"),
        (lambda batch: _hash(batch, b""), "payload hash"),
    ],
    ids=["negative-version", "unknown-balance", "foreign-posting", "twice", "id-twice", "hash"],
)
async def test_a_bad_batch_is_refused_and_writes_nothing(
    store: Store, spoil: object, message: str
) -> None:
    batch = earn("A", "r1", [(JANUARY, 100)])
    spoil(batch)  # type: ignore[operator]
    with pytest.raises(InvalidBatchError, match=message):
        await store.commit(batch)
    assert await store.load(["A"]) == {}
    assert await store.ledger_sums() == {}
    assert await store.seen([("A", "r1")]) == {}


def _version(batch: CommitBatch, version: int) -> None:
    batch.accounts[0] = dataclasses.replace(batch.accounts[0], expected_version=version)


def _balance(batch: CommitBatch, balance: str) -> None:
    entry = batch.postings[0]
    posting = dataclasses.replace(entry.posting, balance=balance)  # type: ignore[arg-type]
    batch.postings[0] = dataclasses.replace(entry, posting=posting)


def _posting_account(batch: CommitBatch, account_id: str) -> None:
    batch.postings.append(dataclasses.replace(batch.postings[0], account_id=account_id))


def _hash(batch: CommitBatch, value: bytes) -> None:
    batch.idempotency[0] = dataclasses.replace(batch.idempotency[0], payload_hash=value)


async def test_an_over_limit_lookup_is_refused(store: Store) -> None:
    from processor.limits import LOOKUP_KEYS_MAX

    with pytest.raises(InvalidBatchError, match="over"):
        await store.load([f"a{index}" for index in range(LOOKUP_KEYS_MAX + 1)])


# --------------------------------------------------------------------------- unavailability


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe is closed


async def test_an_unreachable_database_is_unavailable_with_code_1001() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/loyalty"
    async with Store(url, acquire_timeout_seconds=0.3) as store:
        with pytest.raises(DatabaseUnavailableError) as raised:
            await store.load(["A"])
        assert raised.value.code == 1001
        assert raised.value.reason == "DATABASE_UNAVAILABLE"
        assert isinstance(raised.value, PoolExhaustedError)
        assert isinstance(raised.value.__cause__, psycopg.OperationalError)
        with pytest.raises(DatabaseUnavailableError):
            await store.commit(earn("A", "r1", [(JANUARY, 1)]))


class CuttableProxy:
    """A TCP proxy to PostgreSQL that can cut every connection and refuse new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.accepting = True
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.accepting = False
        for writer in list(self.writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, upstream_writer}
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self.writers.discard(writer)

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def proxied(conninfo: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    params = conninfo_to_dict(conninfo)
    proxy = CuttableProxy(str(params.get("host", "127.0.0.1")), int(str(params.get("port", 5432))))
    await proxy.start()
    try:
        yield proxy, make_conninfo(conninfo, host="127.0.0.1", port=str(proxy.port))
    finally:
        await proxy.close()


async def test_the_store_serves_again_by_itself_when_the_database_returns(
    schema_url: str,
) -> None:
    async with (
        proxied(schema_url) as (proxy, url),
        Store(url, acquire_timeout_seconds=0.5) as store,
    ):
        assert (await store.commit(earn("A", "r1", [(JANUARY, 100)]))).committed
        proxy.cut()
        with pytest.raises(DatabaseUnavailableError) as raised:
            await store.load(["A"])
        assert raised.value.code == 1001
        proxy.accepting = True
        deadline = time.monotonic() + 15
        while True:
            try:
                loaded = await store.load(["A"])
                break
            except DatabaseUnavailableError:
                assert time.monotonic() < deadline, "the store did not reconnect"
                await asyncio.sleep(0.1)
        assert loaded["A"][0] == 1


def test_with_search_path_keeps_other_options() -> None:
    url = "postgresql://u@h:1/d?options=-c%20work_mem%3D8MB"
    assert conninfo_to_dict(with_search_path(url, "s1"))["options"] == (
        "-c work_mem=8MB -c search_path=s1"
    )

"""Schema migrations: numbered SQL files, each applied once, in order.

``migrations/NNNN_name.sql`` files are applied in number order, each in its own transaction
together with its row in ``schema_migrations`` (name and SHA-256 of the file), so a
migration is either wholly applied and recorded or not at all. A session advisory lock
makes it safe for any number of processes to start at once: one applies, the others wait
and then find nothing left to do. Editing a file after it was applied is refused, since
the databases that already ran it would silently differ from new ones. Migrations only
add (columns with defaults, tables, indexes), so a database a newer release migrated
further still serves this one: that is what lets a rolling upgrade run both at once.

The migrations apply to the first schema of the connection's ``search_path`` (``public``
unless the URL says otherwise, e.g. ``?options=-csearch_path%3Dloyalty``).

Run by hand: ``python -m processor.store.migrate postgresql://...``.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Final

import psycopg

from processor.errors import DatabaseUnavailableError, InternalError

MIGRATION_LOCK_KEY: Final = 0x4C4F59414C5459  # "LOYALTY": one key per database
"""The advisory lock every migrating process takes (``pg_advisory_lock(bigint)``)."""

MIGRATION_LOCK_TIMEOUT_MS: Final = 120_000
"""Longest wait for another process's migrations before giving up."""

MIGRATION_STATEMENT_TIMEOUT_MS: Final = 600_000
"""Longest one migration may run; schema changes on big tables take a while."""

CONNECT_TIMEOUT_SECONDS: Final = 10
"""Longest wait for a connection to PostgreSQL."""

MIGRATION_FILES_MAX: Final = 9999
"""Four-digit numbers: the most migrations the naming scheme allows."""

JOB_QUEUE_MIGRATION: Final = "procrastinate_schema"
"""The name schema_migrations records procrastinate's schema under (its job queue)."""

_NAME = re.compile(r"(?P<number>[0-9]{4})_[a-z0-9_]+\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        NOT NULL PRIMARY KEY,
    sha256     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(InternalError):
    """The migration files or the database's record of them are inconsistent."""

    reason = "MIGRATION_FAILED"


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its name without ``.sql``, its SQL and the SQL's SHA-256."""

    name: str
    sql: str
    sha256: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in the order they apply."""
    folder = resources.files("processor.store") / "migrations"
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        number = int(match["number"])
        if number in found:
            raise MigrationError(f"two migrations are numbered {number:04d}")
        sql = entry.read_text(encoding="utf-8")
        digest = hashlib.sha256(sql.encode()).hexdigest()
        found[number] = Migration(entry.name.removesuffix(".sql"), sql, digest)
    if not found or len(found) > MIGRATION_FILES_MAX:
        raise MigrationError(f"expected 1..{MIGRATION_FILES_MAX} migrations, found {len(found)}")
    return [found[number] for number in sorted(found)]


def migrate(conninfo: str) -> list[str]:
    """Apply the migrations ``conninfo``'s database lacks; the names applied, in order.

    Idempotent: a second call (or a call racing another process) applies nothing and
    returns an empty list.
    """
    pending = migrations()
    try:
        with psycopg.connect(
            conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as connection:
            connection.execute(f"SET lock_timeout = {MIGRATION_LOCK_TIMEOUT_MS}")
            connection.execute(f"SET statement_timeout = {MIGRATION_STATEMENT_TIMEOUT_MS}")
            connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            try:
                return _apply(connection, pending)
            finally:
                connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    except psycopg.OperationalError as error:
        raise DatabaseUnavailableError(f"cannot migrate the database: {error}") from error
    except psycopg.Error as error:
        raise MigrationError(f"migration failed: {error}") from error


def _apply(connection: psycopg.Connection, pending: list[Migration]) -> list[str]:
    connection.execute(_CREATE_TABLE)
    rows = connection.execute("SELECT name, sha256 FROM schema_migrations").fetchall()
    applied: dict[str, str] = dict(rows)
    done: list[str] = []
    for migration in pending:
        recorded = applied.get(migration.name)
        if recorded is not None:
            if recorded != migration.sha256:
                raise MigrationError(
                    f"migration {migration.name} changed after it was applied; "
                    "add a new migration instead of editing an applied one"
                )
            continue
        with connection.transaction():
            connection.execute(migration.sql.encode())
            connection.execute(
                "INSERT INTO schema_migrations (name, sha256) VALUES (%s, %s)",
                (migration.name, migration.sha256),
            )
        done.append(migration.name)
    if _apply_job_queue(connection, applied.get(JOB_QUEUE_MIGRATION)):
        done.append(JOB_QUEUE_MIGRATION)
    return done


def _apply_job_queue(connection: psycopg.Connection, recorded: str | None) -> bool:
    """Create procrastinate's tables and functions (the job queue of processor.jobs) when
    they are missing; whether it did. Its schema is its release's own, applied whole after
    ours (none of ours refers to it). A lock that moves procrastinate to a release with
    another schema is refused here, before anything serves with it, until this function
    learns to apply procrastinate's own migrations (its ``sql/migrations``) from the
    recorded release to the installed one: upgrading it is a deliberate commit."""
    from procrastinate.schema import SchemaManager

    sql = SchemaManager.get_schema()
    digest = hashlib.sha256(sql.encode()).hexdigest()
    if recorded is not None:
        if recorded != digest:
            raise MigrationError(
                f"the installed procrastinate's schema differs from the one applied "
                f"({JOB_QUEUE_MIGRATION}); apply its migrations between the two releases "
                "before serving with it"
            )
        return False
    with connection.transaction():
        connection.execute(sql.encode())
        connection.execute(
            "INSERT INTO schema_migrations (name, sha256) VALUES (%s, %s)",
            (JOB_QUEUE_MIGRATION, digest),
        )
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m processor.store.migrate URL``: apply and list what was applied."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m processor.store.migrate postgresql://...", file=sys.stderr)
        return 2
    for name in migrate(args[0]):
        print(f"applied {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

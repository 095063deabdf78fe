"""PostgreSQL fixtures: the server the environment names, or a real embedded one.

Load with ``-p plugins.postgres`` (``tests/`` on the path). Fixtures:

- ``database_url`` (session): ``LOYALTY_DATABASE_URL`` when set (probed once; an
  unreachable server fails the first test that needs it, naming the URL), else an embedded
  PostgreSQL started in a temporary directory for the session and stopped after it.
- ``fresh_schema_url``: a conninfo whose ``search_path`` is a new, empty schema, unique to
  the test and dropped (with everything in it) afterwards. Runs sharing one database (two
  developers, two CI jobs) never see each other's tables, and nothing here drops a
  database or touches ``public``.
- ``schema_url``: the same, with the migrations applied.
- ``store``: an open :class:`~processor.store.Store` on ``schema_url``, closed after the test.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from processor.runtime.embedded import postgres as embedded_postgres
from processor.store import Store, migrate

DATABASE_URL_ENV = "LOYALTY_DATABASE_URL"
PROBE_TIMEOUT_SECONDS = 5
DROP_TIMEOUT_MS = 30_000


def _probe(url: str) -> None:
    try:
        with psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_SECONDS) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        pytest.fail(f"PostgreSQL at {url} does not answer: {error}", pytrace=False)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL database for the session."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        _probe(url)
        yield url
        return
    server = embedded_postgres.start(tmp_path_factory.mktemp("postgres") / "data")
    try:
        yield server.url
    finally:
        server.stop()


def with_search_path(conninfo: str, schema: str) -> str:
    """``conninfo`` with ``schema`` first on its search path (other options kept)."""
    options = conninfo_to_dict(conninfo).get("options") or ""
    return make_conninfo(conninfo, options=f"{options} -c search_path={schema}".strip())


@contextlib.contextmanager
def temporary_schema(database_url: str, *, migrated: bool) -> Iterator[str]:
    """A conninfo on a new schema, dropped on exit."""
    schema = f"test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    name = sql.Identifier(schema)
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(name))
    url = with_search_path(database_url, schema)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as connection:
            connection.execute(f"SET statement_timeout = {DROP_TIMEOUT_MS}")
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(name))


@pytest.fixture
def fresh_schema_url(database_url: str) -> Iterator[str]:
    """A conninfo on a new, empty schema of its own."""
    with temporary_schema(database_url, migrated=False) as url:
        yield url


@pytest.fixture
def schema_url(database_url: str) -> Iterator[str]:
    """A conninfo on a new schema of its own, migrated."""
    with temporary_schema(database_url, migrated=True) as url:
        yield url


@pytest_asyncio.fixture
async def store(schema_url: str) -> AsyncIterator[Store]:
    """An open Store on a migrated schema of its own."""
    async with Store(schema_url, pool_size_max=4) as opened:
        yield opened

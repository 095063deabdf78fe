"""``loyalty serve --demo`` as a second process, for the scripts that measure it.

On the servers ``LOYALTY_DATABASE_URL`` / ``LOYALTY_REDIS_URL`` name, else on embedded ones
in a temporary directory; free loopback ports for gRPC and metrics; the demo's cards past
the first ten (which are registered to customers); stopped with SIGTERM on the way out.

Every run starts from the demo's fresh cards: on a named PostgreSQL in a schema of its own,
dropped afterwards, and under a cache key prefix of its own. (Run after run on one schema,
the same cards would pile up a lot per purchase, and each run would cost more than the last.)
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from processor import proto  # noqa: E402
from processor.cards import card_number  # noqa: E402

LOYALTY = str(Path(sys.executable).with_name("loyalty"))
DEMO_CARDS = 2_000


@dataclass(frozen=True)
class DemoServer:
    listen: str
    metrics_listen: str
    accounts: list[str]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def transaction(account: str, request_id: str) -> Any:
    """A $10.00 purchase on ``account`` (10 points under the demo program)."""
    return proto.transactions.Transaction(
        context=proto.common.RequestContext(
            request_id=request_id,
            account=account,
            local_time="2026-03-03T10:00:00",
            location="S002",
        ),
        purchase=proto.transactions.Purchase(
            currency="USD",
            lines=[proto.common.Line(number=1, item="ITEM-1", amount=1000, quantity=1)],
        ),
    )


@contextlib.contextmanager
def fresh_schema(name: str) -> Iterator[dict[str, str]]:
    """The environment's LOYALTY_DATABASE_URL on a new schema (dropped on exit), if named."""
    database_url = os.environ.get("LOYALTY_DATABASE_URL")
    if not database_url:
        yield {}
        return
    schema = f"bench_{name}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    options = conninfo_to_dict(database_url).get("options") or ""
    url = make_conninfo(database_url, options=f"{options} -c search_path={schema}".strip())
    try:
        yield {"LOYALTY_DATABASE_URL": url}
    finally:
        with psycopg.connect(database_url, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def demo_server(name: str) -> Iterator[DemoServer]:
    """The server, serving; ``name`` makes its schema and cache key prefix its own."""
    listen, metrics_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with (
        tempfile.TemporaryDirectory(prefix=f"loyalty-{name}-") as data_dir,
        fresh_schema(name) as database,
    ):
        prefix = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}:"
        environment = dict(os.environ, LOYALTY_CACHE_KEY_PREFIX=prefix, **database)
        command = [
            LOYALTY, "serve", "--demo", "--listen", listen,
            "--metrics-listen", metrics_listen, "--data-dir", data_dir,
        ]  # fmt: skip
        server = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            first = ""
            assert server.stdout is not None
            for line in server.stdout:
                if "first card " in line:
                    first = line.split("first card ")[1].split(")")[0]
                if "serving on port" in line:
                    break
            if not first:
                raise RuntimeError("loyalty serve did not start")
            prefix, sequence = first[:5], int(first[5:-1])
            accounts = [
                card_number(prefix, sequence + n, len(first)) for n in range(10, DEMO_CARDS)
            ]
            yield DemoServer(listen, metrics_listen, accounts)
        finally:
            server.terminate()
            server.wait(60)
            if server.stdout is not None:
                server.stdout.close()

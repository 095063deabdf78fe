"""``loyalty serve --demo`` as a second process, for the scripts that measure it.

On the servers ``LOYALTY_DATABASE_URL`` / ``LOYALTY_REDIS_URL`` name, else on embedded ones
in a temporary directory; free loopback ports for gRPC and metrics; the demo's cards past
the first ten (which are registered to customers); stopped with SIGTERM on the way out.

``BENCH_LOYALTY`` replaces the ``loyalty`` command (split like a shell would), to run the
server under a profiler: ``BENCH_LOYALTY="py-spy record -o server.svg -- .venv/bin/loyalty"``.

Every run starts from the demo's fresh cards: on a named PostgreSQL in a schema of its own,
dropped afterwards, and under a cache key prefix of its own. (Run after run on one schema,
the same cards would pile up a lot per purchase, and each run would cost more than the last.)
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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
STOP_SECONDS = 60
LOG_TAIL_LINES = 200


@dataclass(frozen=True)
class DemoServer:
    listen: str
    metrics_listen: str
    accounts: list[str]
    pid: int


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


def metrics_ready(metrics_address: str, seconds: float = 30.0) -> None:
    """Wait until the server's /metrics answers (it may start just after the gRPC port)."""
    give_up = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).close()
            return
        except OSError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.1)


def server_usage(pid: int) -> tuple[float, int, int]:
    """CPU seconds, resident bytes and open descriptors (connections among them) of the
    server ``pid`` and its forked workers (children running the same command; embedded
    PostgreSQL and Valkey are not counted). Read from Linux's /proc."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    cpu, rss, descriptors = 0.0, 0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) != pid and (
                int(fields[1]) != pid or (entry / "cmdline").read_bytes() != command
            ):
                continue
            pages = int((entry / "statm").read_text().split()[1])
            opened = len(os.listdir(entry / "fd"))
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while it was read
        cpu += (int(fields[11]) + int(fields[12])) / ticks
        rss += pages * page
        descriptors += opened
    return cpu, rss, descriptors


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
def demo_server(name: str, workers: int = 1) -> Iterator[DemoServer]:
    """The server, serving; ``name`` makes its schema and cache key prefix its own."""
    listen, metrics_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with (
        tempfile.TemporaryDirectory(prefix=f"loyalty-{name}-") as data_dir,
        fresh_schema(name) as database,
    ):
        prefix = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}:"
        environment = dict(
            os.environ, LOYALTY_CACHE_KEY_PREFIX=prefix, LOYALTY_WORKERS=str(workers), **database
        )
        launcher = shlex.split(os.environ.get("BENCH_LOYALTY", LOYALTY))
        command = [
            *launcher, "serve", "--demo", "--listen", listen,
            "--metrics-listen", metrics_listen, "--data-dir", data_dir,
        ]  # fmt: skip
        server = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        try:
            first = ""
            assert server.stdout is not None
            for line in server.stdout:
                if "first card " in line:
                    first = line.split("first card ")[1].split(")")[0]
                if "serving on port" in line:
                    break
            if not first:
                raise RuntimeError(f"{' '.join(command)} did not start")
            # Keep reading its output: a pipe nobody reads fills, and the server's next log
            # line would block its event loop.
            threading.Thread(target=tail.extend, args=(server.stdout,), daemon=True).start()
            metrics_ready(metrics_listen)
            prefix, sequence = first[:5], int(first[5:-1])
            accounts = [
                card_number(prefix, sequence + n, len(first)) for n in range(10, DEMO_CARDS)
            ]
            yield DemoServer(listen, metrics_listen, accounts, server.pid)
        finally:
            server.terminate()
            try:
                server.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
                print(
                    f"loyalty serve did not stop within {STOP_SECONDS} s of SIGTERM; killed. "
                    "Its last lines:\n" + "".join(tail),
                    file=sys.stderr,
                )


@contextlib.contextmanager
def ceiling_server() -> Iterator[DemoServer]:
    """bench/ceiling.py as a second process, described as the demo server is."""
    listen = f"127.0.0.1:{free_port()}"
    ceiling = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "ceiling.py"), "--listen", listen],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert ceiling.stdout is not None
        for line in ceiling.stdout:
            if "listening on" in line:
                break
        else:
            raise RuntimeError(f"bench/ceiling.py did not start (exit {ceiling.wait()})")
        # Any card numbers do: the no-op server answers every one alike.
        yield DemoServer(listen, "", [f"60012000{n:08d}" for n in range(1, 2001)], ceiling.pid)
    finally:
        ceiling.terminate()
        ceiling.wait(30)

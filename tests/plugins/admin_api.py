"""AdminService through a real grpc.aio server on port 0, guarded as the processor guards
it, over the test's Store: the ``api`` fixture, and ``fails`` for the errors a client sees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from processor import proto
from processor.flow.registry import ProgramRegistry
from processor.limits import MESSAGE_BYTES_MAX
from processor.service import errors
from processor.service.admin import AdminServicer
from processor.service.guard import Guarded
from processor.store import Store
from processor.store.catalog import Catalog


@dataclass
class Harness:
    stub: Any
    catalog: Catalog
    registry: ProgramRegistry
    store: Store


@pytest_asyncio.fixture
async def api(store: Store) -> AsyncIterator[Harness]:
    catalog = Catalog(store, pin_key=b"test")
    registry = ProgramRegistry(catalog)
    # As the server configures it: room for a 4 MiB file and the rest of its message.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)])
    servicer = AdminServicer(catalog=catalog, registry=registry, store=store)
    proto.admin_grpc.add_AdminServiceServicer_to_server(servicer, Guarded(server))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        options = [("grpc.max_send_message_length", MESSAGE_BYTES_MAX)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            yield Harness(proto.admin_grpc.AdminServiceStub(channel), catalog, registry, store)
    finally:
        await server.stop(None)


async def fails(call: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert (failure.value.code(), errors.reason_of(failure.value)) == (code, reason)
    return failure.value

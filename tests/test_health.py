"""Health checking's List, and server reflection under both protocol versions, as the
gRPC ecosystem's clients call them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from plugins.server import Served

from processor import proto

HEALTH: Any = health_pb2


async def test_health_list_answers_every_service_and_follows_shutdown(served: Served) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel)
    listed = await stub.List(HEALTH.HealthListRequest(), timeout=10)  # open: no credential
    assert set(listed.statuses) == {"", *proto.SERVICE_NAMES}
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {one.status for one in listed.statuses.values()} == {serving}
    await served.running.health.enter_graceful_shutdown()
    listed = await stub.List(HEALTH.HealthListRequest(), timeout=10)
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert {one.status for one in listed.statuses.values()} == {not_serving}


async def _reflect(served: Served, service: str, request: Any) -> Any:
    """One reflection request to ``service`` (v1alpha or v1: the same messages on the
    wire), its one answer."""
    call = served.channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    async def ask() -> AsyncIterator[Any]:
        yield request

    (answer,) = [one async for one in call(ask(), timeout=10)]
    return answer


async def test_reflection_answers_under_v1_and_v1alpha_alike(served: Served) -> None:
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    file_of = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="loyalty.v1.TransactionService"
    )
    for request in (listing, file_of):
        v1alpha = await _reflect(served, "grpc.reflection.v1alpha.ServerReflection", request)
        v1 = await _reflect(served, "grpc.reflection.v1.ServerReflection", request)
        assert v1.SerializeToString(deterministic=True) == v1alpha.SerializeToString(
            deterministic=True
        )
    listed = await _reflect(served, "grpc.reflection.v1.ServerReflection", listing)
    names = {one.name for one in listed.list_services_response.service}
    assert names >= {*proto.SERVICE_NAMES, "grpc.reflection.v1.ServerReflection"}
    assert v1.file_descriptor_response.file_descriptor_proto  # the contract's files


async def test_an_unknown_reflection_request_is_answered_not_failed(served: Served) -> None:
    unknown = reflection_pb2.ServerReflectionRequest(file_by_filename="no/such.proto")
    answer = await _reflect(served, "grpc.reflection.v1.ServerReflection", unknown)
    assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]

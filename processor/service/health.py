"""gRPC health checking and server reflection, as clients of either protocol version expect.

grpcio-health-checking's servicer answers Check and Watch but leaves List (added to the
health protocol later) raising ``NotImplementedError``, which clients saw as an error
leaking that text: :class:`Health` answers it with every service's status. grpcio-reflection
serves only ``grpc.reflection.v1alpha``; clients that speak only ``grpc.reflection.v1``
(newer grpcurl, buf and the gRPC ecosystem's own tools) get the same servicer under the v1
name (:func:`add_reflection`): the two protocols' messages are the same on the wire (v1 is
v1alpha's proto under a new package).
"""

# grpcio ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

_HEALTH: Any = health_pb2

REFLECTION_V1: Final = "grpc.reflection.v1.ServerReflection"
"""The reflection service's name in the protocol's stable version."""


class Health(health.aio.HealthServicer):
    """The library's health servicer, with List."""

    async def List(self, request: Any, context: Any) -> Any:
        """Every service's status, the server's own ("") included."""
        # The statuses the library's servicer keeps, graceful shutdown applied. (Its type
        # stubs predate List: the messages are reached untyped.)
        statuses = dict(self._server_status)  # type: ignore[attr-defined]
        return _HEALTH.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )


def add_reflection(services: Any, names: Sequence[str]) -> None:
    """Serve reflection over ``names`` (and both reflection services' own) under the v1alpha
    and the v1 service names, on ``services`` (a server or processor.service.guard.Guarded)."""
    served = [*names, reflection.SERVICE_NAME, REFLECTION_V1]
    servicer = reflection.aio.ReflectionServicer(served)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, services)  # type: ignore[no-untyped-call]
    services.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )

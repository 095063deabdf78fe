"""Rewrapping a gRPC method handler: the one piece every wrapper of a call here shares.

A wrapper that acts around a call gets the method's handler and must return one of the
same kind (unary or streaming, each way) with the same (de)serializers;
:func:`wrap_handler` does that once per method, for the request-id, metrics and error wrappers
of :mod:`processor.service.guard`.

A request that does not parse never reaches a servicer as an exception grpc would answer
UNKNOWN (unary) or INTERNAL (streams): :func:`decoding_leniently` hands the behaviour an
:class:`Undecodable` in its place, which the guard (processor.service.guard) refuses with
INVALID_ARGUMENT and reason MALFORMED_MESSAGE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

Context = grpc.aio.ServicerContext[Any, Any]
"""The context of a call, whatever its messages (servicers read its deadline and metadata)."""

Behaviour = Callable[[Any, Any], Any]
"""A method's implementation: (request or request iterator, context) -> response(s)."""
Wrap = Callable[[Behaviour], Behaviour]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a request message whose bytes did not parse."""

    problem: str


def decoding_leniently(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """``deserialize``, answering :class:`Undecodable` instead of raising on bad bytes."""

    def decode(data: bytes) -> Any:
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except (DecodeError, ValueError, UnicodeDecodeError) as error:
            return Undecodable(str(error))

    return decode


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    wrap: Wrap,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Any:
    """``handler`` with its behaviour replaced by ``wrap(behaviour)``, whatever its kind
    (and its request deserializer by ``request_deserializer``, when given)."""
    if handler is None:
        return None
    make: Any
    behaviour: Any
    if handler.unary_unary is not None:
        make, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    elif handler.unary_stream is not None:
        make, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    elif handler.stream_unary is not None:
        make, behaviour = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    else:
        make, behaviour = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    return make(
        wrap(behaviour),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )

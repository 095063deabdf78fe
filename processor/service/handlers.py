"""Rewrapping a gRPC method handler: the one piece every server interceptor here shares.

A grpc.aio interceptor that acts around a call gets the method's handler and must return
one of the same kind (unary or streaming, each way) with the same (de)serializers;
:func:`wrap_handler` does that once, for the request-id, error and metrics interceptors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
"""The context of a call, whatever its messages (servicers read its deadline and metadata)."""

Behaviour = Callable[[Any, Any], Any]
"""A method's implementation: (request or request iterator, context) -> response(s)."""
Wrap = Callable[[Behaviour], Behaviour]


def wrap_handler(handler: grpc.RpcMethodHandler[Any, Any] | None, wrap: Wrap) -> Any:
    """``handler`` with its behaviour replaced by ``wrap(behaviour)``, whatever its kind."""
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
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )

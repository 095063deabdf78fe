"""Server interceptors: what every RPC gets without its servicer repeating it.

:func:`default_interceptors` lists them in the order they must run, outermost first (a
grpc.aio server calls the first interceptor of its list first, and its wrapper encloses
all the others):

1. :class:`RequestIdInterceptor` gives the call its request id before anything else
   runs, so every log line of the call, errors included, carries it.
2. :class:`processor.runtime.metrics.MetricsInterceptor` records the ``grpc_server_*`` metrics:
   outside the error mapping, so it sees the final status of every call, mapped errors
   included, and times the whole call.
3. :class:`ErrorInterceptor` turns any exception escaping the layers inside it into the
   status of :mod:`processor.service.errors`.
4. (an authentication interceptor goes here: inside the error mapping, so it only has to
   raise ``AuthenticationError(reason="API_AUTHENTICATION_FAILED")``.)

The interceptors wrap the handler's behaviour rather than deciding in
``intercept_service``, because only the behaviour sees the call's context. Servicer
methods must be ``async def`` functions or async generators; a plain function (run by
grpc in a thread pool) is passed through unwrapped.
"""

# grpcio ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import inspect
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from processor.errors import BadRequestError, LoyaltyError, UnavailableError
from processor.limits import REQUEST_ID_HEADER_CHARS_MAX
from processor.runtime.metrics import MetricsInterceptor
from processor.service import errors
from processor.service.handlers import Behaviour, Undecodable, decoding_leniently, wrap_handler

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{REQUEST_ID_HEADER_CHARS_MAX}}}")

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
"""The request id of the call being served ("-" outside any call)."""


def current_request_id() -> str:
    """The request id of the call being served, "-" outside any call."""
    return request_id_var.get()


class RequestIdLogFilter(logging.Filter):
    """Adds ``request_id`` to every log record, for a format with ``%(request_id)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def around(
    behaviour: Behaviour,
    before: Callable[[Any], Awaitable[None]] | None = None,
    failed: Callable[[Any, Exception], Awaitable[None]] | None = None,
) -> Behaviour:
    """``behaviour`` of the same kind (coroutine or async generator function), awaiting
    ``before(context)`` first and ``failed(context, error)`` on an exception other than
    grpc's own abort; ``failed`` must end the call itself (abort) or re-raise."""

    async def guard(context: Any, error: Exception) -> None:
        if failed is None or isinstance(error, grpc.aio.AbortError):
            raise error
        await failed(context, error)
        raise error  # a failed() that neither aborts nor raises leaves the error as it was

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                if before is not None:
                    await before(context)
                async for response in behaviour(request, context):
                    yield response
            except Exception as error:
                await guard(context, error)

        return stream
    if inspect.iscoroutinefunction(behaviour):

        async def unary(request: Any, context: Any) -> Any:
            try:
                if before is not None:
                    await before(context)
                return await behaviour(request, context)
            except Exception as error:
                await guard(context, error)

        return unary
    return behaviour


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Answers any exception escaping a servicer with its mapped status.

    Errors of the processor's own types get their status, reason and code; anything else
    is a bug, logged with its traceback and answered INTERNAL without its text. grpc's
    abort exceptions (a servicer that aborted by itself) pass through untouched.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)

        async def failed(context: Any, error: Exception) -> None:
            _log_error(method, error)
            await errors.abort(context, error)

        if handler is None:
            return None
        streaming_in = bool(handler.request_streaming)
        return wrap_handler(
            handler,
            lambda behaviour: around(
                refusing_undecodable(behaviour, streaming_in=streaming_in), failed=failed
            ),
            request_deserializer=decoding_leniently(handler.request_deserializer),
        )


def refusing_undecodable(behaviour: Behaviour, *, streaming_in: bool) -> Behaviour:
    """``behaviour`` that raises MALFORMED_MESSAGE for an :class:`Undecodable` request: the
    request of a unary call before it runs, a stream's at the message that did not parse
    (after the answers of the messages before it)."""

    def refuse(undecodable: Undecodable) -> BadRequestError:
        return BadRequestError(
            f"the request message does not parse: {undecodable.problem}",
            reason="MALFORMED_MESSAGE",
        )

    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for message in requests:
            if isinstance(message, Undecodable):
                raise refuse(message)
            yield message

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if streaming_in:
                request = checked(request)
            elif isinstance(request, Undecodable):
                raise refuse(request)
            async for response in behaviour(request, context):
                yield response

        return stream
    if inspect.iscoroutinefunction(behaviour):

        async def unary(request: Any, context: Any) -> Any:
            if streaming_in:
                request = checked(request)
            elif isinstance(request, Undecodable):
                raise refuse(request)
            return await behaviour(request, context)

        return unary
    return behaviour


def _log_error(method: str, error: Exception) -> None:
    code = errors.status_code_of(error)
    if not isinstance(error, LoyaltyError) or code == grpc.StatusCode.INTERNAL:
        log.error(
            "%s (request id %s) failed with a bug: answered INTERNAL",
            method,
            request_id_var.get(),
            exc_info=error,
        )
    elif isinstance(error, UnavailableError):
        log.warning("%s answered %s: %s", method, code.name, error)
    else:
        log.debug("%s answered %s: %s", method, code.name, error)


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Gives every call a request id: the client's ``x-request-id`` metadata when it is a
    plain token of at most 128 characters, else a new one. The id is echoed in the
    initial metadata and held in :data:`request_id_var` while the call is served.

    Servicers must not send initial metadata of their own: it is sent here, first.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        request_id = _request_id(handler_call_details.invocation_metadata)

        async def before(context: Any) -> None:
            request_id_var.set(request_id)
            await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))

        return wrap_handler(handler, lambda behaviour: around(behaviour, before=before))


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def default_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors, outermost first (see the module's docstring)."""
    return [RequestIdInterceptor(), MetricsInterceptor(), ErrorInterceptor()]


__all__ = [
    "REQUEST_ID_KEY",
    "ErrorInterceptor",
    "RequestIdInterceptor",
    "RequestIdLogFilter",
    "around",
    "current_request_id",
    "default_interceptors",
    "request_id_var",
    "wrap_handler",
]

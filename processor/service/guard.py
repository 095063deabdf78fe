"""What every RPC gets without its servicer repeating it, wrapped around each method once.

:class:`Guarded` stands in for the server when the services are added: each method's
handler is wrapped when it is first served and kept, so a call costs one dictionary lookup
here, not the per-call walk of a ``grpc.aio`` interceptor chain (each interceptor awaited,
each rewrapping the handler anew: about a fifth of a no-op call's CPU, BENCHMARKS.md). The
wrappers, outermost first:

1. the request id (:func:`with_request_id`), given before anything else runs, so every
   log line of the call, errors included, carries it;
2. the ``grpc_server_*`` metrics (:func:`processor.runtime.metrics.measuring`): outside the
   error mapping, so they see the final status of every call, mapped errors included, and
   time the whole call;
3. the error mapping: any exception escaping the layers inside it becomes the status of
   :mod:`processor.service.errors`;
4. authentication (:func:`authenticated`, processor.service.auth): inside the error mapping,
   so a refusal is raised as an error like any other; health (and reflection, unless
   closed) is served without it and the layers below up to 6;
5. the audit row of an AdminService call (processor.service.audit), so that refusals by
   role below are audited too;
6. the caller's roles (:func:`permitted`, processor.service.roles);
7. a request that did not parse refused as MALFORMED_MESSAGE (:func:`refusing_undecodable`);
8. a card-scoped caller's requests checked to name only its cards (each message of a
   stream as it arrives).

Servicer methods must be ``async def`` functions or async generators; a plain function (run
by grpc in a thread pool) is passed through unwrapped.
"""

# grpcio ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import inspect
import itertools
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from processor.errors import BadRequestError, LoyaltyError, UnavailableError
from processor.limits import REQUEST_ID_HEADER_CHARS_MAX
from processor.runtime.metrics import measuring
from processor.service import audit, errors, roles
from processor.service.auth import Authority, check_cards, principal_var
from processor.service.handlers import Behaviour, Undecodable, decoding_leniently, wrap_handler
from processor.store.credentials import Credentials

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
_ID_PREFIX = ""
_ID_COUNT = itertools.count()


def _draw_request_ids() -> None:
    """A process's random half of the ids it makes, and a new count: drawn at import and
    again in every forked child (the workers fork after importing this module)."""
    global _ID_PREFIX, _ID_COUNT
    _ID_PREFIX = secrets.token_hex(8)
    _ID_COUNT = itertools.count()


_draw_request_ids()
os.register_at_fork(after_in_child=_draw_request_ids)
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


def mapping_errors(
    behaviour: Behaviour, failed: Callable[[Any, Exception], Awaitable[None]]
) -> Behaviour:
    """``behaviour`` of the same kind (coroutine or async generator function), awaiting
    ``failed(context, error)`` on an exception other than grpc's own abort; ``failed``
    must end the call itself (abort) or re-raise."""

    async def guard(context: Any, error: Exception) -> None:
        if isinstance(error, grpc.aio.AbortError):
            raise error
        await failed(context, error)
        raise error  # a failed() that neither aborts nor raises leaves the error as it was

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for response in behaviour(request, context):
                    yield response
            except Exception as error:
                await guard(context, error)

        return stream
    if inspect.iscoroutinefunction(behaviour):

        async def unary(request: Any, context: Any) -> Any:
            try:
                return await behaviour(request, context)
            except Exception as error:
                await guard(context, error)

        return unary
    return behaviour


def preparing(behaviour: Behaviour, prepare: Callable[[Any, Any], Awaitable[Any]]) -> Behaviour:
    """``behaviour`` of the same kind (coroutine or async generator function), handed
    ``await prepare(request, context)`` instead of its request (or request iterator): the
    one shape of the wrappers below that check a call before it runs. A ``prepare`` that
    raises ends the call."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            async for response in behaviour(await prepare(request, context), context):
                yield response

        return stream
    if inspect.iscoroutinefunction(behaviour):

        async def unary(request: Any, context: Any) -> Any:
            return await behaviour(await prepare(request, context), context)

        return unary
    return behaviour


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

    async def prepare(request: Any, context: Any) -> Any:
        if streaming_in:
            return checked(request)
        if isinstance(request, Undecodable):
            raise refuse(request)
        return request

    return preparing(behaviour, prepare)


def authenticated(
    behaviour: Behaviour, authority: Authority, *, role_of: str | None = None
) -> Behaviour:
    """``behaviour`` run only for a caller the authority authenticates, its principal held
    in :data:`principal_var` for the call; and, given ``role_of`` (a method's full name),
    only when the caller's roles may call that method (one wrapper for both, where no
    audit row goes between them)."""

    async def admit(request: Any, context: Any) -> Any:
        principal = await authority.authenticate(context)
        principal_var.set(principal)
        if role_of is not None:
            authority.authorize(principal, role_of)
        return request

    return preparing(behaviour, admit)


def permitted(behaviour: Behaviour, full_method: str, authority: Authority) -> Behaviour:
    """``behaviour`` run only when the authenticated caller's roles may call ``full_method``."""

    async def allow(request: Any, context: Any) -> Any:
        authority.authorize(principal_var.get(), full_method)
        return request

    return preparing(behaviour, allow)


def checking_cards(behaviour: Behaviour, *, streaming_in: bool) -> Behaviour:
    """``behaviour`` that refuses (CARD_NOT_PERMITTED) a card-scoped caller's request naming
    a card not its own: a unary request before it runs, a stream's message as it arrives."""

    async def checked(requests: AsyncIterator[Any], principal: Any) -> AsyncIterator[Any]:
        async for message in requests:
            check_cards(principal, message)
            yield message

    async def admitted(request: Any, context: Any) -> Any:
        principal = principal_var.get()
        if principal.cards is None:
            return request
        if streaming_in:
            return checked(request, principal)
        check_cards(principal, request)
        return request

    return preparing(behaviour, admitted)


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


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    # A process's random half and a count: unique like uuid4's, without a system call.
    return f"{_ID_PREFIX}{next(_ID_COUNT):016x}"


def with_request_id(behaviour: Behaviour, *, streams: bool = False) -> Behaviour:
    """``behaviour`` run under its call's request id: the client's ``x-request-id``
    metadata when it is a plain token of at most 128 characters, else a new one, held in
    :data:`request_id_var` while the call is served.

    The id is echoed in the call's trailing metadata, which goes out with its status at no
    cost (errors included: see :func:`guard`). A call that streams its answers also sends
    it first, in the initial metadata, so that a long stream can be told apart while it
    runs; a unary call does not: initial metadata of its own would cost the call one more
    write and completion event, about a quarter of a no-op call's CPU (BENCHMARKS.md).
    Servicers must not set metadata of their own: it is set here. ``streams``: the method
    streams its answers (a coroutine may, writing them with ``context.write``).
    """
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await context.send_initial_metadata(_given_request_id(context))
            async for response in behaviour(request, context):
                yield response

        return stream
    if inspect.iscoroutinefunction(behaviour):

        async def unary(request: Any, context: Any) -> Any:
            echoed = _given_request_id(context)
            if streams:
                await context.send_initial_metadata(echoed)
            return await behaviour(request, context)

        return unary
    return behaviour


def _given_request_id(context: Any) -> tuple[tuple[str, str]]:
    """The call's request id, held for it and set in its trailing metadata (returned as
    that metadata)."""
    request_id = _request_id(context.invocation_metadata())
    request_id_var.set(request_id)
    echoed = ((REQUEST_ID_KEY, request_id),)
    context.set_trailing_metadata(echoed)
    return echoed


def guard(
    full_method: str,
    handler: Any,
    authority: Authority | None = None,
    credentials: Credentials | None = None,
) -> Any:
    """``handler`` (of the method ``full_method``) with every wrapper of the module's
    docstring around its behaviour, and a request that does not parse handed on as
    :class:`Undecodable`. Without an ``authority`` (tests of the other layers, benchmarks
    of the guard) no credentials are asked for and nothing is audited."""
    measured = measuring(full_method, handler)
    streaming_in = bool(handler.request_streaming)

    async def failed(context: Any, error: Exception) -> None:
        _log_error(full_method, error)
        # The status replaces the trailing metadata set so far: the id goes with it.
        await errors.abort(context, error, trailing=((REQUEST_ID_KEY, request_id_var.get()),))

    def wrap(behaviour: Behaviour) -> Behaviour:
        if authority is None or authority.is_open(full_method):
            checked = refusing_undecodable(behaviour, streaming_in=streaming_in)
        elif not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
            # The wrappers pass a plain function through: served so, it would ask no one.
            raise TypeError(f"{full_method}: a method served with authentication must be async")
        else:
            checked = refusing_undecodable(
                checking_cards(behaviour, streaming_in=streaming_in), streaming_in=streaming_in
            )
            if credentials is not None and full_method.startswith(roles.AUDITED_SERVICE):
                checked = audit.audited(
                    permitted(checked, full_method, authority),
                    rpc=roles.rpc_name(full_method),
                    credentials=credentials,
                    principal=principal_var.get,
                    request_id=request_id_var.get,
                )
                checked = authenticated(checked, authority)
            else:
                checked = authenticated(checked, authority, role_of=full_method)
        inner = measured(mapping_errors(checked, failed))
        return with_request_id(inner, streams=bool(handler.response_streaming))

    return wrap_handler(
        handler, wrap, request_deserializer=decoding_leniently(handler.request_deserializer)
    )


class _GuardedHandler(grpc.GenericRpcHandler):
    """A generic handler whose methods are served guarded, each wrapped once."""

    def __init__(
        self,
        inner: grpc.GenericRpcHandler,
        authority: Authority | None,
        credentials: Credentials | None,
    ) -> None:
        self._inner = inner
        self._authority = authority
        self._credentials = credentials
        # Only methods the inner handler serves are kept: their number is bounded.
        self._guarded: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        guarded = self._guarded.get(method)
        if guarded is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            guarded = self._guarded[method] = guard(
                method, handler, self._authority, self._credentials
            )
        return guarded


class Guarded:
    """A server as the generated ``add_*Servicer_to_server`` functions see it: each
    service's methods are served guarded (the module's docstring), as generic handlers
    only, not also as registered methods.

    grpc.aio's serving loop keeps one pending call request per registered method (and one
    for every generic method together) and passes them all to ``asyncio.wait`` for every
    call it accepts: with the 30-odd methods of the tender, award, admin, health and
    reflection services, that walk cost each call of every method about 12 µs more than
    a wait on one request (BENCHMARKS.md). Generic handlers are found by a dictionary
    lookup instead.
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        authority: Authority | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self._server = server
        self._authority = authority
        self._credentials = credentials

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GuardedHandler(one, self._authority, self._credentials) for one in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Left out on purpose: the generic handlers added with them serve these methods."""


__all__ = [
    "REQUEST_ID_KEY",
    "Guarded",
    "RequestIdLogFilter",
    "authenticated",
    "checking_cards",
    "current_request_id",
    "guard",
    "mapping_errors",
    "permitted",
    "preparing",
    "refusing_undecodable",
    "request_id_var",
    "with_request_id",
]

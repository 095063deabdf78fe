"""The one place errors become gRPC statuses.

Every failure a client sees is a status whose details carry a ``google.rpc.ErrorInfo``
with domain ``loyalty.v1`` (:data:`processor.proto.ERROR_DOMAIN`), the error's upper-case
``reason`` and ``metadata``: ``code`` where the README's error table defines a numeric code,
``field`` for a malformed field, ``index`` (set by the caller) for the failing transaction
of a PostTransactions call. A malformed field or an invalid file also carries a
``google.rpc.BadRequest`` with one field violation per problem.

The status code comes from the error's type (:data:`STATUS_BY_TYPE`, searched along the
class hierarchy), unless its reason has a row of its own (:data:`STATUS_BY_REASON`).
Anything that is not a :class:`~processor.errors.LoyaltyError` is a bug: it is answered
``INTERNAL`` with reason ``INTERNAL`` and a message that tells nothing of the server.

Trailing metadata is bounded (clients refuse more than 8 KiB by default), so messages
and field violations are cut to :data:`~processor.limits.STATUS_MESSAGE_CHARS_MAX` and
:data:`~processor.limits.STATUS_DETAILS_BYTES_MAX`.

Clients read the details back with :func:`reason_of`, :func:`error_info_of` and
:func:`bad_request_of`.
"""

# grpcio and googleapis-common-protos ship no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from processor.errors import (
    AuthenticationError,
    BadRequestError,
    DatabaseUnavailableError,
    DeclinedError,
    InputFileError,
    InternalError,
    InvalidFieldError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    Problem,
    RedemptionError,
    UnavailableError,
)
from processor.limits import (
    STATUS_DETAILS_BYTES_MAX,
    STATUS_MESSAGE_CHARS_MAX,
    VIOLATION_CHARS_MAX,
)
from processor.proto import ERROR_DOMAIN
from processor.service.handlers import Context

STATUS_BY_TYPE: dict[type[BaseException], grpc.StatusCode] = {
    InvalidFieldError: grpc.StatusCode.INVALID_ARGUMENT,
    InputFileError: grpc.StatusCode.INVALID_ARGUMENT,
    BadRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    DatabaseUnavailableError: grpc.StatusCode.UNAVAILABLE,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RedemptionError: grpc.StatusCode.FAILED_PRECONDITION,
    DeclinedError: grpc.StatusCode.FAILED_PRECONDITION,
    InternalError: grpc.StatusCode.INTERNAL,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""The status of each error type; an error takes the row of its nearest class."""


@dataclass(frozen=True, slots=True)
class ReasonStatus:
    """The status (and numeric code, when it differs from the error's) of one reason."""

    status: grpc.StatusCode
    code: int | None = None


STATUS_BY_REASON: dict[str, ReasonStatus] = {
    # The cardholder is known but the PIN is wrong: not a failure to say who calls.
    "PIN_INVALID": ReasonStatus(grpc.StatusCode.PERMISSION_DENIED, 2001),
    "PIN_LOCKED": ReasonStatus(grpc.StatusCode.PERMISSION_DENIED, 2004),
    # The calling system (not the cardholder) failed to authenticate.
    "API_AUTHENTICATION_FAILED": ReasonStatus(grpc.StatusCode.UNAUTHENTICATED, 1042),
    "ALREADY_EXISTS": ReasonStatus(grpc.StatusCode.ALREADY_EXISTS),
    "PROGRAM_EXISTS": ReasonStatus(grpc.StatusCode.ALREADY_EXISTS),
    # A reader's place is older than the events kept: it must know it missed some.
    "EVENTS_REMOVED": ReasonStatus(grpc.StatusCode.OUT_OF_RANGE),
}
"""Reasons whose status is not their error type's."""

INTERNAL_REASON = "INTERNAL"
INTERNAL_MESSAGE = "internal error; the request may be retried with the same request_id"

# Errors at the server's own side whose text may name hosts, users or queries: the client
# gets this message; the server's log keeps the original.
PUBLIC_MESSAGES: dict[type[BaseException], str] = {
    DatabaseUnavailableError: "the database is unavailable; nothing was posted, retry",
    InternalError: INTERNAL_MESSAGE,
    TimeoutError: "the deadline passed before the request was answered; retry",
}

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_code_of(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code an error is answered with."""
    reason = getattr(error, "reason", None)
    if isinstance(reason, str) and reason in STATUS_BY_REASON:
        return STATUS_BY_REASON[reason].status
    entry = _type_entry(error, STATUS_BY_TYPE)
    return grpc.StatusCode.INTERNAL if entry is None else entry


def status_for(
    error: BaseException, *, metadata: Mapping[str, str] | None = None
) -> status_pb2.Status:
    """The google.rpc.Status of an error, with its ErrorInfo (and BadRequest) details.

    ``metadata`` (and a mapping in the error's own ``metadata`` attribute, for errors
    raised far from the servicer) is added to the ErrorInfo's metadata.
    """
    code = status_code_of(error)
    known = _type_entry(error, STATUS_BY_TYPE) is not None
    reason = _reason(error, known)
    info = error_details_pb2.ErrorInfo(domain=ERROR_DOMAIN, reason=reason)
    numeric = _numeric_code(error, reason, known)
    if numeric is not None:
        info.metadata["code"] = str(numeric)
    if isinstance(error, InvalidFieldError):
        info.metadata["field"] = error.field
    for extra in (getattr(error, "metadata", None), metadata):
        if isinstance(extra, Mapping):
            info.metadata.update({str(key): str(value) for key, value in extra.items()})
    status = status_pb2.Status(code=code.value[0], message=_message(error, known))
    _pack(status, info)
    violations = _violations(error)
    if violations:
        room = STATUS_DETAILS_BYTES_MAX - status.ByteSize()
        _pack(status, _bounded_bad_request(violations, room))
    return status


def to_grpc_status(status: status_pb2.Status) -> grpc.Status:
    """The grpc.Status that carries a google.rpc.Status (code, message, details trailer)."""
    return rpc_status.to_status(status)


async def abort(
    context: Context,
    error: BaseException,
    *,
    metadata: Mapping[str, str] | None = None,
    trailing: tuple[tuple[str, str], ...] = (),
) -> NoReturn:
    """End an aio call with the status of ``error`` (raises grpc.aio.AbortError), with
    ``trailing`` metadata beside the status's details."""
    status = to_grpc_status(status_for(error, metadata=metadata))
    await context.abort(
        status.code, status.details, trailing_metadata=(*status.trailing_metadata, *trailing)
    )
    raise AssertionError("unreachable: abort_with_status raises")  # pragma: no cover


# --------------------------------------------------------------------------- client side


def status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status in a failed call's trailing metadata, if it has one."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in _pairs(trailing):
        if key == _STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def error_info_of(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call, when the server sent one."""
    return _detail(error, error_details_pb2.ErrorInfo)


def bad_request_of(error: grpc.RpcError) -> error_details_pb2.BadRequest | None:
    """The BadRequest (field violations) of a failed call, when the server sent one."""
    return _detail(error, error_details_pb2.BadRequest)


def reason_of(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call ("" when it carries none)."""
    info = error_info_of(error)
    return "" if info is None else str(info.reason)


# --------------------------------------------------------------------------- internals


def _type_entry(error: BaseException, table: Mapping[type[BaseException], Any]) -> Any:
    for kind in type(error).__mro__:
        if kind in table:
            return table[kind]
    return None


def _reason(error: BaseException, known: bool) -> str:
    if isinstance(error, TimeoutError):
        return "DEADLINE_EXCEEDED"
    reason = getattr(error, "reason", None)
    if not known or not isinstance(reason, str) or not reason:
        return INTERNAL_REASON
    return reason


def _numeric_code(error: BaseException, reason: str, known: bool) -> int | None:
    entry = STATUS_BY_REASON.get(reason)
    if entry is not None and entry.code is not None:
        return entry.code
    code = getattr(error, "code", None) if known else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _message(error: BaseException, known: bool) -> str:
    public = _type_entry(error, PUBLIC_MESSAGES)
    if not known:
        return INTERNAL_MESSAGE
    if public is not None:
        return str(public)
    text = str(error)
    if len(text) > STATUS_MESSAGE_CHARS_MAX:
        text = text[: STATUS_MESSAGE_CHARS_MAX - 1] + "…"
    return text


def _violations(error: BaseException) -> list[Problem]:
    if isinstance(error, InputFileError):
        return list(error.problems) or [Problem("", "the file is invalid")]
    if isinstance(error, InvalidFieldError):
        text = str(error)
        prefix = f"{error.field}: "
        return [Problem(error.field, text[len(prefix) :] if text.startswith(prefix) else text)]
    return []


def _bounded_bad_request(problems: list[Problem], budget: int) -> error_details_pb2.BadRequest:
    """A BadRequest with as many violations as fit ``budget`` bytes, and a last one that
    counts the others."""
    request = error_details_pb2.BadRequest()
    reserve = 64  # room for the "and N more" violation and the Any wrapping
    for index, problem in enumerate(problems):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_cut(problem.path), description=_cut(problem.reason)
        )
        size = violation.ByteSize() + 4
        if request.ByteSize() + size > budget - reserve:
            left = len(problems) - index
            request.field_violations.add(description=f"… and {left} more problems")
            break
        request.field_violations.append(violation)
    return request


def _cut(text: str) -> str:
    return text if len(text) <= VIOLATION_CHARS_MAX else text[: VIOLATION_CHARS_MAX - 1] + "…"


def _pack(status: status_pb2.Status, detail: Any) -> None:
    packed = any_pb2.Any()
    packed.Pack(detail)
    status.details.append(packed)


def _pairs(metadata: Any) -> Iterable[tuple[str, Any]]:
    """(key, value) pairs of sync (tuple of pairs) or aio (Metadata) trailing metadata."""
    if metadata is None:
        return ()
    return [(str(key), value) for key, value in metadata]


def _detail(error: grpc.RpcError, kind: Any) -> Any:
    status = status_of(error)
    for packed in status.details if status is not None else ():
        detail = kind()
        if packed.Unpack(detail):
            if kind is error_details_pb2.ErrorInfo and detail.domain != ERROR_DOMAIN:
                continue
            return detail
    return None


__all__ = [
    "STATUS_BY_REASON",
    "STATUS_BY_TYPE",
    "abort",
    "bad_request_of",
    "error_info_of",
    "reason_of",
    "status_code_of",
    "status_for",
    "status_of",
    "to_grpc_status",
]

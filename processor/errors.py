"""The error types of the processor, split by who is at fault.

Every error carries a machine-readable ``reason`` (an upper-case token, the
``google.rpc.ErrorInfo.reason`` a gRPC client sees) and, where the source
documents define one, a numeric ``code``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")


class LoyaltyError(Exception):
    """Root of every error the processor raises on purpose."""

    reason = "INTERNAL"
    code: int | None = None

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class BadRequestError(LoyaltyError):
    """The caller sent something that can never succeed as sent."""

    reason = "INVALID_ARGUMENT"


class InvalidFieldError(BadRequestError):
    """One field of a request is malformed; ``field`` is its path in the message."""

    def __init__(self, field: str, message: str, *, reason: str = "INVALID_ARGUMENT") -> None:
        super().__init__(f"{field}: {message}", reason=reason)
        self.field = field


class NotFoundError(LoyaltyError):
    """The request names something that does not exist (a card, a program, an award)."""

    reason = "NOT_FOUND"


class AuthenticationError(LoyaltyError):
    """The caller or the cardholder could not be authenticated (code 2001)."""

    reason = "AUTHENTICATION_FAILED"
    code = 2001


class PermissionDeniedError(LoyaltyError):
    """The caller is known but its roles, or its cards, do not allow the request."""

    reason = "PERMISSION_DENIED"


class OverloadedError(LoyaltyError):
    """A bounded queue is full; the caller should back off and retry."""

    reason = "OVERLOADED"


class DeclinedError(LoyaltyError):
    """A well-formed request that the program's rules refuse."""

    reason = "DECLINED"


class RedemptionError(DeclinedError):
    """A reward redemption failed: insufficient points or not eligible (code 2003)."""

    reason = "REDEMPTION_FAILED"
    code = 2003


class UnavailableError(LoyaltyError):
    """A dependency the processor needs is unreachable; retrying may succeed."""

    reason = "UNAVAILABLE"


class DatabaseUnavailableError(UnavailableError):
    """PostgreSQL is unreachable (code 1001)."""

    reason = "DATABASE_UNAVAILABLE"
    code = 1001


class InternalError(LoyaltyError):
    """A bug in the processor: an invariant did not hold."""

    reason = "INTERNAL"


class InvalidBatchError(InternalError):
    """A batch or lookup broke the store's contract (a bug in the caller); nothing was written."""

    reason = "INVALID_BATCH"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input file: where it is and why it is wrong."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class InputFileError(BadRequestError):
    """An input file (program, transactions, accounts, card import) is invalid.

    The message names the file, then one line per problem with the field path
    and the reason, so a program manager can fix every problem in one pass.
    """

    reason = "INVALID_FILE"

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        lines = [f"{file}: {problem}" for problem in problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[InputFileError], tuple[str, list[Problem]]]:
        # Files are checked in a worker process too (processor.program.loader): the error
        # crosses back pickled, and its arguments are not its message.
        return type(self), (self.file, self.problems)


def mask_card(number: str) -> str:
    """A card number fit for logs and error messages: first 6 and last 4 digits only."""
    if len(number) <= 10:
        return "*" * len(number)
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


def check(condition: bool, message: str) -> None:
    """Assert an invariant in a way ``python -O`` cannot remove."""
    if not condition:
        raise InternalError(message)


def present(value: _T | None, what: str) -> _T:
    """``value``, which an invariant says is there: an InternalError naming ``what`` if it is
    None (unlike ``assert``, which ``python -O`` removes), and a non-optional type for mypy."""
    if value is None:
        raise InternalError(f"{what} is missing")
    return value

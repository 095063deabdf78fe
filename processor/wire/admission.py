"""Admission: the loyalty.v1 request messages as the engine's requests.

Admission happens here: every request message is checked against the contract (shape,
sizes, amounts, currencies, dates) before anything else looks at it, by the same rules
``processor.tools.records`` applies to JSON request files. A violation raises
:class:`~processor.errors.InvalidFieldError` naming the field by its protobuf path
(``transaction.purchase.lines[2].amount``) with an upper-case reason:

- ``INVALID_AMOUNT``: a negative amount, or more than
  :data:`~processor.limits.AMOUNT_UNITS_MAX` units;
- ``CURRENCY_UNKNOWN``: not an ISO 4217 code;
- ``CURRENCY_NOT_ALLOWED``: a currency other than the one the amount must be in;
- ``INVALID_EXCHANGE_RATE``: an exchange rate that is not a positive decimal;
- ``TOO_MANY_LINES``, ``TOO_MANY_CODES``: more than 1,000 lines or 32 codes;
- ``INVALID_ARGUMENT``: anything else (a missing field, a bad date, a repeated line number).

Error texts never repeat a PIN or a card number. Everything here is a pure function.

Amounts whose currency the client left empty mean "the program's currency"; the program
is known only once the card is looked up, so :func:`resolve_currency` finishes those
requests then.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from processor import calendar, money
from processor.engine.plan import CompiledProgram
from processor.engine.types import (
    AwardRedemption,
    Customer,
    Engagement,
    Line,
    Purchase,
    Request,
    Return,
    ReturnLine,
    TenderLine,
    TenderOp,
    TenderRequest,
    Void,
)
from processor.errors import InvalidFieldError
from processor.limits import (
    AMOUNT_UNITS_MAX,
    AUDIENCE_CHARS_MAX,
    AUDIENCES_MAX,
    CARD_DIGITS_MAX,
    CARD_DIGITS_MIN,
    CUSTOMER_ID_CHARS_MAX,
    ENGAGEMENT_COUNT_MAX,
    EXCHANGE_RATE_CHARS_MAX,
    EXCHANGE_RATE_DECIMALS_MAX,
    HIERARCHY_NODES_MAX,
    IDENTIFIER_CHARS_MAX,
    JOB_REQUEST_ID_PREFIX,
    LINE_ATTRIBUTES_MAX,
    LINE_QUANTITY_MAX,
    LINES_MAX,
    LOCATION_CHARS_MAX,
    NAME_CHARS_MAX,
    PIN_DIGITS_MAX,
    REDEEM_CODES_MAX,
    REQUEST_ID_CHARS_MAX,
    TENDER_TYPE_CHARS_MAX,
    TENDERS_MAX,
)
from processor.proto import awards, common, tender, transactions

INVALID_AMOUNT = "INVALID_AMOUNT"
CURRENCY_UNKNOWN = "CURRENCY_UNKNOWN"
CURRENCY_NOT_ALLOWED = "CURRENCY_NOT_ALLOWED"
INVALID_EXCHANGE_RATE = "INVALID_EXCHANGE_RATE"
TOO_MANY_LINES = "TOO_MANY_LINES"
TOO_MANY_CODES = "TOO_MANY_CODES"

_ACCOUNT = re.compile(rf"[0-9]{{{CARD_DIGITS_MIN},{CARD_DIGITS_MAX}}}")
_PIN = re.compile(rf"[0-9]{{1,{PIN_DIGITS_MAX}}}")
_LOCAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Context:
    """The RequestContext of a request, checked: who, when, where, and how it was made.

    ``pin`` is the PIN as entered, for the pipeline to verify against the card's hash; it
    is left out of ``repr`` so no log line can carry it.
    """

    request_id: str
    account: str
    day: int
    second: int
    location: str = ""
    card_present: bool = True
    pin: str | None = dataclasses.field(default=None, repr=False)
    dry_run: bool = False


# --------------------------------------------------------------------------- requests


def context_from_proto(message: common.RequestContext, field: str = "context") -> Context:
    """The checked context of a request; ``field`` is the message's path, for errors."""
    checked_text(message.request_id, _join(field, "request_id"), REQUEST_ID_CHARS_MAX)
    if message.request_id.startswith(JOB_REQUEST_ID_PREFIX):
        raise InvalidFieldError(
            _join(field, "request_id"),
            f"must not begin with {JOB_REQUEST_ID_PREFIX!r}: the processor's scheduled jobs "
            "post under such ids",
        )
    _card_number(message.account, _join(field, "account"))
    day, second = _local_time(message.local_time, _join(field, "local_time"))
    checked_text(message.location, _join(field, "location"), LOCATION_CHARS_MAX, required=False)
    pin: str | None = None
    if message.HasField("pin"):
        pin = message.pin
        if not _PIN.fullmatch(pin):
            raise InvalidFieldError(
                _join(field, "pin"), f"must be 1 to {PIN_DIGITS_MAX} digits when given"
            )
    return Context(
        request_id=message.request_id,
        account=message.account,
        day=day,
        second=second,
        location=message.location,
        card_present=message.card_present if message.HasField("card_present") else True,
        pin=pin,
        dry_run=message.dry_run,
    )


def transaction_from_proto(
    message: transactions.Transaction, field: str = "transaction"
) -> tuple[Context, Purchase | Return | Void | Engagement]:
    """The context and engine request of a Transaction (``field`` is its path: use
    ``transactions[3]`` for one of a PostTransactions call)."""
    if _compiled_purchase is not None:
        admitted = _compiled_purchase(message)
        if admitted is not None:
            return cast(tuple[Context, Purchase], admitted)
    return transaction_from_proto_reference(message, field)


def transaction_from_proto_reference(
    message: transactions.Transaction, field: str = "transaction"
) -> tuple[Context, Purchase | Return | Void | Engagement]:
    """``transaction_from_proto`` in Python: the rule. processor._admission takes the
    purchases in the common form in compiled code, and hands everything else here."""
    context = _required_context(message, field)
    kind = message.WhichOneof("kind")
    if kind == "purchase":
        return context, _purchase(context, message.purchase, _join(field, "purchase"))
    if kind == "sale_return":
        return context, _return(context, message.sale_return, _join(field, "sale_return"))
    if kind == "void":
        original_id = checked_text(
            message.void.original_id, _join(field, "void.original_id"), REQUEST_ID_CHARS_MAX
        )
        return context, Void(**_base(context), original_id=original_id)
    if kind == "engagement":
        return context, _engagement(context, message.engagement, _join(field, "engagement"))
    raise InvalidFieldError(
        _join(field, "kind"), "one of purchase, sale_return, void or engagement is required"
    )


TenderMessage = (
    tender.ActivateRequest
    | tender.ReloadRequest
    | tender.GetBalanceRequest
    | tender.RedeemRequest
    | tender.PreAuthorizeRequest
    | tender.CaptureRequest
    | tender.ReleaseRequest
    | tender.CashOutRequest
    | tender.MergeRequest
)

TENDER_OPS: dict[str, TenderOp] = {
    "Activate": "activate",
    "Reload": "reload",
    "GetBalance": "balance",
    "Redeem": "redeem",
    "PreAuthorize": "preauth",
    "Capture": "capture",
    "Release": "release",
    "CashOut": "cash_out",
    "Merge": "merge",
}
"""The engine operation of each TenderService method."""

_TENDER_MESSAGES: dict[str, type] = {
    "activate": tender.ActivateRequest,
    "reload": tender.ReloadRequest,
    "balance": tender.GetBalanceRequest,
    "redeem": tender.RedeemRequest,
    "preauth": tender.PreAuthorizeRequest,
    "capture": tender.CaptureRequest,
    "release": tender.ReleaseRequest,
    "cash_out": tender.CashOutRequest,
    "merge": tender.MergeRequest,
}


def tender_from_proto(op: str, message: TenderMessage) -> tuple[Context, TenderRequest]:
    """The context and engine request of a TenderService request for ``op`` (an engine
    operation, see :data:`TENDER_OPS`).

    An empty ``amount.currency`` leaves the request's currency empty: see
    :func:`resolve_currency`. A message of another type than ``op`` takes is a bug of the
    caller (TypeError), not of the client.
    """
    expected = _TENDER_MESSAGES.get(op)
    if expected is None or not isinstance(message, expected):
        raise TypeError(f"tender operation {op!r} does not take a {type(message).__name__}")
    context = _required_context(message, "")
    reference_id = target_account = currency = ""
    amount = 0
    exchange_rate = None
    if isinstance(message, tender.CaptureRequest | tender.ReleaseRequest):
        reference_id = checked_text(
            message.preauthorization_id, "preauthorization_id", REQUEST_ID_CHARS_MAX
        )
    if isinstance(message, tender.MergeRequest):
        target_account = _card_number(message.target_account, "target_account")
    if not isinstance(
        message, tender.GetBalanceRequest | tender.ReleaseRequest | tender.MergeRequest
    ):
        amount, currency = _money(message.amount, "amount")
        exchange_rate = _exchange_rate(message.exchange_rate, "exchange_rate")
    return context, TenderRequest(
        **_base(context),
        op=cast(TenderOp, op),
        amount=amount,
        currency=currency,
        exchange_rate=exchange_rate,
        reference_id=reference_id,
        target_account=target_account,
    )


def award_redemption_from_proto(
    message: awards.RedeemAwardRequest | awards.RedeemAwardValueRequest,
) -> tuple[Context, AwardRedemption]:
    """The context and engine request of RedeemAward (a code) or RedeemAwardValue (an
    amount of an award program's value).

    The engine request has no currency: a RedeemAwardValue amount is in the award
    program's currency, which :func:`check_award_currency` holds it to once the program
    is known.
    """
    context = _required_context(message, "")
    if isinstance(message, awards.RedeemAwardRequest):
        code = checked_text(message.code, "code", NAME_CHARS_MAX)
        return context, AwardRedemption(**_base(context), code=code)
    program = checked_text(message.program, "program", IDENTIFIER_CHARS_MAX)
    amount, _ = _money(message.amount, "amount")
    return context, AwardRedemption(**_base(context), program=program, amount=amount)


RequestT = TypeVar("RequestT", bound=Request)


def resolve_currency(request: RequestT, program: CompiledProgram) -> RequestT:
    """``request`` with an empty currency replaced by its program's: the card's tender
    program for a stored-value request. Other requests are returned as they are."""
    if isinstance(request, TenderRequest) and not request.currency and program.tender:
        return dataclasses.replace(request, currency=program.tender.currency.upper())
    return request


def check_award_currency(message: awards.RedeemAwardValueRequest, program: CompiledProgram) -> None:
    """Refuse a RedeemAwardValue amount in another currency than its award program's
    (``CURRENCY_NOT_ALLOWED``); an unknown program is left to the engine to decline."""
    held = program.award_programs.get(message.program)
    currency = message.amount.currency
    if held is not None and currency and currency.upper() != held.currency.upper():
        raise InvalidFieldError(
            "amount.currency",
            f"must be {held.currency}, the currency of award program {held.id}",
            reason=CURRENCY_NOT_ALLOWED,
        )


def _purchase(context: Context, message: transactions.Purchase, field: str) -> Purchase:
    currency = _currency(message.currency, _join(field, "currency"), required=True)
    if len(message.lines) > LINES_MAX:
        raise InvalidFieldError(
            _join(field, "lines"), f"has more than {LINES_MAX} lines", reason=TOO_MANY_LINES
        )
    if len(message.tenders) > TENDERS_MAX:
        raise InvalidFieldError(_join(field, "tenders"), f"has more than {TENDERS_MAX} tenders")
    if len(message.redeem_codes) > REDEEM_CODES_MAX:
        raise InvalidFieldError(
            _join(field, "redeem_codes"),
            f"has more than {REDEEM_CODES_MAX} codes",
            reason=TOO_MANY_CODES,
        )
    lines = _lines(message.lines, _join(field, "lines"))
    tenders = tuple(
        TenderLine(
            checked_text(item.type, _join(field, f"tenders[{index}].type"), TENDER_TYPE_CHARS_MAX),
            _amount(item.amount, _join(field, f"tenders[{index}].amount")),
        )
        for index, item in enumerate(message.tenders)
    )
    stored_value = 0
    if message.HasField("stored_value"):
        path = _join(field, "stored_value")
        stored_value, sent = _money(message.stored_value, path)
        if sent and sent != currency:
            raise InvalidFieldError(
                _join(path, "currency"),
                f"must be the purchase's currency {currency} (or empty)",
                reason=CURRENCY_NOT_ALLOWED,
            )
    codes = tuple(
        checked_text(code, _join(field, f"redeem_codes[{index}]"), NAME_CHARS_MAX)
        for index, code in enumerate(message.redeem_codes)
    )
    return Purchase(
        **_base(context),
        currency=currency,
        exchange_rate=_exchange_rate(message.exchange_rate, _join(field, "exchange_rate")),
        lines=lines,
        tenders=tenders,
        customer=_customer(message, _join(field, "customer")),
        stored_value=stored_value,
        redeem_codes=codes,
    )


def _lines(messages: Iterable[common.Line], field: str) -> tuple[Line, ...]:
    lines: list[Line] = []
    seen: set[int] = set()
    for index, message in enumerate(messages):
        number, quantity, amount, item = (
            message.number,
            message.quantity,
            message.amount,
            message.item,
        )
        hierarchy = tuple(message.hierarchy)
        attributes = message.attributes
        # The common case, checked without building a single error path: every field path
        # string (lines[3].hierarchy[1]...) cost more than the checks. Anything doubtful
        # goes through _checked_line, which is the rule and names the field.
        if (
            number >= 1
            and number not in seen
            and 1 <= quantity <= LINE_QUANTITY_MAX
            and 0 <= amount <= AMOUNT_UNITS_MAX
            and _text_ok(item, NAME_CHARS_MAX)
            and len(hierarchy) <= HIERARCHY_NODES_MAX
            and len(attributes) <= LINE_ATTRIBUTES_MAX
            and all(_text_ok(node, NAME_CHARS_MAX) for node in hierarchy)
            and all(_text_ok(key, NAME_CHARS_MAX) for key in attributes)
        ):
            seen.add(number)
            lines.append(
                Line(
                    number=number,
                    item=item,
                    amount=amount,
                    quantity=quantity,
                    hierarchy=hierarchy,
                    attributes=tuple(sorted(attributes.items())),
                    merchandise=not message.non_merchandise,
                )
            )
        else:
            lines.append(_checked_line(message, f"{field}[{index}]", seen))
    return tuple(lines)


def _text_ok(value: str, chars_max: int) -> bool:
    """What ``_text`` accepts for a required field, as a yes or no."""
    return bool(value) and len(value) <= chars_max and value.isprintable()


def _checked_line(message: common.Line, path: str, seen: set[int]) -> Line:
    number = _line_number(message.number, _join(path, "number"), seen)
    if not 1 <= message.quantity <= LINE_QUANTITY_MAX:
        raise InvalidFieldError(_join(path, "quantity"), f"must be 1 to {LINE_QUANTITY_MAX:,}")
    if len(message.hierarchy) > HIERARCHY_NODES_MAX:
        raise InvalidFieldError(
            _join(path, "hierarchy"), f"has more than {HIERARCHY_NODES_MAX} nodes"
        )
    if len(message.attributes) > LINE_ATTRIBUTES_MAX:
        raise InvalidFieldError(
            _join(path, "attributes"), f"has more than {LINE_ATTRIBUTES_MAX} attributes"
        )
    for node_index, node in enumerate(message.hierarchy):
        checked_text(node, _join(path, f"hierarchy[{node_index}]"), NAME_CHARS_MAX)
    for key in message.attributes:
        checked_text(key, _join(path, f"attributes[{key[:NAME_CHARS_MAX]!r}]"), NAME_CHARS_MAX)
    return Line(
        number=number,
        item=checked_text(message.item, _join(path, "item"), NAME_CHARS_MAX),
        amount=_amount(message.amount, _join(path, "amount")),
        quantity=message.quantity,
        hierarchy=tuple(message.hierarchy),
        attributes=tuple(sorted(message.attributes.items())),
        merchandise=not message.non_merchandise,
    )


def _line_number(number: int, field: str, seen: set[int]) -> int:
    if number < 1:
        raise InvalidFieldError(field, "must be at least 1")
    if number in seen:
        raise InvalidFieldError(field, f"line number {number} is repeated")
    seen.add(number)
    return number


def _return(context: Context, message: transactions.Return, field: str) -> Return:
    original_id = checked_text(
        message.original_id, _join(field, "original_id"), REQUEST_ID_CHARS_MAX
    )
    if len(message.lines) > LINES_MAX:
        raise InvalidFieldError(
            _join(field, "lines"), f"has more than {LINES_MAX} lines", reason=TOO_MANY_LINES
        )
    seen: set[int] = set()
    lines = []
    for index, line in enumerate(message.lines):
        path = _join(field, f"lines[{index}]")
        number = _line_number(line.number, _join(path, "number"), seen)
        if not 1 <= line.quantity <= LINE_QUANTITY_MAX:
            raise InvalidFieldError(_join(path, "quantity"), f"must be 1 to {LINE_QUANTITY_MAX:,}")
        lines.append(ReturnLine(number, line.quantity))
    return Return(**_base(context), original_id=original_id, lines=tuple(lines))


def _engagement(context: Context, message: transactions.Engagement, field: str) -> Engagement:
    kind = checked_text(message.kind, _join(field, "kind"), NAME_CHARS_MAX)
    if not 1 <= message.count <= ENGAGEMENT_COUNT_MAX:
        raise InvalidFieldError(_join(field, "count"), f"must be 1 to {ENGAGEMENT_COUNT_MAX:,}")
    return Engagement(
        **_base(context),
        kind=kind,
        count=message.count,
        customer=_customer(message, _join(field, "customer")),
    )


def _customer(
    parent: transactions.Purchase | transactions.Engagement, field: str
) -> Customer | None:
    if not parent.HasField("customer"):
        return None
    message = parent.customer
    if len(message.audiences) > AUDIENCES_MAX:
        raise InvalidFieldError(
            _join(field, "audiences"), f"has more than {AUDIENCES_MAX} audiences"
        )
    audiences = frozenset(
        checked_text(audience, _join(field, f"audiences[{index}]"), AUDIENCE_CHARS_MAX)
        for index, audience in enumerate(message.audiences)
    )
    return Customer(
        id=checked_text(message.id, _join(field, "id"), CUSTOMER_ID_CHARS_MAX),
        birth_day=_date(message.birth_date, _join(field, "birth_date")),
        signup_day=_date(message.signup_date, _join(field, "signup_date")),
        audiences=audiences,
    )


HasContext = (
    transactions.Transaction
    | TenderMessage
    | awards.RedeemAwardRequest
    | awards.RedeemAwardValueRequest
)


def _required_context(message: HasContext, field: str) -> Context:
    path = _join(field, "context")
    if not message.HasField("context"):
        raise InvalidFieldError(path, "is required")
    return context_from_proto(message.context, path)


def _base(context: Context) -> dict[str, Any]:
    """The RequestBase fields of an engine request; pin_verified is the pipeline's to set."""
    return {
        "id": context.request_id,
        "account": context.account,
        "day": context.day,
        "second": context.second,
        "location": context.location,
        "card_present": context.card_present,
        "pin_verified": False,
    }


def _card_number(value: str, field: str) -> str:
    if not _ACCOUNT.fullmatch(value):
        raise InvalidFieldError(
            field, f"must be a card number of {CARD_DIGITS_MIN} to {CARD_DIGITS_MAX} digits"
        )
    return value


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def checked_text(value: str, field: str, chars_max: int, *, required: bool = True) -> str:
    """``value`` when it is printable text of at most ``chars_max`` characters (which also
    keeps out NUL, which PostgreSQL refuses in text); InvalidFieldError naming ``field``."""
    if required and not value:
        raise InvalidFieldError(field, "is required")
    if len(value) > chars_max:
        raise InvalidFieldError(field, f"is longer than {chars_max} characters")
    if not value.isprintable():
        raise InvalidFieldError(field, "must be printable text")
    return value


def _local_time(value: str, field: str) -> tuple[int, int]:
    if not _LOCAL_TIME.fullmatch(value):
        raise InvalidFieldError(field, "must be a local time YYYY-MM-DDTHH:MM:SS")
    try:
        return calendar.parse_local_time(value)
    except ValueError:
        raise InvalidFieldError(field, f"{value!r} is not a valid date and time") from None


def _date(value: str, field: str) -> int | None:
    """The day number of an optional ``YYYY-MM-DD`` date (empty means none)."""
    if not value:
        return None
    if not _DATE.fullmatch(value):
        raise InvalidFieldError(field, "must be a date YYYY-MM-DD")
    try:
        return calendar.parse_day(value)
    except ValueError:
        raise InvalidFieldError(field, f"{value!r} is not a valid date") from None


def _amount(units: int, field: str) -> int:
    if units < 0:
        raise InvalidFieldError(field, "must not be negative", reason=INVALID_AMOUNT)
    if units > AMOUNT_UNITS_MAX:
        raise InvalidFieldError(
            field, f"must be at most {AMOUNT_UNITS_MAX} units", reason=INVALID_AMOUNT
        )
    return units


def _money(message: common.Money, field: str) -> tuple[int, str]:
    """(units, upper-case currency or "") of a Money sent by a client."""
    units = _amount(message.units, _join(field, "units"))
    return units, _currency(message.currency, _join(field, "currency"), required=False)


def _currency(value: str, field: str, *, required: bool) -> str:
    if not value and not required:
        return ""
    if not _CURRENCY.fullmatch(value) or not money.is_currency(value):
        raise InvalidFieldError(
            field, "must be an ISO 4217 currency code such as USD", reason=CURRENCY_UNKNOWN
        )
    return value.upper()


def _exchange_rate(value: str, field: str) -> str | None:
    """A positive decimal rate ("1.0825"), or None when not given."""
    if not value:
        return None
    problem = ""
    if len(value) > EXCHANGE_RATE_CHARS_MAX or not _DECIMAL.fullmatch(value):
        problem = "must be a positive decimal number such as 1.0825"
    else:
        try:
            if money.ratio(value, EXCHANGE_RATE_DECIMALS_MAX) <= 0:
                problem = "must be greater than 0"
        except ValueError:
            problem = f"has more than {EXCHANGE_RATE_DECIMALS_MAX} decimal places"
    if problem:
        raise InvalidFieldError(field, problem, reason=INVALID_EXCHANGE_RATE)
    return value


__all__ = [
    "TENDER_OPS",
    "Context",
    "award_redemption_from_proto",
    "check_award_currency",
    "checked_text",
    "context_from_proto",
    "resolve_currency",
    "tender_from_proto",
    "transaction_from_proto",
    "transaction_from_proto_reference",
]


# --------------------------------------------------------------------------- compiled purchases

# Every posted purchase is admitted on the hot path: processor._admission (ext/_admission.pyx)
# checks the ones in the common form in C when built and hands the rest to the reference
# above, so every error is the reference's (tests/test_wire.py holds the two equal).
# Imported last: it imports Context from this module.
try:
    from processor._admission import (  # type: ignore[import-not-found, unused-ignore]
        purchase as _compiled_purchase,
    )
except ImportError:  # pragma: no cover - LOYALTY_NO_EXTENSIONS=1
    _compiled_purchase = None
COMPILED_PURCHASES: Final = _compiled_purchase is not None
"""Whether purchases in the common form are admitted by processor._admission."""

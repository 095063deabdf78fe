"""JSON records of requests, accounts and results: how files and people see the engine.

Request and account files are JSON lines. Amounts are written as decimals in
their currency ("25.00") and points as decimals of the program's precision;
dates are ISO dates and times the store's local ISO date-time. Each record is
validated with pydantic, and a bad one is reported with its line number, field
path and reason; nothing is evaluated until the whole file is valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from processor import calendar, money
from processor.engine.plan import CompiledProgram
from processor.engine.types import (
    AccountState,
    AwardAccount,
    AwardRedemption,
    Customer,
    Engagement,
    Line,
    Lot,
    LoyaltyAccount,
    Purchase,
    Request,
    Result,
    Return,
    ReturnLine,
    TenderAccount,
    TenderLine,
    TenderRequest,
    ValueLot,
    Void,
)
from processor.errors import InputFileError, InternalError, Problem
from processor.limits import (
    AMOUNT_UNITS_MAX,
    AUDIENCES_MAX,
    BALANCE_UNITS_MAX,
    CARD_DIGITS_MAX,
    CUSTOMER_ID_CHARS_MAX,
    ENGAGEMENT_COUNT_MAX,
    HIERARCHY_NODES_MAX,
    LINE_QUANTITY_MAX,
    LINES_MAX,
    NAME_CHARS_MAX,
    REDEEM_CODES_MAX,
    REQUEST_ID_CHARS_MAX,
    TENDER_TYPE_CHARS_MAX,
    TENDERS_MAX,
)
from processor.program.base import Day, Model
from processor.program.loader import format_path

RECORDS_PER_FILE_MAX = 10_000_000
RECORD_BYTES_MAX = 1_000_000

# The limits are in minor units, so _minor and _balance check them once the currency is known.
Amount = Annotated[Decimal, Field(allow_inf_nan=False, ge=0)]


class CustomerRecord(Model):
    id: str = Field(min_length=1, max_length=CUSTOMER_ID_CHARS_MAX)
    birth_date: Day | None = None
    signup_date: Day | None = None
    audiences: list[str] = Field(default_factory=list, max_length=AUDIENCES_MAX)

    def build(self) -> Customer:
        return Customer(self.id, self.birth_date, self.signup_date, frozenset(self.audiences))


class LineRecord(Model):
    number: int = Field(ge=1)
    item: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    amount: Amount
    quantity: int = Field(default=1, ge=1, le=LINE_QUANTITY_MAX)
    hierarchy: list[str] = Field(default_factory=list, max_length=HIERARCHY_NODES_MAX)
    attributes: dict[str, str] = Field(default_factory=dict)
    merchandise: bool = True


class TenderLineRecord(Model):
    type: str = Field(min_length=1, max_length=TENDER_TYPE_CHARS_MAX)
    amount: Amount


class ReturnLineRecord(Model):
    number: int = Field(ge=1)
    quantity: int = Field(ge=1)


class RequestRecord(Model):
    id: str = Field(min_length=1, max_length=REQUEST_ID_CHARS_MAX)
    account: str = Field(min_length=1, max_length=CARD_DIGITS_MAX)
    time: str
    location: str = ""
    card_present: bool = True
    pin_verified: bool = False

    def moment(self) -> tuple[int, int]:
        try:
            return calendar.parse_local_time(self.time)
        except ValueError:
            raise FieldError("time", f"{self.time!r} is not a local ISO date-time") from None


class PurchaseRecord(RequestRecord):
    type: Literal["purchase"]
    currency: str = Field(default="USD", pattern=r"^[A-Za-z]{3}$")
    exchange_rate: str | None = None
    lines: list[LineRecord] = Field(default_factory=list, max_length=LINES_MAX)
    tenders: list[TenderLineRecord] = Field(default_factory=list, max_length=TENDERS_MAX)
    customer: CustomerRecord | None = None
    stored_value: Amount = Decimal(0)
    redeem_codes: list[str] = Field(default_factory=list, max_length=REDEEM_CODES_MAX)


class ReturnRecord(RequestRecord):
    type: Literal["return"]
    original_id: str = Field(min_length=1)
    lines: list[ReturnLineRecord] = Field(default_factory=list)


class VoidRecord(RequestRecord):
    type: Literal["void"]
    original_id: str = Field(min_length=1)


class EngagementRecord(RequestRecord):
    type: Literal["engagement"]
    kind: str = "engagement"
    count: int = Field(default=1, ge=1, le=ENGAGEMENT_COUNT_MAX)
    customer: CustomerRecord | None = None


class TenderRecord(RequestRecord):
    type: Literal["tender"]
    op: Literal[
        "activate",
        "reload",
        "redeem",
        "balance",
        "preauth",
        "capture",
        "release",
        "cash_out",
        "merge",
    ]
    amount: Amount = Decimal(0)
    currency: str = Field(default="USD", pattern=r"^[A-Za-z]{3}$")
    exchange_rate: str | None = None
    reference_id: str = ""
    target_account: str = ""


class AwardRedemptionRecord(RequestRecord):
    type: Literal["award_redemption"]
    code: str = ""
    program: str = ""
    amount: Amount = Decimal(0)
    currency: str = Field(default="USD", pattern=r"^[A-Za-z]{3}$")


AnyRecord = Annotated[
    PurchaseRecord
    | ReturnRecord
    | VoidRecord
    | EngagementRecord
    | TenderRecord
    | AwardRedemptionRecord,
    Field(discriminator="type"),
]
_REQUEST = TypeAdapter(AnyRecord)


class FieldError(ValueError):
    """A value that passed the record schema but cannot be used, with its field path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path


def _minor(value: Decimal, currency: str, path: str) -> int:
    try:
        units = money.to_minor(value, currency)
    except ValueError as error:
        raise FieldError(path, str(error)) from None
    if units > AMOUNT_UNITS_MAX:
        raise FieldError(path, f"must be at most {AMOUNT_UNITS_MAX} units")
    return units


def build_request(record: Any) -> Request:
    """An engine request from a validated record; ValueError when amounts do not fit."""
    day, second = record.moment()
    common = {
        "id": record.id,
        "account": record.account,
        "day": day,
        "second": second,
        "location": record.location,
        "card_present": record.card_present,
        "pin_verified": record.pin_verified,
    }
    if isinstance(record, PurchaseRecord):
        currency = record.currency.upper()
        return Purchase(
            **common,
            currency=currency,
            exchange_rate=record.exchange_rate,
            lines=tuple(
                Line(
                    line.number,
                    line.item,
                    _minor(line.amount, currency, f"lines[{index}].amount"),
                    line.quantity,
                    tuple(line.hierarchy),
                    tuple(sorted(line.attributes.items())),
                    line.merchandise,
                )
                for index, line in enumerate(record.lines)
            ),
            tenders=tuple(
                TenderLine(tender.type, _minor(tender.amount, currency, f"tenders[{index}].amount"))
                for index, tender in enumerate(record.tenders)
            ),
            customer=record.customer.build() if record.customer else None,
            stored_value=_minor(record.stored_value, currency, "stored_value"),
            redeem_codes=tuple(record.redeem_codes),
        )
    if isinstance(record, ReturnRecord):
        return Return(
            **common,
            original_id=record.original_id,
            lines=tuple(ReturnLine(line.number, line.quantity) for line in record.lines),
        )
    if isinstance(record, VoidRecord):
        return Void(**common, original_id=record.original_id)
    if isinstance(record, EngagementRecord):
        return Engagement(
            **common,
            kind=record.kind,
            count=record.count,
            customer=record.customer.build() if record.customer else None,
        )
    if isinstance(record, TenderRecord):
        currency = record.currency.upper()
        return TenderRequest(
            **common,
            op=record.op,
            amount=_minor(record.amount, currency, "amount"),
            currency=currency,
            exchange_rate=record.exchange_rate,
            reference_id=record.reference_id,
            target_account=record.target_account,
        )
    if not isinstance(record, AwardRedemptionRecord):
        raise InternalError(f"no engine request for a {type(record).__name__}")
    return AwardRedemption(
        **common,
        code=record.code,
        program=record.program,
        amount=_minor(record.amount, record.currency.upper(), "amount"),
    )


def read_requests(path: str | Path) -> list[Request]:
    """Every request of a JSON-lines file, or InputFileError naming each bad line."""
    requests: list[Request] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for number, data in _json_lines(path, problems):
        try:
            record = _REQUEST.validate_python(data)
            request = build_request(record)
        except ValidationError as error:
            problems += _line_problems(number, error)
            continue
        except FieldError as error:
            problems.append(Problem(f"line {number}.{error.path}", str(error)))
            continue
        except ValueError as error:
            problems.append(Problem(f"line {number}", str(error)))
            continue
        if request.id in seen:
            problems.append(
                Problem(f"line {number}.id", f"{request.id!r} repeats line {seen[request.id]}")
            )
        seen[request.id] = number
        requests.append(request)
    if problems:
        raise InputFileError(str(path), problems)
    return requests


def _json_lines(path: str | Path, problems: list[Problem]) -> Iterator[tuple[int, Any]]:
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as error:
        raise InputFileError(
            str(path), [Problem("", f"cannot be read: {error.strerror}")]
        ) from None
    with handle:
        try:
            for number, text in enumerate(handle, start=1):
                if number > RECORDS_PER_FILE_MAX:
                    problems.append(Problem("", f"has more than {RECORDS_PER_FILE_MAX} records"))
                    return
                if not text.strip():
                    continue
                if len(text) > RECORD_BYTES_MAX:
                    problems.append(Problem(f"line {number}", "record is too long"))
                    continue
                try:
                    yield number, json.loads(text)
                except json.JSONDecodeError as error:
                    problems.append(Problem(f"line {number}", f"invalid JSON: {error.msg}"))
        except UnicodeDecodeError as error:
            problems.append(Problem("", f"is not UTF-8 text: {error.reason}"))


def _line_problems(number: int, error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        loc = item["loc"]
        if loc and loc[0] in {
            "purchase",
            "return",
            "void",
            "engagement",
            "tender",
            "award_redemption",
        }:
            loc = loc[1:]
        path = format_path(loc)
        reason = {"extra_forbidden": "unknown field", "missing": "is required"}.get(
            item["type"], item["msg"]
        )
        problems.append(Problem(f"line {number}" + (f".{path}" if path else ""), reason))
    return problems


# --------------------------------------------------------------------------- accounts


class LoyaltyRecord(Model):
    level: str | None = None
    points: Decimal = Field(default=Decimal(0), ge=0, allow_inf_nan=False)
    earned_ytd: Decimal = Field(default=Decimal(0), ge=0, allow_inf_nan=False)
    earned_ltd: Decimal = Field(default=Decimal(0), ge=0, allow_inf_nan=False)
    created: Day
    level_since: Day | None = None


class TenderAccountRecord(Model):
    status: Literal["inactive", "active", "expired", "closed"] = "active"
    balance: Amount = Decimal(0)
    activated: Day | None = None
    expires: Day | None = None


class AwardAccountRecord(Model):
    balance: Amount = Decimal(0)
    created: Day


class AccountRecord(Model):
    account: str = Field(min_length=1, max_length=CARD_DIGITS_MAX)
    status: Literal["active", "inactive", "expired"] = "active"
    customer: CustomerRecord | None = None
    loyalty: dict[str, LoyaltyRecord] = Field(default_factory=dict)
    tender: TenderAccountRecord | None = None
    awards: dict[str, AwardAccountRecord] = Field(default_factory=dict)


def build_account(record: AccountRecord, program: CompiledProgram) -> AccountState:
    """An account state from a record: opening balances become one lot each."""
    state = AccountState(
        record.account,
        status=record.status,
        customer=record.customer.build() if record.customer else None,
    )
    plans = {plan.program.id: plan for plan in program.loyalty}
    for program_id, entry in record.loyalty.items():
        if program_id not in plans:
            raise ValueError(f"loyalty.{program_id}: no such loyalty program")
        loyalty = plans[program_id].program
        level = entry.level or loyalty.start_level
        if level not in [known.id for known in loyalty.levels]:
            raise ValueError(f"loyalty.{program_id}.level: unknown level {level!r}")
        points = loyalty.points(entry.points)
        state.loyalty[program_id] = LoyaltyAccount(
            program=program_id,
            level=level,
            created_day=entry.created,
            level_since_day=entry.level_since or entry.created,
            last_activity_day=entry.created,
            lots=[Lot(entry.created, "opening", "regular", points, entry.created, None, 0)]
            if points
            else [],
            earned_ltd=max(loyalty.points(entry.earned_ltd), points),
            earned_ytd=loyalty.points(entry.earned_ytd),
            ytd_year=calendar.year_of(entry.created),
        )
    if record.tender is not None:
        if program.tender is None:
            raise ValueError("tender: this program file has no tender program")
        state.tender = TenderAccount(
            status=record.tender.status,
            balance=_balance(record.tender.balance, program.tender.currency, "tender.balance"),
            activated_day=record.tender.activated,
            expires_day=record.tender.expires,
        )
    for program_id, award in record.awards.items():
        if program_id not in program.award_programs:
            raise ValueError(f"awards.{program_id}: no such award program")
        currency = program.award_programs[program_id].currency
        amount = _balance(award.balance, currency, f"awards.{program_id}.balance")
        state.awards[program_id] = AwardAccount(
            program=program_id,
            created_day=award.created,
            last_activity_day=award.created,
            funded=amount > 0,
            value=[ValueLot(award.created, amount, None, "opening")] if amount else [],
        )
    return state


def _balance(value: Decimal, currency: str, path: str) -> int:
    units = money.to_minor(value, currency)
    if units > BALANCE_UNITS_MAX:
        raise ValueError(f"{path}: {value} is larger than the ledger holds")
    return units


def read_accounts(path: str | Path, program: CompiledProgram) -> dict[str, AccountState]:
    accounts: dict[str, AccountState] = {}
    problems: list[Problem] = []
    for number, data in _json_lines(path, problems):
        try:
            record = AccountRecord.model_validate(data)
            state = build_account(record, program)
        except ValidationError as error:
            problems += _line_problems(number, error)
            continue
        except ValueError as error:
            problems.append(Problem(f"line {number}", str(error)))
            continue
        if state.account in accounts:
            problems.append(Problem(f"line {number}.account", f"{state.account!r} repeats"))
        accounts[state.account] = state
    if problems:
        raise InputFileError(str(path), problems)
    return accounts


# --------------------------------------------------------------------------- results


class Formatter:
    """Renders integer amounts as decimals of their program's points or currency."""

    def __init__(self, program: CompiledProgram) -> None:
        self.digits = program.balance_digits
        self.rule_digits: dict[str, int] = {
            award_plan.rule.id: plan.program.points_precision
            for plan in program.loyalty
            for award_plan in plan.award
        }

    def amount(self, balance: str, units: int) -> str:
        return money.format_units(units, self.digits.get(balance, 0))

    def result(self, result: Result) -> dict[str, Any]:
        def day(value: int | None) -> str | None:
            return None if value is None else calendar.format_day(value)

        def balance_key(balance: str, program: str) -> str:
            return {
                "points": f"points:{program}",
                "tender": "tender",
                "award_value": f"award:{program}",
            }[balance]

        return {
            "id": result.id,
            "account": result.account,
            "status": result.status,
            "reason": result.reason,
            "balances": {key: self.amount(key, value) for key, value in result.balances.items()},
            "postings": [
                {
                    "program": p.program,
                    "version": p.program_version,
                    "balance": p.balance,
                    "kind": p.kind,
                    "amount": self.amount(balance_key(p.balance, p.program), p.amount),
                    "rule": p.rule,
                    "date": day(p.day),
                    **({"account": p.account} if p.account else {}),
                }
                for p in result.postings
            ],
            "awards": [
                {
                    "code": a.code,
                    "kind": a.kind,
                    "rule": a.rule,
                    "program": a.program,
                    "value": self.amount(f"award:{a.program}", a.value),
                    "points_cost": money.format_units(
                        a.points_cost, self.rule_digits.get(a.rule, 0)
                    ),
                    "expires": day(a.expires_day),
                }
                for a in result.awards
            ],
            "redeemed": list(result.redeemed),
            "moves": [
                {
                    "program": m.program,
                    "rule": m.rule,
                    "kind": m.kind,
                    "from": m.from_level,
                    "to": m.to_level,
                }
                for m in result.moves
            ],
            "tender": None
            if result.tender is None
            else {
                "op": result.tender.op,
                "approved": result.tender.approved,
                "requested": self.amount("tender", result.tender.requested),
                "approved_amount": self.amount("tender", result.tender.approved_amount),
                "balance": self.amount("tender", result.tender.balance),
                "reason": result.tender.reason,
            },
            "trace": [
                {
                    "program": t.program,
                    "rule": t.rule,
                    "fired": t.fired,
                    "points": self.amount(f"points:{t.program}", t.points),
                    "reason": t.reason,
                }
                for t in result.trace
            ],
        }

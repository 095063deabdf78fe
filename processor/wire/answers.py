"""Answers: the engine's results as loyalty.v1 messages.

:func:`result_bytes` builds a Result as bytes straight from an engine result (every distinct
trace entry serialized once); :func:`result_to_proto` parses them when a message object is
wanted. :func:`awards_to_proto` pages a card's held awards for ListAwards. Amounts carry the
exponent of their balance (``balance_exponents``), dates are local ISO dates.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Final

from processor import calendar
from processor.engine.plan import CompiledProgram
from processor.engine.types import (
    AccountState,
    Award,
    AwardAccount,
    AwardIssue,
    LevelMove,
    Posting,
    Purchase,
    Request,
    Result,
    TenderDecision,
    TenderRequest,
    TraceEntry,
)
from processor.errors import InvalidFieldError
from processor.limits import AWARDS_PAGE_MAX
from processor.proto import awards, common

# --------------------------------------------------------------------------- results

_STATUSES = {
    "approved": common.RESULT_STATUS_APPROVED,
    "declined": common.RESULT_STATUS_DECLINED,
}
_POSTING_BALANCES = {
    "points": common.POSTING_BALANCE_POINTS,
    "tender": common.POSTING_BALANCE_TENDER,
    "award_value": common.POSTING_BALANCE_AWARD_VALUE,
}
_AWARD_KINDS = {
    "coupon": common.AWARD_KIND_COUPON,
    "certificate": common.AWARD_KIND_CERTIFICATE,
    "e_award": common.AWARD_KIND_E_AWARD,
}
_MOVE_KINDS = {
    "advancement": common.LEVEL_MOVE_KIND_ADVANCEMENT,
    "sustain": common.LEVEL_MOVE_KIND_SUSTAIN,
    "demotion": common.LEVEL_MOVE_KIND_DEMOTION,
    "extension": common.LEVEL_MOVE_KIND_EXTENSION,
}
# Operations without a contract value (the reversal of a voided load) are UNSPECIFIED.
_TENDER_OPERATIONS = {
    "activate": common.TENDER_OPERATION_ACTIVATE,
    "reload": common.TENDER_OPERATION_RELOAD,
    "redeem": common.TENDER_OPERATION_REDEEM,
    "balance": common.TENDER_OPERATION_BALANCE,
    "preauth": common.TENDER_OPERATION_PREAUTHORIZE,
    "capture": common.TENDER_OPERATION_CAPTURE,
    "release": common.TENDER_OPERATION_RELEASE,
    "cash_out": common.TENDER_OPERATION_CASH_OUT,
    "merge": common.TENDER_OPERATION_MERGE,
}
_HELD_STATUSES = {
    "active": awards.AWARD_STATUS_ACTIVE,
    "redeemed": awards.AWARD_STATUS_REDEEMED,
    "expired": awards.AWARD_STATUS_EXPIRED,
    "void": awards.AWARD_STATUS_VOID,
}
_ACCOUNT_STATUSES = {
    "inactive": awards.AWARD_ACCOUNT_STATUS_INACTIVE,
    "active": awards.AWARD_ACCOUNT_STATUS_ACTIVE,
    "expired": awards.AWARD_ACCOUNT_STATUS_EXPIRED,
}


def balance_exponents(program: CompiledProgram) -> dict[str, int]:
    """The decimal digits of every balance name ``program`` can answer."""
    return program.balance_digits


def balance_name(posting: Posting) -> str:
    """The key of the balance a posting changes, as Result.balances names it."""
    if posting.balance == "points":
        return f"points:{posting.program}"
    if posting.balance == "award_value":
        return f"award:{posting.program}"
    return "tender"


def result_to_proto(
    result: Result,
    program: CompiledProgram,
    *,
    replayed: bool = False,
    request: Request | None = None,
) -> common.Result:
    """The loyalty.v1 Result of an engine result under ``program``.

    ``request`` (when given) names the currency a stored-value decision's ``requested``
    amount was sent in; without it, it is the tender program's. Balance names the program
    does not define get no exponent.
    """
    return common.Result.FromString(
        result_bytes(result, program, replayed=replayed, request=request)
    )


def result_bytes(
    result: Result,
    program: CompiledProgram,
    *,
    replayed: bool = False,
    request: Request | None = None,
) -> bytes:
    """The serialized loyalty.v1 Result of an engine result (see ``result_to_proto``), in
    compiled code when built (processor._answers), else by ``result_bytes_reference``."""
    if _compiled_result_bytes is None:
        return result_bytes_reference(result, program, replayed=replayed, request=request)
    tender = None
    if result.tender is not None:
        tender = _decision_fields(result.tender, program, request)
    compiled: bytes = _compiled_result_bytes(
        result,
        balance_exponents(program),
        _award_details(result, program),
        tender,
        replayed,
        _TRACE_FIELDS,
        _TRACE_FIELDS_MAX,
    )
    return compiled


_ROW_CODES: Final = {"approved": _STATUSES["approved"], **_POSTING_BALANCES, **_MOVE_KINDS}
"""The enum numbers the compiled engine writes answers with (see ``written_by_engine``)."""


def written_by_engine(
    results: Sequence[Result], program: CompiledProgram
) -> list[tuple[Result, bytes] | None]:
    """Per result of a batch, in order: ``(result, its Result bytes)`` where the engine
    wrote the answer itself, else None (write it with ``result_bytes``).

    The compiled engine writes the answers of the purchases it evaluated on its fast path
    straight from its result rows (the same bytes ``result_bytes`` writes, tested so),
    and hands back the result without its trace: the entries of a trace, most of a
    result, are then never made into objects. Every other result, and every result of
    the reference engine, is None here.
    """
    write = getattr(results, "answers", None)
    if write is None:
        return [None] * len(results)
    written: list[tuple[Result, bytes] | None] = write(balance_exponents(program), _ROW_CODES)
    return written


def result_bytes_reference(
    result: Result,
    program: CompiledProgram,
    *,
    replayed: bool = False,
    request: Request | None = None,
) -> bytes:
    """The serialized loyalty.v1 Result of an engine result (see ``result_to_proto``): the
    reference that defines the bytes, which processor._answers writes in C when built.

    Built as bytes because that is what costs least: a result carries one trace entry per
    rule (15 on average for the demo program), most of them the same from one result to
    the next, and making each as a Python message cost more than the rest of the result.
    Each distinct entry is serialized once (``_trace_field``) and appended as an encoded
    field; protobuf parses repeated fields in any position, so the bytes mean the same
    as the message built field by field."""
    exponents = balance_exponents(program)
    names = set(result.balances) | {balance_name(posting) for posting in result.postings}
    head = common.Result(
        request_id=result.id,
        account=result.account,
        status=_STATUSES[result.status],
        reason=result.reason,
        postings=[_posting(posting) for posting in result.postings],
        awards=[
            _award_issue(award, details)
            for award, details in zip(result.awards, _award_details(result, program), strict=True)
        ],
        redeemed_codes=result.redeemed,
        moves=[_move(move) for move in result.moves],
        balances=result.balances,
        balance_exponents={name: exponents[name] for name in names if name in exponents},
        replayed=replayed,
    )
    if result.tender is not None:
        head.tender.CopyFrom(_decision(_decision_fields(result.tender, program, request)))
    if not result.trace:
        return bytes(head.SerializeToString(deterministic=True))
    fields = _TRACE_FIELDS
    parts = [head.SerializeToString(deterministic=True)]
    for entry in result.trace:
        precision = exponents.get(f"points:{entry.program}", 0)
        # A plain tuple: hashed and compared in C, unlike the dataclass itself.
        key = (entry.program, entry.rule, entry.fired, entry.points, entry.reason, precision)
        field = fields.get(key)
        if field is None:
            if len(fields) >= _TRACE_FIELDS_MAX:
                fields.clear()  # bounded: entries with points amounts are endless
            field = fields[key] = _trace_field(entry, precision)
        parts.append(field)
    return b"".join(parts)


def _trace_field(entry: TraceEntry, precision: int) -> bytes:
    """One ``Result.trace`` element as an encoded field: tag, length, message."""
    body = common.TraceEntry(
        program=entry.program,
        rule=entry.rule,
        fired=entry.fired,
        points=common.Points(units=entry.points, precision=precision),
        reason=entry.reason,
    ).SerializeToString(deterministic=True)
    return length_delimited(_TRACE_TAG, body)


_RESULT_FIELD = b"\x0a"  # field 1, length-delimited: the result(s) of every response
_REPLAYED_TRUE = bytes((13 << 3, 1))  # Result.replayed = true, a varint field


def response_bytes(result: bytes) -> bytes:
    """A PostTransactionResponse or StreamTransactionsResponse holding ``result`` (a Result's
    bytes), as bytes; PostTransactionsResponse is these concatenated, in order."""
    return length_delimited(_RESULT_FIELD, result)


def length_delimited(tag: bytes, body: bytes) -> bytes:
    """A length-delimited protobuf field: its ``tag``, the length of ``body`` as a varint,
    then ``body``."""
    return tag + _varint(len(body)) + body


def replayed_bytes(result: bytes) -> bytes:
    """``result`` (a Result's bytes, replayed unset) with replayed set: a field appended,
    which a parser takes as set, without parsing and serializing the result again."""
    return result + _REPLAYED_TRUE


def _varint(value: int) -> bytes:
    # Every answer's length and every posted transaction's (for its payload hash) passes
    # here: one and two bytes cover all but the largest, without the loop and bytearray.
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ONE_BYTE: Final = tuple(bytes((value,)) for value in range(0x80))


_TRACE_FIELDS: dict[tuple[str, str, bool, int, str, int], bytes] = {}
_TRACE_FIELDS_MAX = 65_536
_TRACE_TAG = _varint(common.Result.DESCRIPTOR.fields_by_name["trace"].number << 3 | 2)


def _posting(posting: Posting) -> common.Posting:
    return common.Posting(
        program=posting.program,
        program_version=posting.program_version,
        balance=_POSTING_BALANCES[posting.balance],
        kind=posting.kind,
        amount=posting.amount,
        balance_name=balance_name(posting),
        rule=posting.rule,
        date=calendar.format_day(posting.day),
        account=posting.account,
    )


AwardDetails = tuple[common.AwardKind, str, int, str]
"""What an award's answer needs of its program: kind code, currency, points precision of
its rule, last usable date."""


def _award_details(result: Result, program: CompiledProgram) -> list[AwardDetails]:
    return [_details_of(award, program) for award in result.awards]


def _details_of(award: AwardIssue, program: CompiledProgram | None) -> AwardDetails:
    return (
        _AWARD_KINDS[award.kind],
        "" if program is None else _holder_currency(award.program, program),
        0 if program is None else _rule_precision(award, program),
        _last_day(award.expires_day),
    )


def award_issue_message(award: AwardIssue, program: CompiledProgram | None) -> common.AwardIssue:
    """An issued award as a Result shows it, in ``program``'s currency and points precision
    (none given without a program: the units alone)."""
    return _award_issue(award, _details_of(award, program))


def level_move_message(move: LevelMove) -> common.LevelMove:
    """A level move as a Result shows it."""
    return _move(move)


def _award_issue(award: AwardIssue, details: AwardDetails) -> common.AwardIssue:
    kind, currency, precision, expires_date = details
    return common.AwardIssue(
        code=award.code,
        kind=kind,
        rule=award.rule,
        program=award.program,
        value=common.Money(units=award.value, currency=currency),
        points_cost=common.Points(units=award.points_cost, precision=precision),
        expires_date=expires_date,
    )


def _holder_currency(holder: str, program: CompiledProgram) -> str:
    if holder in program.award_programs:
        return program.award_programs[holder].currency.upper()
    for plan in program.loyalty:
        if plan.program.id == holder:
            return plan.program.currency.upper()
    return ""


def _rule_precision(award: AwardIssue, program: CompiledProgram) -> int:
    """The points precision of the loyalty program whose award rule issued ``award``."""
    for plan in program.loyalty:
        if plan.program.id == award.program or any(
            award_plan.rule.id == award.rule for award_plan in plan.award
        ):
            return plan.program.points_precision
    return 0


def _move(move: LevelMove) -> common.LevelMove:
    return common.LevelMove(
        program=move.program,
        rule=move.rule,
        kind=_MOVE_KINDS[move.kind],
        from_level=move.from_level,
        to_level=move.to_level,
    )


DecisionFields = tuple[common.TenderOperation, bool, int, str, int, str, int, str]
"""A tender decision's answer: operation code, approved, requested units and the currency
they were sent in, approved units, balance units (both in the program's currency, given
once between them), reason."""


def _decision_fields(
    decision: TenderDecision, program: CompiledProgram, request: Request | None
) -> DecisionFields:
    currency = program.tender.currency.upper() if program.tender is not None else ""
    sent = currency
    if isinstance(request, TenderRequest | Purchase) and request.currency:
        sent = request.currency.upper()
    return (
        _TENDER_OPERATIONS.get(decision.op, common.TENDER_OPERATION_UNSPECIFIED),
        decision.approved,
        decision.requested,
        sent,
        decision.approved_amount,
        currency,
        decision.balance,
        decision.reason,
    )


def _decision(fields: DecisionFields) -> common.TenderDecision:
    operation, approved, requested, sent, approved_amount, currency, balance, reason = fields
    return common.TenderDecision(
        operation=operation,
        approved=approved,
        requested=common.Money(units=requested, currency=sent),
        approved_amount=common.Money(units=approved_amount, currency=currency),
        balance=common.Money(units=balance, currency=currency),
        reason=reason,
    )


def _last_day(expires_day: int | None) -> str:
    """The last usable date of something the engine expires at ``expires_day``.

    The engine's expiry day is the first day it is no longer usable; the contract's
    ``expires_date`` of an award is the last day it is.
    """
    return "" if expires_day is None else calendar.format_day(expires_day - 1)


# --------------------------------------------------------------------------- awards


def awards_to_proto(
    state: AccountState,
    program: CompiledProgram,
    day: int,
    request: awards.ListAwardsRequest | None = None,
) -> awards.ListAwardsResponse:
    """A card's ListAwardsResponse on ``day``: its coupons and certificates, newest first,
    with their status, last usable date and redemptions left, and its e-award value in each
    award program.

    ``request`` gives the page (``page_size``, ``page_token``) and ``include_inactive``;
    without it every award is listed on one page. Page tokens name the last award of a
    page, so awards issued between two pages move nothing on the next one.
    """
    include_inactive = request is None or request.include_inactive
    page_size = AWARDS_PAGE_MAX if request is None else request.page_size or AWARDS_PAGE_MAX
    held = [
        (award, _account_expired(account, day))
        for account in state.awards.values()
        for award in account.awards
    ]
    held += [(award, False) for account in state.loyalty.values() for award in account.awards]
    listed = sorted(
        ((_award_order(award), _held_award(award, day, lapsed)) for award, lapsed in held),
        key=lambda pair: pair[0],
    )
    if not include_inactive:
        listed = [pair for pair in listed if pair[1].status == awards.AWARD_STATUS_ACTIVE]
    if request is not None and request.page_token:
        after = _page_position(request.page_token)
        listed = [pair for pair in listed if pair[0] > after]
    page = listed[: min(page_size, AWARDS_PAGE_MAX)]
    token = ""
    if len(listed) > len(page):
        issued, code = page[-1][0]
        token = base64.urlsafe_b64encode(f"{issued}:{code}".encode()).decode()
    return awards.ListAwardsResponse(
        awards=[held_award for _, held_award in page],
        values=[_award_value(state.awards[key], program, day) for key in sorted(state.awards)],
        next_page_token=token,
    )


def _award_order(award: Award) -> tuple[int, str]:
    """Newest first, then by code: the listing's order and its page tokens' position."""
    return -award.issued_day, award.code


def _page_position(token: str) -> tuple[int, str]:
    try:
        issued, _, code = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        return int(issued), code
    except ValueError:
        raise InvalidFieldError("page_token", "is not a token this server gave") from None


def _award_value(
    account: AwardAccount, program: CompiledProgram, day: int
) -> awards.AwardValueBalance:
    expired = _account_expired(account, day)
    available = 0
    if not expired:
        available = sum(
            lot.amount for lot in account.value if lot.expires_day is None or day < lot.expires_day
        )
    held = program.award_programs.get(account.program)
    return awards.AwardValueBalance(
        program=account.program,
        balance=common.Money(units=available, currency=held.currency.upper() if held else ""),
        status=_ACCOUNT_STATUSES["expired" if expired else account.status],
        expires_date=(
            "" if account.expires_day is None else calendar.format_day(account.expires_day)
        ),
    )


def _account_expired(account: AwardAccount, day: int) -> bool:
    """Whether an award program account is expired on ``day`` (everything in it is)."""
    return account.status == "expired" or (
        account.expires_day is not None and account.expires_day <= day
    )


def _held_award(award: Award, day: int, account_expired: bool = False) -> awards.HeldAward:
    """A held award with its status on ``day``: the engine marks expiries only when the
    card is next used, so an award can be past its date here while still "active" there."""
    status = award.status
    if status == "active" and award.redemptions_left == 0:
        status = "redeemed"
    lapsed = award.expires_day is not None and award.expires_day <= day
    if status == "active" and (lapsed or account_expired):
        status = "expired"
    return awards.HeldAward(
        code=award.code,
        kind=_AWARD_KINDS[award.kind],
        rule=award.rule,
        program=award.program,
        issued_date=calendar.format_day(award.issued_day),
        expires_date=_last_day(award.expires_day),
        redemptions_left=award.redemptions_left,
        status=_HELD_STATUSES[status],
    )


__all__ = [
    "awards_to_proto",
    "balance_exponents",
    "balance_name",
    "length_delimited",
    "replayed_bytes",
    "response_bytes",
    "result_bytes",
    "result_to_proto",
]


# --------------------------------------------------------------------------- compiled results

# Every answer is built per transaction on the hot path: processor._answers (ext/_answers.pyx)
# writes the same bytes in C when built, tested equal to result_bytes_reference
# (tests/test_answers.py). Imported last: it imports this module's tables.
try:
    from processor._answers import (  # type: ignore[import-not-found, unused-ignore]
        result_bytes as _compiled_result_bytes,
    )
except ImportError:  # pragma: no cover - LOYALTY_NO_EXTENSIONS=1
    _compiled_result_bytes = None
COMPILED_RESULTS: Final = _compiled_result_bytes is not None
"""Whether results are written by processor._answers."""

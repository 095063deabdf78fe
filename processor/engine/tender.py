"""The stored-value engine: activation, reloads, redemptions, holds, cash outs, merges.

Every function here is deterministic and pure apart from the state and result
it is handed: it mutates the ``AccountState`` (a copy the caller owns) and
appends to the ``Result``. Each operation sets ``result.tender`` to the decision
the caller should see, and refuses by raising ``Declined`` after setting it;
the caller then discards the state copy and the postings. Every check of an
operation runs before the first posting, so a declined operation posts nothing.

Semantics held throughout:

- Amounts in requests are minor units of the request's currency. A currency
  other than the program's is refused (``CURRENCY_NOT_ALLOWED``) unless the
  program allows foreign currency, in which case it is converted with the
  request's exchange rate (``EXCHANGE_RATE_REQUIRED`` when there is none).
  Postings, balances and a decision's ``approved_amount`` and ``balance`` are
  in the program's currency; a decision's ``requested`` is the amount as sent.
- The available balance is the balance less the value held by
  pre-authorizations less the program's minimum balance.
- A "use" of an account is a debit that takes value out of it: a redemption,
  a basket paid with stored value, a capture and a cash out. Each counts one
  use and its amount towards the day's redemption value. A pre-authorization
  is checked against the limits as if it were a use, so a hold that could not
  be captured today is refused at once, but it counts nothing: its capture
  does. Activations, reloads, reversals and merges are not uses. The daily
  counters restart on the first request of a later business day; a request
  dated before the counters' day counts in the current day, the stricter
  reading. A reversal does not give a use back.
- An expired account keeps its balance (the manual expires the account, not
  the value) but accepts nothing but a balance inquiry; its holds are released.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, NoReturn

from processor import calendar, money
from processor.engine.types import (
    AccountState,
    Declined,
    Hold,
    Posting,
    Purchase,
    RequestBase,
    Result,
    TenderAccount,
    TenderDecision,
    TenderRequest,
    TraceEntry,
)
from processor.program.tender import TenderProgram

BALANCE: Final[Literal["tender"]] = "tender"
"""The name of the stored-value balance in postings and ``Result.balances``."""

_STATUS_REASONS = {
    "inactive": "ACCOUNT_INACTIVE",
    "expired": "ACCOUNT_EXPIRED",
    "closed": "ACCOUNT_CLOSED",
}


# --------------------------------------------------------------------------- entry points


def apply_tender(
    program: TenderProgram,
    state: AccountState,
    request: TenderRequest,
    result: Result,
    version: int,
) -> None:
    """Apply one stored-value operation (every op but ``merge``) to the card's tender account.

    A balance inquiry is answered whatever the program's dates or the card's
    presence, because it moves no value; its decision carries the account's
    status as reason when the account is not active. Every other operation
    needs the program in effect (``PROGRAM_INACTIVE``) and, when the program
    requires the card, the card present (``CARD_REQUIRED``). Account expiry is
    applied first, so an account past its expiry day is refused as expired.
    """
    if request.op == "balance":
        _answer_balance(program, state, request, result, version)
        return
    if request.op == "merge":
        detail = "a merge needs both accounts and is applied by merge_tender"
        _decline(result, request.op, request.amount, state.tender, "UNSUPPORTED_OPERATION", detail)
    _admit(program, request, result, state.tender, request.op, request.amount)
    expire_tender(program, state, request.day, result, version)
    if request.op == "activate":
        _activate(program, state, request, result, version)
        return
    account = _active_account(state, request.op, request.amount, result)
    expired_holds = release_expired_holds(account, request.day)
    _roll_usage(account, request.day)
    _OPERATIONS[request.op](program, account, request, result, version, expired_holds)


def debit_basket(
    program: TenderProgram,
    state: AccountState,
    purchase: Purchase,
    result: Result,
    version: int,
) -> int:
    """Pay part of a sale basket with stored value; returns the amount debited in program units.

    The basket's ``stored_value`` (in the basket's currency) is redeemed with
    the same checks as a redemption, partial approval included; a basket that
    pays nothing with stored value touches nothing and returns 0.
    """
    if purchase.stored_value == 0:
        return 0
    op = "redeem"
    _admit(program, purchase, result, state.tender, op, purchase.stored_value)
    expire_tender(program, state, purchase.day, result, version)
    account = _active_account(state, op, purchase.stored_value, result)
    release_expired_holds(account, purchase.day)
    _roll_usage(account, purchase.day)
    sent = _Sent(op, purchase.stored_value, purchase.currency, purchase.exchange_rate)
    amount = _positive_amount(program, account, sent, result)
    return _debit(program, account, sent, amount, purchase, result, version)


def credit_back(
    program: TenderProgram,
    state: AccountState,
    amount: int,
    request: RequestBase,
    result: Result,
    version: int,
    kind: str,
) -> None:
    """Put debited value back on the account: a returned or voided redemption.

    ``amount`` is in program units and ``kind`` names the posting (and the
    decision's op), usually ``credit_reversal``. Needs the program's
    ``credit_reversal`` (``REVERSAL_NOT_ALLOWED``), an active account and room
    under ``max_balance`` (``MAX_BALANCE_EXCEEDED``).
    """
    account = _reversal_account(program, state, amount, request, result, version, kind)
    if not program.credit_reversal:
        detail = "the program does not allow credit reversals"
        _decline(result, kind, amount, account, "REVERSAL_NOT_ALLOWED", detail)
    _check_ceiling(program, account, amount, kind, amount, result)
    account.balance += amount
    _post(result, program, version, kind, amount, request.day)
    _approve(result, kind, amount, amount, account)


def debit_back(
    program: TenderProgram,
    state: AccountState,
    amount: int,
    request: RequestBase,
    result: Result,
    version: int,
) -> None:
    """Take loaded value out again: a voided activation or reload.

    ``amount`` is in program units. Needs the program's ``debit_reversal``
    (``REVERSAL_NOT_ALLOWED``) and an active account whose available balance
    still covers the amount (``INSUFFICIENT_BALANCE``): value already spent
    cannot be taken back. The book value falls with the value taken out, never
    below zero; the account stays active.
    """
    op = "debit_reversal"
    account = _reversal_account(program, state, amount, request, result, version, op)
    if not program.debit_reversal:
        detail = "the program does not allow debit reversals"
        _decline(result, op, amount, account, "REVERSAL_NOT_ALLOWED", detail)
    available = _available(program, account)
    if amount > available:
        detail = f"{_shown(program, amount)} asked, {_shown(program, available)} available"
        _decline(result, op, amount, account, "INSUFFICIENT_BALANCE", detail)
    account.balance -= amount
    account.book_value = max(0, account.book_value - amount)
    _post(result, program, version, op, -amount, request.day)
    _approve(result, op, amount, amount, account)


def release_hold(state: AccountState, hold_id: str) -> None:
    """Release a pre-authorization (the void of a preauth).

    A hold that is no longer there (captured, released or expired) leaves
    nothing to release, so its absence is not an error: a captured hold is
    undone by ``credit_back`` instead.
    """
    if state.tender is not None:
        state.tender.holds.pop(hold_id, None)


def merge_tender(
    program: TenderProgram,
    source: AccountState,
    target: AccountState,
    request: TenderRequest,
    result: Result,
    version: int,
) -> None:
    """Move the whole balance of ``source`` onto ``target`` and close ``source``.

    Needs ``card_merge_permitted`` (``MERGE_NOT_ALLOWED``), two distinct
    (``SAME_ACCOUNT``) active accounts, no pending pre-authorization on the
    source (``PREAUTHORIZATION_PENDING``: its hold could no longer be captured)
    and room under the target's ``max_balance``. The book value moves with the
    balance; the target keeps its own expiry and usage counters. The
    decision's and ``result.balances``' balance is the surviving card's.
    """
    op = "merge"
    _admit(program, request, result, source.tender, op, request.amount)
    if not program.card_merge_permitted:
        detail = "the program does not permit card merges"
        _decline(result, op, request.amount, source.tender, "MERGE_NOT_ALLOWED", detail)
    if source.account == target.account:
        detail = "a card cannot be merged into itself"
        _decline(result, op, request.amount, source.tender, "SAME_ACCOUNT", detail)
    for state in (source, target):
        expire_tender(program, state, request.day, result, version)
    giver = _active_account(source, op, request.amount, result)
    taker = _active_account(target, op, request.amount, result)
    for account in (giver, taker):
        release_expired_holds(account, request.day)
    if giver.holds:
        detail = f"{len(giver.holds)} pre-authorization(s) still hold value on the source card"
        _decline(result, op, request.amount, giver, "PREAUTHORIZATION_PENDING", detail)
    _check_ceiling(program, taker, giver.balance, op, request.amount, result)
    _move(program, giver, taker, request, result, version)


def expire_tender(
    program: TenderProgram, state: AccountState, day: int, result: Result, version: int
) -> None:
    """Expire the tender account if ``day`` is on or after its expiry day.

    The expiry day is the first day the account can no longer be used. The
    balance stays on the expired account (no posting); its holds are released
    and the expiry is traced. ``version`` is accepted so that a job can call
    this beside the other entry points; expiry itself posts nothing.
    """
    account = state.tender
    if account is None or account.status != "active" or account.expires_day is None:
        return
    if day < account.expires_day:
        return
    account.status = "expired"
    account.holds.clear()
    reason = f"expired on {calendar.format_day(account.expires_day)} (program version {version})"
    result.trace.append(TraceEntry(program.id, "account_expiry", True, 0, reason))


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class _Sent:
    """An amount as a request sent it: the op, amount, currency and exchange rate."""

    op: str
    amount: int
    currency: str
    rate: str | None


def _sent(request: TenderRequest) -> _Sent:
    return _Sent(request.op, request.amount, request.currency, request.exchange_rate)


_Operation = Callable[[TenderProgram, TenderAccount, TenderRequest, Result, int, set[str]], None]


def _activate(
    program: TenderProgram,
    state: AccountState,
    request: TenderRequest,
    result: Result,
    version: int,
) -> None:
    """Activate the account with the amount sent plus the program's initial balance.

    The resulting balance must reach ``min_activation_amount``
    (``BELOW_MINIMUM_ACTIVATION``) and ``min_balance`` (``BELOW_MINIMUM_BALANCE``)
    and stay within ``max_balance``. The book value starts as the amount paid
    plus the initial book value; the expiry counts from the activation day.
    """
    initial = program.initial_balance_minor()
    book = program.initial_book_value_minor()
    _activate_with(program, state, request, result, version, initial, book)


def activate_opening(
    program: TenderProgram,
    state: AccountState,
    request: TenderRequest,
    result: Result,
    version: int,
) -> None:
    """Activate the account with a card's opening balance (a card import's, or a batch
    activation's): the amount is the whole balance the card starts with, so the program's
    initial balance is not added (a batch activation queued it already when none was
    given), under the same checks as any activation (the program in effect, its minimum
    and maximum)."""
    _admit(program, request, result, state.tender, request.op, request.amount)
    expire_tender(program, state, request.day, result, version)
    _activate_with(program, state, request, result, version, 0, 0)


def _activate_with(
    program: TenderProgram,
    state: AccountState,
    request: TenderRequest,
    result: Result,
    version: int,
    initial: int,
    initial_book: int,
) -> None:
    account = state.tender if state.tender is not None else TenderAccount()
    if account.status != "inactive":
        reason = "ALREADY_ACTIVE" if account.status == "active" else _STATUS_REASONS[account.status]
        _decline(result, request.op, request.amount, account, reason, "cannot activate again")
    sent = _sent(request)
    amount = _non_negative_amount(program, account, sent, result)
    _check_activation_floor(program, account, sent, amount + initial, result)
    _check_ceiling(program, account, amount + initial, sent.op, sent.amount, result)
    _open(program, account, request.day)
    state.tender = account
    _load(program, account, amount, "activate", request.day, result, version)
    _load(program, account, initial, "initial", request.day, result, version)
    account.book_value = amount + initial_book
    _approve(result, sent.op, sent.amount, amount + initial, account)


def _check_activation_floor(
    program: TenderProgram, account: TenderAccount, sent: _Sent, opening: int, result: Result
) -> None:
    activation_min = program.minor(program.min_activation_amount)
    if opening < activation_min:
        detail = (
            f"opening balance {_shown(program, opening)} is below the activation minimum "
            f"{_shown(program, activation_min)}"
        )
        _decline(result, sent.op, sent.amount, account, "BELOW_MINIMUM_ACTIVATION", detail)
    balance_min = program.minor(program.min_balance)
    if opening < balance_min:
        detail = (
            f"opening balance {_shown(program, opening)} is below the minimum balance "
            f"{_shown(program, balance_min)}"
        )
        _decline(result, sent.op, sent.amount, account, "BELOW_MINIMUM_BALANCE", detail)


def _open(program: TenderProgram, account: TenderAccount, day: int) -> None:
    account.status = "active"
    account.activated_day = day
    account.usage_day = day
    expiry = program.account_expiry
    account.expires_day = None if expiry is None else expiry.after(day)


def _load(
    program: TenderProgram,
    account: TenderAccount,
    amount: int,
    kind: str,
    day: int,
    result: Result,
    version: int,
) -> None:
    if amount > 0:
        account.balance += amount
        _post(result, program, version, kind, amount, day)


def _reload(
    program: TenderProgram,
    account: TenderAccount,
    request: TenderRequest,
    result: Result,
    version: int,
    expired_holds: set[str],
) -> None:
    """Add value; needs ``allow_reloads`` and room under ``max_balance``."""
    sent = _sent(request)
    if not program.allow_reloads:
        detail = "the program does not allow reloads"
        _decline(result, sent.op, sent.amount, account, "RELOADS_NOT_ALLOWED", detail)
    amount = _positive_amount(program, account, sent, result)
    _check_ceiling(program, account, amount, sent.op, sent.amount, result)
    _load(program, account, amount, "reload", request.day, result, version)
    account.book_value += amount
    _approve(result, sent.op, sent.amount, amount, account)


def _redeem(
    program: TenderProgram,
    account: TenderAccount,
    request: TenderRequest,
    result: Result,
    version: int,
    expired_holds: set[str],
) -> None:
    """Spend value: partial approval of the available balance when the program allows it."""
    sent = _sent(request)
    amount = _positive_amount(program, account, sent, result)
    _debit(program, account, sent, amount, request, result, version)


def _debit(
    program: TenderProgram,
    account: TenderAccount,
    sent: _Sent,
    amount: int,
    request: RequestBase,
    result: Result,
    version: int,
) -> int:
    approved = _approvable(program, account, sent, amount, result)
    _check_usage(program, account, sent, approved, result)
    _count_use(account, approved)
    account.balance -= approved
    _post(result, program, version, "redeem", -approved, request.day)
    _approve(result, sent.op, sent.amount, approved, account)
    return approved


def _approvable(
    program: TenderProgram, account: TenderAccount, sent: _Sent, amount: int, result: Result
) -> int:
    """The amount a redemption or hold may take: all of it, or the available balance.

    Above the available balance, ``allow_partial_redemption`` approves what is
    available (when anything is); otherwise the request is refused with
    ``INSUFFICIENT_BALANCE``.
    """
    available = _available(program, account)
    if amount <= available:
        return amount
    if program.allow_partial_redemption and available > 0:
        reason = (
            f"approved {_shown(program, available)} of {_shown(program, amount)}: "
            "the available balance"
        )
        result.trace.append(TraceEntry(program.id, "allow_partial_redemption", True, 0, reason))
        return available
    detail = f"{_shown(program, amount)} asked, {_shown(program, max(available, 0))} available"
    _decline(result, sent.op, sent.amount, account, "INSUFFICIENT_BALANCE", detail)


def _preauth(
    program: TenderProgram,
    account: TenderAccount,
    request: TenderRequest,
    result: Result,
    version: int,
    expired_holds: set[str],
) -> None:
    """Hold value under the request's id for a later capture; needs ``allow_preauthorizations``.

    The hold may be partial like a redemption and expires after
    ``preauthorization_expiry`` (the expiry day is the first day it is gone).
    """
    sent = _sent(request)
    if not program.allow_preauthorizations:
        detail = "the program does not allow pre-authorizations"
        _decline(result, sent.op, sent.amount, account, "PREAUTHORIZATIONS_NOT_ALLOWED", detail)
    if request.id in account.holds:
        detail = f"a pre-authorization {request.id!r} already exists"
        _decline(result, sent.op, sent.amount, account, "DUPLICATE_PREAUTHORIZATION", detail)
    amount = _positive_amount(program, account, sent, result)
    approved = _approvable(program, account, sent, amount, result)
    _check_usage(program, account, sent, approved, result)
    expiry = program.preauthorization_expiry
    expires_day = None if expiry is None else expiry.after(request.day)
    account.holds[request.id] = Hold(approved, request.day, expires_day)
    _approve(result, sent.op, sent.amount, approved, account)


def _capture(
    program: TenderProgram,
    account: TenderAccount,
    request: TenderRequest,
    result: Result,
    version: int,
    expired_holds: set[str],
) -> None:
    """Take held value: at most the hold (amount 0 takes all of it); the rest is released."""
    sent = _sent(request)
    hold = _hold(account, request, result, expired_holds)
    amount = _non_negative_amount(program, account, sent, result) or hold.amount
    if amount > hold.amount:
        detail = f"{_shown(program, amount)} asked, {_shown(program, hold.amount)} held"
        _decline(result, sent.op, sent.amount, account, "AMOUNT_EXCEEDS_PREAUTHORIZATION", detail)
    _check_usage(program, account, sent, amount, result)
    del account.holds[request.reference_id]
    _count_use(account, amount)
    account.balance -= amount
    _post(result, program, version, "capture", -amount, request.day)
    _approve(result, sent.op, sent.amount, amount, account)


def _release(
    program: TenderProgram,
    account: TenderAccount,
    request: TenderRequest,
    result: Result,
    version: int,
    expired_holds: set[str],
) -> None:
    """Release a hold without taking anything; the decision's amount is the value released.

    Releasing needs no option: a hold placed while the program allowed
    pre-authorizations can always be given back.
    """
    hold = _hold(account, request, result, expired_holds)
    del account.holds[request.reference_id]
    _approve(result, request.op, request.amount, hold.amount, account)


def _hold(
    account: TenderAccount, request: TenderRequest, result: Result, expired_holds: set[str]
) -> Hold:
    reference = request.reference_id
    if reference in expired_holds:
        detail = f"pre-authorization {reference!r} has expired"
        _decline(result, request.op, request.amount, account, "PREAUTHORIZATION_EXPIRED", detail)
    hold = account.holds.get(reference)
    if hold is None:
        detail = f"no pre-authorization {reference!r} on this account"
        _decline(result, request.op, request.amount, account, "UNKNOWN_PREAUTHORIZATION", detail)
    return hold


def _cash_out(
    program: TenderProgram,
    account: TenderAccount,
    request: TenderRequest,
    result: Result,
    version: int,
    expired_holds: set[str],
) -> None:
    """Pay value out in cash; needs ``allow_cash_outs``, at most ``cash_out_limit``.

    Amount 0 asks for the whole available balance. Cash is paid exactly, so a
    cash out is never partially approved: above the available balance it is
    refused with ``INSUFFICIENT_BALANCE``.
    """
    sent = _sent(request)
    if not program.allow_cash_outs:
        detail = "the program does not allow cash outs"
        _decline(result, sent.op, sent.amount, account, "CASH_OUTS_NOT_ALLOWED", detail)
    available = _available(program, account)
    amount = _non_negative_amount(program, account, sent, result) or available
    if amount <= 0 or amount > available:
        detail = f"{_shown(program, amount)} asked, {_shown(program, max(available, 0))} available"
        _decline(result, sent.op, sent.amount, account, "INSUFFICIENT_BALANCE", detail)
    limit = program.minor_or_none(program.cash_out_limit)
    if limit is not None and amount > limit:
        detail = f"{_shown(program, amount)} asked, at most {_shown(program, limit)} per cash out"
        _decline(result, sent.op, sent.amount, account, "LIMIT_EXCEEDED", detail)
    _check_usage(program, account, sent, amount, result)
    _count_use(account, amount)
    account.balance -= amount
    _post(result, program, version, "cash_out", -amount, request.day)
    _approve(result, sent.op, sent.amount, amount, account)


_OPERATIONS: dict[str, _Operation] = {
    "reload": _reload,
    "redeem": _redeem,
    "preauth": _preauth,
    "capture": _capture,
    "release": _release,
    "cash_out": _cash_out,
}


# --------------------------------------------------------------------------- inquiries and merges


def _answer_balance(
    program: TenderProgram,
    state: AccountState,
    request: TenderRequest,
    result: Result,
    version: int,
) -> None:
    """Answer with the balance, the available amount and, when not active, the status."""
    expire_tender(program, state, request.day, result, version)
    account = state.tender
    if account is None:
        result.tender = TenderDecision(request.op, True, 0, 0, 0, "ACCOUNT_INACTIVE")
        result.balances[BALANCE] = 0
        return
    if account.status == "active":
        release_expired_holds(account, request.day)
    available = max(_available(program, account), 0) if account.status == "active" else 0
    reason = _STATUS_REASONS.get(account.status, "")
    result.tender = TenderDecision(request.op, True, 0, available, account.balance, reason)
    result.balances[BALANCE] = account.balance


def _move(
    program: TenderProgram,
    giver: TenderAccount,
    taker: TenderAccount,
    request: TenderRequest,
    result: Result,
    version: int,
) -> None:
    moved, day = giver.balance, request.day
    if moved > 0:
        _post(result, program, version, "merge_out", -moved, day)
        _post(result, program, version, "merge_in", moved, day)
    taker.balance += moved
    taker.book_value += giver.book_value
    giver.balance = 0
    giver.book_value = 0
    giver.status = "closed"
    _approve(result, "merge", request.amount, moved, taker)


# --------------------------------------------------------------------------- checks


def _admit(
    program: TenderProgram,
    request: RequestBase,
    result: Result,
    account: TenderAccount | None,
    op: str,
    requested: int,
) -> None:
    """The program must be in effect and, if it requires the card, the card present."""
    if not program.in_effect(request.day):
        detail = f"program {program.id!r} is not in effect on {calendar.format_day(request.day)}"
        _decline(result, op, requested, account, "PROGRAM_INACTIVE", detail)
    if program.card_required and not request.card_present:
        detail = "the program requires the card to be present"
        _decline(result, op, requested, account, "CARD_REQUIRED", detail)


def _active_account(state: AccountState, op: str, requested: int, result: Result) -> TenderAccount:
    account = state.tender
    if account is None:
        _decline(result, op, requested, None, "ACCOUNT_INACTIVE", "no tender account")
    if account.status != "active":
        reason = _STATUS_REASONS[account.status]
        _decline(result, op, requested, account, reason, f"the tender account is {account.status}")
    return account


def _reversal_account(
    program: TenderProgram,
    state: AccountState,
    amount: int,
    request: RequestBase,
    result: Result,
    version: int,
    op: str,
) -> TenderAccount:
    """The gate every reversal passes: program, card, expiry, active account, positive amount."""
    _admit(program, request, result, state.tender, op, amount)
    expire_tender(program, state, request.day, result, version)
    account = _active_account(state, op, amount, result)
    release_expired_holds(account, request.day)
    if amount <= 0:
        _decline(result, op, amount, account, "INVALID_AMOUNT", "must be greater than 0")
    return account


def _amount(program: TenderProgram, account: TenderAccount, sent: _Sent, result: Result) -> int:
    """The amount sent, in minor units of the program's currency."""
    if sent.currency.upper() == program.currency.upper():
        return sent.amount
    if not program.allow_foreign_currency or not money.is_currency(sent.currency):
        detail = f"{sent.currency} is not accepted by a program in {program.currency}"
        _decline(result, sent.op, sent.amount, account, "CURRENCY_NOT_ALLOWED", detail)
    if sent.rate is None:
        detail = f"converting {sent.currency} to {program.currency} needs an exchange rate"
        _decline(result, sent.op, sent.amount, account, "EXCHANGE_RATE_REQUIRED", detail)
    try:
        return money.convert(sent.amount, sent.currency, sent.rate, program.currency)
    except ValueError as error:
        _decline(result, sent.op, sent.amount, account, "INVALID_EXCHANGE_RATE", str(error))


def _non_negative_amount(
    program: TenderProgram, account: TenderAccount, sent: _Sent, result: Result
) -> int:
    """The amount sent in program units, for operations where 0 means "everything"."""
    if sent.amount < 0:
        _decline(result, sent.op, sent.amount, account, "INVALID_AMOUNT", "must not be negative")
    return _amount(program, account, sent, result)


def _positive_amount(
    program: TenderProgram, account: TenderAccount, sent: _Sent, result: Result
) -> int:
    if sent.amount <= 0:
        _decline(result, sent.op, sent.amount, account, "INVALID_AMOUNT", "must be greater than 0")
    amount = _amount(program, account, sent, result)
    if amount <= 0:
        shown = money.format_units(sent.amount, money.currency_exponent(sent.currency))
        detail = f"{shown} {sent.currency} converts to nothing in {program.currency}"
        _decline(result, sent.op, sent.amount, account, "INVALID_AMOUNT", detail)
    return amount


def _check_ceiling(
    program: TenderProgram,
    account: TenderAccount,
    amount: int,
    op: str,
    requested: int,
    result: Result,
) -> None:
    ceiling = program.minor_or_none(program.max_balance)
    if ceiling is not None and account.balance + amount > ceiling:
        detail = (
            f"balance {_shown(program, account.balance)} plus {_shown(program, amount)} is "
            f"above the maximum {_shown(program, ceiling)}"
        )
        _decline(result, op, requested, account, "MAX_BALANCE_EXCEEDED", detail)


def _check_usage(
    program: TenderProgram, account: TenderAccount, sent: _Sent, amount: int, result: Result
) -> None:
    """Refuse a debit of ``amount`` that would pass a daily or lifetime limit."""
    value_max = program.minor_or_none(program.max_redemption_value_per_day)
    problems = []
    if value_max is not None and account.day_redeemed + amount > value_max:
        redeemed, most = _shown(program, account.day_redeemed), _shown(program, value_max)
        problems.append(f"{redeemed} of {most} redeemed today")
    if program.max_daily_uses is not None and account.day_uses >= program.max_daily_uses:
        problems.append(f"{account.day_uses} of {program.max_daily_uses} uses today")
    lifetime_max = program.max_lifetime_uses
    if lifetime_max is not None and account.lifetime_uses >= lifetime_max:
        problems.append(f"{account.lifetime_uses} of {lifetime_max} uses in its lifetime")
    if problems:
        _decline(result, sent.op, sent.amount, account, "LIMIT_EXCEEDED", "; ".join(problems))


# --------------------------------------------------------------------------- bookkeeping


def _available(program: TenderProgram, account: TenderAccount) -> int:
    """Balance less held value less the minimum balance (negative when holds exceed it)."""
    return account.balance - account.held - program.minor(program.min_balance)


def release_expired_holds(account: TenderAccount, day: int) -> set[str]:
    """Drop holds whose expiry day has come; returns their ids so a capture can say why."""
    expired = {
        hold_id
        for hold_id, hold in account.holds.items()
        if hold.expires_day is not None and day >= hold.expires_day
    }
    for hold_id in expired:
        del account.holds[hold_id]
    return expired


def _roll_usage(account: TenderAccount, day: int) -> None:
    if day > account.usage_day:
        account.usage_day = day
        account.day_redeemed = 0
        account.day_uses = 0


def _count_use(account: TenderAccount, amount: int) -> None:
    account.day_uses += 1
    account.lifetime_uses += 1
    account.day_redeemed += amount


def _post(
    result: Result, program: TenderProgram, version: int, kind: str, amount: int, day: int
) -> None:
    result.postings.append(Posting(program.id, version, BALANCE, kind, amount, day=day))


def _approve(
    result: Result, op: str, requested: int, approved: int, account: TenderAccount
) -> None:
    result.tender = TenderDecision(op, True, requested, approved, account.balance)
    result.balances[BALANCE] = account.balance


def _decline(
    result: Result,
    op: str,
    requested: int,
    account: TenderAccount | None,
    reason: str,
    detail: str,
) -> NoReturn:
    """Tell the caller why, with the balance as it stands, and refuse the request."""
    balance = 0 if account is None else account.balance
    result.tender = TenderDecision(op, False, requested, 0, balance, reason)
    result.balances[BALANCE] = balance
    raise Declined(reason, detail)


def _shown(program: TenderProgram, amount: int) -> str:
    """An amount in minor units as a decline's text shows it: in the program's currency,
    with its decimals (5000 in USD -> "50.00"), as the rest of the answer is read."""
    return money.format_units(amount, money.currency_exponent(program.currency))

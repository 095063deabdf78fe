"""The reference engine: the readable definition of what every request does.

``evaluate`` takes a compiled program, the account states it may touch, a batch
of requests and the receipts of earlier postings, and returns one ``Result``
per request plus the new states and receipts. It is a pure function: the
inputs are never modified, and the same inputs give the same outputs (award
codes included), which is what lets the Cython engine be checked against it
result for result.

Requests for one account are applied in the order given. Each request works
on a copy of its account; when it is declined the copy is dropped, so a
declined request changes nothing, and everything in one purchase basket
(stored value, award redemptions, points) succeeds or fails together.

The path of a purchase:
1. the card must be active; the lines must be well formed;
2. stored value paying for the basket is debited (tender program, PIN rules);
3. coupons and certificates presented are redeemed;
4. each loyalty program in effect ages the account, issues points by its issue
   rules, runs its award rules, then its movement rules.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from processor import money
from processor.cards import pin_problem
from processor.engine import awards, loyalty, tender
from processor.engine.plan import CompiledProgram, LoyaltyPlan
from processor.engine.types import (
    AccountState,
    AwardRedemption,
    Declined,
    Engagement,
    Line,
    LineEarning,
    LoyaltyAccount,
    Purchase,
    Receipt,
    Request,
    RequestBase,
    Result,
    Return,
    TenderRequest,
    TraceEntry,
    Void,
)
from processor.errors import mask_card, present
from processor.limits import LINES_MAX, REDEEM_CODES_MAX

DEBIT_OPS = ("redeem", "preauth", "capture", "cash_out", "merge")

_ReceiptLookup = Callable[[str], "Receipt | None"]


@dataclass(slots=True)
class BatchOutcome:
    """What a batch did: results in request order, changed accounts, new receipts."""

    results: list[Result]
    accounts: dict[str, AccountState]
    receipts: dict[str, Receipt]


class ReferenceEngine:
    """The pure-Python engine."""

    name = "python"

    def evaluate(
        self,
        program: CompiledProgram,
        accounts: Mapping[str, AccountState],
        requests: Sequence[Request],
        receipts: Mapping[str, Receipt] | None = None,
    ) -> BatchOutcome:
        return evaluate(program, accounts, requests, receipts or {})


def evaluate(
    program: CompiledProgram,
    accounts: Mapping[str, AccountState],
    requests: Sequence[Request],
    receipts: Mapping[str, Receipt],
) -> BatchOutcome:
    batch = Batch(program, accounts, receipts)
    results = [batch.apply(request) for request in requests]
    return BatchOutcome(results, batch.states, batch.new_receipts)


class Batch:
    """Working copies of the accounts and receipts one batch touches."""

    def __init__(
        self,
        program: CompiledProgram,
        accounts: Mapping[str, AccountState],
        receipts: Mapping[str, Receipt],
    ) -> None:
        self.program = program
        self.accounts = accounts
        self.receipts = receipts
        self.states: dict[str, AccountState] = {}
        self.new_receipts: dict[str, Receipt] = {}

    def state(self, account: str) -> AccountState:
        if account not in self.states:
            known = self.accounts.get(account)
            self.states[account] = copy.deepcopy(known) if known else AccountState(account)
        return self.states[account]

    def receipt(self, request_id: str) -> Receipt | None:
        if request_id in self.new_receipts:
            return self.new_receipts[request_id]
        known = self.receipts.get(request_id)
        return copy.deepcopy(known) if known is not None else None

    def apply(self, request: Request) -> Result:
        result = Result(request.id, request.account)
        touched = [request.account]
        if isinstance(request, TenderRequest) and request.op == "merge":
            touched.append(request.target_account)
        working = {account: copy.deepcopy(self.state(account)) for account in touched}
        receipts: dict[str, Receipt] = {}
        try:
            _apply(self.program, working, request, self.receipt, receipts, result)
        except Declined as declined:
            result.status, result.reason = "declined", declined.reason
            result.postings, result.awards, result.moves, result.redeemed = [], [], [], []
            if declined.detail:
                result.trace.append(TraceEntry("", "", False, 0, declined.detail))
            return result
        self.states.update(working)
        self.new_receipts.update(receipts)
        return result


def _apply(
    program: CompiledProgram,
    states: dict[str, AccountState],
    request: Request,
    find_receipt: _ReceiptLookup,
    receipts: dict[str, Receipt],
    result: Result,
) -> None:
    state = states[request.account]
    if isinstance(request, Purchase):
        receipts[request.id] = _purchase(program, state, request, result)
    elif isinstance(request, Engagement):
        receipts[request.id] = _engagement(program, state, request, result)
    elif isinstance(request, Return):
        receipt = _original(find_receipt, request.original_id, request)
        record = _return(program, state, receipt, request, _returned(receipt, request), result)
        receipts[receipt.id] = receipt
        receipts[request.id] = record
    elif isinstance(request, Void):
        receipt = _original(find_receipt, request.original_id, request)
        original = None
        if receipt.kind == "return":
            original = _original(find_receipt, receipt.original_id, request)
            receipts[original.id] = original
        _void(program, state, receipt, original, request, result)
        receipts[receipt.id] = receipt
    elif isinstance(request, TenderRequest):
        receipts[request.id] = _tender(program, states, request, result)
    elif isinstance(request, AwardRedemption):
        receipts[request.id] = _award_redemption(program, state, request, result)
    else:
        raise Declined("INVALID_ARGUMENT", f"unknown request type {type(request).__name__}")


# --------------------------------------------------------------------------- purchases


def _require_active_card(state: AccountState) -> None:
    if state.status != "active":
        raise Declined("CARD_INACTIVE", f"card {mask_card(state.account)} is {state.status}")


def _require_pin(program: CompiledProgram, request: RequestBase) -> None:
    reason = pin_problem(program.card, request.card_present, request.pin_verified)
    if reason:
        raise Declined(reason, "this card needs a verified PIN for this operation")


def _check_lines(purchase: Purchase) -> None:
    if len(purchase.lines) > LINES_MAX:
        raise Declined("TOO_MANY_LINES", f"a purchase may carry at most {LINES_MAX} lines")
    if len(purchase.redeem_codes) > REDEEM_CODES_MAX:
        raise Declined("TOO_MANY_CODES", f"at most {REDEEM_CODES_MAX} codes per purchase")
    numbers = set()
    for line in purchase.lines:
        if line.amount < 0 or line.quantity <= 0:
            raise Declined(
                "INVALID_AMOUNT", f"line {line.number} has a negative amount or a quantity below 1"
            )
        if line.number in numbers:
            raise Declined("INVALID_ARGUMENT", f"line number {line.number} appears twice")
        numbers.add(line.number)
    if purchase.stored_value < 0:
        raise Declined("INVALID_AMOUNT", "stored_value must not be negative")


def _purchase(
    program: CompiledProgram, state: AccountState, purchase: Purchase, result: Result
) -> Receipt:
    _require_active_card(state)
    _check_lines(purchase)
    receipt = Receipt(purchase.id, purchase.account, "purchase", purchase.day, program.version)
    if purchase.stored_value:
        if program.tender is None:
            raise Declined("NO_TENDER_PROGRAM", "this card carries no tender program")
        _require_pin(program, purchase)
        debited = tender.debit_basket(program.tender, state, purchase, result, program.version)
        receipt.tender_amount = -debited
    for code in purchase.redeem_codes:
        _require_pin(program, purchase)
        awards.redeem_code(
            program.award_programs,
            state,
            purchase,
            code,
            program.directory,
            result,
            program.version,
        )
        receipt.awards.append(code)
    for plan in program.loyalty:
        account = _loyalty_account(plan, state, purchase, result)
        if account is None:
            continue
        lines = _base_lines(plan, purchase, result)
        if lines is None:
            continue
        loyalty.age(plan, account, purchase.day, result, program.version)
        loyalty.earn_purchase(
            program, plan, state, account, purchase, lines, receipt, result, program.version
        )
        _after_activity(program, plan, state, account, purchase, result)
    return receipt


def _loyalty_account(
    plan: LoyaltyPlan, state: AccountState, request: RequestBase, result: Result
) -> LoyaltyAccount | None:
    """The account a request earns in, or None with the reason traced."""
    program = plan.program
    reason = ""
    if not program.in_effect(request.day):
        reason = "program not in effect"
    elif program.card_required and not request.card_present:
        reason = "card required"
    account = None if reason else loyalty.account_for(plan, state, request.day)
    if account is None and not reason:
        reason = "card has no account in this program"
    if reason:
        result.trace.append(TraceEntry(program.id, "", False, 0, reason))
    return account


def _base_lines(plan: LoyaltyPlan, purchase: Purchase, result: Result) -> list[Line] | None:
    """The purchase lines in the program's currency, or None (traced) when they cannot be."""
    program = plan.program
    if purchase.currency.upper() == program.currency.upper():
        return list(purchase.lines)
    reason = ""
    if not program.allow_foreign_currency:
        reason = f"currency {purchase.currency} not allowed"
    elif purchase.exchange_rate is None:
        reason = "exchange rate missing"
    if reason:
        result.trace.append(TraceEntry(program.id, "", False, 0, reason))
        return None
    return [
        replace(
            line,
            amount=money.convert(
                line.amount, purchase.currency, purchase.exchange_rate, program.currency
            ),
        )
        for line in purchase.lines
    ]


def _after_activity(
    program: CompiledProgram,
    plan: LoyaltyPlan,
    state: AccountState,
    account: LoyaltyAccount,
    request: RequestBase,
    result: Result,
) -> None:
    """What follows any earning: activity dates, award rules, movement rules, balances."""
    account.last_activity_day = request.day
    if plan.award_program is not None:
        awards.touch_activity(plan.award_program, state, request.day)
    loyalty.run_award_rules(program, plan, state, account, request, result, program.version)
    loyalty.run_movement_rules(plan, account, request, result, program.version)
    loyalty.balances(plan, account, request.day, result)


def _engagement(
    program: CompiledProgram, state: AccountState, engagement: Engagement, result: Result
) -> Receipt:
    _require_active_card(state)
    if engagement.count < 1:
        raise Declined("INVALID_AMOUNT", "an engagement counts at least 1")
    receipt = Receipt(
        engagement.id, engagement.account, "engagement", engagement.day, program.version
    )
    for plan in program.loyalty:
        account = _loyalty_account(plan, state, engagement, result)
        if account is None:
            continue
        loyalty.age(plan, account, engagement.day, result, program.version)
        start = len(result.trace)
        loyalty.earn_engagement(program, plan, state, account, engagement, result, program.version)
        for entry in result.trace[start:]:
            if entry.fired and entry.points:
                receipt.basket_points[f"{plan.program.id}/{entry.rule}"] = entry.points
        _after_activity(program, plan, state, account, engagement, result)
    return receipt


# --------------------------------------------------------------------------- returns and voids


def _original(find_receipt: _ReceiptLookup, original_id: str, request: RequestBase) -> Receipt:
    receipt = find_receipt(original_id)
    if receipt is None:
        raise Declined("UNKNOWN_ORIGINAL", f"no posted request {original_id!r}")
    if receipt.account != request.account:
        raise Declined("ACCOUNT_MISMATCH", f"{original_id!r} was posted to another card")
    if receipt.voided:
        raise Declined("ALREADY_VOIDED", f"{original_id!r} was voided")
    return receipt


def _returned(receipt: Receipt, request: Return) -> dict[int, int]:
    """Quantities to return per line: as asked, or everything not yet returned."""
    if receipt.kind != "purchase":
        raise Declined("NOT_RETURNABLE", f"{receipt.id!r} is not a purchase")
    remaining = {line.number: line.quantity - line.returned_quantity for line in receipt.lines}
    if not request.lines:
        wanted = {number: quantity for number, quantity in remaining.items() if quantity}
        if not wanted and receipt.basket_returned:
            raise Declined("ALREADY_RETURNED", f"{receipt.id!r} was returned in full")
        return wanted
    wanted = {}
    for line in request.lines:
        if line.number not in remaining:
            raise Declined("UNKNOWN_LINE", f"{receipt.id!r} has no line {line.number}")
        if (
            line.quantity <= 0
            or line.quantity + wanted.get(line.number, 0) > remaining[line.number]
        ):
            raise Declined(
                "RETURN_EXCEEDS_SALE",
                f"line {line.number} has {remaining[line.number]} left to return",
            )
        wanted[line.number] = wanted.get(line.number, 0) + line.quantity
    return wanted


def _return(
    program: CompiledProgram,
    state: AccountState,
    receipt: Receipt,
    request: RequestBase,
    returned: dict[int, int],
    result: Result,
) -> Receipt:
    """Take back points and refund stored value for the returned quantities; the
    return's own receipt records exactly what was taken, for a void of the return."""
    record = Receipt(
        request.id,
        request.account,
        "return",
        request.day,
        program.version,
        lines=[LineEarning(number, quantity, 0) for number, quantity in returned.items()],
        original_id=receipt.id,
    )
    _take_back_spend(state, receipt, returned, record)
    for plan in program.loyalty:
        account = state.loyalty.get(plan.program.id)
        if account is None:
            continue
        if not plan.program.credit_reversal:
            result.trace.append(
                TraceEntry(plan.program.id, "", False, 0, "credit reversal not allowed")
            )
            continue
        loyalty.age(plan, account, request.day, result, program.version)
        loyalty.return_points(
            plan, account, receipt, returned, request, result, program.version, record
        )
        loyalty.balances(plan, account, request.day, result)
    record.tender_amount = _refund_stored_value(program, state, receipt, returned, request, result)
    for earning in receipt.lines:
        earning.returned_quantity += returned.get(earning.number, 0)
    if all(earning.returned_quantity >= earning.quantity for earning in receipt.lines):
        receipt.basket_returned = True
    return record


def _take_back_spend(
    state: AccountState, receipt: Receipt, returned: dict[int, int], record: Receipt
) -> None:
    """Take back from each loyalty account that counted the sale its share of what is
    returned, whatever the program says of its points (the sale did not happen): in
    proportion to the lines' amounts, and all that is left once every line is returned.
    The return's record keeps what it took from each, for a void of it to give back."""
    if not receipt.spent:
        return
    left = sum(
        line.amount - line.amount * line.returned_quantity // line.quantity
        for line in receipt.lines
    )
    lines = {line.number: line for line in receipt.lines}
    unspent = sum(_amount_returned(lines[number], count) for number, count in returned.items())
    for program_id, spent in receipt.spent.items():
        take = spent if unspent >= left else spent * unspent // left
        if not take:
            continue
        receipt.spent[program_id] = spent - take
        record.spent[program_id] = take
        account = state.loyalty.get(program_id)
        if account is not None:
            loyalty.count_spent(account, -take, receipt.day)


def _amount_returned(earning: LineEarning, quantity: int) -> int:
    """The part of a sold line's amount that returning ``quantity`` more of it gives back:
    proportional, as its points, so partial returns sum to the whole amount."""
    before, after = earning.returned_quantity, earning.returned_quantity + quantity
    due = (
        earning.amount if after >= earning.quantity else earning.amount * after // earning.quantity
    )
    return due - earning.amount * before // earning.quantity


def _refund_stored_value(
    program: CompiledProgram,
    state: AccountState,
    receipt: Receipt,
    returned: dict[int, int],
    request: RequestBase,
    result: Result,
) -> int:
    """Give back stored value up to the value of the returned lines; returns the refund."""
    if receipt.tender_amount >= 0 or program.tender is None:
        return 0
    value = sum(
        earning.amount * returned.get(earning.number, 0) // earning.quantity
        for earning in receipt.lines
    )
    full = all(
        earning.returned_quantity + returned.get(earning.number, 0) >= earning.quantity
        for earning in receipt.lines
    )
    refund = -receipt.tender_amount if full else min(value, -receipt.tender_amount)
    if refund:
        tender.credit_back(
            program.tender, state, refund, request, result, program.version, "credit_reversal"
        )
        receipt.tender_amount += refund
    return refund


def _void(
    program: CompiledProgram,
    state: AccountState,
    receipt: Receipt,
    original: Receipt | None,
    request: Void,
    result: Result,
) -> None:
    """Undo everything an earlier request did that can be undone."""
    if receipt.kind == "purchase":
        returned = {line.number: line.quantity - line.returned_quantity for line in receipt.lines}
        returned = {number: quantity for number, quantity in returned.items() if quantity}
        _return(program, state, receipt, request, returned, result)
        _restore_codes(state, receipt)
    elif receipt.kind == "return":
        original = present(original, "the original of a voided return")
        _void_return(program, state, receipt, original, request, result)
    elif receipt.kind == "engagement":
        _void_engagement(program, state, receipt, request, result)
    elif receipt.kind.startswith("tender:"):
        _void_tender(program, state, receipt, request, result)
    elif receipt.kind == "award":
        _restore_codes(state, receipt)
    receipt.voided = True


def _void_return(
    program: CompiledProgram,
    state: AccountState,
    record: Receipt,
    original: Receipt,
    request: RequestBase,
    result: Result,
) -> None:
    """Put back what a return took: its points (a debit reversal, where the loyalty
    program allows one), its stored-value refund, and the returned quantities."""
    if original.voided:
        raise Declined("ALREADY_VOIDED", f"{original.id!r} was voided")
    for program_id, amount in record.spent.items():
        original.spent[program_id] = original.spent.get(program_id, 0) + amount
        account = state.loyalty.get(program_id)
        if account is not None:
            loyalty.count_spent(account, amount, original.day)
    for plan in program.loyalty:
        account = state.loyalty.get(plan.program.id)
        prefix = f"{plan.program.id}/"
        keys = [key for key in record.points_recovered if key.startswith(prefix)]
        if account is None or not keys:
            continue
        if not plan.program.debit_reversal:
            result.trace.append(
                TraceEntry(plan.program.id, "", False, 0, "debit reversal not allowed")
            )
            continue
        for key in keys:
            loyalty.restore_points(
                plan,
                account,
                key[len(prefix) :],
                record.points_recovered[key],
                original.day,
                request,
                result,
                program.version,
            )
        loyalty.balances(plan, account, request.day, result)
    if record.tender_amount and program.tender is not None:
        tender.debit_back(
            program.tender, state, record.tender_amount, request, result, program.version
        )
        original.tender_amount -= record.tender_amount
    lines = {line.number: line for line in original.lines}
    for taken in record.lines:
        line = lines[taken.number]
        line.returned_quantity -= taken.quantity
        for key, points in taken.points.items():
            line.points_returned[key] -= points
    if record.basket_points:
        original.basket_returned = False


def _void_engagement(
    program: CompiledProgram,
    state: AccountState,
    receipt: Receipt,
    request: RequestBase,
    result: Result,
) -> None:
    for plan in program.loyalty:
        account = state.loyalty.get(plan.program.id)
        prefix = f"{plan.program.id}/"
        if account is None:
            continue
        for key, points in receipt.basket_points.items():
            if key.startswith(prefix):
                rule_id = key[len(prefix) :]
                loyalty.take_back(
                    plan, account, rule_id, points, receipt.day, request, result, program.version
                )
                result.trace.append(TraceEntry(plan.program.id, rule_id, True, -points, "voided"))
        loyalty.balances(plan, account, request.day, result)


def _void_tender(
    program: CompiledProgram,
    state: AccountState,
    receipt: Receipt,
    request: RequestBase,
    result: Result,
) -> None:
    if program.tender is None:
        raise Declined("NO_TENDER_PROGRAM", "this card carries no tender program")
    op = receipt.kind.removeprefix("tender:")
    if op == "preauth":
        tender.release_hold(state, receipt.id)
    elif receipt.tender_amount < 0:
        tender.credit_back(
            program.tender,
            state,
            -receipt.tender_amount,
            request,
            result,
            program.version,
            "credit_reversal",
        )
    elif receipt.tender_amount > 0:
        tender.debit_back(
            program.tender, state, receipt.tender_amount, request, result, program.version
        )
        if op == "activate" and state.tender is not None:
            # A voided activation leaves the card as it was: never activated.
            state.tender.status = "inactive"
    else:
        raise Declined("NOT_VOIDABLE", f"{receipt.id!r} moved no value")


def _restore_codes(state: AccountState, receipt: Receipt) -> None:
    for code in receipt.awards:
        award = awards.find_award(state, code)
        if award is not None and award.redemptions_left >= 0:
            award.redemptions_left += 1
            award.status = "active"


# --------------------------------------------------------------------------- tender and awards


def _tender(
    program: CompiledProgram,
    states: dict[str, AccountState],
    request: TenderRequest,
    result: Result,
) -> Receipt:
    if program.tender is None:
        raise Declined("NO_TENDER_PROGRAM", "this card carries no tender program")
    state = states[request.account]
    if request.op in DEBIT_OPS:
        _require_pin(program, request)
    start = len(result.postings)
    if request.op == "merge":
        if request.target_account == request.account or not request.target_account:
            raise Declined("INVALID_ARGUMENT", "a merge needs another card as target")
        target = states[request.target_account]
        tender.merge_tender(program.tender, state, target, request, result, program.version)
        result.postings[start:] = [
            replace(posting, account=request.target_account)
            if posting.kind == "merge_in"
            else posting
            for posting in result.postings[start:]
        ]
        _merge_loyalty(program, state, target, request, result)
    else:
        was_active = state.tender is not None and state.tender.status == "active"
        tender.apply_tender(program.tender, state, request, result, program.version)
        if request.op == "activate" and not was_active:
            for award_program in program.award_programs.values():
                awards.on_account_activated(award_program, state, request, result, program.version)
    moved = sum(
        posting.amount
        for posting in result.postings[start:]
        if posting.balance == "tender" and not posting.account
    )
    return Receipt(
        request.id,
        request.account,
        f"tender:{request.op}",
        request.day,
        program.version,
        tender_amount=moved,
    )


def _merge_loyalty(
    program: CompiledProgram,
    source: AccountState,
    target: AccountState,
    request: RequestBase,
    result: Result,
) -> None:
    """Move points lots, debt, earned counters, spend and coupons where the program
    permits."""
    for plan in program.loyalty:
        account = source.loyalty.get(plan.program.id)
        if account is None or not plan.program.card_merge_permitted:
            continue
        survivor = target.loyalty.get(plan.program.id)
        if survivor is None:
            target.loyalty[plan.program.id] = account
        else:
            survivor.lots.extend(account.lots)
            survivor.debt += account.debt
            survivor.earned_ltd += account.earned_ltd
            survivor.earned_ytd += account.earned_ytd
            survivor.awards.extend(account.awards)
            for month, amount in account.spent_by_month.items():
                survivor.spent_by_month[month] = survivor.spent_by_month.get(month, 0) + amount
        del source.loyalty[plan.program.id]
        result.trace.append(TraceEntry(plan.program.id, "", True, 0, "merged"))


def _award_redemption(
    program: CompiledProgram, state: AccountState, request: AwardRedemption, result: Result
) -> Receipt:
    _require_active_card(state)
    _require_pin(program, request)
    receipt = Receipt(request.id, request.account, "award", request.day, program.version)
    if request.code:
        awards.redeem_code(
            program.award_programs,
            state,
            request,
            request.code,
            program.directory,
            result,
            program.version,
        )
        receipt.awards.append(request.code)
    else:
        award_program = program.award_programs.get(request.program)
        if award_program is None:
            raise Declined("UNKNOWN_PROGRAM", f"no award program {request.program!r}")
        awards.redeem_value(award_program, state, request.amount, request, result, program.version)
    return receipt


# --------------------------------------------------------------------------- jobs


NIGHTLY_STEPS: Final = ("age", "review", "award", "move", "expire_awards", "expire_tender")
"""What the scheduled jobs do to each account, in this order (processor.jobs names the
jobs): age its points (expire lots, inactivity aging, lapsed coupons), issue the points of
last month's spend (``month_spend`` rules: the monthly review), issue the awards
whose rule says ``issue: job``, make the moves whose rule says ``change: job``, expire award
accounts, value and certificates, and expire tender accounts and lapsed
pre-authorizations."""

JOB_STEPS: Final = (*NIGHTLY_STEPS, "registered")
"""Every step a job may take: the nightly ones, and issuing the certificates given when the
card is registered to a customer (RegisterCard runs that one on the card it links)."""


def run_job(
    program: CompiledProgram,
    accounts: Mapping[str, AccountState],
    day: int,
    job_id: str,
    steps: Collection[str] = NIGHTLY_STEPS,
    *,
    in_place: bool = False,
) -> BatchOutcome:
    """A scheduled job over ``accounts`` on ``day``: the ``steps`` of JOB_STEPS it names.

    A loyalty account is always aged before its job rules run, as before any transaction,
    so a rule never counts points that expired before it. ``job_id`` names the run, so its
    award codes are reproducible. The states given are left as they were, unless
    ``in_place``: a caller that made them for the call (the job runner decodes its own)
    saves their copies, most of a job's time otherwise.
    """
    unknown = set(steps) - set(JOB_STEPS)
    if unknown:
        raise ValueError(f"unknown job steps {sorted(unknown)}; known: {', '.join(JOB_STEPS)}")
    loyalty_steps = {"age", "review", "award", "move"} & set(steps)
    results = []
    states = {}
    for account_id in sorted(accounts):
        state = accounts[account_id] if in_place else copy.deepcopy(accounts[account_id])
        request = RequestBase(f"{job_id}:{account_id}", account_id, day)
        result = Result(request.id, account_id)
        for plan in program.loyalty if loyalty_steps else ():
            account = state.loyalty.get(plan.program.id)
            if account is None or not plan.program.in_effect(day):
                continue
            loyalty.age(plan, account, day, result, program.version)
            if "review" in steps:
                loyalty.review_spend(
                    program, plan, state, account, request, result, program.version
                )
            if "award" in steps:
                loyalty.run_award_rules(
                    program, plan, state, account, request, result, program.version, job=True
                )
            if "move" in steps:
                loyalty.run_movement_rules(
                    plan, account, request, result, program.version, job=True
                )
            loyalty.balances(plan, account, day, result)
        if "expire_awards" in steps:
            for award_program in program.award_programs.values():
                if award_program.id in state.awards:
                    awards.expire_awards(award_program, state, day, result, program.version)
            awards.remove_lapsed(state, day, result)
        if "expire_tender" in steps and program.tender is not None and state.tender is not None:
            tender.expire_tender(program.tender, state, day, result, program.version)
            tender.release_expired_holds(state.tender, day)
        if "registered" in steps:
            for award_program in program.award_programs.values():
                if award_program.issues_on("card_registered"):
                    awards.on_card_registered(
                        award_program, state, request, result, program.version
                    )
        states[account_id] = state
        results.append(result)
    return BatchOutcome(results, states, {})


@dataclass(frozen=True, slots=True)
class OpeningBalances:
    """A card's opening balances (None where none was given), queued by its card import
    line or its batch's activation: stored value in minor units of the tender program's
    currency, points of the first loyalty program, e-award value of the first award
    program; and the location the card was activated at, if one was named."""

    tender: int | None = None
    loyalty: int | None = None
    award: int | None = None
    location: str = ""


def open_balances(
    program: CompiledProgram,
    state: AccountState,
    opening: OpeningBalances,
    request_id: str,
    day: int,
    *,
    in_place: bool = False,
) -> tuple[Result, AccountState]:
    """Post a card's opening balances on ``day``: the result, and the new state (``state``
    itself, untouched, when declined: all of a card's balances post, or none). With
    ``in_place`` the state given is the one changed (and, when declined, left part changed:
    the caller made it for the call and drops it then, as the job runner does, which saves
    the copy, most of the call's time otherwise).

    The stored value activates the tender account as a till's activation would (its
    minimum and maximum, the welcome certificates), with the whole opening balance and no
    initial balance added (tender.activate_opening); the points are a lot of the first
    loyalty program (loyalty.credit_opening), the e-award value a lot of the first award
    program, both posted as ``opening``. Declined: a card that is not active
    (``CARD_INACTIVE``), one whose program lacks the program a balance needs
    (``NO_TENDER_PROGRAM``, ``NO_LOYALTY_PROGRAM``, ``NO_AWARD_PROGRAM``), a tender account
    already active (``ALREADY_ACTIVE``), an amount under the activation minimum.
    """
    working = state if in_place else copy.deepcopy(state)
    result = Result(request_id, state.account)
    try:
        _require_active_card(state)
        if opening.tender is not None:
            if program.tender is None:
                raise Declined("NO_TENDER_PROGRAM", "the card carries no tender program")
            request = TenderRequest(
                request_id, state.account, day, location=opening.location, pin_verified=True,
                op="activate", amount=opening.tender, currency=program.tender.currency,
            )  # fmt: skip
            tender.activate_opening(program.tender, working, request, result, program.version)
            for award_program in program.award_programs.values():
                awards.on_account_activated(
                    award_program, working, request, result, program.version
                )
        if opening.loyalty:
            if not program.loyalty:
                raise Declined("NO_LOYALTY_PROGRAM", "the card carries no loyalty program")
            plan = program.loyalty[0]
            account = working.loyalty.get(plan.program.id)
            if account is None:
                account = working.loyalty[plan.program.id] = loyalty.open_account(plan, day)
            loyalty.credit_opening(plan, account, opening.loyalty, day, result, program.version)
            loyalty.balances(plan, account, day, result)
        if opening.award:
            if not program.award_programs:
                raise Declined("NO_AWARD_PROGRAM", "the card carries no award program")
            award_program = next(iter(program.award_programs.values()))
            base = RequestBase(request_id, state.account, day, location=opening.location)
            reason = awards.add_value(
                award_program, working, opening.award, base, result, program.version,
                source="opening", kind="opening",
            )  # fmt: skip
            if reason:
                raise Declined(reason, f"the opening e-award value of {award_program.id}")
    except Declined as declined:
        return Result(
            request_id, state.account, status="declined", reason=declined.reason,
            trace=[TraceEntry("", "opening", False, reason=declined.detail)],
        ), state  # fmt: skip
    return result, working


def issue_card(program: CompiledProgram, account_id: str, day: int) -> AccountState:
    """A newly generated card: active, with an account in every loyalty program that
    opens accounts when cards are generated (rather than on first transaction)."""
    state = AccountState(account_id)
    for plan in program.loyalty:
        if not plan.program.accounts_on_first_transaction:
            state.loyalty[plan.program.id] = loyalty.open_account(plan, day)
    return state

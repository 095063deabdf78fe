"""Loyalty evaluation in the reference engine: issue, take back, age, award, move.

Every function here mutates one ``LoyaltyAccount`` (and, for awards, the card's
``AccountState``) and appends to one ``Result``. The order of a purchase is
fixed and documented in ``processor.engine.reference``: age the account, issue
points, then award rules, then movement rules.

Points are held in lots (``Lot``): spending and expiry take the oldest first,
returns take back from the lots the sale created first. Levels move on points
*earned* (``earned_ytd`` and friends), never on the spendable balance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Final, Literal

from processor import calendar
from processor.engine import awards
from processor.engine.codes import award_code
from processor.engine.plan import AwardPlan, CompiledProgram, IssuePlan, LoyaltyPlan, MovementPlan
from processor.engine.types import (
    AccountState,
    Award,
    AwardIssue,
    Customer,
    Engagement,
    LevelMove,
    Line,
    LineEarning,
    Lot,
    LoyaltyAccount,
    Posting,
    Purchase,
    Receipt,
    RequestBase,
    Result,
    TraceEntry,
)
from processor.errors import present
from processor.limits import SPENT_MONTH_UNITS_MAX
from processor.program.loyalty import (
    AWARDS_PER_RULE_MAX,
    IssueRule,
    IssueTimeRule,
    ItemRule,
    MovementTest,
)
from processor.program.rules import location_allowed

MONTHS_KEPT = 37
"""Monthly earning buckets kept per account: enough for a 36-month average."""
SPENT_MONTHS_KEPT: Final = 2
"""Months of spend kept per account: its latest and the one before, what the scorecards
(the month counted) and a review of last month read. Each costs a cached state 4-5 bytes."""

# --------------------------------------------------------------------------- accounts


def open_account(plan: LoyaltyPlan, day: int) -> LoyaltyAccount:
    """A new account at the program's first (or initial) level."""
    return LoyaltyAccount(
        program=plan.program.id,
        level=plan.program.start_level,
        created_day=day,
        level_since_day=day,
        last_activity_day=day,
        ytd_year=calendar.year_of(day),
    )


def account_for(plan: LoyaltyPlan, state: AccountState, day: int) -> LoyaltyAccount | None:
    """The card's account in this program, opened now when the program opens accounts on
    first transaction; ``None`` when the card has no account here."""
    account = state.loyalty.get(plan.program.id)
    if account is None and plan.program.accounts_on_first_transaction:
        account = open_account(plan, day)
        state.loyalty[plan.program.id] = account
    return account


def balances(plan: LoyaltyPlan, account: LoyaltyAccount, day: int, result: Result) -> None:
    result.balances[f"points:{account.program}"] = account.available(day)
    escrowed = account.escrowed(day)
    if escrowed:
        result.balances[f"escrow:{account.program}"] = escrowed


def _post(
    result: Result, plan: LoyaltyPlan, version: int, kind: str, amount: int, rule: str, day: int
) -> None:
    result.postings.append(Posting(plan.program.id, version, "points", kind, amount, rule, day))


# --------------------------------------------------------------------------- aging


def age(plan: LoyaltyPlan, account: LoyaltyAccount, day: int, result: Result, version: int) -> None:
    """Bring an account up to ``day``: roll the year, expire lots and coupons.

    Runs before anything else touches the account, so a transaction never
    spends points that expired before it, and a job can call it alone.
    """
    year = calendar.year_of(day)
    if year != account.ytd_year:
        account.ytd_year, account.earned_ytd = year, 0
    oldest_month = calendar.month_index(day) - MONTHS_KEPT
    for month in [month for month in account.earned_by_month if month < oldest_month]:
        del account.earned_by_month[month]
    level = plan.program.level(account.level)
    aging = level.age_points
    inactive = aging is not None and aging.after.after(account.last_activity_day) <= day
    if aging is not None and aging.type == "fixed" and inactive:
        _expire_lots(plan, account, account.lots, day, result, version, "inactivity")
    due = [lot for lot in account.lots if lot.expires_day is not None and lot.expires_day <= day]
    _expire_lots(plan, account, due, day, result, version, "lot expiry")
    for coupon in account.awards:
        lapsed = coupon.expires_day is not None and coupon.expires_day <= day
        if coupon.status == "active" and lapsed:
            coupon.status = "expired"


def _expire_lots(
    plan: LoyaltyPlan,
    account: LoyaltyAccount,
    lots: list[Lot],
    day: int,
    result: Result,
    version: int,
    why: str,
) -> None:
    expired = sum(lot.points for lot in lots)
    if not expired:
        return
    doomed = {id(lot) for lot in lots}
    account.lots = [lot for lot in account.lots if id(lot) not in doomed]
    _post(result, plan, version, "expire", -expired, "", day)
    result.trace.append(TraceEntry(plan.program.id, "age_points", True, -expired, why))


# --------------------------------------------------------------------------- issuing


def issue_lot(
    plan: LoyaltyPlan,
    account: LoyaltyAccount,
    rule: IssueRule,
    points: int,
    day: int,
    result: Result,
    version: int,
) -> None:
    """Add earned points as a lot (escrowed and aged as the level says) and count them
    as earned for the movement tests."""
    level = plan.program.level(account.level)
    available_day = level.escrow.after(day) if level.escrow is not None else day
    aging = level.age_points
    expires_day = aging.after.after(day) if aging is not None and aging.type == "relative" else None
    kind: Literal["regular", "bonus"] = "bonus" if rule.is_bonus else "regular"
    posted_kind = "escrow" if available_day > day else kind
    _post(result, plan, version, posted_kind, points, rule.id, day)
    repaid = min(account.debt, points)
    account.debt -= repaid
    if points > repaid:
        account.lots.append(
            Lot(day, rule.id, kind, points - repaid, available_day, expires_day, version)
        )
    _count_earned(account, points, day)


def credit_opening(
    plan: LoyaltyPlan,
    account: LoyaltyAccount,
    points: int,
    day: int,
    result: Result,
    version: int,
) -> None:
    """Points a card brings from before this system (a card import's opening balance): a
    lot available at once (no escrow: they were earned elsewhere, long since), aged as its
    level ages points from ``day``, posted as ``opening``. Not counted as earned, so they
    move no level; a debt is repaid from them first, as from any points."""
    level = plan.program.level(account.level)
    aging = level.age_points
    expires_day = aging.after.after(day) if aging is not None and aging.type == "relative" else None
    _post(result, plan, version, "opening", points, "", day)
    repaid = min(account.debt, points)
    account.debt -= repaid
    if points > repaid:
        account.lots.append(
            Lot(day, OPENING_RULE, "regular", points - repaid, day, expires_day, version)
        )


OPENING_RULE: Final = "opening"
"""The rule a lot of opening points names: none issued it here."""


def _count_earned(account: LoyaltyAccount, points: int, day: int) -> None:
    """Count points (negative for a return) as earned on ``day``: a return of last year's
    sale leaves this year's total alone, and one from before the last level move leaves
    the points earned since the move alone."""
    account.earned_ltd = max(0, account.earned_ltd + points)
    if calendar.year_of(day) == account.ytd_year:
        account.earned_ytd = max(0, account.earned_ytd + points)
    if day >= account.level_since_day:
        account.earned_since_move = max(0, account.earned_since_move + points)
    month = calendar.month_index(day)
    account.earned_by_month[month] = max(0, account.earned_by_month.get(month, 0) + points)


def count_spent(account: LoyaltyAccount, amount: int, day: int) -> None:
    """Count ``amount`` (negative for a return or a void) as spent in ``day``'s month. A
    month never goes below nothing, a month left at nothing is not kept, and neither is one
    before the latest SPENT_MONTHS_KEPT (a return of an older sale changes nothing).
    Kept on counting, not by aging: a card that stops buying keeps its last months."""
    month = calendar.month_index(day)
    spent = min(account.spent_by_month.get(month, 0) + amount, SPENT_MONTH_UNITS_MAX)
    if spent > 0:
        account.spent_by_month[month] = spent
    else:
        account.spent_by_month.pop(month, None)
    if account.spent_by_month:
        oldest = max(account.spent_by_month) - SPENT_MONTHS_KEPT + 1
        for old in [old for old in account.spent_by_month if old < oldest]:
            del account.spent_by_month[old]


def _customer(
    rule: IssueRule, state: AccountState, request_customer: Customer | None
) -> Customer | None:
    return state.customer if rule.customer_eligibility == "card" else request_customer


def _anniversary(origin: int | None, day: int, before: int, after: int) -> bool:
    """Whether ``day`` falls within [-before, +after] days of ``origin``'s anniversary."""
    if origin is None:
        return False
    _, month, month_day = calendar.civil_from_days(origin)
    year = calendar.year_of(day)
    for candidate_year in (year - 1, year, year + 1):
        clamp = min(month_day, calendar.days_in_month(candidate_year, month))
        anniversary = calendar.days_from_civil(candidate_year, month, clamp)
        if anniversary - before <= day <= anniversary + after:
            return True
    return False


def _time_rule_reason(
    rules: Sequence[IssueTimeRule], customer: Customer | None, day: int, second: int
) -> str:
    for time_rule in rules:
        if time_rule.type == "blackout_period":
            if present(time_rule.window, "a blackout period's window").matches(day, second):
                return "blackout period"
        elif time_rule.type == "bonus_period":
            if not present(time_rule.window, "a bonus period's window").matches(day, second):
                return "outside bonus period"
        else:
            origin = None
            if customer is not None:
                origin = (
                    customer.birth_day
                    if time_rule.type == "birthday_anniversary"
                    else customer.signup_day
                )
            if not _anniversary(origin, day, time_rule.days_before, time_rule.days_after):
                return "not the " + time_rule.type.replace("_", " ")
    return ""


def audience_reason(rule: IssueRule, customer: Customer | None) -> str:
    if rule.audience is None:
        return ""
    if customer is None:
        return "no customer for the audience rule"
    for listed in rule.audience.lists:
        if listed.strata:
            if any(f"{listed.id}:{stratum}" in customer.audiences for stratum in listed.strata):
                return ""
        elif listed.id in customer.audiences or any(
            audience.startswith(f"{listed.id}:") for audience in customer.audiences
        ):
            return ""
    return "customer not in audience"


def _item_matches(rule: ItemRule, line: Line) -> bool:
    if rule.select == "hierarchy" and not any(node in rule.hierarchy for node in line.hierarchy):
        return False
    if rule.select == "items" and line.item not in rule.items:
        return False
    attributes = dict(line.attributes)
    return all(attributes.get(test.name) in test.values for test in rule.attributes)


def qualifying_lines(rule: IssueRule, lines: Sequence[Line]) -> list[int]:
    """Indexes of the lines an issue rule counts."""
    chosen = []
    for index, line in enumerate(lines):
        if not line.merchandise and not rule.include_non_merchandise:
            continue
        if line.amount == 0 and not rule.allow_zero_price:
            continue
        if rule.item_include is not None and not _item_matches(rule.item_include, line):
            continue
        if rule.item_exclude is not None and _item_matches(rule.item_exclude, line):
            continue
        chosen.append(index)
    return chosen


def _common_reason(
    issue: IssuePlan,
    account: LoyaltyAccount,
    state: AccountState,
    request: RequestBase,
    customer: Customer | None,
    compiled: CompiledProgram,
) -> str:
    """Why an issue rule cannot apply to this request at all ("" when it can)."""
    rule = issue.rule
    if not rule.in_effect(request.day):
        return "outside rule dates"
    if rule.levels and account.level not in rule.levels:
        return f"not for level {account.level}"
    reason = audience_reason(rule, _customer(rule, state, customer))
    if reason:
        return reason
    reason = _time_rule_reason(
        rule.time_rules, _customer(rule, state, customer), request.day, request.second
    )
    if reason:
        return reason
    if not location_allowed(
        request.location, rule.location_include, rule.location_exclude, compiled.directory
    ):
        return "location not eligible"
    return ""


def _daily_uses(account: LoyaltyAccount, rule_id: str, day: int) -> int:
    used_day, uses = account.rule_day.get(rule_id, (day, 0))
    return uses if used_day == day else 0


def earn_purchase(
    compiled: CompiledProgram,
    plan: LoyaltyPlan,
    state: AccountState,
    account: LoyaltyAccount,
    purchase: Purchase,
    base_lines: Sequence[Line],
    receipt: Receipt,
    result: Result,
    version: int,
) -> None:
    """Apply every issue rule to a purchase, in file order, and record what each line earned.

    ``base_lines`` are the purchase lines with amounts in the program currency.
    """
    total = sum(line.amount for line in base_lines)
    count_spent(account, total, purchase.day)
    if total:
        receipt.spent[plan.program.id] = total
    earnings = {line.number: _earning(receipt, line) for line in base_lines}
    for issue in plan.issue:
        rule = issue.rule
        reason = _purchase_reason(issue, account, state, purchase, base_lines, total, compiled)
        if reason:
            result.trace.append(TraceEntry(plan.program.id, rule.id, False, 0, reason))
            continue
        chosen = qualifying_lines(rule, base_lines) if _counts_lines(rule) else []
        per_line = {
            base_lines[index].number: _line_points(issue, base_lines[index]) for index in chosen
        }
        points = sum(per_line.values()) + issue.fixed_points
        if points <= 0:
            result.trace.append(TraceEntry(plan.program.id, rule.id, False, 0, "no points"))
            continue
        used_day, uses = account.rule_day.get(rule.id, (purchase.day, 0))
        account.rule_day[rule.id] = (purchase.day, (uses if used_day == purchase.day else 0) + 1)
        for number, line_points in per_line.items():
            if line_points:
                earnings[number].points[issue.key] = line_points
        if issue.fixed_points:
            receipt.basket_points[issue.key] = issue.fixed_points
        issue_lot(plan, account, rule, points, purchase.day, result, version)
        result.trace.append(TraceEntry(plan.program.id, rule.id, True, points, ""))


def _counts_lines(rule: IssueRule) -> bool:
    return rule.calculation in ("item_value", "item_quantity")


def _earning(receipt: Receipt, line: Line) -> LineEarning:
    for earning in receipt.lines:
        if earning.number == line.number:
            return earning
    earning = LineEarning(line.number, line.quantity, line.amount)
    receipt.lines.append(earning)
    return earning


def _line_points(issue: IssuePlan, line: Line) -> int:
    measure = line.amount if issue.rule.calculation == "item_value" else line.quantity
    return math.floor(measure * issue.factor)


def _purchase_reason(
    issue: IssuePlan,
    account: LoyaltyAccount,
    state: AccountState,
    purchase: Purchase,
    base_lines: Sequence[Line],
    total: int,
    compiled: CompiledProgram,
) -> str:
    rule = issue.rule
    if rule.calculation == "engagements":
        return "counts engagements, not purchases"
    if rule.calculation == "month_spend":
        return MONTH_SPEND_REASON
    reason = _common_reason(issue, account, state, purchase, purchase.customer, compiled)
    if reason:
        return reason
    if rule.tender is not None and not any(
        tender.type in rule.tender.types for tender in purchase.tenders
    ):
        return "tender type not eligible"
    if issue.minimum_minor is not None and total < issue.minimum_minor:
        return "below transaction minimum"
    if _counts_lines(rule) and not qualifying_lines(rule, base_lines):
        return "no qualifying items"
    uses = _daily_uses(account, rule.id, purchase.day)
    if rule.calculation == "visits" and uses:
        return "visit already counted today"
    if rule.max_transactions_per_day is not None and uses >= rule.max_transactions_per_day:
        return "daily transaction limit reached"
    return ""


def earn_engagement(
    compiled: CompiledProgram,
    plan: LoyaltyPlan,
    state: AccountState,
    account: LoyaltyAccount,
    engagement: Engagement,
    result: Result,
    version: int,
) -> None:
    """Apply the engagement rules, within their frequency, per-period and lifetime limits."""
    for issue in plan.issue:
        rule = issue.rule
        reason = _engagement_calculation_reason(rule)
        reason = reason or _common_reason(
            issue, account, state, engagement, engagement.customer, compiled
        )
        allowed = 0 if reason else _engagements_allowed(rule, account, engagement)
        if not reason and allowed == 0:
            reason = "engagement limit reached"
        if reason:
            result.trace.append(TraceEntry(plan.program.id, rule.id, False, 0, reason))
            continue
        period = _period_key(rule, engagement.day)
        used_period, uses = account.rule_period.get(rule.id, (period, 0))
        account.rule_period[rule.id] = (period, (uses if used_period == period else 0) + allowed)
        account.rule_total[rule.id] = account.rule_total.get(rule.id, 0) + allowed
        points = issue.fixed_points * allowed
        issue_lot(plan, account, rule, points, engagement.day, result, version)
        result.trace.append(TraceEntry(plan.program.id, rule.id, True, points, ""))


MONTH_SPEND_REASON: Final = "counts a month's spend, when the monthly review runs"
"""Why a transaction passes a ``month_spend`` rule by (the compiled engine says the same)."""


def review_spend(
    compiled: CompiledProgram,
    plan: LoyaltyPlan,
    state: AccountState,
    account: LoyaltyAccount,
    request: RequestBase,
    result: Result,
    version: int,
) -> None:
    """The monthly review: each ``month_spend`` rule issues points on what the card spent
    in the month before ``request.day`` (``floor(spend x multiplier) + fixed_amount``),
    once per month (its rule counter holds the month reviewed), where the rule was in
    effect on the month's last day, the account's level and customer qualify now, and the
    spend reaches ``transaction_minimum``. The points are earned on ``request.day``."""
    month = calendar.month_index(request.day) - 1
    month_end = RequestBase(request.id, request.account, calendar.month_start(request.day) - 1)
    for issue in plan.issue:
        rule = issue.rule
        if rule.calculation != "month_spend":
            continue
        spent = account.spent_by_month.get(month, 0)
        reason = _common_reason(issue, account, state, month_end, None, compiled)
        if not reason and account.rule_period.get(rule.id, (None, 0))[0] == month:
            reason = "last month reviewed already"
        if not reason and not spent:
            reason = "no spend last month"
        if not reason and issue.minimum_minor is not None and spent < issue.minimum_minor:
            reason = "below the month's minimum"
        points = 0 if reason else math.floor(spent * issue.factor) + issue.fixed_points
        if not reason and points <= 0:
            reason = "no points"
        if reason:
            result.trace.append(TraceEntry(plan.program.id, rule.id, False, 0, reason))
            continue
        account.rule_period[rule.id] = (month, 1)
        account.rule_total[rule.id] = account.rule_total.get(rule.id, 0) + 1
        issue_lot(plan, account, rule, points, request.day, result, version)
        result.trace.append(TraceEntry(plan.program.id, rule.id, True, points, ""))


def _engagement_calculation_reason(rule: IssueRule) -> str:
    if rule.calculation == "engagements":
        return ""
    if rule.calculation == "month_spend":
        return MONTH_SPEND_REASON
    return "counts purchases, not engagements"


def _period_key(rule: IssueRule, day: int) -> int:
    unit = {"daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}
    if rule.frequency is None or rule.frequency == "once":
        return 0
    return calendar.period_index(day, unit[rule.frequency])


def _engagements_allowed(rule: IssueRule, account: LoyaltyAccount, engagement: Engagement) -> int:
    allowed = engagement.count
    period = _period_key(rule, engagement.day)
    used_period, uses = account.rule_period.get(rule.id, (period, 0))
    used = uses if used_period == period else 0
    if not rule.unlimited:
        per_period = 1 if rule.frequency == "once" else (rule.issues_per_period or 0)
        allowed = min(allowed, per_period - used)
    if rule.rule_count_limit is not None:
        allowed = min(allowed, rule.rule_count_limit - account.rule_total.get(rule.id, 0))
    return max(0, allowed)


# --------------------------------------------------------------------------- taking back


def take_back(
    plan: LoyaltyPlan,
    account: LoyaltyAccount,
    rule_id: str,
    points: int,
    earned_day: int,
    request: RequestBase,
    result: Result,
    version: int,
) -> int:
    """Remove ``points`` a rule issued on ``earned_day``: from that rule's lots of that day
    first, then the oldest lots; what is left becomes debt where the level allows a
    negative balance, and is forgiven (and traced) where it does not. Returns the points
    recovered, debt included."""
    remaining = points
    own = [lot for lot in account.lots if lot.rule == rule_id and lot.earned_day == earned_day]
    others = sorted(
        (lot for lot in account.lots if not (lot.rule == rule_id and lot.earned_day == earned_day)),
        key=lambda lot: lot.earned_day,
    )
    for lot in [*own, *others]:
        taken = min(lot.points, remaining)
        lot.points -= taken
        remaining -= taken
        if remaining == 0:
            break
    account.lots = [lot for lot in account.lots if lot.points > 0]
    level = plan.program.level(account.level)
    forgiven = 0
    if remaining and level.negative_balance_allowed:
        account.debt += remaining
    else:
        forgiven = remaining
    recovered = points - forgiven
    if recovered:
        _post(result, plan, version, "return", -recovered, rule_id, request.day)
    if forgiven:
        result.trace.append(
            TraceEntry(
                plan.program.id,
                rule_id,
                True,
                -recovered,
                f"{forgiven} not recovered: balance may not go negative",
            )
        )
    _count_earned(account, -points, earned_day)
    return recovered


def return_points(
    plan: LoyaltyPlan,
    account: LoyaltyAccount,
    receipt: Receipt,
    returned: dict[int, int],
    request: RequestBase,
    result: Result,
    version: int,
    record: Receipt,
) -> None:
    """Take back what the returned quantities earned: proportionally per line, so the
    sum over partial returns never exceeds, and a full return equals, the original.

    ``record`` is the return's own receipt: what was taken per line and rule, and what
    was actually recovered, so that voiding the return can put back exactly that.
    """
    prefix = f"{plan.program.id}/"
    totals: dict[str, int] = {}
    taken_lines = {line.number: line for line in record.lines}
    for earning in receipt.lines:
        quantity = returned.get(earning.number, 0)
        if not quantity:
            continue
        after = earning.returned_quantity + quantity
        for key, points in earning.points.items():
            if not key.startswith(prefix):
                continue
            due = points if after >= earning.quantity else points * after // earning.quantity
            take = due - earning.points_returned.get(key, 0)
            if take:
                earning.points_returned[key] = earning.points_returned.get(key, 0) + take
                totals[key] = totals.get(key, 0) + take
                taken = taken_lines[earning.number].points
                taken[key] = taken.get(key, 0) + take
    fully_returned = all(
        earning.returned_quantity + returned.get(earning.number, 0) >= earning.quantity
        for earning in receipt.lines
    )
    if fully_returned and not receipt.basket_returned:
        for key, points in receipt.basket_points.items():
            if key.startswith(prefix):
                totals[key] = totals.get(key, 0) + points
                record.basket_points[key] = points
    for key, points in totals.items():
        rule_id = key[len(prefix) :]
        recovered = take_back(plan, account, rule_id, points, receipt.day, request, result, version)
        record.points_recovered[key] = recovered
        result.trace.append(TraceEntry(plan.program.id, rule_id, True, -points, "returned"))


def restore_points(
    plan: LoyaltyPlan,
    account: LoyaltyAccount,
    rule_id: str,
    points: int,
    earned_day: int,
    request: RequestBase,
    result: Result,
    version: int,
) -> None:
    """Put back points a voided return took: a lot dated as the original earning (so it
    ages as the original would have), spendable now, counted as earned again."""
    level = plan.program.level(account.level)
    aging = level.age_points
    relative = aging is not None and aging.type == "relative"
    expires_day = aging.after.after(earned_day) if aging is not None and relative else None
    _post(result, plan, version, "return_reversal", points, rule_id, request.day)
    repaid = min(account.debt, points)
    account.debt -= repaid
    if points > repaid:
        account.lots.append(
            Lot(earned_day, rule_id, "regular", points - repaid, request.day, expires_day, version)
        )
    _count_earned(account, points, earned_day)
    result.trace.append(TraceEntry(plan.program.id, rule_id, True, points, "return voided"))


# --------------------------------------------------------------------------- spending


def spend(account: LoyaltyAccount, points: int, day: int) -> None:
    """Spend available points from the oldest lots first."""
    remaining = points
    for lot in sorted(account.lots, key=lambda lot: lot.earned_day):
        if lot.available_day > day or (lot.expires_day is not None and lot.expires_day <= day):
            continue
        taken = min(lot.points, remaining)
        lot.points -= taken
        remaining -= taken
        if remaining == 0:
            break
    account.lots = [lot for lot in account.lots if lot.points > 0]
    if remaining:
        raise AssertionError("spend() called with more than the available balance")


# --------------------------------------------------------------------------- award rules


def run_award_rules(
    compiled: CompiledProgram,
    plan: LoyaltyPlan,
    state: AccountState,
    account: LoyaltyAccount,
    request: RequestBase,
    result: Result,
    version: int,
    *,
    job: bool = False,
) -> None:
    """Issue awards in precedence order while the balance reaches each rule's threshold.

    Rules marked ``issue: job`` run only when ``job`` is set (the award job).
    """
    day = request.day
    for award in plan.award:
        rule = award.rule
        reason = _award_reason(award, account, day, job)
        if reason:
            result.trace.append(TraceEntry(plan.program.id, rule.id, False, 0, reason))
            continue
        issued, reason = 0, ""
        while issued < AWARDS_PER_RULE_MAX and not reason:
            if account.available(day) < award.threshold:
                reason = "below threshold" if issued == 0 else ""
                break
            reason = _issue_award(
                compiled, plan, award, state, account, request, result, version, issued
            )
            if not reason:
                issued += 1
                if rule.cost_type == "cashback":
                    break
        if issued:
            result.trace.append(TraceEntry(plan.program.id, rule.id, True, 0, f"{issued} issued"))
        else:
            result.trace.append(TraceEntry(plan.program.id, rule.id, False, 0, reason))


def _award_reason(award: AwardPlan, account: LoyaltyAccount, day: int, job: bool) -> str:
    rule = award.rule
    if (rule.issue == "job") != job:
        return "issued by the award job" if rule.issue == "job" else "issued on posting"
    if not rule.in_effect(day):
        return "outside rule dates"
    if rule.levels and account.level not in rule.levels:
        return f"not for level {account.level}"
    return ""


def _expiry(award: AwardPlan, day: int) -> int | None:
    expiry = award.rule.expiry
    if expiry is None:
        return None
    if expiry.type == "relative":
        return present(expiry.after, "a relative expiry's period").after(day)
    holder = award.holder
    if holder is None or holder.award_expiry is None:
        return None
    return holder.award_expiry.after(day)


def _issue_award(
    compiled: CompiledProgram,
    plan: LoyaltyPlan,
    award: AwardPlan,
    state: AccountState,
    account: LoyaltyAccount,
    request: RequestBase,
    result: Result,
    version: int,
    ordinal: int,
) -> str:
    """Issue one award and charge its cost; a reason (and no change) when it cannot."""
    rule, day = award.rule, request.day
    cost, value = award.cost, 0
    expires_day = _expiry(award, day)
    if rule.type == "e_award":
        holder = present(award.holder, "an e-award's award program")
        if rule.cost_type == "cashback":
            balance = account.available(day)
            value = math.floor(balance * award.value_per_point)
            if value <= 0 or value < award.minimum_minor:
                return "below minimum award"
            cost = balance if rule.reset_balance else _points_for(value, award.value_per_point)
        else:
            value = award.amount_minor
        refusal = awards.add_value(
            holder,
            state,
            value,
            request,
            result,
            version,
            source=rule.id,
            expires_day=expires_day,
        )
        if refusal:
            return refusal
        code = award_code(
            rule.coupon_prefix, plan.program.id, request.account, request.id, rule.id, ordinal
        )
        result.awards.append(
            AwardIssue(code, "e_award", rule.id, holder.id, value, cost, expires_day)
        )
    elif rule.type == "certificate":
        holder = present(award.holder, "a certificate's award program")
        certificate = present(rule.certificate, "a certificate rule's certificate")
        refusal = awards.refusal(holder, state, day)
        if refusal:
            return refusal
        awards.issue_certificate(
            holder,
            certificate,
            state,
            request,
            result,
            version,
            expires_day=expires_day,
            source=rule.id,
            points_cost=cost,
            prefix=rule.coupon_prefix or None,
        )
    else:
        code = award_code(
            rule.coupon_prefix, plan.program.id, request.account, request.id, rule.id, ordinal
        )
        account.awards.append(Award(code, "coupon", rule.id, plan.program.id, day, expires_day, 1))
        result.awards.append(
            AwardIssue(code, "coupon", rule.id, plan.program.id, 0, cost, expires_day)
        )
    spend(account, cost, day)
    _post(result, plan, version, "award_cost", -cost, rule.id, day)
    return ""


def _points_for(value: int, value_per_point: Fraction) -> int:
    """The fewest points worth ``value``: what a cashback converts when it keeps the rest."""
    return math.ceil(value / value_per_point)


# --------------------------------------------------------------------------- movement rules


def run_movement_rules(
    plan: LoyaltyPlan,
    account: LoyaltyAccount,
    request: RequestBase,
    result: Result,
    version: int,
    *,
    job: bool = False,
) -> None:
    """Apply movement rules in precedence order; a move may lead to another (a big
    purchase can pass two levels), at most once per level."""
    day = request.day
    reasons: dict[str, str] = {}
    for _ in range(len(plan.program.levels)):
        moved = False
        reasons.clear()
        for movement in plan.movement:
            fired, reason = _try_move(plan, movement, account, day, result, version, job)
            if fired:
                # A sustain or an extension keeps the level: nothing more to test.
                moved = result.moves[-1].kind in ("advancement", "demotion")
                break
            if reason:
                reasons[movement.rule.id] = reason
        if not moved:
            break
    for rule_id, reason in reasons.items():
        result.trace.append(TraceEntry(plan.program.id, rule_id, False, 0, reason))


def _try_move(
    plan: LoyaltyPlan,
    movement: MovementPlan,
    account: LoyaltyAccount,
    day: int,
    result: Result,
    version: int,
    job: bool,
) -> tuple[bool, str]:
    rule = movement.rule
    if rule.source_level != account.level:
        return False, ""
    if (rule.change == "job") != job:
        return False, "changes level by job" if rule.change == "job" else "changes on posting"
    if not rule.in_effect(day):
        return False, "outside rule dates"
    if not _movement_due(rule.type, rule.test, movement.threshold, account, day):
        return False, "test not met"
    extended = account.sustain_extended_until
    if rule.type == "demotion" and extended is not None and day < extended:
        return False, "sustain period extended"
    if rule.extension is not None and account.sustain_extended_until is None:
        extension = rule.extension
        if _test_value(extension.test, account, day) >= movement.extension_threshold:
            account.sustain_extended_until = extension.extend_by.after(day)
            result.moves.append(
                LevelMove(plan.program.id, rule.id, "extension", account.level, account.level)
            )
            result.trace.append(TraceEntry(plan.program.id, rule.id, True, 0, "extended"))
            return True, ""
    if not plan.program.level(rule.target_level).active:
        return False, f"level {rule.target_level} is inactive"
    if movement.cost and account.available(day) < movement.cost:
        return False, "balance below the move's points cost"
    if movement.cost:
        spend(account, movement.cost, day)
        _post(result, plan, version, "move_cost", -movement.cost, rule.id, day)
    result.moves.append(
        LevelMove(plan.program.id, rule.id, rule.type, account.level, rule.target_level)
    )
    result.trace.append(TraceEntry(plan.program.id, rule.id, True, -movement.cost, rule.type))
    account.level = rule.target_level
    account.level_since_day = day
    account.earned_since_move = 0
    account.sustain_extended_until = None
    return True, ""


def _movement_due(
    kind: str, test: MovementTest, threshold: int, account: LoyaltyAccount, day: int
) -> bool:
    """Advancement and sustain move when the test is met; a demotion when it is not.

    For ``time_since_last_move`` the time must have passed in every case, and the
    threshold is compared with the points earned since the last move.
    """
    if test.type == "time_since_last_move":
        if present(test.period, "a time test's period").after(account.level_since_day) > day:
            return False
        met = account.earned_since_move >= threshold
    else:
        met = _test_value(test, account, day) >= threshold
    return not met if kind == "demotion" else met


def _test_value(test: MovementTest, account: LoyaltyAccount, day: int) -> int:
    if test.type == "ytd":
        return account.earned_ytd
    if test.type == "ltd":
        return account.earned_ltd
    if test.type == "since_last_move":
        return account.earned_since_move
    if test.type == "average_per_month":
        months = test.months or 1
        current = calendar.month_index(day)
        earned = sum(
            account.earned_by_month.get(current - back, 0) for back in range(1, months + 1)
        )
        return earned // months
    return account.earned_since_move

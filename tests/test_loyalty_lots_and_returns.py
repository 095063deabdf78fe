"""Points lots: negative balances, aging, escrow, spending order, returns and voids."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from loyalty_builders import (
    CARD,
    DAY,
    ESCROW,
    POINTS,
    PROGRAM,
    Ledger,
    build,
    coupon_rule,
    day,
    give_back,
    issue_rule,
    level,
    line,
    posted,
    purchase,
    trace,
    void,
    why,
)

from processor.engine.types import Line, Result, TraceEntry

pytestmark = pytest.mark.usefixtures("every_engine")


def dollars(amount: int, request_id: str = "p1", on: int = DAY) -> Any:
    return purchase(request_id, line(amount=amount * 100), day=on)


def levels(**silver: Any) -> list[dict[str, Any]]:
    return [level("silver", **silver), level("gold")]


# --------------------------------------------------------------------------- negative balances


def test_return_after_spending_goes_into_debt_where_the_level_allows() -> None:
    ledger = Ledger(build(levels=levels(negative_balance_allowed=True), award=[coupon_rule()]))
    ledger.one(dollars(100))
    returned = ledger.one(give_back("r1", "p1", day=DAY + 1))
    assert returned.status == "approved"
    assert posted(returned) == [("return", -100, "base")]
    assert trace(returned, "base") == [TraceEntry(PROGRAM, "base", True, -100, "returned")]
    assert returned.balances[POINTS] == -100
    assert ledger.account.debt == 100
    repaid = ledger.one(dollars(30, "p2", DAY + 2))
    assert posted(repaid) == [("regular", 30, "base")]
    assert repaid.balances[POINTS] == -70
    assert ledger.account.lots == []


def test_return_after_spending_is_forgiven_and_traced_where_debt_is_not_allowed() -> None:
    ledger = Ledger(build(award=[coupon_rule()]))
    ledger.one(dollars(100))
    ledger.one(dollars(40, "p2"))
    returned = ledger.one(give_back("r1", "p1", day=DAY + 1))
    assert posted(returned) == [("return", -40, "base")]
    assert trace(returned, "base") == [
        TraceEntry(PROGRAM, "base", True, -40, "60 not recovered: balance may not go negative"),
        TraceEntry(PROGRAM, "base", True, -100, "returned"),
    ]
    assert returned.balances[POINTS] == 0
    assert ledger.account.debt == 0


# --------------------------------------------------------------------------- aging and escrow


def test_fixed_aging_expires_the_whole_balance_after_inactivity() -> None:
    ledger = Ledger(build(levels=levels(age_points={"type": "fixed", "after": "6 months"})))
    ledger.one(dollars(100))
    ledger.one(dollars(10, "p2", day("2026-09-06")))
    quiet = ledger.job(day("2027-03-05"))
    assert quiet.postings == []
    assert quiet.balances[POINTS] == 110
    expired = ledger.job(day("2027-03-06"))
    assert posted(expired) == [("expire", -110, "")]
    assert trace(expired, "age_points") == [
        TraceEntry(PROGRAM, "age_points", True, -110, "inactivity")]
    assert expired.balances[POINTS] == 0


def test_relative_aging_expires_each_lot_in_turn() -> None:
    ledger = Ledger(build(levels=levels(age_points={"type": "relative", "after": "12 months"})))
    ledger.one(dollars(100))
    ledger.one(dollars(50, "p2", day("2026-06-07")))
    assert ledger.job(day("2027-03-06")).balances[POINTS] == 150
    first = ledger.job(day("2027-03-07"))
    assert posted(first) == [("expire", -100, "")]
    assert trace(first, "age_points") == [
        TraceEntry(PROGRAM, "age_points", True, -100, "lot expiry")]
    assert first.balances[POINTS] == 50
    second = ledger.job(day("2027-06-07"))
    assert posted(second) == [("expire", -50, "")]
    assert second.balances[POINTS] == 0


def test_expired_points_are_not_spent_by_a_later_purchase() -> None:
    compiled = build(levels=levels(age_points={"type": "relative", "after": "30 days"}),
                     award=[coupon_rule()])
    ledger = Ledger(compiled)
    ledger.one(dollars(60))
    later = ledger.one(dollars(60, "p2", DAY + 30))
    assert posted(later) == [("expire", -60, ""), ("regular", 60, "base")]
    assert why(later, "coupon") == (False, 0, "below threshold")
    assert later.balances[POINTS] == 60


def test_spending_takes_the_oldest_lots_first() -> None:
    compiled = build(levels=levels(age_points={"type": "relative", "after": "12 months"}),
                     award=[coupon_rule(threshold="120", cost="120")])
    ledger = Ledger(compiled)
    ledger.one(dollars(100))
    spent = ledger.one(dollars(50, "p2", day("2026-06-07")))
    assert why(spent, "coupon") == (True, 0, "1 issued")
    assert [(lot.earned_day, lot.points) for lot in ledger.account.lots] == [
        (day("2026-06-07"), 30)]
    assert ledger.job(day("2027-03-07")).postings == []
    assert posted(ledger.job(day("2027-06-07"))) == [("expire", -30, "")]


def test_escrowed_points_are_not_spendable_until_released() -> None:
    ledger = Ledger(build(levels=levels(escrow="14 days"), award=[coupon_rule()]))
    earned = ledger.one(dollars(100))
    assert posted(earned) == [("escrow", 100, "base")]
    assert earned.balances == {POINTS: 0, ESCROW: 100}
    assert why(earned, "coupon") == (False, 0, "below threshold")
    waiting = ledger.one(dollars(10, "p2", DAY + 13))
    assert waiting.balances == {POINTS: 0, ESCROW: 110}
    assert why(waiting, "coupon") == (False, 0, "below threshold")
    released = ledger.one(dollars(10, "p3", DAY + 14))
    assert why(released, "coupon") == (True, 0, "1 issued")
    assert released.balances == {POINTS: 0, ESCROW: 20}


def test_escrowed_points_still_count_toward_levels() -> None:
    rule = {"id": "up", "name": "up", "start_date": "2026-01-01", "type": "advancement",
            "precedence": 1, "from_level": "silver", "to_level": "gold", "threshold": "100",
            "test": {"type": "ytd"}}
    ledger = Ledger(build(levels=levels(escrow="14 days"), movement=[rule]))
    result = ledger.one(dollars(100))
    assert result.balances == {POINTS: 0, ESCROW: 100}
    assert ledger.account.level == "gold"


# --------------------------------------------------------------------------- returns


BASKET = (line(1, 1000, quantity=3), line(2, 500, item="SKU2"))


def basket_ledger() -> tuple[Ledger, Result]:
    """A sale earning 15 line points, 7 fixed points and 25 transaction points."""
    compiled = build(issue=[issue_rule(fixed_amount="7"),
                            issue_rule("trx", "transactions", multiplier=None,
                                       fixed_amount="25")])
    ledger = Ledger(compiled)
    return ledger, ledger.one(purchase("p1", *BASKET))


def taken(result: Result) -> dict[str, int]:
    return {entry.rule: entry.points for entry in result.trace
            if entry.program == PROGRAM and entry.reason == "returned"}


def test_sale_earns_line_basket_and_transaction_points() -> None:
    ledger, sale = basket_ledger()
    assert sale.balances[POINTS] == 47
    earnings = ledger.receipts["p1"]
    assert [line.points for line in earnings.lines] == [{f"{PROGRAM}/base": 10},
                                                        {f"{PROGRAM}/base": 5}]
    assert earnings.basket_points == {f"{PROGRAM}/base": 7, f"{PROGRAM}/trx": 25}


def test_partial_returns_are_proportional_and_cumulative_per_line() -> None:
    ledger, _ = basket_ledger()
    results = ledger.send(*(give_back(f"r{n}", "p1", (1, 1)) for n in range(1, 4)))
    assert [taken(result) for result in results] == [{"base": -3}, {"base": -3}, {"base": -4}]
    assert [result.balances[POINTS] for result in results] == [44, 41, 37]
    assert ledger.receipts["p1"].lines[0].points_returned == {f"{PROGRAM}/base": 10}


def test_full_return_after_partial_returns_takes_back_exactly_the_rest() -> None:
    ledger, _ = basket_ledger()
    line_two, one_of_three, rest = ledger.send(
        give_back("r1", "p1", (2, 1)), give_back("r2", "p1", (1, 1)), give_back("r3", "p1")
    )
    assert taken(line_two) == {"base": -5}
    assert taken(one_of_three) == {"base": -3}
    assert taken(rest) == {"base": -14, "trx": -25}
    assert posted(rest) == [("return", -14, "base"), ("return", -25, "trx")]
    assert rest.balances[POINTS] == 0
    assert ledger.account.earned_ltd == 0
    assert ledger.receipts["p1"].basket_returned


def test_returning_every_line_in_parts_returns_the_basket_points_too() -> None:
    ledger, _ = basket_ledger()
    ledger.one(give_back("r1", "p1", (2, 1)))
    last = ledger.one(give_back("r2", "p1", (1, 3)))
    assert taken(last) == {"base": -17, "trx": -25}
    assert last.balances[POINTS] == 0


def test_a_returned_sale_cannot_be_returned_again() -> None:
    ledger, _ = basket_ledger()
    ledger.one(give_back("r1", "p1"))
    again = ledger.one(give_back("r2", "p1"))
    assert (again.status, again.reason) == ("declined", "ALREADY_RETURNED")


@pytest.mark.parametrize(
    ("request_lines", "reason"),
    [(((1, 4),), "RETURN_EXCEEDS_SALE"), (((1, 2), (1, 2)), "RETURN_EXCEEDS_SALE"),
     (((2, 0),), "RETURN_EXCEEDS_SALE"), (((9, 1),), "UNKNOWN_LINE")],
)
def test_over_returns_are_declined(request_lines: tuple[tuple[int, int], ...], reason: str
                                   ) -> None:
    ledger, _ = basket_ledger()
    result = ledger.one(give_back("r1", "p1", *request_lines))
    assert (result.status, result.reason) == ("declined", reason)
    assert result.postings == []


def test_over_return_after_a_partial_return_is_declined() -> None:
    ledger, _ = basket_ledger()
    ledger.one(give_back("r1", "p1", (1, 2)))
    result = ledger.one(give_back("r2", "p1", (1, 2)))
    assert (result.status, result.reason) == ("declined", "RETURN_EXCEEDS_SALE")


def test_return_of_an_unknown_sale_is_declined() -> None:
    ledger, _ = basket_ledger()
    result = ledger.one(give_back("r1", "nope"))
    assert (result.status, result.reason) == ("declined", "UNKNOWN_ORIGINAL")


def test_return_takes_points_back_from_the_sale_lot_before_older_lots() -> None:
    ledger = Ledger(build())
    ledger.send(dollars(100, "p1", DAY - 10), dollars(30, "p2"))
    ledger.one(give_back("r1", "p2"))
    assert [(lot.earned_day, lot.points) for lot in ledger.account.lots] == [(DAY - 10, 100)]


def test_credit_reversal_off_keeps_the_points() -> None:
    ledger = Ledger(build(credit_reversal=False))
    ledger.one(dollars(100))
    result = ledger.one(give_back("r1", "p1"))
    assert result.status == "approved"
    assert why(result, "") == (False, 0, "credit reversal not allowed")
    assert ledger.account.available(DAY) == 100


def test_returning_last_years_sale_leaves_this_years_ytd_alone() -> None:
    ledger = Ledger(build())
    ledger.one(dollars(100, "p1", day("2026-12-20")))
    ledger.one(dollars(50, "p2", day("2027-01-05")))
    ledger.one(give_back("r1", "p1", day=day("2027-01-06")))
    assert ledger.account.earned_ytd == 50
    assert ledger.account.earned_ltd == 50


# --------------------------------------------------------------------------- voids


def test_void_of_a_purchase_takes_back_everything_it_earned() -> None:
    ledger, _ = basket_ledger()
    result = ledger.one(void("v1", "p1"))
    assert taken(result) == {"base": -22, "trx": -25}
    assert result.balances[POINTS] == 0
    assert ledger.receipts["p1"].voided
    after = ledger.one(give_back("r1", "p1"))
    assert (after.status, after.reason) == ("declined", "ALREADY_VOIDED")


def test_void_after_a_partial_return_takes_back_the_rest() -> None:
    ledger, _ = basket_ledger()
    ledger.one(give_back("r1", "p1", (1, 1)))
    result = ledger.one(void("v1", "p1"))
    assert taken(result) == {"base": -19, "trx": -25}
    assert result.balances[POINTS] == 0


# --------------------------------------------------------------------------- declines


@pytest.mark.parametrize(
    "request_",
    [give_back("r1", "p1", (1, 9)), give_back("r1", "missing"),
     purchase("p2", Line(1, "SKU1", -100)), purchase("p2", line(1), line(1))],
    ids=["over-return", "unknown-original", "negative-amount", "repeated-line"],
)
def test_a_declined_request_changes_no_state(request_: Any) -> None:
    ledger, _ = basket_ledger()
    accounts, receipts = copy.deepcopy(ledger.accounts), copy.deepcopy(ledger.receipts)
    result = ledger.one(request_)
    assert result.status == "declined"
    assert (result.postings, result.awards, result.moves) == ([], [], [])
    assert ledger.accounts == accounts
    assert ledger.receipts == receipts
    assert ledger.accounts[CARD].loyalty[PROGRAM].available(DAY) == 47

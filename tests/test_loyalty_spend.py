"""What a card spent, month by month: counted by every purchase, net of returns and voids,
kept as long as the points earned by month (processor.engine.loyalty.count_spent)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from loyalty_builders import (
    CARD,
    DAY,
    PROGRAM,
    Ledger,
    build,
    compile_file,
    day,
    give_back,
    issue_rule,
    level,
    line,
    loyalty,
    program_file,
    purchase,
    void,
)

from processor import calendar
from processor.engine.loyalty import SPENT_MONTHS_KEPT

pytestmark = pytest.mark.usefixtures("every_engine")

MARCH = calendar.month_index(DAY)


def basket(request_id: str = "p1", on: int = DAY) -> object:
    """$100.00 in two lines: 2 x $30.00 and 1 x $40.00."""
    return purchase(request_id, line(1, 6000, quantity=2), line(2, 4000, item="SKU2"), day=on)


def test_a_purchase_counts_its_whole_basket_in_its_month() -> None:
    ledger = Ledger(build())
    ledger.one(basket())
    ledger.one(purchase("p2", line(amount=1250), day=DAY + 1))
    assert ledger.account.spent_by_month == {MARCH: 11_250}


def test_spend_counts_even_when_no_rule_earns() -> None:
    stingy = issue_rule("base", transaction_minimum="500.00")
    ledger = Ledger(build(issue=[stingy]))
    result = ledger.one(basket())
    assert result.status == "approved" and not result.postings
    assert ledger.account.spent_by_month == {MARCH: 10_000}


def test_months_are_kept_apart() -> None:
    ledger = Ledger(build())
    ledger.one(basket("p1", DAY))
    ledger.one(basket("p2", day("2026-04-02")))
    assert ledger.account.spent_by_month == {MARCH: 10_000, MARCH + 1: 10_000}


def test_partial_returns_take_back_the_sale_in_its_own_month_and_sum_to_it() -> None:
    ledger = Ledger(build())
    ledger.one(basket())
    ledger.one(purchase("p2", line(amount=500), day=day("2026-04-01")))
    # One of the two $30.00 units, a month later: counted against March, not April.
    ledger.one(give_back("r1", "p1", (1, 1), day=day("2026-04-03")))
    assert ledger.account.spent_by_month == {MARCH: 7_000, MARCH + 1: 500}
    ledger.one(give_back("r2", "p1", day=day("2026-04-04")))  # the rest
    assert ledger.account.spent_by_month == {MARCH + 1: 500}


def test_a_third_of_a_line_returned_thrice_gives_back_exactly_the_line() -> None:
    ledger = Ledger(build())
    ledger.one(purchase("p1", line(1, 1000, quantity=3)))
    spent = []
    for number in range(3):
        ledger.one(give_back(f"r{number}", "p1", (1, 1), day=DAY + 1))
        spent.append(ledger.account.spent_by_month.get(MARCH, 0))
    assert spent == [667, 334, 0]  # 333, 333 and the last 334: never more than was spent


def test_voiding_a_return_counts_what_it_gave_back_again() -> None:
    ledger = Ledger(build())
    ledger.one(basket())
    ledger.one(give_back("r1", "p1", (2, 1), day=DAY + 1))
    assert ledger.account.spent_by_month == {MARCH: 6_000}
    ledger.one(void("v1", "r1", day=DAY + 2))
    assert ledger.account.spent_by_month == {MARCH: 10_000}


def test_voiding_a_purchase_takes_back_what_is_left_of_it() -> None:
    ledger = Ledger(build())
    ledger.one(basket())
    ledger.one(purchase("p2", line(amount=2500), day=DAY + 1))
    ledger.one(give_back("r1", "p1", (1, 1), day=DAY + 1))
    ledger.one(void("v1", "p1", day=DAY + 2))
    assert ledger.account.spent_by_month == {MARCH: 2_500}


def test_a_return_takes_back_spend_where_the_program_keeps_the_points() -> None:
    ledger = Ledger(build(credit_reversal=False))
    ledger.one(basket())
    returned = ledger.one(give_back("r1", "p1", day=DAY + 1))
    assert not returned.postings  # the points stay
    assert ledger.account.spent_by_month == {}


def test_a_foreign_purchase_counts_in_the_program_currency() -> None:
    ledger = Ledger(build(allow_foreign_currency=True))
    ledger.one(purchase("p1", line(amount=10_000), currency="EUR", exchange_rate=Decimal("1.25")))
    assert ledger.account.spent_by_month == {MARCH: 12_500}


def test_the_latest_month_and_the_one_before_are_kept() -> None:
    assert SPENT_MONTHS_KEPT == 2
    ledger = Ledger(build())
    ledger.one(basket())
    ledger.one(purchase("p2", line(amount=100), day=day("2026-04-02")))
    assert ledger.account.spent_by_month == {MARCH: 10_000, MARCH + 1: 100}
    ledger.one(purchase("p3", line(amount=200), day=day("2026-05-02")))
    assert ledger.account.spent_by_month == {MARCH + 1: 100, MARCH + 2: 200}
    # A return of March's sale changes nothing now; a month's gap drops both.
    ledger.one(give_back("r1", "p1", day=day("2026-05-03")))
    assert ledger.account.spent_by_month == {MARCH + 1: 100, MARCH + 2: 200}
    ledger.one(purchase("p4", line(amount=300), day=day("2026-07-01")))
    assert ledger.account.spent_by_month == {MARCH + 4: 300}


def test_a_card_that_stops_buying_keeps_its_last_months() -> None:
    ledger = Ledger(
        build(levels=[level("silver", age_points={"type": "fixed", "after": "1 month"})])
    )
    ledger.one(basket())
    ledger.job(day("2027-01-10"))  # aging expires its points, not its spend
    assert ledger.account.spent_by_month == {MARCH: 10_000}


# --------------------------------------------------------------------------- several programs


def two_programs(**second: Any) -> Ledger:
    """The card in two loyalty programs: ``loyal`` (USD) and ``second`` (its ``fields``)."""
    other = loyalty(id="second", name="Second", **second)
    return Ledger(compile_file(program_file(loyalty(), loyalty_programs=[loyalty(), other])))


def spent_in(ledger: Ledger, program: str) -> dict[int, int]:
    return ledger.accounts[CARD].loyalty[program].spent_by_month


def test_each_program_takes_back_what_it_counted_in_its_own_currency() -> None:
    ledger = two_programs(currency="EUR", allow_foreign_currency=True)
    ledger.one(purchase("p1", line(amount=10_000), exchange_rate=Decimal("0.5")))
    assert (spent_in(ledger, PROGRAM), spent_in(ledger, "second")) == (
        {MARCH: 10_000},
        {MARCH: 5_000},
    )
    ledger.one(give_back("r1", "p1", day=DAY + 1))
    assert (spent_in(ledger, PROGRAM), spent_in(ledger, "second")) == ({}, {})
    ledger.one(void("v1", "r1", day=DAY + 2))
    assert (spent_in(ledger, PROGRAM), spent_in(ledger, "second")) == (
        {MARCH: 10_000},
        {MARCH: 5_000},
    )


def test_a_return_leaves_alone_a_program_that_did_not_count_the_sale() -> None:
    ledger = two_programs(card_required=True)
    ledger.one(purchase("p1", line(amount=3_000)))
    ledger.one(purchase("p2", line(amount=10_000), card_present=False))
    assert spent_in(ledger, "second") == {MARCH: 3_000}  # p2 counted in loyal only
    ledger.one(give_back("r2", "p2", day=DAY + 1))
    assert spent_in(ledger, "second") == {MARCH: 3_000}
    ledger.one(void("v2", "r2", day=DAY + 2))
    assert (spent_in(ledger, PROGRAM), spent_in(ledger, "second")) == (
        {MARCH: 13_000},
        {MARCH: 3_000},
    )


def test_a_sale_counted_before_spend_was_kept_takes_nothing_back() -> None:
    ledger = Ledger(build())
    ledger.one(basket())
    # As a purchase posted by a release that did not count spend left it.
    ledger.receipts["p1"].spent = {}
    ledger.account.spent_by_month = {}
    ledger.one(purchase("p2", line(amount=2_500), day=DAY + 1))
    ledger.one(give_back("r1", "p1", day=DAY + 1))
    assert ledger.account.spent_by_month == {MARCH: 2_500}
    ledger.one(void("v1", "r1", day=DAY + 2))
    assert ledger.account.spent_by_month == {MARCH: 2_500}

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
    advancement,
    build,
    compile_file,
    day,
    give_back,
    issue_rule,
    level,
    line,
    loyalty,
    posted,
    program_file,
    purchase,
    void,
    why,
)

from processor import calendar
from processor.engine.loyalty import MONTH_SPEND_REASON, SPENT_MONTHS_KEPT
from processor.errors import InputFileError
from processor.limits import SPENT_MONTH_UNITS_MAX

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


# --------------------------------------------------------------------------- the monthly review

APRIL_FIRST = day("2026-04-01")


def monthly(rule_id: str = "monthly", **fields: Any) -> dict[str, Any]:
    """The workflow's rule: a tenth of a point for each dollar spent in the month before."""
    return issue_rule(rule_id, "month_spend", **{"multiplier": "0.1", **fields})


def reviewed(**loyalty_fields: Any) -> Ledger:
    """March's basket ($100.00) and a $25.00 purchase, with a month_spend rule."""
    ledger = Ledger(build(**loyalty_fields))
    ledger.one(basket())
    ledger.one(purchase("p2", line(amount=2_500), day=DAY + 3))
    return ledger


def test_a_transaction_passes_a_month_spend_rule_by() -> None:
    ledger = Ledger(build(issue=[issue_rule(), monthly()]))
    result = ledger.one(basket())
    assert why(result, "monthly") == (False, 0, MONTH_SPEND_REASON)
    assert posted(result) == [("regular", 100, "base")]


def test_the_review_issues_last_months_spend_at_the_rate_once() -> None:
    ledger = reviewed(issue=[issue_rule(), monthly()])
    april = ledger.job(APRIL_FIRST)
    assert posted(april) == [("regular", 12, "monthly")]  # $125.00 x 0.1, floored
    assert why(april, "monthly") == (True, 12, "")
    again = ledger.job(APRIL_FIRST + 9)
    assert posted(again) == []
    assert why(again, "monthly") == (False, 0, "last month reviewed already")
    may = ledger.job(day("2026-05-01"))  # nothing bought in April
    assert why(may, "monthly") == (False, 0, "no spend last month")
    assert ledger.account.rule_total["monthly"] == 1


def test_the_review_reads_spend_net_of_returns() -> None:
    ledger = reviewed(issue=[issue_rule(), monthly(fixed_amount="5")])
    ledger.one(give_back("r1", "p1", day=DAY + 4))  # $100.00 back: $25.00 spent
    april = ledger.job(APRIL_FIRST)
    assert posted(april) == [("regular", 2 + 5, "monthly")]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"transaction_minimum": "200.00"}, "below the month's minimum"),
        ({"levels": ["gold"]}, "not for level silver"),
        ({"end_date": "2026-02-28"}, "outside rule dates"),  # not in effect in March
    ],
)
def test_the_review_holds_the_rules_conditions(fields: dict[str, Any], reason: str) -> None:
    ledger = reviewed(issue=[issue_rule(), monthly(**fields)])
    april = ledger.job(APRIL_FIRST)
    assert posted(april) == []
    assert why(april, "monthly") == (False, 0, reason)


def test_points_of_the_review_count_toward_the_level_tests() -> None:
    # Ten points a dollar: $125.00 -> 1,250, past gold's 1,000: the tier review that
    # follows in the same run (a move by job) sees them.
    up = advancement("up", "silver", "gold", "1000", change="job")
    ledger = reviewed(issue=[monthly(multiplier="10")], movement=[up])
    april = ledger.job(APRIL_FIRST)
    assert posted(april) == [("regular", 1_250, "monthly")]
    assert ledger.account.level == "gold"


@pytest.mark.parametrize(
    ("fields", "path", "reason"),
    [
        ({"item_include": {"select": "all"}}, "item_include", "has no meaning for month_spend"),
        ({"tender": {"types": ["cash"]}}, "tender", "has no meaning for month_spend"),
        ({"max_transactions_per_day": 2}, "max_transactions_per_day", "has no meaning for"),
        ({"customer_eligibility": "transaction"}, "customer_eligibility", "must be card"),
        (
            {"time_rules": [{"type": "birthday_anniversary"}]},
            "time_rules",
            "have no meaning for month_spend",
        ),
        ({"multiplier": "0", "fixed_amount": "0"}, "multiplier", "no points"),
    ],
)
def test_a_month_spend_rule_refuses_what_a_month_cannot_have(
    fields: dict[str, Any], path: str, reason: str
) -> None:
    data = program_file(loyalty(issue=[monthly(**fields)]))
    with pytest.raises(InputFileError) as caught:
        compile_file(data)
    found = [p for p in caught.value.problems if p.path.endswith(f"issue_rules[0].{path}")]
    assert found and reason in found[0].reason, caught.value.problems


def test_a_months_spend_stops_at_its_limit() -> None:
    ledger = Ledger(build())
    ledger.one(basket())
    ledger.account.spent_by_month = {MARCH: SPENT_MONTH_UNITS_MAX - 100}
    ledger.one(purchase("p2", line(amount=1_000), day=DAY + 1))
    assert ledger.account.spent_by_month == {MARCH: SPENT_MONTH_UNITS_MAX}


def test_a_rule_ended_with_the_month_still_reviews_it() -> None:
    ledger = reviewed(issue=[issue_rule(), monthly(end_date="2026-03-31")])
    april = ledger.job(day("2026-04-04"))
    assert posted(april) == [("regular", 12, "monthly")]

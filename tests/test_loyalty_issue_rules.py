"""Issue rules of a loyalty program, one option at a time, with exact points and reasons."""

from __future__ import annotations

from typing import Any

import pytest
from loyalty_builders import (
    CARD,
    DAY,
    POINTS,
    PROGRAM,
    Ledger,
    account_at,
    build,
    compile_file,
    customer,
    day,
    engagement,
    engagement_rule,
    issue_rule,
    level,
    line,
    loyalty,
    posted,
    program_file,
    purchase,
    tenders,
    why,
)

from processor.engine.types import AccountState
from processor.errors import InputFileError, Problem

pytestmark = pytest.mark.usefixtures("every_engine")


def outcome(rule: dict[str, Any], request: Any, **program: Any) -> tuple[bool, int, str]:
    """(fired, points, reason) of ``rule`` for one request on a new card."""
    ledger = Ledger(build(issue=[rule], **program))
    return why(ledger.one(request), rule["id"])


# --------------------------------------------------------------------------- points


def test_points_precision_scales_units_and_multiplier_applies_to_cents() -> None:
    result = Ledger(build(issue=[issue_rule(multiplier="1.5")], points_precision=2)).one(
        purchase("p1", line(amount=1234))
    )
    assert why(result, "base") == (True, 1851, "")
    assert result.balances[POINTS] == 1851


def test_multiplier_floors_fractional_points_per_line() -> None:
    result = Ledger(build(issue=[issue_rule(multiplier="2")])).one(
        purchase("p1", line(1, 1234), line(2, 199))
    )
    assert why(result, "base") == (True, 24 + 3, "")


def test_fixed_amount_is_added_to_the_counted_points() -> None:
    assert outcome(issue_rule(fixed_amount="5"), purchase("p1", line(amount=1000))) == (
        True, 15, "")


def test_bonus_flag_posts_bonus_and_defaults_to_regular_for_purchases() -> None:
    compiled = build(issue=[issue_rule("plain"), issue_rule("extra", bonus=True)])
    result = Ledger(compiled).one(purchase("p1", line(amount=1000)))
    assert posted(result) == [("regular", 10, "plain"), ("bonus", 10, "extra")]


def test_bonus_flag_defaults_on_for_engagements_and_can_be_turned_off() -> None:
    compiled = build(issue=[engagement_rule("on"), engagement_rule("off", bonus=False)])
    result = Ledger(compiled).one(engagement("e1"))
    assert posted(result) == [("bonus", 10, "on"), ("regular", 10, "off")]


def test_item_quantity_counts_items_times_multiplier() -> None:
    rule = issue_rule(calculation="item_quantity", multiplier="3")
    assert outcome(rule, purchase("p1", line(1, 5000, quantity=2), line(2, 100))) == (
        True, 9, "")


def test_transactions_give_the_fixed_amount_per_purchase() -> None:
    rule = issue_rule("trx", "transactions", multiplier=None, fixed_amount="25")
    assert outcome(rule, purchase("p1", line(1, 99999), line(2, 5))) == (True, 25, "")


def test_engagements_give_the_fixed_amount_per_engagement() -> None:
    rule = engagement_rule(unlimited=True, issues_per_period=None)
    assert outcome(rule, engagement("e1", count=3)) == (True, 30, "")


def test_engagement_rules_ignore_purchases_and_purchase_rules_ignore_engagements() -> None:
    compiled = build(issue=[issue_rule(), engagement_rule()])
    ledger = Ledger(compiled)
    sale = ledger.one(purchase("p1"))
    watch = ledger.one(engagement("e1"))
    assert why(sale, "video") == (False, 0, "counts engagements, not purchases")
    assert why(watch, "base") == (False, 0, "counts purchases, not engagements")


def test_visits_count_once_per_day() -> None:
    rule = issue_rule("visit", "visits", multiplier=None, fixed_amount="5")
    ledger = Ledger(build(issue=[rule]))
    first, second = ledger.send(purchase("p1"), purchase("p2"))
    tomorrow = ledger.one(purchase("p3", day=DAY + 1))
    assert why(first, "visit") == (True, 5, "")
    assert why(second, "visit") == (False, 0, "visit already counted today")
    assert why(tomorrow, "visit") == (True, 5, "")
    assert tomorrow.balances[POINTS] == 10


def test_max_transactions_per_day_stops_the_rule_until_the_next_day() -> None:
    ledger = Ledger(build(issue=[issue_rule(max_transactions_per_day=2)]))
    results = ledger.send(purchase("p1"), purchase("p2"), purchase("p3"),
                          purchase("p4", day=DAY + 1))
    assert [why(result, "base") for result in results] == [
        (True, 10, ""), (True, 10, ""), (False, 0, "daily transaction limit reached"),
        (True, 10, ""),
    ]


def test_transaction_minimum_is_inclusive_of_the_basket_total() -> None:
    rule = issue_rule(transaction_minimum="20.00")
    assert outcome(rule, purchase("p1", line(1, 1500), line(2, 499))) == (
        False, 0, "below transaction minimum")
    assert outcome(rule, purchase("p1", line(1, 1500), line(2, 500))) == (True, 20, "")


@pytest.mark.parametrize(("include", "expected"), [(False, 10), (True, 15)])
def test_include_non_merchandise_counts_charges_like_shipping(include: bool, expected: int
                                                              ) -> None:
    rule = issue_rule(include_non_merchandise=include)
    sale = purchase("p1", line(1, 1000), line(2, 500, item="SHIP", merchandise=False))
    assert outcome(rule, sale) == (True, expected, "")


def test_allow_zero_price_lets_free_items_count_by_quantity() -> None:
    sale = purchase("p1", line(1, 0, item="FREEBIE", quantity=2))
    assert outcome(issue_rule(calculation="item_quantity"), sale) == (
        False, 0, "no qualifying items")
    assert outcome(issue_rule(calculation="item_quantity", allow_zero_price=True), sale) == (
        True, 2, "")


# --------------------------------------------------------------------------- engagements


def test_issues_per_period_caps_a_daily_engagement_and_resets_next_day() -> None:
    ledger = Ledger(build(issue=[engagement_rule(issues_per_period=2)]))
    results = ledger.send(engagement("e1", count=3), engagement("e2"),
                          engagement("e3", day=DAY + 1))
    assert [why(result, "video") for result in results] == [
        (True, 20, ""), (False, 0, "engagement limit reached"), (True, 10, ""),
    ]


def test_weekly_frequency_starts_a_new_period_on_monday() -> None:
    ledger = Ledger(build(issue=[engagement_rule(frequency="weekly")]))
    saturday, sunday, monday = ledger.send(
        engagement("e1"), engagement("e2", day=DAY + 1), engagement("e3", day=DAY + 2)
    )
    assert why(saturday, "video") == (True, 10, "")
    assert why(sunday, "video") == (False, 0, "engagement limit reached")
    assert why(monday, "video") == (True, 10, "")


def test_once_frequency_issues_one_time_only() -> None:
    ledger = Ledger(build(issue=[engagement_rule(frequency="once")]))
    first, later = ledger.send(engagement("e1", count=2), engagement("e2", day=DAY + 400))
    assert why(first, "video") == (True, 10, "")
    assert why(later, "video") == (False, 0, "engagement limit reached")


def test_unlimited_engagements_are_bounded_by_rule_count_limit_only() -> None:
    rule = engagement_rule(unlimited=True, issues_per_period=None, rule_count_limit=3)
    ledger = Ledger(build(issue=[rule]))
    results = ledger.send(engagement("e1", count=2), engagement("e2", count=2),
                          engagement("e3", day=DAY + 30))
    assert [why(result, "video") for result in results] == [
        (True, 20, ""), (True, 10, ""), (False, 0, "engagement limit reached"),
    ]
    assert ledger.account.rule_total == {"video": 3}


# --------------------------------------------------------------------------- customers


@pytest.mark.parametrize(
    ("eligibility", "card_lists", "sale_lists", "fires"),
    [
        ("card", {"vip"}, set(), True),
        ("card", set(), {"vip"}, False),
        ("transaction", set(), {"vip"}, True),
        ("transaction", {"vip"}, set(), False),
    ],
)
def test_customer_eligibility_picks_whose_audience_counts(
    eligibility: str, card_lists: set[str], sale_lists: set[str], fires: bool
) -> None:
    rule = issue_rule(customer_eligibility=eligibility, audience={"lists": [{"id": "vip"}]})
    state = AccountState(CARD, customer=customer(id="holder", audiences=card_lists))
    ledger = Ledger(build(issue=[rule]), state)
    result = ledger.one(purchase("p1", customer=customer(id="buyer", audiences=sale_lists)))
    assert why(result, "base") == ((True, 10, "") if fires else
                                   (False, 0, "customer not in audience"))


def test_audience_without_any_customer_is_traced() -> None:
    rule = issue_rule(audience={"lists": [{"id": "vip"}]})
    assert outcome(rule, purchase("p1")) == (False, 0, "no customer for the audience rule")


@pytest.mark.parametrize(
    ("listed", "audiences", "fires"),
    [
        ({"id": "vip", "type": "stratified", "strata": ["A"]}, {"vip:A"}, True),
        ({"id": "vip", "type": "stratified", "strata": ["A"]}, {"vip:B"}, False),
        ({"id": "vip", "type": "stratified", "strata": ["A"]}, {"vip"}, False),
        ({"id": "vip", "type": "stratified"}, {"vip:B"}, True),
        ({"id": "vip"}, {"vip"}, True),
        ({"id": "vip"}, {"news"}, False),
    ],
)
def test_audience_lists_and_strata(listed: dict[str, Any], audiences: set[str], fires: bool
                                   ) -> None:
    rule = issue_rule(audience={"lists": [listed]})
    state = AccountState(CARD, customer=customer(audiences=audiences))
    result = Ledger(build(issue=[rule]), state).one(purchase("p1"))
    assert why(result, "base") == ((True, 10, "") if fires else
                                   (False, 0, "customer not in audience"))


# --------------------------------------------------------------------------- time rules


def on_day(rule: dict[str, Any], text: str, state: AccountState | None = None,
           second: int = 12 * 3600) -> tuple[bool, int, str]:
    ledger = Ledger(build(issue=[rule]), *([state] if state else []))
    return why(ledger.one(purchase("p1", day=day(text), second=second)), rule["id"])


BIRTHDAY = issue_rule(time_rules=[{"type": "birthday_anniversary", "days_before": 3,
                                   "days_after": 2}])


@pytest.mark.parametrize(
    ("text", "fires"),
    [("2026-03-06", False), ("2026-03-07", True), ("2026-03-10", True),
     ("2026-03-12", True), ("2026-03-13", False)],
)
def test_birthday_anniversary_window_days_before_and_after(text: str, fires: bool) -> None:
    state = AccountState(CARD, customer=customer(birth_day=day("1990-03-10")))
    assert on_day(BIRTHDAY, text, state) == (
        (True, 10, "") if fires else (False, 0, "not the birthday anniversary"))


def test_birthday_window_crosses_the_new_year() -> None:
    state = AccountState(CARD, customer=customer(birth_day=day("1990-01-02")))
    assert on_day(BIRTHDAY, "2026-12-30", state) == (True, 10, "")
    assert on_day(BIRTHDAY, "2026-12-29", state) == (False, 0, "not the birthday anniversary")


def test_birthday_uses_the_transaction_customer_when_eligibility_is_transaction() -> None:
    rule = {**BIRTHDAY, "customer_eligibility": "transaction"}
    state = AccountState(CARD, customer=customer(birth_day=day("1990-03-10")))
    ledger = Ledger(build(issue=[rule]), state)
    stranger = customer(id="buyer", birth_day=day("1990-07-01"))
    result = ledger.one(purchase("p1", customer=stranger))
    assert why(result, "base") == (False, 0, "not the birthday anniversary")


def test_signup_anniversary_fires_on_the_day_only() -> None:
    rule = issue_rule(time_rules=[{"type": "signup_anniversary"}])
    state = AccountState(CARD, customer=customer(signup_day=day("2024-03-07")))
    assert on_day(rule, "2026-03-07", state) == (True, 10, "")
    assert on_day(rule, "2026-03-08", state) == (False, 0, "not the signup anniversary")


SATURDAY_MORNING = issue_rule(time_rules=[{"type": "bonus_period", "window": {
    "weekdays": ["sat"], "start_time": "08:00", "end_time": "12:00"}}])


@pytest.mark.parametrize(
    ("text", "second", "fires"),
    [("2026-03-07", 8 * 3600, True), ("2026-03-07", 12 * 3600 - 1, True),
     ("2026-03-07", 12 * 3600, False), ("2026-03-07", 8 * 3600 - 1, False),
     ("2026-03-08", 9 * 3600, False)],
)
def test_bonus_period_matches_weekdays_and_times(text: str, second: int, fires: bool) -> None:
    assert on_day(SATURDAY_MORNING, text, second=second) == (
        (True, 10, "") if fires else (False, 0, "outside bonus period"))


@pytest.mark.parametrize(
    ("second", "fires"),
    [(22 * 3600, True), (23 * 3600 + 1800, True), (0, True), (2 * 3600 - 1, True),
     (2 * 3600, False), (21 * 3600 + 3599, False), (12 * 3600, False)],
)
def test_bonus_period_across_midnight(second: int, fires: bool) -> None:
    rule = issue_rule(time_rules=[{"type": "bonus_period", "window": {
        "start_time": "22:00", "end_time": "02:00"}}])
    assert on_day(rule, "2026-03-07", second=second) == (
        (True, 10, "") if fires else (False, 0, "outside bonus period"))


@pytest.mark.parametrize(("text", "fires"),
                         [("2026-12-23", True), ("2026-12-24", False), ("2026-12-26", False),
                          ("2026-12-27", True)])
def test_blackout_period_stops_the_rule_on_its_dates(text: str, fires: bool) -> None:
    rule = issue_rule(time_rules=[{"type": "blackout_period", "window": {
        "start_date": "2026-12-24", "end_date": "2026-12-26"}}])
    assert on_day(rule, text) == ((True, 10, "") if fires else (False, 0, "blackout period"))


# --------------------------------------------------------------------------- items and tenders


BASKET = (
    line(1, 1000, "SHOE1", hierarchy=("APPAREL", "SHOES"), attributes=(("brand", "acme"),)),
    line(2, 2000, "SHOE2", hierarchy=("APPAREL", "SHOES"), attributes=(("brand", "other"),)),
    line(3, 4000, "GIFT", hierarchy=("GIFTCARDS",)),
    line(4, 8000, "HAT", hierarchy=("APPAREL", "HATS"), attributes=(("brand", "acme"),)),
)


@pytest.mark.parametrize(
    ("item_rule", "expected"),
    [
        ({"item_include": {"select": "all", "attributes": [{"name": "brand",
                                                            "values": ["acme"]}]}}, 90),
        ({"item_include": {"select": "hierarchy", "hierarchy": ["SHOES"]}}, 30),
        ({"item_include": {"select": "hierarchy", "hierarchy": ["SHOES"],
                           "attributes": [{"name": "brand", "values": ["acme"]}]}}, 10),
        ({"item_include": {"select": "items", "items": ["GIFT", "HAT"]}}, 120),
        ({"item_exclude": {"select": "hierarchy", "hierarchy": ["GIFTCARDS"]}}, 110),
        ({"item_exclude": {"select": "all", "attributes": [{"name": "brand",
                                                            "values": ["acme"]}]}}, 60),
        ({"item_exclude": {"select": "items", "items": ["SHOE1"]}}, 140),
        ({"item_include": {"select": "hierarchy", "hierarchy": ["APPAREL"]},
          "item_exclude": {"select": "hierarchy", "hierarchy": ["HATS"]}}, 30),
    ],
    ids=["include-all-attributes", "include-hierarchy", "include-hierarchy-attributes",
         "include-items", "exclude-hierarchy", "exclude-all-attributes", "exclude-items",
         "include-and-exclude"],
)
def test_item_include_and_exclude_select_the_counted_lines(item_rule: dict[str, Any],
                                                           expected: int) -> None:
    assert outcome(issue_rule(**item_rule), purchase("p1", *BASKET)) == (True, expected, "")


def test_item_include_matching_nothing_is_traced() -> None:
    rule = issue_rule(item_include={"select": "items", "items": ["NOPE"]})
    assert outcome(rule, purchase("p1", *BASKET)) == (False, 0, "no qualifying items")


def test_tender_rule_needs_one_of_its_tender_types() -> None:
    rule = issue_rule("cobrand", "transactions", multiplier=None, fixed_amount="25",
                      tender={"types": ["cobrand-visa"]})
    assert outcome(rule, purchase("p1", tenders=tenders("cash"))) == (
        False, 0, "tender type not eligible")
    assert outcome(rule, purchase("p1", tenders=tenders("cash", "cobrand-visa"))) == (
        True, 25, "")


# --------------------------------------------------------------------------- locations


@pytest.mark.parametrize(
    ("rule_fields", "store", "fires"),
    [
        ({"location_include": {"locations": ["S1", "S3"]}}, "S3", True),
        ({"location_include": {"locations": ["S1", "S3"]}}, "S2", False),
        ({"location_exclude": {"locations": ["S2"]}}, "S2", False),
        ({"location_exclude": {"locations": ["S2"]}}, "S4", True),
        ({"location_include": {"match": "all", "attributes": [
            {"name": "region", "values": ["east"]}, {"name": "format", "values": ["mall"]}]}},
         "S1", True),
        ({"location_include": {"match": "all", "attributes": [
            {"name": "region", "values": ["east"]}, {"name": "format", "values": ["mall"]}]}},
         "S2", False),
        ({"location_include": {"match": "any", "attributes": [
            {"name": "region", "values": ["east"]}, {"name": "format", "values": ["mall"]}]}},
         "S3", True),
        ({"location_include": {"match": "any", "attributes": [
            {"name": "region", "values": ["east"]}, {"name": "format", "values": ["mall"]}]}},
         "S4", False),
        ({"location_exclude": {"attributes": [{"name": "format", "values": ["outlet"]}]}},
         "S2", False),
        ({"location_exclude": {"attributes": [{"name": "format", "values": ["outlet"]}]}},
         "UNLISTED", True),
    ],
)
def test_location_include_and_exclude(rule_fields: dict[str, Any], store: str, fires: bool
                                      ) -> None:
    result = outcome(issue_rule(**rule_fields), purchase("p1", location=store))
    assert result == ((True, 10, "") if fires else (False, 0, "location not eligible"))


# --------------------------------------------------------------------------- levels and dates


def test_issue_rule_levels_apply_only_to_accounts_at_those_levels() -> None:
    rule = issue_rule("gold-bonus", levels=["gold"], bonus=True)
    compiled = build(issue=[issue_rule(), rule])
    silver = Ledger(compiled).one(purchase("p1"))
    gold = Ledger(compiled, account_at("gold")).one(purchase("p1"))
    assert why(silver, "gold-bonus") == (False, 0, "not for level silver")
    assert why(gold, "gold-bonus") == (True, 10, "")
    assert gold.balances[POINTS] == 20


@pytest.mark.parametrize(("text", "fires"),
                         [("2026-03-06", False), ("2026-03-07", True), ("2026-03-31", True),
                          ("2026-04-01", False)])
def test_rule_start_and_end_dates_are_inclusive(text: str, fires: bool) -> None:
    rule = issue_rule(start_date="2026-03-07", end_date="2026-03-31")
    assert on_day(rule, text) == ((True, 10, "") if fires else (False, 0, "outside rule dates"))


@pytest.mark.parametrize(
    ("fields", "text", "earns"),
    [
        ({"start_date": "2026-03-07"}, "2026-03-06", False),
        ({"start_date": "2026-03-07"}, "2026-03-07", True),
        ({"end_date": "2026-03-07"}, "2026-03-07", True),
        ({"end_date": "2026-03-07"}, "2026-03-08", False),
        ({"active": False}, "2026-03-07", False),
    ],
)
def test_program_dates_and_active_flag(fields: dict[str, Any], text: str, earns: bool) -> None:
    ledger = Ledger(build(**fields))
    result = ledger.one(purchase("p1", day=day(text)))
    if earns:
        assert result.balances[POINTS] == 10
    else:
        assert why(result, "") == (False, 0, "program not in effect")
        assert result.balances == {}
        assert PROGRAM not in ledger.accounts[CARD].loyalty


def test_card_required_refuses_points_without_the_card() -> None:
    ledger = Ledger(build(card_required=True))
    absent, present = ledger.send(purchase("p1", card_present=False), purchase("p2"))
    assert absent.status == "approved"
    assert why(absent, "") == (False, 0, "card required")
    assert present.balances[POINTS] == 10


# --------------------------------------------------------------------------- currency


def test_foreign_currency_is_converted_at_the_exchange_rate() -> None:
    ledger = Ledger(build(allow_foreign_currency=True))
    result = ledger.one(purchase("p1", line(amount=1999), currency="EUR", exchange_rate="1.10"))
    # 19.99 EUR x 1.10 = 21.989 USD, rounded to 21.99; one point per whole dollar
    assert why(result, "base") == (True, 21, "")
    assert ledger.receipts["p1"].lines[0].amount == 2199


def test_foreign_currency_to_a_zero_decimal_program_currency() -> None:
    ledger = Ledger(build(allow_foreign_currency=True, currency="JPY"))
    result = ledger.one(purchase("p1", line(amount=1000), currency="USD", exchange_rate="151.5"))
    assert why(result, "base") == (True, 1515, "")


@pytest.mark.parametrize(
    ("allow", "rate", "reason"),
    [(False, "1.10", "currency EUR not allowed"), (True, None, "exchange rate missing")],
)
def test_foreign_currency_refused_earns_nothing_but_the_sale_stands(
    allow: bool, rate: str | None, reason: str
) -> None:
    ledger = Ledger(build(allow_foreign_currency=allow))
    result = ledger.one(purchase("p1", currency="EUR", exchange_rate=rate))
    assert result.status == "approved"
    assert why(result, "") == (False, 0, reason)
    assert [entry.rule for entry in result.trace] == [""]


# --------------------------------------------------------------------------- accounts


def test_accounts_open_on_first_transaction_at_the_initial_level() -> None:
    ledger = Ledger(build(initial_level="gold"))
    ledger.one(purchase("p1"))
    assert ledger.account.level == "gold"
    assert ledger.account.created_day == DAY


def test_without_accounts_on_first_transaction_only_an_issued_card_earns() -> None:
    compiled = build(accounts_on_first_transaction=False)
    unissued = Ledger(compiled)
    result = unissued.one(purchase("p1"))
    assert why(result, "") == (False, 0, "card has no account in this program")
    assert unissued.accounts[CARD].loyalty == {}
    issued = Ledger(compiled)
    issued.issue(DAY - 10)
    assert issued.account.created_day == DAY - 10
    assert issued.one(purchase("p1")).balances[POINTS] == 10


# --------------------------------------------------------------------------- validation


def invalid(mutate: Any) -> list[Problem]:
    data = program_file(loyalty(), award_programs=[])
    mutate(data["loyalty_programs"][0], data)
    with pytest.raises(InputFileError) as caught:
        compile_file(data)
    assert str(caught.value).startswith("test.yaml: ")
    return caught.value.problems


def _set(**fields: Any) -> Any:
    def mutate(program: dict[str, Any], _: dict[str, Any]) -> None:
        program.update(fields)
    return mutate


def _rule(**fields: Any) -> Any:
    def mutate(program: dict[str, Any], _: dict[str, Any]) -> None:
        program["issue_rules"] = [issue_rule(**fields)]
    return mutate


P = "loyalty_programs[0]"
R = f"{P}.issue_rules[0]"
ISSUE_PROBLEMS = [
    (_set(currency="XXY"), f"{P}.currency", "unknown currency 'XXY'"),
    (_set(end_date="2025-12-31"), f"{P}.end_date", "is before start_date"),
    (_set(levels=[level("gold"), level("gold")]), f"{P}.levels",
     "level id 'gold' is used more than once"),
    (_set(initial_level="diamond"), f"{P}.initial_level", "unknown level 'diamond'"),
    (_set(award_program="nowhere"), f"{P}.award_program", "unknown award program 'nowhere'"),
    (_set(issue_rules=[issue_rule("a"), issue_rule("a")]), P, "rule id 'a' is used more than once"),
    (_rule(end_date="2025-12-31"), f"{R}.end_date", "is before start_date"),
    (_rule(levels=["diamond"]), f"{R}.levels[0]", "unknown level 'diamond'"),
    (_rule(fixed_amount="1.5"), f"{R}.fixed_amount",
     "1.5 has more decimals than points_precision 0 allows"),
    (_rule(transaction_minimum="1.234"), f"{R}.transaction_minimum",
     "amount in USD 1.234 has more than 2 decimal places"),
    (_rule(calculation="transactions", fixed_amount="5", multiplier="2"), f"{R}.multiplier",
     "has no meaning for transactions"),
    (_rule(calculation="visits"), f"{R}.fixed_amount", "must be above 0 for visits"),
    (_rule(multiplier="0"), f"{R}.multiplier", "and fixed_amount are both 0: no points"),
    (_rule(frequency="daily"), f"{R}.frequency", "applies only to engagements"),
    (_rule(unlimited=True), f"{R}.unlimited", "applies only to engagements"),
    (_rule(rule_count_limit=3), f"{R}.rule_count_limit", "applies only to engagements"),
    (_rule(calculation="engagements", multiplier=None, fixed_amount="5", unlimited=True),
     f"{R}.frequency", "is required for engagements"),
    (_rule(calculation="engagements", multiplier=None, fixed_amount="5", frequency="daily",
           unlimited=True, issues_per_period=2), f"{R}.issues_per_period",
     "conflicts with unlimited"),
    (_rule(calculation="engagements", multiplier=None, fixed_amount="5", frequency="daily"),
     f"{R}.issues_per_period", "is required unless unlimited"),
    (_rule(calculation="engagements", multiplier=None, fixed_amount="5", frequency="once",
           issues_per_period=2), f"{R}.issues_per_period", "must be 1 for a one-time frequency"),
    (_rule(time_rules=[{"type": "bonus_period"}]), f"{R}.time_rules[0].window",
     "is required for bonus_period"),
    (_rule(time_rules=[{"type": "birthday_anniversary", "window": {}}]),
     f"{R}.time_rules[0].window", "has no meaning for birthday_anniversary"),
    (_rule(time_rules=[{"type": "blackout_period", "days_before": 2, "window": {}}]),
     f"{R}.time_rules[0].days_before", "has no meaning for blackout_period"),
    (_rule(time_rules=[{"type": "bonus_period", "window": {"start_time": "10:00",
                                                          "end_time": "10:00"}}]),
     f"{R}.time_rules[0].window.end_time", "equals start_time: the window is empty"),
    (_rule(location_include={"locations": ["S9"]}), f"{R}.location_include.locations[0]",
     "unknown location 'S9'"),
    (_rule(location_exclude={}), f"{R}.location_exclude", "names no locations and no attributes"),
    (_rule(item_include={"select": "hierarchy"}), f"{R}.item_include.hierarchy",
     "must list at least one hierarchy node"),
    (_rule(item_exclude={"select": "items"}), f"{R}.item_exclude.items",
     "must list at least one item"),
    (_rule(item_include={"select": "all", "hierarchy": ["X"]}), f"{R}.item_include.hierarchy",
     "has no meaning with select 'all'"),
    (_rule(item_include={"select": "hierarchy", "hierarchy": ["X"], "items": ["Y"]}),
     f"{R}.item_include.items", "has no meaning with select 'hierarchy'"),
]


@pytest.mark.parametrize(("mutate", "path", "reason"), ISSUE_PROBLEMS,
                         ids=[f"{path}:{reason}" for _, path, reason in ISSUE_PROBLEMS])
def test_program_and_issue_rule_problems_name_their_field(mutate: Any, path: str, reason: str
                                                          ) -> None:
    assert Problem(path, reason) in invalid(mutate)

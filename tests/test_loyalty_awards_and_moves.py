"""Award rules and movement rules of a loyalty program, with exact points, codes and moves."""

from __future__ import annotations

from typing import Any

import pytest
from loyalty_builders import (
    AWARD,
    CARD,
    DAY,
    POINTS,
    PROGRAM,
    WALLET,
    Ledger,
    account_at,
    advancement,
    award_rule,
    build,
    compile_file,
    coupon_rule,
    day,
    issue_rule,
    line,
    loyalty,
    movement_rule,
    posted,
    program_file,
    purchase,
    trace,
    wallet,
    why,
)

from processor import calendar
from processor.engine.codes import award_code
from processor.engine.types import AccountState, AwardAccount, AwardIssue, LevelMove, TraceEntry
from processor.errors import InputFileError, Problem

pytestmark = pytest.mark.usefixtures("every_engine")


def dollars(amount: int, request_id: str = "p1", on: int = DAY) -> Any:
    """A purchase earning ``amount`` points at one point per dollar."""
    return purchase(request_id, line(amount=amount * 100), day=on)


def codes(rule: str, count: int, prefix: str = "", request_id: str = "p1") -> list[str]:
    return [
        award_code(prefix, PROGRAM, CARD, request_id, rule, ordinal) for ordinal in range(count)
    ]


# --------------------------------------------------------------------------- coupons


def test_coupons_are_issued_while_the_balance_reaches_the_threshold() -> None:
    ledger = Ledger(build(award=[coupon_rule(coupon_prefix="NW-")]))
    result = ledger.one(dollars(350))
    assert why(result, "coupon") == (True, 0, "3 issued")
    assert [issue.code for issue in result.awards] == codes("coupon", 3, "NW-")
    assert all(issue.code.startswith("NW-") for issue in result.awards)
    assert [(issue.kind, issue.points_cost) for issue in result.awards] == [("coupon", 100)] * 3
    assert posted(result) == [("regular", 350, "base")] + [("award_cost", -100, "coupon")] * 3
    assert result.balances[POINTS] == 50
    assert [(coupon.code, coupon.status) for coupon in ledger.account.awards] == [
        (code, "active") for code in codes("coupon", 3, "NW-")
    ]


def test_coupon_threshold_above_cost_leaves_the_remainder() -> None:
    result = Ledger(build(award=[coupon_rule(threshold="200", cost="100")])).one(dollars(350))
    assert why(result, "coupon") == (True, 0, "2 issued")
    assert result.balances[POINTS] == 150


def test_coupon_below_threshold_is_traced() -> None:
    result = Ledger(build(award=[coupon_rule()])).one(dollars(99))
    assert why(result, "coupon") == (False, 0, "below threshold")
    assert result.awards == []


def test_award_codes_are_the_same_for_the_same_request_and_differ_across_requests() -> None:
    compiled = build(award=[coupon_rule()])
    first = [issue.code for issue in Ledger(compiled).one(dollars(200)).awards]
    again = [issue.code for issue in Ledger(compiled).one(dollars(200)).awards]
    other = [issue.code for issue in Ledger(compiled).one(dollars(200, "p2")).awards]
    assert first == again == codes("coupon", 2)
    assert len(set(first)) == 2
    assert not set(first) & set(other)


def test_award_rules_apply_in_precedence_order_not_file_order() -> None:
    small = coupon_rule("small", precedence=2, threshold="50", cost="50")
    big = coupon_rule("big", precedence=1)
    result = Ledger(build(award=[small, big])).one(dollars(170))
    assert [issue.rule for issue in result.awards] == ["big", "small"]
    assert result.balances[POINTS] == 20


def test_award_rule_levels_limit_who_gets_the_award() -> None:
    compiled = build(award=[coupon_rule(levels=["gold"])])
    silver = Ledger(compiled).one(dollars(100))
    gold = Ledger(compiled, account_at("gold")).one(dollars(100))
    assert why(silver, "coupon") == (False, 0, "not for level silver")
    assert why(gold, "coupon") == (True, 0, "1 issued")


def test_award_rule_dates_bound_the_award() -> None:
    rule = coupon_rule(start_date="2026-03-08")
    assert why(Ledger(build(award=[rule])).one(dollars(100)), "coupon") == (
        False,
        0,
        "outside rule dates",
    )


def test_award_issued_by_job_waits_for_the_job() -> None:
    ledger = Ledger(build(award=[coupon_rule(issue="job")]))
    sale = ledger.one(dollars(250))
    assert why(sale, "coupon") == (False, 0, "issued by the award job")
    assert sale.awards == []
    job = ledger.job(DAY + 1)
    assert why(job, "coupon") == (True, 0, "2 issued")
    assert [issue.code for issue in job.awards] == codes("coupon", 2, request_id=f"job-1:{CARD}")
    assert job.balances[POINTS] == 50


def test_immediate_award_is_not_issued_again_by_the_job() -> None:
    ledger = Ledger(build(award=[coupon_rule()]))
    ledger.one(dollars(50))
    assert why(ledger.job(DAY + 1), "coupon") == (False, 0, "issued on posting")


def test_relative_award_expiry_expires_the_coupon() -> None:
    ledger = Ledger(build(award=[coupon_rule(expiry={"type": "relative", "after": "30 days"})]))
    assert ledger.one(dollars(100)).awards[0].expires_day == DAY + 30
    ledger.job(DAY + 29)
    assert ledger.account.awards[0].status == "active"
    ledger.job(DAY + 30)
    assert ledger.account.awards[0].status == "expired"


def test_program_award_expiry_takes_the_award_programs_expiry() -> None:
    compiled = build(
        award_programs=[wallet(award_expiry="6 months")],
        award_program=WALLET,
        award=[coupon_rule(expiry={"type": "program"})],
    )
    issued = Ledger(compiled).one(dollars(100)).awards[0]
    assert issued.expires_day == day("2026-09-07")


# --------------------------------------------------------------------------- e-awards


def e_award(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "cost_type": "fixed",
        "threshold": "500",
        "cost": "500",
        "amount": "10.00",
        "award_program": WALLET,
    }
    data.update(fields)
    return award_rule("credit", "e_award", **data)


def test_fixed_e_award_places_value_in_the_award_program() -> None:
    ledger = Ledger(build(award_programs=[wallet()], award=[e_award(coupon_prefix="EA-")]))
    result = ledger.one(dollars(1100))
    assert why(result, "credit") == (True, 0, "2 issued")
    assert result.balances[AWARD] == 2000
    assert result.balances[POINTS] == 100
    assert posted(result, "award_value") == [("e_award", 1000, "credit")] * 2
    assert result.awards[0] == AwardIssue(
        codes("credit", 1, "EA-")[0], "e_award", "credit", WALLET, 1000, 500, None
    )
    assert ledger.accounts[CARD].awards[WALLET].balance == 2000


def cashback(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "cost_type": "cashback",
        "threshold": "1000",
        "cost": "0",
        "award_factor": "0.004",
        "award_program": WALLET,
    }
    data.update(fields)
    return award_rule("cash", "e_award", **data)


@pytest.mark.parametrize(("reset", "charged", "left"), [(False, 1233, 1), (True, 1234, 0)])
def test_cashback_converts_points_by_award_factor_and_reset_balance(
    reset: bool, charged: int, left: int
) -> None:
    compiled = build(
        award_programs=[wallet()],
        award=[cashback(reset_balance=reset)],
        issue=[issue_rule(multiplier="100")],
    )
    result = Ledger(compiled).one(purchase("p1", line(amount=1234)))
    # 1234 points x 0.004 dollars = 4.936 dollars: 493 cents, worth 1232.5 points
    assert why(result, "cash") == (True, 0, "1 issued")
    assert result.balances[AWARD] == 493
    assert [(issue.value, issue.points_cost) for issue in result.awards] == [(493, charged)]
    assert ("award_cost", -charged, "cash") in posted(result)
    assert result.balances[POINTS] == left


def test_cashback_below_minimum_award_is_not_issued() -> None:
    compiled = build(
        award_programs=[wallet()],
        award=[cashback(minimum_award="5.00")],
        issue=[issue_rule(multiplier="100")],
    )
    result = Ledger(compiled).one(purchase("p1", line(amount=1234)))
    assert why(result, "cash") == (False, 0, "below minimum award")
    assert result.balances[POINTS] == 1234
    assert AWARD not in result.balances


def test_award_program_refusing_value_leaves_the_sale_approved() -> None:
    ledger = Ledger(build(award_programs=[wallet(allow_reloads=False)], award=[e_award()]))
    first = ledger.one(dollars(600))
    second = ledger.one(dollars(600, "p2"))
    assert why(first, "credit") == (True, 0, "1 issued")
    assert second.status == "approved"
    assert why(second, "credit") == (False, 0, "RELOADS_NOT_ALLOWED")
    assert second.awards == []
    assert posted(second) == [("regular", 600, "base")]
    assert second.balances[POINTS] == 700


def test_award_program_out_of_its_dates_refuses_the_award() -> None:
    state = AccountState(CARD, awards={WALLET: AwardAccount(WALLET)})
    compiled = build(award_programs=[wallet(end_date="2026-03-06")], award=[e_award()])
    result = Ledger(compiled, state).one(dollars(600))
    assert result.status == "approved"
    assert why(result, "credit") == (False, 0, "PROGRAM_INACTIVE")


def certificate_rule(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "certificate": "coffee",
        "threshold": "300",
        "cost": "300",
        "award_program": WALLET,
    }
    data.update(fields)
    return award_rule("coffee-rule", "certificate", **data)


def test_certificate_rule_issues_into_the_award_program_with_points_cost() -> None:
    rule = certificate_rule(expiry={"type": "relative", "after": "30 days"})
    ledger = Ledger(build(award_programs=[wallet()], award=[rule]))
    result = ledger.one(dollars(650))
    assert why(result, "coffee-rule") == (True, 0, "2 issued")
    assert [(a.kind, a.rule, a.program, a.points_cost, a.expires_day) for a in result.awards] == [
        ("certificate", "coffee", WALLET, 300, DAY + 30)
    ] * 2
    assert posted(result) == [("regular", 650, "base")] + [("award_cost", -300, "coffee-rule")] * 2
    held = ledger.accounts[CARD].awards[WALLET].awards
    assert [award.code for award in held] == [award.code for award in result.awards]
    assert result.balances[POINTS] == 50


def test_certificate_rule_codes_carry_the_rules_coupon_prefix() -> None:
    compiled = build(
        award_programs=[wallet(coupon_prefix="W")], award=[certificate_rule(coupon_prefix="CERT-")]
    )
    (issued,) = Ledger(compiled).one(dollars(300)).awards
    assert issued.code.startswith("CERT-")


# --------------------------------------------------------------------------- movement tests


def moves(result: Any) -> list[tuple[str, str, str, str]]:
    return [(m.rule, m.kind, m.from_level, m.to_level) for m in result.moves]


def test_advancement_on_ytd_points_moves_at_the_threshold() -> None:
    ledger = Ledger(build(movement=[advancement("to-gold", "silver", "gold", "100")]))
    below, reached = ledger.send(dollars(99), dollars(1, "p2"))
    assert why(below, "to-gold") == (False, 0, "test not met")
    assert below.moves == []
    assert why(reached, "to-gold") == (True, 0, "advancement")
    assert reached.moves == [LevelMove(PROGRAM, "to-gold", "advancement", "silver", "gold")]
    assert ledger.account.level == "gold"
    assert ledger.account.level_since_day == DAY


def test_ytd_test_counts_this_year_only_and_ltd_counts_all_years() -> None:
    last_year = day("2025-12-01")

    def state() -> AccountState:
        account = account_at("silver", opened=last_year)
        account.loyalty[PROGRAM].earned_ytd = account.loyalty[PROGRAM].earned_ltd = 95
        return account

    ytd = Ledger(build(movement=[advancement("up", "silver", "gold", "100")]), state())
    ltd = Ledger(build(movement=[advancement("up", "silver", "gold", "100", "ltd")]), state())
    assert why(ytd.one(dollars(5)), "up") == (False, 0, "test not met")
    assert ytd.account.earned_ytd == 5
    assert moves(ltd.one(dollars(5))) == [("up", "advancement", "silver", "gold")]


def test_since_last_move_counts_points_after_the_last_move_only() -> None:
    state = account_at("gold")
    state.loyalty[PROGRAM].earned_ltd = state.loyalty[PROGRAM].earned_ytd = 1000
    rule = advancement("up", "gold", "platinum", "100", "since_last_move")
    ledger = Ledger(build(movement=[rule]), state)
    below, reached = ledger.send(dollars(99), dollars(1, "p2"))
    assert why(below, "up") == (False, 0, "test not met")
    assert moves(reached) == [("up", "advancement", "gold", "platinum")]
    assert ledger.account.earned_since_move == 0


@pytest.mark.parametrize(("december", "moved"), [(90, True), (89, False)])
def test_average_per_month_averages_the_months_before_this_one(december: int, moved: bool) -> None:
    state = account_at("silver")
    march = calendar.month_index(DAY)
    state.loyalty[PROGRAM].earned_by_month = {
        march - 3: december,
        march - 2: 120,
        march - 1: 90,
        march - 4: 1000,
    }
    rule = movement_rule(
        "up",
        test={"type": "average_per_month", "months": 3},
        from_level="silver",
        to_level="gold",
        threshold="100",
    )
    result = Ledger(build(movement=[rule]), state).one(dollars(500))
    assert (result.moves != []) is moved


def test_time_since_last_move_waits_for_the_period_and_the_points() -> None:
    rule = movement_rule(
        "up",
        test={"type": "time_since_last_move", "period": "6 months"},
        from_level="silver",
        to_level="gold",
        threshold="10",
    )
    compiled = build(movement=[rule])
    opened = day("2025-09-07")
    early = Ledger(compiled, account_at("silver", opened=opened)).one(
        dollars(10, on=day("2026-03-06"))
    )
    short = Ledger(compiled, account_at("silver", opened=opened)).one(dollars(9))
    due = Ledger(compiled, account_at("silver", opened=opened)).one(dollars(10))
    assert why(early, "up") == (False, 0, "test not met")
    assert why(short, "up") == (False, 0, "test not met")
    assert moves(due) == [("up", "advancement", "silver", "gold")]


def test_movement_precedence_picks_the_first_rule_that_passes() -> None:
    gold = advancement("to-gold", "silver", "gold", "100", precedence=2)
    platinum = advancement("to-platinum", "silver", "platinum", "500", precedence=1)
    compiled = build(movement=[gold, platinum])
    assert moves(Ledger(compiled).one(dollars(600))) == [
        ("to-platinum", "advancement", "silver", "platinum")
    ]
    assert moves(Ledger(compiled).one(dollars(200))) == [
        ("to-gold", "advancement", "silver", "gold")
    ]


def test_movement_by_job_waits_for_the_job() -> None:
    ledger = Ledger(build(movement=[advancement("up", "silver", "gold", "100", change="job")]))
    sale = ledger.one(dollars(150))
    assert why(sale, "up") == (False, 0, "changes level by job")
    assert ledger.account.level == "silver"
    job = ledger.job(DAY + 1)
    assert moves(job) == [("up", "advancement", "silver", "gold")]
    assert ledger.account.level_since_day == DAY + 1


def test_movement_cost_is_charged_when_the_level_changes() -> None:
    ledger = Ledger(build(movement=[advancement("up", "silver", "gold", "100", cost="50")]))
    result = ledger.one(dollars(150))
    assert why(result, "up") == (True, -50, "advancement")
    assert posted(result) == [("regular", 150, "base"), ("move_cost", -50, "up")]
    assert result.balances[POINTS] == 100


def test_movement_cost_above_the_balance_blocks_the_move() -> None:
    ledger = Ledger(build(movement=[advancement("up", "silver", "gold", "100", cost="200")]))
    result = ledger.one(dollars(150))
    assert why(result, "up") == (False, 0, "balance below the move's points cost")
    assert ledger.account.level == "silver"


KEEP_GOLD = movement_rule(
    "keep",
    "sustain",
    level="gold",
    threshold="100",
    change="job",
    test={"type": "time_since_last_move", "period": "12 months"},
)
DROP_GOLD = movement_rule(
    "drop",
    "demotion",
    from_level="gold",
    to_level="silver",
    threshold="100",
    change="job",
    precedence=2,
    test={"type": "time_since_last_move", "period": "12 months"},
)


def test_sustain_keeps_the_level_and_restarts_the_clock() -> None:
    state = account_at("gold", opened=day("2025-03-07"))
    state.loyalty[PROGRAM].earned_since_move = 150
    ledger = Ledger(build(movement=[KEEP_GOLD, DROP_GOLD]), state)
    job = ledger.job(DAY)
    assert moves(job) == [("keep", "sustain", "gold", "gold")]
    assert (ledger.account.level, ledger.account.level_since_day) == ("gold", DAY)
    assert ledger.account.earned_since_move == 0
    later = ledger.job(day("2026-09-07"))
    assert later.moves == []
    assert why(later, "drop") == (False, 0, "test not met")


def test_time_based_demotion_by_job_when_too_few_points_were_earned() -> None:
    state = account_at("gold", opened=day("2025-03-07"))
    state.loyalty[PROGRAM].earned_since_move = 99
    ledger = Ledger(build(movement=[KEEP_GOLD, DROP_GOLD]), state)
    job = ledger.job(DAY)
    assert moves(job) == [("drop", "demotion", "gold", "silver")]
    assert ledger.account.level == "silver"


def test_points_demotion_runs_by_job_only() -> None:
    drop = movement_rule(
        "drop",
        "demotion",
        from_level="gold",
        to_level="silver",
        threshold="100",
        change="job",
        test={"type": "ytd"},
    )
    ledger = Ledger(build(movement=[drop]), account_at("gold"))
    sale = ledger.one(dollars(50))
    assert why(sale, "drop") == (False, 0, "changes level by job")
    assert moves(ledger.job(DAY + 1)) == [("drop", "demotion", "gold", "silver")]


EXTENDED_DROP = movement_rule(
    "drop",
    "demotion",
    from_level="platinum",
    to_level="gold",
    threshold="500",
    change="job",
    test={"type": "time_since_last_move", "period": "12 months"},
    extension={
        "test": {"type": "average_per_month", "months": 3},
        "threshold": "50",
        "extend_by": "3 months",
    },
)


def test_extension_keeps_the_level_once_for_extend_by() -> None:
    drop = EXTENDED_DROP
    state = account_at("platinum", opened=day("2025-03-07"))
    march = calendar.month_index(DAY)
    state.loyalty[PROGRAM].earned_by_month = {march + back: 60 for back in range(-3, 4)}
    ledger = Ledger(build(movement=[drop]), state)
    first = ledger.job(DAY)
    assert moves(first) == [("drop", "extension", "platinum", "platinum")]
    assert trace(first, "drop")[0] == TraceEntry(PROGRAM, "drop", True, 0, "extended")
    assert ledger.account.sustain_extended_until == day("2026-06-07")
    held = ledger.job(day("2026-06-06"))
    assert why(held, "drop") == (False, 0, "sustain period extended")
    dropped = ledger.job(day("2026-06-07"))
    assert moves(dropped) == [("drop", "demotion", "platinum", "gold")]
    assert ledger.account.sustain_extended_until is None


def test_extension_is_traced_once_as_extended() -> None:
    state = account_at("platinum", opened=day("2025-03-07"))
    march = calendar.month_index(DAY)
    state.loyalty[PROGRAM].earned_by_month = {march - back: 60 for back in range(1, 4)}
    result = Ledger(build(movement=[EXTENDED_DROP]), state).job(DAY)
    assert trace(result, "drop") == [TraceEntry(PROGRAM, "drop", True, 0, "extended")]


def test_one_purchase_can_cascade_across_two_levels() -> None:
    compiled = build(
        movement=[
            advancement("to-gold", "silver", "gold", "100"),
            advancement("to-platinum", "gold", "platinum", "300", precedence=2),
        ]
    )
    ledger = Ledger(compiled)
    result = ledger.one(dollars(350))
    assert moves(result) == [
        ("to-gold", "advancement", "silver", "gold"),
        ("to-platinum", "advancement", "gold", "platinum"),
    ]
    assert ledger.account.level == "platinum"


def test_levels_move_on_points_earned_not_on_the_spendable_balance() -> None:
    compiled = build(
        award=[coupon_rule()], movement=[advancement("to-gold", "silver", "gold", "150")]
    )
    ledger = Ledger(compiled)
    first, second = ledger.send(dollars(100), dollars(60, "p2"))
    assert first.balances[POINTS] == 0
    assert why(first, "to-gold") == (False, 0, "test not met")
    assert second.balances[POINTS] == 60
    assert moves(second) == [("to-gold", "advancement", "silver", "gold")]
    assert ledger.account.earned_ytd == 160


# --------------------------------------------------------------------------- validation


def invalid(**loyalty_fields: Any) -> list[Problem]:
    data = program_file(loyalty(**loyalty_fields), award_programs=[wallet()])
    with pytest.raises(InputFileError) as caught:
        compile_file(data)
    return caught.value.problems


A = "loyalty_programs[0].award_rules[0]"
M = "loyalty_programs[0].movement_rules[0]"
COUPON = coupon_rule()
AWARD_PROBLEMS = [
    ({**COUPON, "end_date": "2025-01-01"}, f"{A}.end_date", "is before start_date"),
    ({**COUPON, "levels": ["diamond"]}, f"{A}.levels[0]", "unknown level 'diamond'"),
    (
        {**COUPON, "threshold": "100.5"},
        f"{A}.threshold",
        "100.5 has more decimals than points_precision 0 allows",
    ),
    ({**COUPON, "cost": "0"}, f"{A}.cost", "must be above 0"),
    ({**COUPON, "threshold": "50"}, f"{A}.threshold", "50 is below cost 100"),
    ({**COUPON, "cost_type": "cashback"}, f"{A}.cost_type", "applies only to e_award rules"),
    ({**COUPON, "award_program": WALLET}, f"{A}.award_program", "has no meaning for coupon rules"),
    ({**COUPON, "amount": "5.00"}, f"{A}.amount", "applies only to e_award rules"),
    ({**COUPON, "reset_balance": True}, f"{A}.reset_balance", "applies only to cashback e-awards"),
    (
        {**COUPON, "expiry": {"type": "relative"}},
        f"{A}.expiry.after",
        "is required for relative expiry",
    ),
    (
        {**COUPON, "expiry": {"type": "program"}},
        f"{A}.expiry.type",
        "program expiry needs an award_program",
    ),
    (e_award(award_program=None), f"{A}.award_program", "is required for e_award rules"),
    (e_award(award_program="vault"), f"{A}.award_program", "unknown award program 'vault'"),
    (e_award(amount=None), f"{A}.amount", "is required for a fixed e-award"),
    (
        e_award(amount="10.001"),
        f"{A}.amount",
        "amount in USD 10.001 has more than 2 decimal places",
    ),
    (e_award(award_factor="0.01"), f"{A}.award_factor", "applies only to cashback e-awards"),
    (e_award(minimum_award="1.00"), f"{A}.minimum_award", "applies only to cashback e-awards"),
    (cashback(award_factor=None), f"{A}.award_factor", "is required for a cashback e-award"),
    (certificate_rule(certificate=None), f"{A}.certificate", "is required for certificate rules"),
    (certificate_rule(certificate="tea"), f"{A}.certificate", "unknown certificate 'tea'"),
]
MOVE_PROBLEMS = [
    (advancement("m", "silver", "diamond", "10"), f"{M}.to_level", "unknown level 'diamond'"),
    (advancement("m", None, "gold", "10"), f"{M}.from_level", "is required for advancement rules"),
    (
        {**advancement("m", "silver", "gold", "10"), "level": "gold"},
        f"{M}.level",
        "has no meaning for advancement rules",
    ),
    ({**KEEP_GOLD, "from_level": "gold"}, f"{M}.from_level", "has no meaning for sustain rules"),
    (
        advancement("m", "gold", "silver", "10"),
        f"{M}.to_level",
        "an advancement must go to a higher level",
    ),
    ({**DROP_GOLD, "to_level": "platinum"}, f"{M}.to_level", "a demotion must go to a lower level"),
    (
        advancement("m", "silver", "gold", "10", "average_per_month"),
        f"{M}.test.months",
        "is required for average_per_month",
    ),
    (
        {**advancement("m", "silver", "gold", "10"), "test": {"type": "ytd", "months": 3}},
        f"{M}.test.months",
        "has no meaning for ytd",
    ),
    (
        advancement("m", "silver", "gold", "10", "time_since_last_move"),
        f"{M}.test.period",
        "is required for time_since_last_move",
    ),
    (
        {**advancement("m", "silver", "gold", "10"), "test": {"type": "ltd", "period": "1 year"}},
        f"{M}.test.period",
        "has no meaning for ltd",
    ),
    (
        advancement("m", "silver", "gold", "10.5"),
        f"{M}.threshold",
        "10.5 has more decimals than points_precision 0 allows",
    ),
    (
        advancement("m", "silver", "gold", "10", cost="0.5"),
        f"{M}.cost",
        "0.5 has more decimals than points_precision 0 allows",
    ),
    (
        {**DROP_GOLD, "test": {"type": "ytd"}, "change": "immediately"},
        f"{M}.change",
        "a demotion on a points test must run by job, or every new account would be demoted "
        "at once",
    ),
    (
        {
            **advancement("m", "silver", "gold", "10"),
            "extension": {"test": {"type": "ytd"}, "threshold": "1", "extend_by": "1 month"},
        },
        f"{M}.extension",
        "extends sustain and demotion rules only",
    ),
    (
        {
            **DROP_GOLD,
            "extension": {
                "test": {"type": "time_since_last_move", "period": "1 month"},
                "threshold": "1",
                "extend_by": "1 month",
            },
        },
        f"{M}.extension.test.type",
        "must be a points test",
    ),
    (
        {
            **DROP_GOLD,
            "extension": {"test": {"type": "ytd"}, "threshold": "1.5", "extend_by": "1 month"},
        },
        f"{M}.extension.threshold",
        "1.5 has more decimals than points_precision 0 allows",
    ),
]


@pytest.mark.parametrize(
    ("rule", "path", "reason"),
    AWARD_PROBLEMS,
    ids=[f"{path}:{reason}" for _, path, reason in AWARD_PROBLEMS],
)
def test_award_rule_problems_name_their_field(rule: dict[str, Any], path: str, reason: str) -> None:
    rule = {key: value for key, value in rule.items() if value is not None}
    assert Problem(path, reason) in invalid(award=[rule])


@pytest.mark.parametrize(
    ("rule", "path", "reason"),
    MOVE_PROBLEMS,
    ids=[f"{path}:{reason}" for _, path, reason in MOVE_PROBLEMS],
)
def test_movement_rule_problems_name_their_field(
    rule: dict[str, Any], path: str, reason: str
) -> None:
    rule = {key: value for key, value in rule.items() if value is not None}
    assert Problem(path, reason) in invalid(movement=[rule])


def test_two_award_rules_with_one_precedence_are_refused() -> None:
    problems = invalid(award=[coupon_rule("a"), coupon_rule("b")])
    assert Problem("loyalty_programs[0].award_rules", "precedence '1' is used more than once") in (
        problems
    )


def test_overlapping_movement_rules_from_one_level_need_distinct_precedence() -> None:
    problems = invalid(
        movement=[
            advancement("a", "silver", "gold", "10"),
            advancement("b", "silver", "platinum", "20"),
        ]
    )
    assert (
        Problem(
            "loyalty_programs[0].movement_rules[1].precedence",
            "equals that of movement_rules[0] from the same level with overlapping dates: "
            "the order would be undefined",
        )
        in problems
    )


def test_movement_rules_with_one_precedence_and_separate_dates_are_accepted() -> None:
    first = advancement("a", "silver", "gold", "10", end_date="2026-06-30")
    second = advancement("b", "silver", "gold", "20", start_date="2026-07-01")
    assert (
        len(compile_file(program_file(loyalty(movement=[first, second]))).loyalty[0].movement) == 2
    )


def test_an_unknown_target_level_reads_with_file_and_path() -> None:
    with pytest.raises(InputFileError) as caught:
        compile_file(program_file(loyalty(movement=[advancement("m", "silver", "diamond", "1")])))
    assert str(caught.value) == f"test.yaml: {M}.to_level: unknown level 'diamond'"

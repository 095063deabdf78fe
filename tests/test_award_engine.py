"""Award accounts in the engine: issuing, funding, redeeming, expiring and extending."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor import calendar
from processor.engine import awards
from processor.engine.codes import award_code
from processor.engine.types import (
    AccountState,
    Award,
    AwardAccount,
    AwardIssue,
    AwardRedemption,
    Declined,
    LoyaltyAccount,
    Posting,
    Purchase,
    RequestBase,
    Result,
    TraceEntry,
    ValueLot,
)
from processor.program.award import AwardProgram

MONDAY = calendar.days_from_civil(2024, 6, 3)
SUNDAY = MONDAY + 6
NOON = 12 * 3600
VERSION = 7
KEY = "award:rewards"
DIRECTORY = {
    "S1": {"region": "north", "format": "mall"},
    "S2": {"region": "south", "format": "street"},
    "S3": {"region": "north", "format": "street"},
}


def certificate(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "ten-off",
        "name": "Ten off",
        "offer": {"id": "ten", "name": "Ten off", "type": "amount_off", "value": "10"},
        "precedence": 1,
        "max_redemptions": 1,
    }
    data.update(changes)
    return data


def make_program(**changes: Any) -> AwardProgram:
    data: dict[str, Any] = {
        "id": "rewards",
        "name": "Rewards",
        "start_date": "2024-01-01",
        "certificates": [certificate()],
    }
    data.update(changes)
    return AwardProgram.model_validate(data)


def request(
    day: int = MONDAY, second: int = NOON, location: str = "S1", **changes: Any
) -> AwardRedemption:
    return AwardRedemption(
        id=changes.pop("id", "r1"),
        account="card-1",
        day=day,
        second=second,
        location=location,
        **changes,
    )


def fresh() -> tuple[AccountState, Result]:
    return AccountState(account="card-1"), Result(id="r1", account="card-1")


def funded(program: AwardProgram, *lots: ValueLot) -> AccountState:
    state = AccountState(account="card-1")
    account = awards.ensure_account(program, state, MONDAY - 30)
    account.value = list(lots)
    account.funded = True
    return state


def issued(program: AwardProgram, state: AccountState, certificate_id: str = "ten-off") -> str:
    return awards.issue_certificate(
        program, certificate_id, state, request(id="issue"), Result("issue", "card-1"), VERSION
    ).code


def declined(reason: str) -> Any:
    return pytest.raises(Declined, match=f"^{reason}")


# --------------------------------------------------------------------------- accounts


def test_ensure_account_opens_an_account_that_expires_after_account_expiry() -> None:
    program = make_program(account_expiry="1 year")
    state, _ = fresh()
    account = awards.ensure_account(program, state, MONDAY)
    assert account == AwardAccount(
        program="rewards",
        status="active",
        created_day=MONDAY,
        expires_day=calendar.days_from_civil(2025, 6, 3),
        last_activity_day=MONDAY,
    )
    assert state.awards == {"rewards": account}


def test_ensure_account_keeps_an_existing_account() -> None:
    program = make_program(account_expiry="1 year")
    state, _ = fresh()
    first = awards.ensure_account(program, state, MONDAY)
    assert awards.ensure_account(program, state, MONDAY + 50) is first
    assert first.created_day == MONDAY


def test_account_without_account_expiry_never_expires() -> None:
    state, _ = fresh()
    assert awards.ensure_account(make_program(), state, MONDAY).expires_day is None


# --------------------------------------------------------------------------- activation


def activation_program(**changes: Any) -> AwardProgram:
    certificates = [
        certificate(id="welcome", precedence=2, issue="account_activated", expiry="1 month"),
        certificate(
            id="first",
            precedence=1,
            issue="account_activated",
            expiry="7 days",
            unlimited_redemptions=True,
            max_redemptions=None,
        ),
        certificate(id="register", precedence=3, issue="card_registered", expiry="1 year"),
        certificate(id="ten-off", precedence=4),
    ]
    settings: dict[str, Any] = {"initial_balance": "5.00", "award_expiry": "90 days"}
    settings.update(changes)
    return make_program(certificates=certificates, **settings)


def test_activation_credits_the_initial_balance() -> None:
    program = activation_program()
    state, result = fresh()
    awards.on_account_activated(program, state, request(), result, VERSION)
    assert state.awards["rewards"].value == [ValueLot(MONDAY, 500, MONDAY + 90, "initial")]
    assert state.awards["rewards"].funded is True
    assert result.postings == [
        Posting("rewards", VERSION, "award_value", "initial", 500, "", MONDAY)
    ]
    assert result.balances == {KEY: 500}


def test_activation_issues_its_certificates_in_precedence_order() -> None:
    program = activation_program()
    state, result = fresh()
    awards.on_account_activated(program, state, request(), result, VERSION)
    assert result.awards == [
        AwardIssue(
            award_code("", "rewards", "card-1", "r1", "first", 0),
            "certificate",
            "first",
            "rewards",
            0,
            0,
            MONDAY + 7,
        ),
        AwardIssue(
            award_code("", "rewards", "card-1", "r1", "welcome", 0),
            "certificate",
            "welcome",
            "rewards",
            0,
            0,
            calendar.days_from_civil(2024, 7, 3),
        ),
    ]
    held = state.awards["rewards"].awards
    assert [(award.rule, award.redemptions_left) for award in held] == [
        ("first", -1),
        ("welcome", 1),
    ]


def test_activation_happens_once_per_account() -> None:
    program = activation_program()
    state, result = fresh()
    awards.on_account_activated(program, state, request(), result, VERSION)
    again = Result("r2", "card-1")
    awards.on_account_activated(program, state, request(id="r2"), again, VERSION)
    assert again.postings == []
    assert again.awards == []
    assert state.awards["rewards"].balance == 500
    assert len(state.awards["rewards"].awards) == 2


def test_activation_of_a_program_not_in_effect_does_nothing() -> None:
    program = activation_program(active=False)
    state, result = fresh()
    awards.on_account_activated(program, state, request(), result, VERSION)
    assert state.awards == {}
    assert result.postings == []
    assert result.trace == [
        TraceEntry("rewards", "account_activated", fired=False, reason="PROGRAM_INACTIVE")
    ]


def test_activation_before_the_start_date_does_nothing() -> None:
    program = activation_program(start_date="2024-07-01")
    state, result = fresh()
    awards.on_account_activated(program, state, request(), result, VERSION)
    assert state.awards == {}


def test_activation_after_the_end_date_does_nothing() -> None:
    program = activation_program(end_date="2024-06-02")
    state, result = fresh()
    awards.on_account_activated(program, state, request(), result, VERSION)
    assert state.awards == {}


def test_activation_without_an_initial_balance_posts_nothing() -> None:
    program = activation_program(initial_balance=None)
    state, result = fresh()
    awards.on_account_activated(program, state, request(), result, VERSION)
    assert result.postings == []
    assert state.awards["rewards"].funded is False


def test_card_registration_issues_only_its_certificates_once() -> None:
    program = activation_program()
    state, result = fresh()
    awards.on_card_registered(program, state, request(), result, VERSION)
    assert [issue.rule for issue in result.awards] == ["register"]
    assert result.awards[0].expires_day == calendar.days_from_civil(2025, 6, 3)
    assert result.postings == []
    again = Result("r2", "card-1")
    awards.on_card_registered(program, state, request(id="r2"), again, VERSION)
    assert again.awards == []


def test_card_registration_on_an_expired_account_does_nothing() -> None:
    program = activation_program(account_expiry="1 day")
    state, result = fresh()
    awards.ensure_account(program, state, MONDAY - 1)
    awards.on_card_registered(program, state, request(), result, VERSION)
    assert result.awards == []
    assert result.trace == [
        TraceEntry("rewards", "card_registered", fired=False, reason="ACCOUNT_EXPIRED")
    ]


# --------------------------------------------------------------------------- issuing


def test_issued_certificate_code_derives_from_prefix_program_request_and_ordinal() -> None:
    program = make_program(coupon_prefix="RW-")
    state, result = fresh()
    first = awards.issue_certificate(program, "ten-off", state, request(), result, VERSION)
    second = awards.issue_certificate(program, "ten-off", state, request(), result, VERSION)
    assert first.code == award_code("RW-", "rewards", "card-1", "r1", "ten-off", 0)
    assert second.code == award_code("RW-", "rewards", "card-1", "r1", "ten-off", 1)
    assert first.code.startswith("RW-") and len(first.code) == len("RW-") + 16
    assert first.code != second.code


def test_issued_certificate_is_held_and_reported() -> None:
    program = make_program()
    state, result = fresh()
    award = awards.issue_certificate(
        program, "ten-off", state, request(), result, VERSION, source="gold-rule", points_cost=250
    )
    assert award == Award(award.code, "certificate", "ten-off", "rewards", MONDAY, None, 1)
    assert state.awards["rewards"].awards == [award]
    assert result.awards == [
        AwardIssue(award.code, "certificate", "ten-off", "rewards", 0, 250, None)
    ]
    assert result.trace == [TraceEntry("rewards", "ten-off", fired=True, reason="gold-rule")]
    assert result.postings == []


def test_issuer_expiry_wins_over_certificate_and_program_expiry() -> None:
    program = make_program(award_expiry="90 days")
    state, result = fresh()
    award = awards.issue_certificate(
        program, "ten-off", state, request(), result, VERSION, expires_day=MONDAY + 3
    )
    assert award.expires_day == MONDAY + 3


def test_certificate_expiry_wins_over_program_expiry() -> None:
    program = make_program(
        award_expiry="90 days",
        certificates=[certificate(issue="card_registered", expiry="2 weeks")],
    )
    state, result = fresh()
    award = awards.issue_certificate(program, "ten-off", state, request(), result, VERSION)
    assert award.expires_day == MONDAY + 14


def test_on_demand_certificate_falls_back_to_program_award_expiry() -> None:
    program = make_program(award_expiry="90 days")
    state, result = fresh()
    award = awards.issue_certificate(program, "ten-off", state, request(), result, VERSION)
    assert award.expires_day == MONDAY + 90


def test_unlimited_certificate_is_issued_with_unlimited_redemptions() -> None:
    program = make_program(
        certificates=[certificate(unlimited_redemptions=True, max_redemptions=None)]
    )
    state, result = fresh()
    award = awards.issue_certificate(program, "ten-off", state, request(), result, VERSION)
    assert award.redemptions_left == -1


def test_issuing_an_unknown_certificate_is_declined() -> None:
    state, result = fresh()
    with declined("UNKNOWN_CERTIFICATE"):
        awards.issue_certificate(make_program(), "nope", state, request(), result, VERSION)


def test_issuing_from_an_inactive_program_is_declined() -> None:
    state, result = fresh()
    with declined("PROGRAM_INACTIVE"):
        awards.issue_certificate(
            make_program(active=False), "ten-off", state, request(), result, VERSION
        )


def test_issuing_into_an_expired_account_is_declined() -> None:
    program = make_program(account_expiry="1 week")
    state, result = fresh()
    awards.ensure_account(program, state, MONDAY - 7)
    with declined("ACCOUNT_EXPIRED"):
        awards.issue_certificate(program, "ten-off", state, request(), result, VERSION)


# --------------------------------------------------------------------------- e-award value


def test_add_value_credits_an_e_award_lot() -> None:
    program = make_program(award_expiry="90 days")
    state, result = fresh()
    assert awards.add_value(program, state, 1250, request(), result, VERSION, source="cash") == ""
    assert state.awards["rewards"].value == [ValueLot(MONDAY, 1250, MONDAY + 90, "cash")]
    assert result.postings == [
        Posting("rewards", VERSION, "award_value", "e_award", 1250, "cash", MONDAY)
    ]
    assert result.balances == {KEY: 1250}


def test_add_value_honours_the_issuer_expiry() -> None:
    program = make_program(award_expiry="90 days")
    state, result = fresh()
    awards.add_value(
        program, state, 100, request(), result, VERSION, source="x", expires_day=MONDAY + 5
    )
    assert state.awards["rewards"].value[0].expires_day == MONDAY + 5


def test_add_value_without_award_expiry_never_expires() -> None:
    state, result = fresh()
    awards.add_value(make_program(), state, 100, request(), result, VERSION, source="x")
    assert state.awards["rewards"].value[0].expires_day is None


def test_reloads_are_refused_once_funded_when_not_allowed() -> None:
    program = make_program(allow_reloads=False)
    state, result = fresh()
    assert awards.add_value(program, state, 100, request(), result, VERSION, source="a") == ""
    before, result_before = copy.deepcopy(state), copy.deepcopy(result)
    refusal = awards.add_value(program, state, 100, request(), result, VERSION, source="b")
    assert refusal == "RELOADS_NOT_ALLOWED"
    assert state == before
    assert result == result_before


def test_reloads_add_value_again_when_allowed() -> None:
    program = make_program(allow_reloads=True)
    state, result = fresh()
    awards.add_value(program, state, 100, request(), result, VERSION, source="a")
    assert awards.add_value(program, state, 40, request(), result, VERSION, source="b") == ""
    assert result.balances == {KEY: 140}


def test_initial_balance_counts_as_the_one_funding_without_reloads() -> None:
    program = make_program(initial_balance="5")
    state, result = fresh()
    awards.on_account_activated(program, state, request(), result, VERSION)
    refusal = awards.add_value(program, state, 100, request(), result, VERSION, source="a")
    assert refusal == "RELOADS_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("changes", "amount", "reason"),
    [
        ({"active": False}, 100, "PROGRAM_INACTIVE"),
        ({"end_date": "2024-05-31"}, 100, "PROGRAM_INACTIVE"),
        ({}, 0, "INVALID_AMOUNT"),
        ({}, -5, "INVALID_AMOUNT"),
    ],
)
def test_add_value_refuses_without_changing_anything(
    changes: dict[str, Any], amount: int, reason: str
) -> None:
    program = make_program(**changes)
    state, result = fresh()
    refusal = awards.add_value(program, state, amount, request(), result, VERSION, source="x")
    assert refusal == reason
    assert state == AccountState(account="card-1")
    assert result == Result(id="r1", account="card-1")


def test_add_value_to_an_expired_account_is_refused() -> None:
    program = make_program(account_expiry="30 days", allow_reloads=True)
    state, result = fresh()
    awards.ensure_account(program, state, MONDAY - 30)
    before = copy.deepcopy(state)
    refusal = awards.add_value(program, state, 100, request(), result, VERSION, source="x")
    assert refusal == "ACCOUNT_EXPIRED"
    assert state == before


def test_redeem_value_spends_the_soonest_expiring_lot_first() -> None:
    program = make_program()
    state = funded(
        program,
        ValueLot(MONDAY - 20, 300, None, "a"),
        ValueLot(MONDAY - 10, 200, MONDAY + 40, "b"),
        ValueLot(MONDAY - 5, 100, MONDAY + 10, "c"),
    )
    result = Result("r1", "card-1")
    awards.redeem_value(program, state, 250, request(), result, VERSION)
    assert state.awards["rewards"].value == [
        ValueLot(MONDAY - 20, 300, None, "a"),
        ValueLot(MONDAY - 10, 50, MONDAY + 40, "b"),
    ]
    assert result.postings == [
        Posting("rewards", VERSION, "award_value", "redeem", -250, "", MONDAY)
    ]
    assert result.balances == {KEY: 350}


def test_redeem_value_spends_the_oldest_first_among_equal_expiry() -> None:
    program = make_program()
    state = funded(
        program,
        ValueLot(MONDAY - 5, 100, None, "young"),
        ValueLot(MONDAY - 9, 100, None, "old"),
    )
    awards.redeem_value(program, state, 150, request(), Result("r1", "card-1"), VERSION)
    assert state.awards["rewards"].value == [ValueLot(MONDAY - 5, 50, None, "young")]


def test_redeem_value_expires_lapsed_value_before_spending() -> None:
    program = make_program()
    state = funded(program, ValueLot(MONDAY - 9, 100, MONDAY, "gone"))
    result = Result("r1", "card-1")
    with declined("INSUFFICIENT_BALANCE"):
        awards.redeem_value(program, state, 50, request(), result, VERSION)


def test_redeem_value_beyond_the_balance_is_declined() -> None:
    program = make_program()
    state = funded(program, ValueLot(MONDAY - 9, 100, None, "a"))
    with declined("INSUFFICIENT_BALANCE"):
        awards.redeem_value(program, state, 101, request(), Result("r1", "card-1"), VERSION)


def test_redeem_value_without_an_account_is_declined() -> None:
    state, result = fresh()
    with declined("INSUFFICIENT_BALANCE"):
        awards.redeem_value(make_program(), state, 1, request(), result, VERSION)


@pytest.mark.parametrize("amount", [0, -1])
def test_redeem_value_of_a_non_positive_amount_is_declined(amount: int) -> None:
    program = make_program()
    state = funded(program, ValueLot(MONDAY, 100, None, "a"))
    with declined("INVALID_AMOUNT"):
        awards.redeem_value(program, state, amount, request(), Result("r1", "card-1"), VERSION)


def test_redeem_value_from_an_inactive_program_is_declined() -> None:
    program = make_program(end_date="2024-06-02")
    state = funded(program, ValueLot(MONDAY, 100, None, "a"))
    with declined("PROGRAM_INACTIVE"):
        awards.redeem_value(program, state, 10, request(), Result("r1", "card-1"), VERSION)


def test_redeem_value_from_an_expired_account_is_declined() -> None:
    program = make_program(account_expiry="30 days")
    state = funded(program, ValueLot(MONDAY, 100, None, "a"))
    with declined("ACCOUNT_EXPIRED"):
        awards.redeem_value(program, state, 10, request(), Result("r1", "card-1"), VERSION)


def test_card_required_declines_a_redemption_without_the_card() -> None:
    program = make_program(card_required=True)
    state = funded(program, ValueLot(MONDAY, 100, None, "a"))
    absent = request(card_present=False)
    with declined("CARD_REQUIRED"):
        awards.redeem_value(program, state, 10, absent, Result("r1", "card-1"), VERSION)
    awards.redeem_value(program, state, 10, request(), Result("r1", "card-1"), VERSION)
    assert state.awards["rewards"].balance == 90


def purchase(currency: str) -> Purchase:
    return Purchase(
        id="p1",
        account="card-1",
        day=MONDAY,
        second=NOON,
        location="S1",
        currency=currency,
        exchange_rate="1.08",
    )


def test_foreign_currency_sale_cannot_spend_value_unless_allowed() -> None:
    program = make_program()
    state = funded(program, ValueLot(MONDAY, 100, None, "a"))
    with declined("FOREIGN_CURRENCY"):
        awards.redeem_value(program, state, 10, purchase("EUR"), Result("p1", "card-1"), VERSION)
    awards.redeem_value(program, state, 10, purchase("USD"), Result("p1", "card-1"), VERSION)
    assert state.awards["rewards"].balance == 90


def test_foreign_currency_sale_spends_value_when_allowed() -> None:
    program = make_program(allow_foreign_currency=True)
    state = funded(program, ValueLot(MONDAY, 100, None, "a"))
    awards.redeem_value(program, state, 10, purchase("EUR"), Result("p1", "card-1"), VERSION)
    assert state.awards["rewards"].balance == 90


# --------------------------------------------------------------------------- codes


def coupon(code: str = "CP-1", **changes: Any) -> Award:
    fields: dict[str, Any] = {
        "code": code,
        "kind": "coupon",
        "rule": "coupon-rule",
        "program": "loyal",
        "issued_day": MONDAY - 1,
        "expires_day": MONDAY + 10,
        "redemptions_left": 1,
    }
    fields.update(changes)
    return Award(**fields)


def with_coupon(award: Award) -> AccountState:
    state = AccountState(account="card-1")
    state.loyalty["loyal"] = LoyaltyAccount(
        program="loyal",
        level="base",
        created_day=0,
        level_since_day=0,
        last_activity_day=0,
        awards=[award],
    )
    return state


def redeem(
    programs: dict[str, AwardProgram], state: AccountState, code: str, at: RequestBase
) -> Result:
    result = Result(at.id, "card-1")
    awards.redeem_code(programs, state, at, code, DIRECTORY, result, VERSION)
    return result


def test_find_award_searches_award_and_loyalty_accounts() -> None:
    program = make_program()
    state = with_coupon(coupon())
    code = issued(program, state)
    assert awards.find_award(state, code) is state.awards["rewards"].awards[0]
    assert awards.find_award(state, "CP-1") is state.loyalty["loyal"].awards[0]
    assert awards.find_award(state, "missing") is None


def test_redeeming_a_certificate_uses_one_redemption_and_posts_nothing() -> None:
    program = make_program(certificates=[certificate(max_redemptions=2)])
    state, _ = fresh()
    code = issued(program, state)
    result = redeem({"rewards": program}, state, code, request())
    award = state.awards["rewards"].awards[0]
    assert (award.redemptions_left, award.status) == (1, "active")
    assert result.redeemed == [code]
    assert result.postings == []
    assert result.trace == [TraceEntry("rewards", "ten-off", fired=True, reason="redeemed")]


def test_last_redemption_marks_the_certificate_redeemed() -> None:
    program = make_program()
    state, _ = fresh()
    code = issued(program, state)
    redeem({"rewards": program}, state, code, request())
    award = state.awards["rewards"].awards[0]
    assert (award.redemptions_left, award.status) == (0, "redeemed")
    with declined("AWARD_REDEEMED"):
        redeem({"rewards": program}, state, code, request())


def test_unlimited_certificate_stays_unlimited_after_redemption() -> None:
    program = make_program(
        certificates=[certificate(unlimited_redemptions=True, max_redemptions=None)]
    )
    state, _ = fresh()
    code = issued(program, state)
    for _ in range(5):
        redeem({"rewards": program}, state, code, request())
    award = state.awards["rewards"].awards[0]
    assert (award.redemptions_left, award.status) == (-1, "active")


def test_unknown_code_is_declined() -> None:
    state, _ = fresh()
    with declined("UNKNOWN_AWARD"):
        redeem({}, state, "NOPE", request())


def test_void_award_is_unknown() -> None:
    state = with_coupon(coupon(status="void"))
    with declined("UNKNOWN_AWARD"):
        redeem({}, state, "CP-1", request())


def test_certificate_no_longer_offered_is_unknown() -> None:
    program = make_program()
    state, _ = fresh()
    code = issued(program, state)
    without = make_program(certificates=[certificate(id="other")])
    with declined("UNKNOWN_AWARD"):
        redeem({"rewards": without}, state, code, request())
    with declined("UNKNOWN_AWARD"):
        redeem({}, state, code, request())


def test_award_expired_on_its_expiry_day_is_declined() -> None:
    state = with_coupon(coupon(expires_day=MONDAY))
    with declined("AWARD_EXPIRED"):
        redeem({}, state, "CP-1", request())
    redeem({}, state, "CP-1", request(day=MONDAY - 1))


def test_award_marked_expired_is_declined() -> None:
    state = with_coupon(coupon(status="expired"))
    with declined("AWARD_EXPIRED"):
        redeem({}, state, "CP-1", request())


def test_coupon_ignores_time_and_location_and_uses_its_redemption() -> None:
    state = with_coupon(coupon())
    result = redeem({}, state, "CP-1", request(day=SUNDAY, location="anywhere"))
    assert result.redeemed == ["CP-1"]
    assert result.trace == [TraceEntry("loyal", "coupon-rule", fired=True, reason="redeemed")]
    assert state.loyalty["loyal"].awards[0].status == "redeemed"
    with declined("AWARD_REDEEMED"):
        redeem({}, state, "CP-1", request())


def rule(kind: str, **window: Any) -> dict[str, Any]:
    return {"name": f"{kind} rule", "type": kind, **window}


def certificate_with(**changes: Any) -> tuple[AwardProgram, AccountState, str]:
    program = make_program(
        certificates=[certificate(unlimited_redemptions=True, max_redemptions=None, **changes)]
    )
    state, _ = fresh()
    return program, state, issued(program, state)


def test_blackout_window_refuses_a_certificate_on_sunday() -> None:
    program, state, code = certificate_with(time_rules=[rule("blackout", weekdays=["sun"])])
    with declined("NOT_ELIGIBLE_NOW"):
        redeem({"rewards": program}, state, code, request(day=SUNDAY))
    redeem({"rewards": program}, state, code, request(day=MONDAY))


def test_eligibility_window_admits_only_its_hours() -> None:
    window = rule("eligibility", weekdays=["mon"], start_time="09:00", end_time="11:00")
    program, state, code = certificate_with(time_rules=[window])
    redeem({"rewards": program}, state, code, request(second=9 * 3600))
    with declined("NOT_ELIGIBLE_NOW"):
        redeem({"rewards": program}, state, code, request(second=11 * 3600))
    with declined("NOT_ELIGIBLE_NOW"):
        redeem({"rewards": program}, state, code, request(day=MONDAY + 1, second=10 * 3600))


def test_any_eligibility_window_is_enough() -> None:
    windows = [rule("eligibility", weekdays=["sat"]), rule("eligibility", weekdays=["sun"])]
    program, state, code = certificate_with(time_rules=windows)
    redeem({"rewards": program}, state, code, request(day=SUNDAY))
    with declined("NOT_ELIGIBLE_NOW"):
        redeem({"rewards": program}, state, code, request(day=MONDAY))


def test_blackout_wins_inside_an_eligibility_window() -> None:
    windows = [
        rule("eligibility", start_date="2024-06-01", end_date="2024-06-30"),
        rule("blackout", start_date="2024-06-03", end_date="2024-06-03"),
    ]
    program, state, code = certificate_with(time_rules=windows)
    with declined("NOT_ELIGIBLE_NOW"):
        redeem({"rewards": program}, state, code, request(day=MONDAY))
    redeem({"rewards": program}, state, code, request(day=MONDAY + 1))
    with declined("NOT_ELIGIBLE_NOW"):
        redeem({"rewards": program}, state, code, request(day=calendar.days_from_civil(2024, 7, 1)))


def test_location_include_refuses_other_stores() -> None:
    program, state, code = certificate_with(location_include={"locations": ["S1"]})
    redeem({"rewards": program}, state, code, request(location="S1"))
    with declined("NOT_ELIGIBLE_HERE"):
        redeem({"rewards": program}, state, code, request(location="S2"))


def test_location_exclude_by_attributes_refuses_matching_stores() -> None:
    exclude = {
        "attributes": [
            {"name": "region", "values": ["north"]},
            {"name": "format", "values": ["street"]},
        ],
        "match": "all",
    }
    program, state, code = certificate_with(location_exclude=exclude)
    with declined("NOT_ELIGIBLE_HERE"):
        redeem({"rewards": program}, state, code, request(location="S3"))
    redeem({"rewards": program}, state, code, request(location="S1"))
    redeem({"rewards": program}, state, code, request(location="S2"))


def test_certificate_of_an_ended_program_cannot_be_redeemed() -> None:
    _, state, code = certificate_with()
    ended = make_program(
        end_date="2024-06-02",
        certificates=[certificate(unlimited_redemptions=True, max_redemptions=None)],
    )
    with declined("PROGRAM_INACTIVE"):
        redeem({"rewards": ended}, state, code, request())


def test_certificate_needs_the_card_when_the_program_requires_it() -> None:
    program, state, code = certificate_with()
    strict = program.model_copy(update={"card_required": True})
    with declined("CARD_REQUIRED"):
        redeem({"rewards": strict}, state, code, request(card_present=False))


# --------------------------------------------------------------------------- expiry


def test_expire_awards_removes_lapsed_lots_with_an_expire_posting() -> None:
    program = make_program()
    state = funded(
        program,
        ValueLot(MONDAY - 9, 100, MONDAY, "a"),
        ValueLot(MONDAY - 8, 70, MONDAY + 1, "b"),
    )
    result = Result("job", "card-1")
    awards.expire_awards(program, state, MONDAY, result, VERSION)
    assert state.awards["rewards"].value == [ValueLot(MONDAY - 8, 70, MONDAY + 1, "b")]
    assert result.postings == [
        Posting("rewards", VERSION, "award_value", "expire", -100, "a", MONDAY)
    ]
    assert result.balances == {KEY: 70}


def test_expire_awards_marks_lapsed_certificates_expired() -> None:
    program = make_program(award_expiry="10 days")
    state, _ = fresh()
    issued(program, state)
    result = Result("job", "card-1")
    awards.expire_awards(program, state, MONDAY + 9, result, VERSION)
    assert state.awards["rewards"].awards[0].status == "active"
    awards.expire_awards(program, state, MONDAY + 10, result, VERSION)
    assert state.awards["rewards"].awards[0].status == "expired"
    assert result.trace == [TraceEntry("rewards", "ten-off", fired=True, reason="expired")]
    assert result.postings == []


def test_expired_account_forfeits_all_value_and_certificates() -> None:
    program = make_program(account_expiry="30 days")
    state = funded(program, ValueLot(MONDAY - 30, 400, None, "a"))
    account = state.awards["rewards"]
    account.awards.append(coupon("C-9", kind="certificate", program="rewards", expires_day=None))
    result = Result("job", "card-1")
    awards.expire_awards(program, state, MONDAY, result, VERSION)
    assert account.status == "expired"
    assert account.value == []
    assert account.awards[0].status == "expired"
    assert result.postings == [
        Posting("rewards", VERSION, "award_value", "expire", -400, "a", MONDAY)
    ]
    assert result.balances == {KEY: 0}


def test_expire_awards_is_idempotent_and_ignores_cards_without_an_account() -> None:
    program = make_program()
    state = funded(program, ValueLot(MONDAY - 9, 100, MONDAY, "a"))
    awards.expire_awards(program, state, MONDAY, Result("job", "card-1"), VERSION)
    again = Result("job", "card-1")
    awards.expire_awards(program, state, MONDAY, again, VERSION)
    assert again == Result("job", "card-1")
    empty, nothing = fresh()
    awards.expire_awards(program, empty, MONDAY, nothing, VERSION)
    assert empty == AccountState(account="card-1")
    assert nothing == Result(id="r1", account="card-1")


def test_activity_extends_award_expiry_when_the_program_says_so() -> None:
    program = make_program(award_expiry="30 days", extend_expiry_on_activity=True)
    state = funded(
        program,
        ValueLot(MONDAY - 20, 100, MONDAY + 10, "short"),
        ValueLot(MONDAY - 20, 100, MONDAY + 90, "long"),
        ValueLot(MONDAY - 20, 100, None, "forever"),
        ValueLot(MONDAY - 20, 100, MONDAY, "lapsed"),
    )
    account = state.awards["rewards"]
    account.awards = [
        coupon("A", kind="certificate", program="rewards", expires_day=MONDAY + 5),
        coupon(
            "B", kind="certificate", program="rewards", expires_day=MONDAY + 5, status="redeemed"
        ),
    ]
    awards.touch_activity(program, state, MONDAY)
    assert [lot.expires_day for lot in account.value] == [MONDAY + 30, MONDAY + 90, None, MONDAY]
    assert [award.expires_day for award in account.awards] == [MONDAY + 30, MONDAY + 5]
    assert account.last_activity_day == MONDAY


def test_activity_keeps_fixed_expiry_when_extension_is_off() -> None:
    program = make_program(award_expiry="30 days")
    state = funded(program, ValueLot(MONDAY - 20, 100, MONDAY + 10, "short"))
    awards.touch_activity(program, state, MONDAY)
    assert state.awards["rewards"].value[0].expires_day == MONDAY + 10
    assert state.awards["rewards"].last_activity_day == MONDAY


def test_activity_on_a_card_without_an_account_opens_none() -> None:
    state, _ = fresh()
    awards.touch_activity(make_program(), state, MONDAY)
    assert state.awards == {}


# --------------------------------------------------------------------------- properties

operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "redeem", "expire", "touch"]),
        st.integers(min_value=-5, max_value=2000),
        st.integers(min_value=0, max_value=40),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.booleans())
def test_balance_always_equals_the_sum_of_award_value_postings(
    steps: list[tuple[str, int, int]], reloads: bool
) -> None:
    program = make_program(
        award_expiry="15 days", extend_expiry_on_activity=True, allow_reloads=reloads
    )
    state = AccountState(account="card-1")
    posted = 0
    day = MONDAY
    for number, (operation, amount, days_later) in enumerate(steps):
        day += days_later // 4
        attempt, result = copy.deepcopy(state), Result(f"r{number}", "card-1")
        at = request(id=f"r{number}", day=day)
        try:
            _apply(program, attempt, operation, amount, at, result)
        except Declined:
            continue
        state = attempt
        posted += sum(posting.amount for posting in result.postings)
        assert all(posting.balance == "award_value" for posting in result.postings)
        if KEY in result.balances:
            assert result.balances[KEY] == state.awards["rewards"].balance
        account = state.awards.get("rewards")
        assert posted == (account.balance if account else 0)
        assert all(lot.amount > 0 for lot in (account.value if account else []))


def _apply(
    program: AwardProgram,
    state: AccountState,
    operation: str,
    amount: int,
    at: AwardRedemption,
    result: Result,
) -> None:
    if operation == "add":
        awards.add_value(program, state, amount, at, result, VERSION, source="p")
    elif operation == "redeem":
        awards.redeem_value(program, state, amount, at, result, VERSION)
    elif operation == "expire":
        awards.expire_awards(program, state, at.day, result, VERSION)
    else:
        awards.touch_activity(program, state, at.day)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=6), st.integers(min_value=0, max_value=12))
def test_redemptions_never_exceed_max_redemptions(allowed: int, attempts: int) -> None:
    program = make_program(certificates=[certificate(max_redemptions=allowed)])
    state, _ = fresh()
    code = issued(program, state)
    succeeded = 0
    for _ in range(attempts):
        attempt = copy.deepcopy(state)
        try:
            redeem({"rewards": program}, attempt, code, request())
        except Declined as refusal:
            assert refusal.reason == "AWARD_REDEEMED"
            continue
        state = attempt
        succeeded += 1
    assert succeeded == min(allowed, attempts)
    assert state.awards["rewards"].awards[0].redemptions_left == allowed - succeeded

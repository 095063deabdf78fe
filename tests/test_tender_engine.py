"""The stored-value engine: every operation, every option it honours, every decline reason."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor import calendar
from processor.engine.tender import (
    apply_tender,
    credit_back,
    debit_back,
    debit_basket,
    expire_tender,
    merge_tender,
    release_hold,
)
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

DAY = calendar.days_from_civil(2024, 3, 1)
VERSION = 3


def program(**options: Any) -> TenderProgram:
    header = {"id": "gift", "name": "Gift card", "start_date": "2024-01-01"}
    return TenderProgram.model_validate({**header, **options})


def request(op: str, amount: int = 0, day: int = DAY, **fields: Any) -> TenderRequest:
    ident = fields.pop("id", f"{op}-{day}-{amount}")
    return TenderRequest(ident, "card-1", day, op=op, amount=amount, **fields)  # type: ignore[arg-type]


def posting(kind: str, amount: int, day: int = DAY) -> Posting:
    return Posting("gift", VERSION, "tender", kind, amount, day=day)


def run(
    tender: TenderProgram, state: AccountState, sent: TenderRequest
) -> tuple[AccountState, Result]:
    """Apply a request the way the orchestrator does: to a copy, kept only if approved."""
    work = copy.deepcopy(state)
    result = Result(sent.id, sent.account)
    apply_tender(tender, work, sent, result, VERSION)
    return work, result


def refuse(call: Callable[[AccountState, Result], object], state: AccountState) -> Result:
    """Call an engine function that must decline; checks it posted nothing and said why."""
    work = copy.deepcopy(state)
    result = Result("r", state.account)
    with pytest.raises(Declined) as caught:
        call(work, result)
    assert result.postings == []
    assert result.tender is not None
    assert result.tender.approved is False
    assert result.tender.reason == caught.value.reason
    assert result.tender.approved_amount == 0
    return result


def declined(tender: TenderProgram, state: AccountState, sent: TenderRequest) -> str:
    result = refuse(lambda work, out: apply_tender(tender, work, sent, out, VERSION), state)
    assert result.tender is not None
    return result.tender.reason


def active(balance: int, **fields: Any) -> AccountState:
    """A card whose tender account was activated on DAY with ``balance``."""
    account = TenderAccount(
        status="active", balance=balance, book_value=balance, activated_day=DAY, usage_day=DAY
    )
    for name, value in fields.items():
        setattr(account, name, value)
    return AccountState("card-1", tender=account)


def fresh() -> AccountState:
    return AccountState("card-1")


def balance_of(state: AccountState) -> int:
    assert state.tender is not None
    return state.tender.balance


# --------------------------------------------------------------------------- activation


def test_activation_loads_the_amount_and_the_initial_balance() -> None:
    tender = program(initial_balance="5.00", account_expiry="1 year")
    state, result = run(tender, fresh(), request("activate", 2500))
    assert state.tender == TenderAccount(
        status="active",
        balance=3000,
        book_value=3000,
        activated_day=DAY,
        expires_day=calendar.days_from_civil(2025, 3, 1),
        usage_day=DAY,
    )
    assert result.postings == [posting("activate", 2500), posting("initial", 500)]
    assert result.tender == TenderDecision("activate", True, 2500, 3000, 3000)
    assert result.balances == {"tender": 3000}


def test_initial_book_value_is_the_book_value_of_the_initial_balance() -> None:
    tender = program(initial_balance="5.00", initial_book_value="1.00")
    state, _ = run(tender, fresh(), request("activate", 2500))
    assert state.tender is not None
    assert (state.tender.balance, state.tender.book_value) == (3000, 2600)


def test_activation_of_an_imported_inactive_account_keeps_the_account() -> None:
    state = AccountState("card-1", tender=TenderAccount(status="inactive"))
    activated, result = run(program(), state, request("activate", 100))
    assert balance_of(activated) == 100
    assert result.postings == [posting("activate", 100)]


def test_activation_with_nothing_loaded_and_no_initial_balance_opens_an_empty_account() -> None:
    state, result = run(program(), fresh(), request("activate", 0))
    assert state.tender is not None and state.tender.status == "active"
    assert result.postings == []
    assert result.tender == TenderDecision("activate", True, 0, 0, 0)


def test_activation_below_min_activation_amount_is_declined() -> None:
    tender = program(min_activation_amount="10.00")
    assert declined(tender, fresh(), request("activate", 999)) == "BELOW_MINIMUM_ACTIVATION"


def test_activation_at_min_activation_amount_counting_the_initial_balance_is_approved() -> None:
    tender = program(min_activation_amount="10.00", initial_balance="4.00")
    state, _ = run(tender, fresh(), request("activate", 600))
    assert balance_of(state) == 1000


def test_activation_below_min_balance_is_declined() -> None:
    tender = program(min_balance="2.00")
    assert declined(tender, fresh(), request("activate", 199)) == "BELOW_MINIMUM_BALANCE"


def test_activation_above_max_balance_is_declined() -> None:
    tender = program(max_balance="100.00", initial_balance="1.00")
    assert declined(tender, fresh(), request("activate", 9901)) == "MAX_BALANCE_EXCEEDED"


def test_second_activation_is_declined_as_already_active() -> None:
    assert declined(program(), active(100), request("activate", 100)) == "ALREADY_ACTIVE"


def test_activation_of_an_expired_account_is_declined_as_expired() -> None:
    state = active(100, status="expired")
    assert declined(program(), state, request("activate", 100)) == "ACCOUNT_EXPIRED"


def test_activation_of_a_closed_account_is_declined_as_closed() -> None:
    state = active(0, status="closed")
    assert declined(program(), state, request("activate", 100)) == "ACCOUNT_CLOSED"


def test_activation_with_a_negative_amount_is_declined() -> None:
    assert declined(program(), fresh(), request("activate", -1)) == "INVALID_AMOUNT"


def test_declined_activation_reports_a_zero_balance() -> None:
    result = refuse(
        lambda work, out: apply_tender(program(), work, request("activate", -5), out, VERSION),
        fresh(),
    )
    assert result.tender == TenderDecision("activate", False, -5, 0, 0, "INVALID_AMOUNT")
    assert result.balances == {"tender": 0}


# --------------------------------------------------------------------------- program gate


def test_operations_before_the_program_starts_are_declined() -> None:
    early = calendar.days_from_civil(2023, 12, 31)
    assert declined(program(), fresh(), request("activate", 100, early)) == "PROGRAM_INACTIVE"


def test_operations_after_the_program_ends_are_declined() -> None:
    tender = program(end_date="2024-02-29")
    assert declined(tender, active(500), request("redeem", 100)) == "PROGRAM_INACTIVE"


def test_operations_on_the_end_date_are_approved() -> None:
    tender = program(end_date="2024-03-01")
    state, _ = run(tender, active(500), request("redeem", 100))
    assert balance_of(state) == 400


def test_operations_on_a_program_switched_off_are_declined() -> None:
    assert declined(program(active=False), active(500), request("reload", 100)) == (
        "PROGRAM_INACTIVE"
    )


def test_card_required_declines_a_request_without_the_card() -> None:
    tender = program(card_required=True)
    sent = request("redeem", 100, card_present=False)
    assert declined(tender, active(500), sent) == "CARD_REQUIRED"


def test_card_required_approves_a_request_with_the_card() -> None:
    state, _ = run(program(card_required=True), active(500), request("redeem", 100))
    assert balance_of(state) == 400


def test_a_foreign_currency_is_declined_without_allow_foreign_currency() -> None:
    sent = request("redeem", 100, currency="EUR", exchange_rate="1.08")
    assert declined(program(), active(500), sent) == "CURRENCY_NOT_ALLOWED"


def test_a_foreign_currency_is_converted_with_the_exchange_rate() -> None:
    tender = program(allow_foreign_currency=True)
    sent = request("redeem", 1000, currency="EUR", exchange_rate="1.08")
    state, result = run(tender, active(5000), sent)
    assert result.postings == [posting("redeem", -1080)]
    assert result.tender == TenderDecision("redeem", True, 1000, 1080, 3920)
    assert balance_of(state) == 3920


def test_a_foreign_currency_between_exponents_is_converted_exactly() -> None:
    tender = program(allow_foreign_currency=True)
    sent = request("activate", 1500, currency="JPY", exchange_rate="0.0067")
    state, _ = run(tender, fresh(), sent)
    assert balance_of(state) == 1005


def test_a_foreign_currency_without_a_rate_is_declined() -> None:
    tender = program(allow_foreign_currency=True)
    sent = request("redeem", 100, currency="EUR")
    assert declined(tender, active(500), sent) == "EXCHANGE_RATE_REQUIRED"


@pytest.mark.parametrize("rate", ["0", "-1.2", "abc", "1.0000000001"])
def test_a_bad_exchange_rate_is_declined(rate: str) -> None:
    tender = program(allow_foreign_currency=True)
    sent = request("redeem", 100, currency="EUR", exchange_rate=rate)
    assert declined(tender, active(500), sent) == "INVALID_EXCHANGE_RATE"


def test_an_unknown_currency_is_declined_even_with_foreign_currency_allowed() -> None:
    tender = program(allow_foreign_currency=True)
    sent = request("redeem", 100, currency="XYZ", exchange_rate="1")
    assert declined(tender, active(500), sent) == "CURRENCY_NOT_ALLOWED"


def test_the_program_currency_matches_whatever_its_case() -> None:
    state, _ = run(program(), active(500), request("redeem", 100, currency="usd"))
    assert balance_of(state) == 400


def test_a_foreign_amount_converting_to_nothing_is_declined() -> None:
    tender = program(allow_foreign_currency=True)
    sent = request("redeem", 1, currency="JPY", exchange_rate="0.004")
    assert declined(tender, active(500), sent) == "INVALID_AMOUNT"


@pytest.mark.parametrize("op", ["reload", "redeem", "preauth", "capture", "release", "cash_out"])
def test_operations_without_a_tender_account_are_declined_as_inactive(op: str) -> None:
    tender = program(allow_reloads=True, allow_cash_outs=True, allow_preauthorizations=True)
    assert declined(tender, fresh(), request(op, 100)) == "ACCOUNT_INACTIVE"


def test_operations_on_a_closed_account_are_declined_as_closed() -> None:
    assert declined(program(), active(0, status="closed"), request("redeem", 1)) == (
        "ACCOUNT_CLOSED"
    )


def test_a_merge_sent_to_apply_tender_is_declined_as_unsupported() -> None:
    sent = request("merge", target_account="card-2")
    assert declined(program(card_merge_permitted=True), active(5), sent) == (
        "UNSUPPORTED_OPERATION"
    )


# --------------------------------------------------------------------------- reload


def test_reload_adds_value_and_book_value() -> None:
    state, result = run(program(allow_reloads=True), active(500), request("reload", 250))
    assert state.tender is not None
    assert (state.tender.balance, state.tender.book_value) == (750, 750)
    assert result.postings == [posting("reload", 250)]
    assert result.tender == TenderDecision("reload", True, 250, 250, 750)


def test_reload_without_allow_reloads_is_declined() -> None:
    assert declined(program(), active(500), request("reload", 250)) == "RELOADS_NOT_ALLOWED"


def test_reload_up_to_max_balance_is_approved() -> None:
    tender = program(allow_reloads=True, max_balance="10.00")
    state, _ = run(tender, active(500), request("reload", 500))
    assert balance_of(state) == 1000


def test_reload_above_max_balance_is_declined() -> None:
    tender = program(allow_reloads=True, max_balance="10.00")
    assert declined(tender, active(500), request("reload", 501)) == "MAX_BALANCE_EXCEEDED"


@pytest.mark.parametrize("amount", [0, -100])
def test_reload_of_nothing_or_less_is_declined(amount: int) -> None:
    tender = program(allow_reloads=True)
    assert declined(tender, active(500), request("reload", amount)) == "INVALID_AMOUNT"


def test_reload_is_not_a_use() -> None:
    tender = program(allow_reloads=True, max_daily_uses=1, max_lifetime_uses=1)
    state, _ = run(tender, active(500), request("reload", 100))
    assert state.tender is not None
    assert (state.tender.day_uses, state.tender.lifetime_uses) == (0, 0)


# --------------------------------------------------------------------------- redeem


def test_redeem_takes_the_amount_and_counts_one_use() -> None:
    state, result = run(program(), active(500), request("redeem", 200))
    assert state.tender is not None
    assert state.tender.balance == 300
    assert (state.tender.day_uses, state.tender.lifetime_uses, state.tender.day_redeemed) == (
        1,
        1,
        200,
    )
    assert state.tender.book_value == 500
    assert result.postings == [posting("redeem", -200)]
    assert result.tender == TenderDecision("redeem", True, 200, 200, 300)
    assert result.balances == {"tender": 300}


def test_redeem_of_the_whole_balance_is_approved() -> None:
    state, _ = run(program(), active(500), request("redeem", 500))
    assert balance_of(state) == 0


def test_redeem_above_the_balance_is_declined_without_partial_redemption() -> None:
    assert declined(program(), active(500), request("redeem", 501)) == "INSUFFICIENT_BALANCE"


def test_partial_redemption_approves_the_available_balance() -> None:
    tender = program(allow_partial_redemption=True)
    state, result = run(tender, active(500), request("redeem", 800))
    assert balance_of(state) == 0
    assert result.postings == [posting("redeem", -500)]
    assert result.tender == TenderDecision("redeem", True, 800, 500, 0)
    assert result.trace == [
        TraceEntry(
            "gift",
            "allow_partial_redemption",
            True,
            0,
            "approved 5.00 of 8.00: the available balance",  # in the currency's decimals
        )
    ]


def test_partial_redemption_of_an_empty_account_is_declined() -> None:
    tender = program(allow_partial_redemption=True)
    assert declined(tender, active(0), request("redeem", 100)) == "INSUFFICIENT_BALANCE"


def test_redeem_keeps_min_balance_on_the_account() -> None:
    tender = program(min_balance="1.00")
    assert declined(tender, active(500), request("redeem", 401)) == "INSUFFICIENT_BALANCE"
    state, _ = run(tender, active(500), request("redeem", 400))
    assert balance_of(state) == 100


def test_partial_redemption_stops_at_min_balance() -> None:
    tender = program(min_balance="1.00", allow_partial_redemption=True)
    _, result = run(tender, active(500), request("redeem", 1000))
    assert result.tender == TenderDecision("redeem", True, 1000, 400, 100)


def test_held_value_is_not_available_to_redeem() -> None:
    state = active(500, holds={"p1": Hold(300, DAY, None)})
    assert declined(program(), state, request("redeem", 201)) == "INSUFFICIENT_BALANCE"


@pytest.mark.parametrize("amount", [0, -1])
def test_redeem_of_nothing_or_less_is_declined(amount: int) -> None:
    assert declined(program(), active(500), request("redeem", amount)) == "INVALID_AMOUNT"


# --------------------------------------------------------------------------- usage limits


def test_max_redemption_value_per_day_declines_the_redemption_that_passes_it() -> None:
    tender = program(max_redemption_value_per_day="3.00")
    state, _ = run(tender, active(1000), request("redeem", 200, id="a"))
    assert declined(tender, state, request("redeem", 101, id="b")) == "LIMIT_EXCEEDED"
    state, _ = run(tender, state, request("redeem", 100, id="c"))
    assert balance_of(state) == 700


def test_max_redemption_value_per_day_restarts_on_the_next_business_day() -> None:
    tender = program(max_redemption_value_per_day="3.00")
    state, _ = run(tender, active(1000), request("redeem", 300, id="a"))
    state, _ = run(tender, state, request("redeem", 300, DAY + 1, id="b"))
    assert state.tender is not None
    assert (state.tender.balance, state.tender.usage_day, state.tender.day_redeemed) == (
        400,
        DAY + 1,
        300,
    )


def test_max_redemption_value_per_day_applies_to_the_partially_approved_amount() -> None:
    tender = program(max_redemption_value_per_day="3.00", allow_partial_redemption=True)
    assert declined(tender, active(400), request("redeem", 900)) == "LIMIT_EXCEEDED"


def test_max_daily_uses_declines_the_use_after_the_limit() -> None:
    tender = program(max_daily_uses=2)
    state = active(1000)
    for ident in ("a", "b"):
        state, _ = run(tender, state, request("redeem", 100, id=ident))
    assert declined(tender, state, request("redeem", 100, id="c")) == "LIMIT_EXCEEDED"


def test_max_daily_uses_restarts_on_the_next_business_day() -> None:
    tender = program(max_daily_uses=1)
    state, _ = run(tender, active(1000), request("redeem", 100, id="a"))
    state, _ = run(tender, state, request("redeem", 100, DAY + 1, id="b"))
    assert state.tender is not None
    assert (state.tender.balance, state.tender.day_uses, state.tender.lifetime_uses) == (800, 1, 2)


def test_a_request_dated_before_the_counters_day_counts_in_the_current_day() -> None:
    tender = program(max_daily_uses=1)
    state, _ = run(tender, active(1000), request("redeem", 100, DAY + 1, id="a"))
    assert declined(tender, state, request("redeem", 100, DAY, id="b")) == "LIMIT_EXCEEDED"


def test_max_lifetime_uses_never_restarts() -> None:
    tender = program(max_lifetime_uses=2)
    state = active(1000)
    for offset in (0, 1):
        state, _ = run(tender, state, request("redeem", 100, DAY + offset))
    assert declined(tender, state, request("redeem", 100, DAY + 40)) == "LIMIT_EXCEEDED"


def test_cash_out_and_capture_are_uses() -> None:
    tender = program(allow_cash_outs=True, allow_preauthorizations=True, max_daily_uses=2)
    state, _ = run(tender, active(1000), request("cash_out", 100))
    state, _ = run(tender, state, request("preauth", 100, id="p1"))
    state, _ = run(tender, state, request("capture", 100, reference_id="p1"))
    assert state.tender is not None
    assert (state.tender.day_uses, state.tender.day_redeemed) == (2, 200)
    assert declined(tender, state, request("redeem", 1)) == "LIMIT_EXCEEDED"


def test_a_preauthorization_is_checked_against_the_limits_but_not_counted() -> None:
    tender = program(allow_preauthorizations=True, max_daily_uses=1)
    state, _ = run(tender, active(1000), request("preauth", 100, id="p1"))
    assert state.tender is not None and state.tender.day_uses == 0
    state, _ = run(tender, state, request("redeem", 100))
    assert declined(tender, state, request("preauth", 100, id="p2")) == "LIMIT_EXCEEDED"


def test_a_preauthorization_above_the_daily_value_is_declined() -> None:
    tender = program(allow_preauthorizations=True, max_redemption_value_per_day="1.00")
    assert declined(tender, active(1000), request("preauth", 101, id="p1")) == "LIMIT_EXCEEDED"


# --------------------------------------------------------------------------- pre-authorizations


def test_preauth_holds_value_without_changing_the_balance() -> None:
    tender = program(allow_preauthorizations=True, preauthorization_expiry="3 days")
    state, result = run(tender, active(1000), request("preauth", 400, id="p1"))
    assert state.tender is not None
    assert state.tender.holds == {"p1": Hold(400, DAY, DAY + 3)}
    assert state.tender.balance == 1000
    assert result.postings == []
    assert result.tender == TenderDecision("preauth", True, 400, 400, 1000)


def test_preauth_without_expiry_holds_until_captured_or_released() -> None:
    tender = program(allow_preauthorizations=True)
    state, _ = run(tender, active(1000), request("preauth", 400, id="p1"))
    assert state.tender is not None and state.tender.holds == {"p1": Hold(400, DAY, None)}
    state, _ = run(tender, state, request("capture", 0, DAY + 900, reference_id="p1"))
    assert balance_of(state) == 600


def test_preauth_without_allow_preauthorizations_is_declined() -> None:
    sent = request("preauth", 100, id="p1")
    assert declined(program(), active(1000), sent) == "PREAUTHORIZATIONS_NOT_ALLOWED"


def test_preauth_with_an_id_already_held_is_declined() -> None:
    tender = program(allow_preauthorizations=True)
    state = active(1000, holds={"p1": Hold(100, DAY, None)})
    assert declined(tender, state, request("preauth", 100, id="p1")) == (
        "DUPLICATE_PREAUTHORIZATION"
    )


def test_preauth_above_the_available_balance_is_declined_without_partial_redemption() -> None:
    tender = program(allow_preauthorizations=True)
    assert declined(tender, active(100), request("preauth", 101, id="p1")) == (
        "INSUFFICIENT_BALANCE"
    )


def test_preauth_holds_the_available_balance_with_partial_redemption() -> None:
    tender = program(allow_preauthorizations=True, allow_partial_redemption=True)
    state, result = run(tender, active(100), request("preauth", 250, id="p1"))
    assert state.tender is not None and state.tender.holds == {"p1": Hold(100, DAY, None)}
    assert result.tender == TenderDecision("preauth", True, 250, 100, 100)


@pytest.mark.parametrize("amount", [0, -5])
def test_preauth_of_nothing_or_less_is_declined(amount: int) -> None:
    tender = program(allow_preauthorizations=True)
    assert declined(tender, active(100), request("preauth", amount, id="p1")) == ("INVALID_AMOUNT")


def test_an_expired_hold_is_released_by_the_next_operation() -> None:
    tender = program(allow_preauthorizations=True, preauthorization_expiry="2 days")
    state, _ = run(tender, active(1000), request("preauth", 900, id="p1"))
    state, result = run(tender, state, request("redeem", 1000, DAY + 2))
    assert state.tender is not None and state.tender.holds == {}
    assert result.tender == TenderDecision("redeem", True, 1000, 1000, 0)


def test_a_hold_is_still_held_the_day_before_it_expires() -> None:
    tender = program(allow_preauthorizations=True, preauthorization_expiry="2 days")
    state, _ = run(tender, active(1000), request("preauth", 900, id="p1"))
    assert declined(tender, state, request("redeem", 101, DAY + 1)) == "INSUFFICIENT_BALANCE"


def test_capture_of_less_than_the_hold_releases_the_remainder() -> None:
    tender = program(allow_preauthorizations=True)
    state, _ = run(tender, active(1000), request("preauth", 400, id="p1"))
    state, result = run(tender, state, request("capture", 250, reference_id="p1"))
    assert state.tender is not None
    assert (state.tender.balance, state.tender.holds, state.tender.lifetime_uses) == (750, {}, 1)
    assert result.postings == [posting("capture", -250)]
    assert result.tender == TenderDecision("capture", True, 250, 250, 750)


def test_capture_of_zero_takes_the_whole_hold() -> None:
    tender = program(allow_preauthorizations=True)
    state = active(1000, holds={"p1": Hold(400, DAY, None)})
    state, result = run(tender, state, request("capture", 0, reference_id="p1"))
    assert result.postings == [posting("capture", -400)]
    assert balance_of(state) == 600


def test_capture_above_the_hold_is_declined() -> None:
    tender = program(allow_preauthorizations=True)
    state = active(1000, holds={"p1": Hold(400, DAY, None)})
    sent = request("capture", 401, reference_id="p1")
    assert declined(tender, state, sent) == "AMOUNT_EXCEEDS_PREAUTHORIZATION"


def test_capture_of_an_unknown_hold_is_declined() -> None:
    tender = program(allow_preauthorizations=True)
    sent = request("capture", 100, reference_id="nope")
    assert declined(tender, active(1000), sent) == "UNKNOWN_PREAUTHORIZATION"


def test_capture_of_an_expired_hold_is_declined_as_expired() -> None:
    tender = program(allow_preauthorizations=True, preauthorization_expiry="1 day")
    state = active(1000, holds={"p1": Hold(400, DAY, DAY + 1)})
    sent = request("capture", 100, DAY + 1, reference_id="p1")
    assert declined(tender, state, sent) == "PREAUTHORIZATION_EXPIRED"


def test_capture_with_a_negative_amount_is_declined() -> None:
    tender = program(allow_preauthorizations=True)
    state = active(1000, holds={"p1": Hold(400, DAY, None)})
    assert declined(tender, state, request("capture", -1, reference_id="p1")) == "INVALID_AMOUNT"


def test_capture_that_passes_a_usage_limit_is_declined() -> None:
    tender = program(allow_preauthorizations=True, max_lifetime_uses=1)
    state = active(1000, holds={"p1": Hold(400, DAY, None)}, lifetime_uses=1)
    assert declined(tender, state, request("capture", 0, reference_id="p1")) == "LIMIT_EXCEEDED"


def test_release_frees_the_hold_without_a_posting() -> None:
    tender = program(allow_preauthorizations=True)
    state = active(1000, holds={"p1": Hold(400, DAY, None)})
    state, result = run(tender, state, request("release", reference_id="p1"))
    assert state.tender is not None and state.tender.holds == {}
    assert result.postings == []
    assert result.tender == TenderDecision("release", True, 0, 400, 1000)


def test_release_of_an_unknown_hold_is_declined() -> None:
    tender = program(allow_preauthorizations=True)
    sent = request("release", reference_id="nope")
    assert declined(tender, active(1000), sent) == "UNKNOWN_PREAUTHORIZATION"


def test_release_hold_removes_a_hold_and_ignores_one_that_is_gone() -> None:
    state = active(1000, holds={"p1": Hold(400, DAY, None)})
    release_hold(state, "p1")
    release_hold(state, "p1")
    assert state.tender is not None and state.tender.holds == {}
    empty = fresh()
    release_hold(empty, "p1")
    assert empty.tender is None


# --------------------------------------------------------------------------- cash out


def test_cash_out_pays_the_amount_asked() -> None:
    tender = program(allow_cash_outs=True)
    state, result = run(tender, active(1000), request("cash_out", 300))
    assert balance_of(state) == 700
    assert result.postings == [posting("cash_out", -300)]
    assert result.tender == TenderDecision("cash_out", True, 300, 300, 700)


def test_cash_out_of_zero_pays_the_whole_available_balance() -> None:
    tender = program(allow_cash_outs=True, min_balance="1.00")
    state = active(1000, holds={"p1": Hold(200, DAY, None)})
    state, result = run(tender, state, request("cash_out", 0))
    assert result.postings == [posting("cash_out", -700)]
    assert balance_of(state) == 300


def test_cash_out_without_allow_cash_outs_is_declined() -> None:
    assert declined(program(), active(1000), request("cash_out", 100)) == "CASH_OUTS_NOT_ALLOWED"


def test_cash_out_above_cash_out_limit_is_declined() -> None:
    tender = program(allow_cash_outs=True, cash_out_limit="5.00")
    assert declined(tender, active(1000), request("cash_out", 501)) == "LIMIT_EXCEEDED"
    state, _ = run(tender, active(1000), request("cash_out", 500))
    assert balance_of(state) == 500


def test_cash_out_of_a_whole_balance_above_cash_out_limit_is_declined() -> None:
    tender = program(allow_cash_outs=True, cash_out_limit="5.00")
    assert declined(tender, active(1000), request("cash_out", 0)) == "LIMIT_EXCEEDED"


def test_cash_out_above_the_available_balance_is_never_partial() -> None:
    tender = program(allow_cash_outs=True, allow_partial_redemption=True)
    assert declined(tender, active(1000), request("cash_out", 1001)) == "INSUFFICIENT_BALANCE"


def test_cash_out_of_an_empty_account_is_declined() -> None:
    tender = program(allow_cash_outs=True)
    assert declined(tender, active(0), request("cash_out", 0)) == "INSUFFICIENT_BALANCE"


def test_cash_out_with_a_negative_amount_is_declined() -> None:
    tender = program(allow_cash_outs=True)
    assert declined(tender, active(1000), request("cash_out", -1)) == "INVALID_AMOUNT"


def test_cash_out_counts_towards_max_redemption_value_per_day() -> None:
    tender = program(allow_cash_outs=True, max_redemption_value_per_day="5.00")
    state, _ = run(tender, active(1000), request("cash_out", 400))
    assert declined(tender, state, request("redeem", 101)) == "LIMIT_EXCEEDED"


# --------------------------------------------------------------------------- balance inquiry


def test_balance_inquiry_answers_the_balance_and_the_available_amount() -> None:
    tender = program(min_balance="1.00")
    state = active(1000, holds={"p1": Hold(200, DAY, None)})
    after, result = run(tender, state, request("balance"))
    assert after == state
    assert result.postings == []
    assert result.tender == TenderDecision("balance", True, 0, 700, 1000)
    assert result.balances == {"tender": 1000}


def test_balance_inquiry_without_an_account_answers_inactive() -> None:
    _, result = run(program(), fresh(), request("balance"))
    assert result.tender == TenderDecision("balance", True, 0, 0, 0, "ACCOUNT_INACTIVE")


def test_balance_inquiry_on_an_expired_account_answers_its_balance_and_status() -> None:
    tender = program(account_expiry="1 month")
    state = active(800, expires_day=DAY + 5)
    _, result = run(tender, state, request("balance", day=DAY + 5))
    assert result.tender == TenderDecision("balance", True, 0, 0, 800, "ACCOUNT_EXPIRED")


def test_balance_inquiry_is_answered_outside_the_program_dates_and_without_the_card() -> None:
    tender = program(end_date="2024-01-31", card_required=True)
    _, result = run(tender, active(800), request("balance", card_present=False))
    assert result.tender == TenderDecision("balance", True, 0, 800, 800)


def test_balance_inquiry_does_not_count_expired_holds() -> None:
    state = active(800, holds={"p1": Hold(300, DAY - 3, DAY)})
    _, result = run(program(allow_preauthorizations=True), state, request("balance"))
    assert result.tender == TenderDecision("balance", True, 0, 800, 800)


# --------------------------------------------------------------------------- account expiry


def test_expire_tender_expires_the_account_on_its_expiry_day_and_keeps_the_balance() -> None:
    state = active(800, expires_day=DAY + 10, holds={"p1": Hold(100, DAY, None)})
    result = Result("job", "card-1")
    expire_tender(program(account_expiry="10 days"), state, DAY + 10, result, VERSION)
    assert state.tender is not None
    assert (state.tender.status, state.tender.balance, state.tender.holds) == ("expired", 800, {})
    assert result.postings == []
    assert result.trace == [
        TraceEntry("gift", "account_expiry", True, 0, "expired on 2024-03-11 (program version 3)")
    ]


def test_expire_tender_leaves_an_account_alone_before_its_expiry_day() -> None:
    state = active(800, expires_day=DAY + 10)
    result = Result("job", "card-1")
    expire_tender(program(), state, DAY + 9, result, VERSION)
    assert state.tender is not None and state.tender.status == "active"
    assert result.trace == []


def test_expire_tender_leaves_accounts_without_expiry_or_without_an_account_alone() -> None:
    for state in (active(800), fresh(), active(0, status="inactive", expires_day=DAY)):
        before = copy.deepcopy(state)
        expire_tender(program(), state, DAY + 10_000, Result("job", "card-1"), VERSION)
        assert state == before


def test_account_expiry_is_counted_from_the_activation_day_with_month_clamping() -> None:
    tender = program(account_expiry="1 month")
    day = calendar.days_from_civil(2024, 1, 31)
    state, _ = run(tender, fresh(), request("activate", 100, day))
    assert state.tender is not None
    assert state.tender.expires_day == calendar.days_from_civil(2024, 2, 29)


def test_operations_on_an_account_past_its_expiry_are_declined_as_expired() -> None:
    tender = program(allow_reloads=True)
    state = active(800, expires_day=DAY + 1)
    assert declined(tender, state, request("redeem", 100, DAY + 1)) == "ACCOUNT_EXPIRED"
    assert declined(tender, state, request("reload", 100, DAY + 1)) == "ACCOUNT_EXPIRED"


# --------------------------------------------------------------------------- sale baskets


def basket(stored_value: int, **fields: Any) -> Purchase:
    return Purchase("sale-1", "card-1", fields.pop("day", DAY), stored_value=stored_value, **fields)


def test_debit_basket_redeems_the_stored_value_paid() -> None:
    state = active(1000)
    result = Result("sale-1", "card-1")
    assert debit_basket(program(), state, basket(600), result, VERSION) == 600
    assert balance_of(state) == 400
    assert result.postings == [posting("redeem", -600)]
    assert result.tender == TenderDecision("redeem", True, 600, 600, 400)


def test_debit_basket_without_stored_value_touches_nothing() -> None:
    state = fresh()
    result = Result("sale-1", "card-1")
    assert debit_basket(program(), state, basket(0), result, VERSION) == 0
    assert state == fresh()
    assert result == Result("sale-1", "card-1")


def test_debit_basket_approves_the_available_balance_with_partial_redemption() -> None:
    state = active(1000)
    result = Result("sale-1", "card-1")
    tender = program(allow_partial_redemption=True)
    assert debit_basket(tender, state, basket(1500), result, VERSION) == 1000
    assert balance_of(state) == 0


def test_debit_basket_converts_a_foreign_basket() -> None:
    state = active(5000)
    tender = program(allow_foreign_currency=True)
    sale = basket(1000, currency="EUR", exchange_rate="1.08")
    assert debit_basket(tender, state, sale, Result("sale-1", "card-1"), VERSION) == 1080


def test_debit_basket_counts_a_use() -> None:
    state = active(1000)
    tender = program(max_lifetime_uses=1)
    debit_basket(tender, state, basket(100), Result("sale-1", "card-1"), VERSION)
    assert state.tender is not None and state.tender.lifetime_uses == 1
    call = lambda work, out: debit_basket(tender, work, basket(100), out, VERSION)  # noqa: E731
    assert reason_of(refuse(call, state)) == "LIMIT_EXCEEDED"


def reason_of(result: Result) -> str:
    assert result.tender is not None
    return result.tender.reason


@pytest.mark.parametrize(
    ("tender", "state", "sale", "reason"),
    [
        (program(), active(1000), basket(-1), "INVALID_AMOUNT"),
        (program(), active(1000), basket(1001), "INSUFFICIENT_BALANCE"),
        (program(), fresh(), basket(100), "ACCOUNT_INACTIVE"),
        (program(), active(1000, expires_day=DAY), basket(100), "ACCOUNT_EXPIRED"),
        (
            program(card_required=True),
            active(1000),
            basket(100, card_present=False),
            "CARD_REQUIRED",
        ),
        (program(end_date="2024-02-01"), active(1000), basket(100), "PROGRAM_INACTIVE"),
        (program(), active(1000), basket(100, currency="EUR"), "CURRENCY_NOT_ALLOWED"),
    ],
)
def test_debit_basket_declines_like_a_redemption(
    tender: TenderProgram, state: AccountState, sale: Purchase, reason: str
) -> None:
    call = lambda work, out: debit_basket(tender, work, sale, out, VERSION)  # noqa: E731
    assert reason_of(refuse(call, state)) == reason


# --------------------------------------------------------------------------- reversals


def reversal_request(day: int = DAY, card_present: bool = True) -> RequestBase:
    return RequestBase("void-1", "card-1", day, card_present=card_present)


def test_credit_reversal_puts_value_back() -> None:
    state = active(400)
    result = Result("void-1", "card-1")
    tender = program(credit_reversal=True)
    credit_back(tender, state, 600, reversal_request(), result, VERSION, "credit_reversal")
    assert balance_of(state) == 1000
    assert result.postings == [posting("credit_reversal", 600)]
    assert result.tender == TenderDecision("credit_reversal", True, 600, 600, 1000)


def test_credit_reversal_does_not_give_a_use_back() -> None:
    state = active(400, lifetime_uses=1, day_uses=1, day_redeemed=600)
    tender = program(credit_reversal=True)
    credit_back(
        tender, state, 600, reversal_request(), Result("v", "card-1"), VERSION, "credit_reversal"
    )
    assert state.tender is not None
    assert (state.tender.lifetime_uses, state.tender.day_uses, state.tender.day_redeemed) == (
        1,
        1,
        600,
    )


def credit_call(
    tender: TenderProgram, amount: int, sent: RequestBase | None = None
) -> Callable[[AccountState, Result], None]:
    def call(work: AccountState, out: Result) -> None:
        credit_back(
            tender, work, amount, sent or reversal_request(), out, VERSION, "credit_reversal"
        )

    return call


@pytest.mark.parametrize(
    ("tender", "state", "amount", "reason"),
    [
        (program(), active(400), 100, "REVERSAL_NOT_ALLOWED"),
        (
            program(credit_reversal=True, max_balance="5.00"),
            active(400),
            101,
            "MAX_BALANCE_EXCEEDED",
        ),
        (program(credit_reversal=True), active(400), 0, "INVALID_AMOUNT"),
        (program(credit_reversal=True), active(400), -1, "INVALID_AMOUNT"),
        (program(credit_reversal=True), fresh(), 100, "ACCOUNT_INACTIVE"),
        (program(credit_reversal=True), active(400, expires_day=DAY), 100, "ACCOUNT_EXPIRED"),
        (program(credit_reversal=True, active=False), active(400), 100, "PROGRAM_INACTIVE"),
    ],
)
def test_credit_reversal_declines(
    tender: TenderProgram, state: AccountState, amount: int, reason: str
) -> None:
    assert reason_of(refuse(credit_call(tender, amount), state)) == reason


def test_credit_reversal_needs_the_card_when_the_program_requires_it() -> None:
    tender = program(credit_reversal=True, card_required=True)
    call = credit_call(tender, 100, reversal_request(card_present=False))
    assert reason_of(refuse(call, active(400))) == "CARD_REQUIRED"


def test_debit_reversal_takes_loaded_value_out_again() -> None:
    state = active(1000)
    result = Result("void-1", "card-1")
    debit_back(program(debit_reversal=True), state, 250, reversal_request(), result, VERSION)
    assert state.tender is not None
    assert (state.tender.balance, state.tender.book_value) == (750, 750)
    assert result.postings == [posting("debit_reversal", -250)]
    assert result.tender == TenderDecision("debit_reversal", True, 250, 250, 750)


def test_debit_reversal_never_takes_book_value_below_zero() -> None:
    state = active(1000, book_value=100)
    debit_back(
        program(debit_reversal=True), state, 250, reversal_request(), Result("v", "c"), VERSION
    )
    assert state.tender is not None and state.tender.book_value == 0


def debit_call(tender: TenderProgram, amount: int) -> Callable[[AccountState, Result], None]:
    def call(work: AccountState, out: Result) -> None:
        debit_back(tender, work, amount, reversal_request(), out, VERSION)

    return call


@pytest.mark.parametrize(
    ("tender", "state", "amount", "reason"),
    [
        (program(), active(400), 100, "REVERSAL_NOT_ALLOWED"),
        (program(debit_reversal=True), active(400), 401, "INSUFFICIENT_BALANCE"),
        (
            program(debit_reversal=True, min_balance="1.00"),
            active(400),
            301,
            "INSUFFICIENT_BALANCE",
        ),
        (
            program(debit_reversal=True),
            active(400, holds={"p": Hold(100, DAY, None)}),
            301,
            "INSUFFICIENT_BALANCE",
        ),
        (program(debit_reversal=True), active(400), 0, "INVALID_AMOUNT"),
        (program(debit_reversal=True), fresh(), 100, "ACCOUNT_INACTIVE"),
        (program(debit_reversal=True), active(400, status="closed"), 100, "ACCOUNT_CLOSED"),
    ],
)
def test_debit_reversal_declines(
    tender: TenderProgram, state: AccountState, amount: int, reason: str
) -> None:
    assert reason_of(refuse(debit_call(tender, amount), state)) == reason


# --------------------------------------------------------------------------- merges


def pair(source_balance: int, target_balance: int) -> tuple[AccountState, AccountState]:
    source = active(source_balance)
    target = active(target_balance)
    target.account = "card-2"
    return source, target


def merge_request(**fields: Any) -> TenderRequest:
    return request("merge", target_account="card-2", **fields)


def test_merge_moves_the_whole_balance_and_closes_the_source() -> None:
    source, target = pair(300, 500)
    assert source.tender is not None and target.tender is not None
    source.tender.book_value = 200
    result = Result("merge-1", "card-1")
    merge_tender(
        program(card_merge_permitted=True), source, target, merge_request(), result, VERSION
    )
    assert (source.tender.status, source.tender.balance, source.tender.book_value) == (
        "closed",
        0,
        0,
    )
    assert (target.tender.status, target.tender.balance, target.tender.book_value) == (
        "active",
        800,
        700,
    )
    assert result.postings == [posting("merge_out", -300), posting("merge_in", 300)]
    assert result.tender == TenderDecision("merge", True, 0, 300, 800)
    assert result.balances == {"tender": 800}


def test_merge_of_an_empty_card_closes_it_without_postings() -> None:
    source, target = pair(0, 500)
    result = Result("merge-1", "card-1")
    merge_tender(
        program(card_merge_permitted=True), source, target, merge_request(), result, VERSION
    )
    assert source.tender is not None and source.tender.status == "closed"
    assert result.postings == []


def merge_refusal(
    tender: TenderProgram,
    source: AccountState,
    target: AccountState,
    sent: TenderRequest | None = None,
) -> str:
    target_before = copy.deepcopy(target)

    def call(work: AccountState, out: Result) -> None:
        merge_tender(tender, work, copy.deepcopy(target), sent or merge_request(), out, VERSION)

    reason = reason_of(refuse(call, source))
    assert target == target_before
    return reason


def test_merge_without_card_merge_permitted_is_declined() -> None:
    assert merge_refusal(program(), *pair(300, 500)) == "MERGE_NOT_ALLOWED"


def test_merge_above_the_target_max_balance_is_declined() -> None:
    tender = program(card_merge_permitted=True, max_balance="7.99")
    assert merge_refusal(tender, *pair(300, 500)) == "MAX_BALANCE_EXCEEDED"


def test_merge_of_a_card_into_itself_is_declined() -> None:
    source = active(300)
    tender = program(card_merge_permitted=True)
    assert merge_refusal(tender, source, copy.deepcopy(source)) == "SAME_ACCOUNT"


def test_merge_with_a_pending_preauthorization_on_the_source_is_declined() -> None:
    source, target = pair(300, 500)
    assert source.tender is not None
    source.tender.holds["p1"] = Hold(100, DAY, None)
    tender = program(card_merge_permitted=True)
    assert merge_refusal(tender, source, target) == "PREAUTHORIZATION_PENDING"


def test_merge_ignores_an_expired_hold_on_the_source() -> None:
    source, target = pair(300, 500)
    assert source.tender is not None
    source.tender.holds["p1"] = Hold(100, DAY - 2, DAY)
    merge_tender(
        program(card_merge_permitted=True),
        source,
        target,
        merge_request(),
        Result("m", "c"),
        VERSION,
    )
    assert balance_of(target) == 800


def test_merge_into_a_card_without_an_active_account_is_declined() -> None:
    source, _ = pair(300, 500)
    target = AccountState("card-2")
    assert merge_refusal(program(card_merge_permitted=True), source, target) == "ACCOUNT_INACTIVE"


def test_merge_from_an_expired_card_is_declined() -> None:
    source, target = pair(300, 500)
    assert source.tender is not None
    source.tender.expires_day = DAY
    assert merge_refusal(program(card_merge_permitted=True), source, target) == "ACCOUNT_EXPIRED"


def test_merge_needs_the_program_in_effect_and_the_card() -> None:
    tender = program(card_merge_permitted=True, card_required=True)
    assert merge_refusal(tender, *pair(300, 500), merge_request(card_present=False)) == (
        "CARD_REQUIRED"
    )
    late = program(card_merge_permitted=True, end_date="2024-02-01")
    assert merge_refusal(late, *pair(300, 500)) == "PROGRAM_INACTIVE"


def test_a_merged_away_card_is_declined_as_closed() -> None:
    source, target = pair(300, 500)
    merge_tender(
        program(card_merge_permitted=True),
        source,
        target,
        merge_request(),
        Result("m", "c"),
        VERSION,
    )
    assert declined(program(), source, request("redeem", 1)) == "ACCOUNT_CLOSED"


# --------------------------------------------------------------------------- invariants

PROPERTY_PROGRAM = program(
    allow_reloads=True,
    credit_reversal=True,
    debit_reversal=True,
    allow_partial_redemption=True,
    max_redemption_value_per_day="40.00",
    max_daily_uses=4,
    max_lifetime_uses=40,
    min_activation_amount="5.00",
    min_balance="1.00",
    max_balance="100.00",
    allow_cash_outs=True,
    cash_out_limit="20.00",
    account_expiry="3 months",
    initial_balance="2.00",
    allow_preauthorizations=True,
    preauthorization_expiry="3 days",
    allow_foreign_currency=True,
)

OPS = (
    "activate",
    "reload",
    "redeem",
    "balance",
    "preauth",
    "capture",
    "release",
    "cash_out",
    "credit_back",
    "debit_back",
    "basket",
    "release_hold",
    "expire",
)

Step = tuple[str, int, int, str, int]
"""(operation, amount, days since the previous step, currency, pre-authorization number)."""

operation = st.tuples(
    st.sampled_from((*OPS, "activate", "preauth", "capture", "capture", "redeem")),
    st.one_of(st.integers(min_value=-100, max_value=12_000), st.integers(0, 2_000)),
    st.sampled_from([0, 0, 0, 0, 1, 2, 14]),
    st.sampled_from(["USD", "USD", "EUR"]),
    st.integers(min_value=0, max_value=2),
)


def apply_operation(work: AccountState, result: Result, step: Step, day: int, index: int) -> None:
    """One operation of the property test, on the working copy."""
    op, amount, _, currency, ref = step
    tender = PROPERTY_PROGRAM
    base = RequestBase(f"r{index}", "card-1", day)
    if op == "credit_back":
        credit_back(tender, work, amount, base, result, VERSION, "credit_reversal")
    elif op == "debit_back":
        debit_back(tender, work, amount, base, result, VERSION)
    elif op == "basket":
        sale = Purchase(
            f"r{index}", "card-1", day, currency=currency, exchange_rate="1.1", stored_value=amount
        )
        debit_basket(tender, work, sale, result, VERSION)
    elif op == "release_hold":
        release_hold(work, f"p{ref}")
    elif op == "expire":
        expire_tender(tender, work, day, result, VERSION)
    else:
        sent = TenderRequest(
            f"p{ref}" if op == "preauth" else f"r{index}",
            "card-1",
            day,
            op=op,  # type: ignore[arg-type]
            amount=amount,
            currency=currency,
            exchange_rate="1.1",
            reference_id=f"p{ref}",
        )
        apply_tender(tender, work, sent, result, VERSION)


def check_invariants(state: AccountState, posted: int) -> None:
    account = state.tender
    if account is None:
        assert posted == 0
        return
    assert account.balance == posted
    if account.status == "inactive":
        return
    assert account.balance >= 100
    assert account.balance <= 10_000
    assert account.held >= 0
    if account.status == "active":
        assert account.balance - account.held >= 100
        assert account.day_redeemed <= 4_000
        assert account.day_uses <= 4
    else:
        assert account.holds == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_balance_is_the_sum_of_postings_and_stays_within_its_bounds(
    steps: list[Step],
) -> None:
    state = fresh()
    posted = 0
    day = DAY
    for index, step in enumerate(steps):
        day += step[2]
        before = copy.deepcopy(state)
        work = copy.deepcopy(state)
        result = Result(f"r{index}", "card-1")
        try:
            apply_operation(work, result, step, day, index)
        except Declined as error:
            assert state == before
            assert result.postings == []
            assert result.tender is not None
            assert (result.tender.approved, result.tender.reason) == (False, error.reason)
            continue
        state = work
        posted += sum(item.amount for item in result.postings)
        assert all(item.balance == "tender" and item.day == day for item in result.postings)
        check_invariants(state, posted)


def test_a_declines_text_shows_amounts_in_the_currencys_decimals() -> None:
    # The answer shows amounts as 50.00 (with balance_exponents); its trace text says the same.
    work = copy.deepcopy(active(3_000))
    with pytest.raises(Declined) as caught:
        apply_tender(program(), work, request("redeem", 5_000), Result("r", "card-1"), VERSION)
    assert (caught.value.reason, caught.value.detail) == (
        "INSUFFICIENT_BALANCE", "50.00 asked, 30.00 available",
    )  # fmt: skip
    yen = program(currency="JPY")  # no decimals
    with pytest.raises(Declined) as caught:
        sent = request("redeem", 500, currency="JPY")
        apply_tender(yen, copy.deepcopy(active(300)), sent, Result("r", "c"), VERSION)
    assert caught.value.detail == "500 asked, 300 available"

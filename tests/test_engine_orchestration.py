"""How an engine orchestrates a request: baskets, PINs, card status, voids, merges, jobs.

Every test runs on both engines.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from processor import calendar
from processor.engine import Engine, compile_program, issue_card, run_job
from processor.engine.plan import CompiledProgram
from processor.engine.reference import BatchOutcome
from processor.engine.types import (
    AccountState,
    AwardRedemption,
    Line,
    Purchase,
    Request,
    Return,
    TenderRequest,
    Void,
)
from processor.program.loader import load_program

DEMO = Path(__file__).resolve().parents[1] / "examples" / "programs" / "demo.yaml"
CARD = "6001200000000010"
OTHER = "6001200000000028"
DAY = calendar.parse_day("2026-03-04")  # a Wednesday


ENGINE: list[Engine] = []


@pytest.fixture(autouse=True)
def _on_every_engine(engine: Engine) -> None:
    ENGINE[:] = [engine]


def evaluate(
    program: CompiledProgram,
    accounts: dict[str, AccountState],
    requests: list[Request],
    receipts: dict,
) -> BatchOutcome:
    outcome = ENGINE[0].evaluate(program, accounts, requests, receipts)
    return BatchOutcome(list(outcome.results), dict(outcome.accounts), dict(outcome.receipts))


@pytest.fixture(scope="module")
def demo() -> CompiledProgram:
    return compile_program(load_program(DEMO))


def sale(
    request_id: str,
    amount: int,
    *,
    stored_value: int = 0,
    codes: tuple[str, ...] = (),
    pin: bool = True,
    card: str = CARD,
    day: int = DAY,
) -> Purchase:
    return Purchase(
        request_id,
        card,
        day,
        13 * 3600,
        "S003",
        card_present=True,
        pin_verified=pin,
        lines=(Line(1, "JACKET", amount, 1, ("OUTERWEAR",)),),
        stored_value=stored_value,
        redeem_codes=codes,
    )


def activate(request_id: str, amount: int, card: str = CARD) -> TenderRequest:
    return TenderRequest(
        request_id, card, DAY, 9 * 3600, "S001", pin_verified=True, op="activate", amount=amount
    )


def run(
    program: CompiledProgram,
    requests: list[Request],
    accounts: dict[str, AccountState] | None = None,
) -> list:
    return evaluate(program, accounts or {}, requests, {}).results


def test_a_basket_with_stored_value_earns_points_and_debits_the_card(demo: CompiledProgram) -> None:
    results = run(demo, [activate("a", 10_000), sale("s", 25_000, stored_value=4_000)])
    assert results[1].status == "approved"
    assert results[1].balances["tender"] == 6_000
    assert results[1].balances["points:points"] == 255  # 250 base + 5 for the visit to S003


def test_a_basket_whose_stored_value_is_refused_earns_nothing(demo: CompiledProgram) -> None:
    results = run(demo, [sale("s", 25_000, stored_value=4_000)])
    assert results[0].status == "declined"
    assert results[0].reason == "ACCOUNT_INACTIVE"
    assert results[0].postings == []


def test_a_basket_with_an_unknown_coupon_is_declined_as_a_whole(demo: CompiledProgram) -> None:
    outcome = evaluate(
        demo,
        {},
        [activate("a", 10_000), sale("s", 25_000, stored_value=4_000, codes=("NOPE",))],
        {},
    )
    declined = outcome.results[1]
    assert (declined.status, declined.reason) == ("declined", "UNKNOWN_AWARD")
    assert declined.postings == [] and declined.awards == []
    state = outcome.accounts[CARD]
    assert state.tender is not None and state.tender.balance == 10_000
    assert "points" not in state.loyalty


def test_stored_value_without_a_verified_pin_is_refused_when_the_card_is_absent(
    demo: CompiledProgram,
) -> None:
    absent = Purchase(
        "s",
        CARD,
        DAY,
        0,
        "WEB",
        card_present=False,
        pin_verified=False,
        lines=(Line(1, "X", 1_000),),
        stored_value=500,
    )
    results = run(demo, [activate("a", 10_000), absent])
    assert (results[1].status, results[1].reason) == ("declined", "PIN_REQUIRED")


def test_an_inactive_card_earns_nothing(demo: CompiledProgram) -> None:
    accounts = {CARD: AccountState(CARD, status="inactive")}
    results = run(demo, [sale("s", 10_000)], accounts)
    assert (results[0].status, results[0].reason) == ("declined", "CARD_INACTIVE")


def test_a_coupon_earned_in_one_basket_pays_for_the_next(demo: CompiledProgram) -> None:
    first = run(demo, [sale("s1", 60_000)])[0]
    code = first.awards[0].code
    assert first.awards[0].kind == "coupon"
    results = run(demo, [sale("s1", 60_000), sale("s2", 1_000, codes=(code,))])
    assert results[1].redeemed == [code]
    again = run(
        demo,
        [sale("s1", 60_000), sale("s2", 1_000, codes=(code,)), sale("s3", 1_000, codes=(code,))],
    )
    assert (again[2].status, again[2].reason) == ("declined", "AWARD_REDEEMED")


def test_voiding_a_purchase_restores_points_stored_value_and_coupons(
    demo: CompiledProgram,
) -> None:
    first = run(demo, [sale("s1", 60_000)])[0]
    code = first.awards[0].code
    requests: list[Request] = [
        activate("a", 10_000),
        sale("s1", 60_000),
        sale("s2", 2_000, stored_value=1_500, codes=(code,)),
        Void("v", CARD, DAY, 14 * 3600, "S003", original_id="s2"),
        AwardRedemption("r", CARD, DAY, 15 * 3600, "S003", pin_verified=True, code=code),
    ]
    results = run(demo, requests)
    void = results[3]
    assert void.status == "approved"
    assert void.balances["tender"] == 10_000
    assert void.balances["points:points"] == results[1].balances["points:points"]
    assert results[4].redeemed == [code]


def test_a_void_of_a_void_request_is_refused(demo: CompiledProgram) -> None:
    requests: list[Request] = [
        sale("s1", 5_000),
        Void("v1", CARD, DAY, 0, original_id="s1"),
        Void("v2", CARD, DAY, 0, original_id="s1"),
    ]
    results = run(demo, requests)
    assert (results[2].status, results[2].reason) == ("declined", "ALREADY_VOIDED")


def test_merging_cards_moves_stored_value_and_points(demo: CompiledProgram) -> None:
    requests: list[Request] = [
        activate("a1", 5_000),
        activate("a2", 2_500, card=OTHER),
        sale("s1", 30_000),
        sale("s2", 10_000, card=OTHER),
        TenderRequest(
            "m", CARD, DAY, 0, "S001", pin_verified=True, op="merge", target_account=OTHER
        ),
    ]
    outcome = evaluate(demo, {}, requests, {})
    assert outcome.results[4].status == "approved"
    target = outcome.accounts[OTHER]
    assert target.tender is not None and target.tender.balance == 7_500
    assert target.loyalty["points"].available(DAY) == 410  # (300 + 5) + (100 + 5)
    assert "points" not in outcome.accounts[CARD].loyalty


def test_the_award_job_issues_job_rules_and_is_reproducible(demo: CompiledProgram) -> None:
    outcome = evaluate(demo, {}, [sale("s1", 35_000)], {})
    job = run_job(demo, outcome.accounts, DAY + 1, "job-2026-03-05")
    again = run_job(demo, outcome.accounts, DAY + 1, "job-2026-03-05")
    assert job.results == again.results
    awards = job.results[0].awards
    assert [award.rule for award in awards] == ["free-coffee"]
    assert job.results[0].balances["points:points"] == 55  # 350 + 5 visit - 300 coffee


def test_issue_card_opens_accounts_only_for_programs_that_open_them_at_generation(
    demo: CompiledProgram,
) -> None:
    assert issue_card(demo, CARD, DAY).loyalty == {}


def test_voiding_a_return_puts_back_its_points_and_refund(demo: CompiledProgram) -> None:
    requests: list[Request] = [
        activate("a", 10_000),
        sale("s1", 30_000, stored_value=2_000),
        Return("r1", CARD, DAY + 1, 0, "S003", original_id="s1"),
        Void("v1", CARD, DAY + 1, 60, "S003", original_id="r1"),
        Return("r2", CARD, DAY + 2, 0, "S003", original_id="s1"),
    ]
    results = run(demo, requests)
    sold, returned, voided, again = results[1], results[2], results[3], results[4]
    assert returned.balances == {"points:points": 0, "tender": 8_000 + 2_000}
    assert voided.status == "approved"
    assert voided.balances == {"points:points": 305, "tender": 8_000}
    assert sold.balances["points:points"] == 305
    assert [p.kind for p in voided.postings if p.balance == "points"] == [
        "return_reversal",
        "return_reversal",
    ]
    assert again.balances == {"points:points": 0, "tender": 10_000}


def test_a_return_cannot_be_voided_without_debit_reversal(demo: CompiledProgram) -> None:
    source = demo.source.model_copy(deep=True)
    loyalty = source.loyalty_programs[0].model_copy(update={"debit_reversal": False})
    program = compile_program(source.model_copy(update={"loyalty_programs": [loyalty]}))
    requests: list[Request] = [
        sale("s1", 30_000),
        Return("r1", CARD, DAY + 1, 0, "S003", original_id="s1"),
        Void("v1", CARD, DAY + 1, 60, "S003", original_id="r1"),
    ]
    voided = run(program, requests)[2]
    assert voided.status == "approved"
    assert voided.postings == []
    assert [entry.reason for entry in voided.trace] == ["debit reversal not allowed"]


def test_no_movement_rule_moves_an_account_into_an_inactive_level(demo: CompiledProgram) -> None:
    source = demo.source
    loyalty = source.loyalty_programs[0]
    levels = [level.model_copy(update={"active": level.id != "gold"}) for level in loyalty.levels]
    changed = loyalty.model_copy(update={"levels": levels})
    program = compile_program(source.model_copy(update={"loyalty_programs": [changed]}))
    result = run(program, [sale("s1", 150_000)])[0]
    assert result.moves == []
    assert ("to-gold", "level gold is inactive") in [(t.rule, t.reason) for t in result.trace]


def test_a_finished_batch_is_freed_without_the_cyclic_collector(demo: CompiledProgram) -> None:
    # Nothing of a batch may sit in a reference cycle: at thousands of transactions a
    # second, what only the cyclic collector frees costs the server a sixth of its CPU.
    # Purchases (the compiled engine's own path) and stored value (handed to the
    # reference inside the same batch) are both here.
    requests = [activate("a", 10_000), sale("s", 25_000, stored_value=4_000), sale("t", 9_000)]
    collecting = gc.isenabled()
    gc.disable()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        outcome = ENGINE[0].evaluate(demo, {}, requests, {})
        assert [result.status for result in outcome.results] == ["approved"] * 3
        assert dict(outcome.accounts) and dict(outcome.receipts)
        del outcome
        gc.collect()
        cyclic = sorted({type(thing).__qualname__ for thing in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if collecting:
            gc.enable()
    assert cyclic == []

"""TenderService, AwardService and program changes, end to end on the demo program.

Stored value (the demo's ``giftcard`` tender program: partial redemption allowed, at most
10 uses and $500.00 of redemptions a day, cash outs up to $10.00, pre-authorizations) is
exercised through the RPCs a POS makes, and every decision is held against the ledger.
Awards: a purchase big enough for the demo's coupon-5 issues a coupon, ListAwards shows it
and RedeemAward redeems it exactly once. Admin: a new version of the program, stored and
activated through AdminService, is served by a running server without a restart.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from plugins.server import Served, StartServed, context, line, purchase

from processor import proto
from processor.service import errors

pytestmark = pytest.mark.integration

common = proto.common
tender = proto.tender
awards = proto.awards
admin = proto.admin

APPROVED = common.RESULT_STATUS_APPROVED
DECLINED = common.RESULT_STATUS_DECLINED
POINTS = "points:points"
DEMO = Path(__file__).resolve().parent.parent / "examples" / "programs" / "demo.yaml"

# Award listings are read on the server's today: award flows happen today (or on the first
# Tuesday of the program's life, were the clock before it), at 14:00, outside every
# weekend-bonus window.
TODAY = max(datetime.date.today(), datetime.date(2026, 3, 3))
AFTERNOON = f"{TODAY.isoformat()}T14:00:00"


def usd(units: int) -> Any:
    return common.Money(units=units, currency="USD")


async def tender_ledger(served: Served, card: str) -> int:
    sums = await served.store.ledger_sums(card)
    return sum(total for (_, _, balance), total in sums.items() if balance == "tender")


# --------------------------------------------------------------------------- stored value


async def test_activate_balance_redeem_partially_preauthorize_capture_and_release(
    served: Served, cards: list[str]
) -> None:
    card, stub = cards[30], served.tender
    activated = (
        await stub.Activate(
            tender.ActivateRequest(context=context(card, "t-act"), amount=usd(10_000)), timeout=10
        )
    ).result
    assert (activated.status, activated.tender.approved, activated.balances["tender"]) == (
        APPROVED,
        True,
        10_000,
    )
    assert activated.balance_exponents["tender"] == 2

    balance = (
        await stub.GetBalance(tender.GetBalanceRequest(context=context(card, "t-bal")), timeout=10)
    ).result
    assert (balance.tender.balance.units, balance.tender.balance.currency) == (10_000, "USD")
    assert list(balance.postings) == []

    first = (
        await stub.Redeem(
            tender.RedeemRequest(context=context(card, "t-r1"), amount=usd(2_500)), timeout=10
        )
    ).result
    assert (first.tender.approved_amount.units, first.tender.balance.units) == (2_500, 7_500)
    # Partial redemption: $100.00 asked of $75.00 takes the whole balance.
    partial = (
        await stub.Redeem(
            tender.RedeemRequest(context=context(card, "t-r2"), amount=usd(10_000)), timeout=10
        )
    ).result
    assert (partial.status, partial.tender.approved) == (APPROVED, True)
    assert (partial.tender.requested.units, partial.tender.approved_amount.units) == (10_000, 7_500)
    assert partial.tender.balance.units == 0
    assert await tender_ledger(served, card) == 0

    await stub.Reload(
        tender.ReloadRequest(context=context(card, "t-load"), amount=usd(10_000)), timeout=10
    )
    held = (
        await stub.PreAuthorize(
            tender.PreAuthorizeRequest(context=context(card, "t-pre1"), amount=usd(6_000)),
            timeout=10,
        )
    ).result
    assert (held.tender.approved, held.tender.approved_amount.units) == (True, 6_000)
    assert list(held.postings) == []  # a hold posts nothing until it is captured
    captured = (
        await stub.Capture(
            tender.CaptureRequest(
                context=context(card, "t-cap1"), preauthorization_id="t-pre1", amount=usd(4_000)
            ),
            timeout=10,
        )
    ).result
    # $40.00 taken of the $60.00 held; the other $20.00 is released: $100.00 - $40.00.
    assert (captured.tender.approved_amount.units, captured.tender.balance.units) == (4_000, 6_000)
    assert [(p.kind, p.amount) for p in captured.postings] == [("capture", -4_000)]

    await stub.PreAuthorize(
        tender.PreAuthorizeRequest(context=context(card, "t-pre2"), amount=usd(3_000)), timeout=10
    )
    released = (
        await stub.Release(
            tender.ReleaseRequest(context=context(card, "t-rel2"), preauthorization_id="t-pre2"),
            timeout=10,
        )
    ).result
    assert (released.tender.approved_amount.units, released.tender.balance.units) == (3_000, 6_000)
    # The whole hold was given back: there is nothing left to capture.
    late = await stub.Capture(
        tender.CaptureRequest(context=context(card, "t-cap2"), preauthorization_id="t-pre2"),
        timeout=10,
    )
    assert (late.result.status, late.result.reason, list(late.result.postings)) == (
        DECLINED,
        "UNKNOWN_PREAUTHORIZATION",
        [],
    )
    assert await tender_ledger(served, card) == 6_000
    assert await served.store.reconcile() == []


async def test_daily_use_and_value_limits_decline_with_limit_exceeded(
    served: Served, cards: list[str]
) -> None:
    card, stub = cards[31], served.tender
    await stub.Activate(
        tender.ActivateRequest(context=context(card, "l-act"), amount=usd(100_000)), timeout=10
    )
    # max_redemption_value_per_day "500.00": $400.00, then $200.00 more the same day is over.
    first = (
        await stub.Redeem(
            tender.RedeemRequest(context=context(card, "l-1"), amount=usd(40_000)), timeout=10
        )
    ).result
    assert first.tender.approved_amount.units == 40_000
    over = (
        await stub.Redeem(
            tender.RedeemRequest(context=context(card, "l-2"), amount=usd(20_000)), timeout=10
        )
    ).result
    assert (over.status, over.reason, over.tender.approved) == (DECLINED, "LIMIT_EXCEEDED", False)
    assert list(over.postings) == []
    # The next day the limit starts again.
    next_day = (
        await stub.Redeem(
            tender.RedeemRequest(
                context=context(card, "l-3", "2026-03-04T10:00:00"), amount=usd(20_000)
            ),
            timeout=10,
        )
    ).result
    assert (next_day.status, next_day.tender.balance.units) == (APPROVED, 40_000)

    # max_daily_uses 10: on a fresh day, ten $1.00 redemptions pass and the eleventh is over.
    day = "2026-03-05T10:00:00"
    answers = []
    for number in range(11):
        answers.append(
            (
                await stub.Redeem(
                    tender.RedeemRequest(
                        context=context(card, f"u-{number}", day), amount=usd(100)
                    ),
                    timeout=10,
                )
            ).result
        )
    assert [a.status for a in answers] == [APPROVED] * 10 + [DECLINED]
    assert answers[-1].reason == "LIMIT_EXCEEDED"
    assert await tender_ledger(served, card) == 40_000 - 10 * 100


async def test_a_cash_out_over_the_limit_is_declined(served: Served, cards: list[str]) -> None:
    card, stub = cards[32], served.tender
    await stub.Activate(
        tender.ActivateRequest(context=context(card, "c-act"), amount=usd(5_000)), timeout=10
    )
    # cash_out_limit "10.00": $15.00 is refused whole (a cash out is never partial).
    refused = (
        await stub.CashOut(
            tender.CashOutRequest(context=context(card, "c-1"), amount=usd(1_500)), timeout=10
        )
    ).result
    assert (refused.status, refused.reason, refused.tender.approved_amount.units) == (
        DECLINED,
        "LIMIT_EXCEEDED",
        0,
    )
    assert refused.tender.balance.units == 5_000
    paid = (
        await stub.CashOut(
            tender.CashOutRequest(context=context(card, "c-2"), amount=usd(800)), timeout=10
        )
    ).result
    assert (paid.status, paid.tender.approved_amount.units, paid.tender.balance.units) == (
        APPROVED,
        800,
        4_200,
    )
    assert await tender_ledger(served, card) == 4_200


async def test_tender_on_an_unknown_card_is_not_found(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await served.tender.GetBalance(
            tender.GetBalanceRequest(context=context("6001299999999999", "x")), timeout=10
        )
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert errors.reason_of(failure.value) == "UNKNOWN_CARD"


# --------------------------------------------------------------------------- awards


async def test_a_coupon_is_earned_listed_and_redeemed_once(
    served: Served, cards: list[str]
) -> None:
    card = cards[33]
    # $500.00 at S002: 500 stars, which is coupon-5's threshold and cost (silver card).
    bought = (
        await served.transactions.PostTransaction(
            purchase(card, "big-1", AFTERNOON, [line(1, 50_000)]), timeout=10
        )
    ).result
    (issued,) = bought.awards
    assert (issued.rule, issued.kind, issued.points_cost.units) == (
        "coupon-5",
        common.AWARD_KIND_COUPON,
        500,
    )
    assert issued.code.startswith("NW5-")
    assert bought.balances[POINTS] == 0
    expires = (TODAY + datetime.timedelta(days=59)).isoformat()  # 60 days, the last usable
    assert issued.expires_date == expires

    listed = await served.awards.ListAwards(awards.ListAwardsRequest(account=card), timeout=10)
    assert [
        (a.code, a.rule, a.status, a.redemptions_left, a.expires_date) for a in listed.awards
    ] == [(issued.code, "coupon-5", awards.AWARD_STATUS_ACTIVE, 1, expires)]

    def redeem(request_id: str) -> Any:
        return served.awards.RedeemAward(
            awards.RedeemAwardRequest(
                context=context(card, request_id, AFTERNOON), code=issued.code
            ),
            timeout=10,
        )

    first = await redeem("w-1")
    redeemed = first.result
    assert (redeemed.status, list(redeemed.redeemed_codes), first.code) == (
        APPROVED, [issued.code], 0,
    )  # fmt: skip
    refused = await redeem("w-2")
    again = refused.result
    assert (again.status, again.reason, list(again.redeemed_codes), refused.code) == (
        DECLINED, "AWARD_REDEEMED", [], 2003,  # the manual's Reward Redemption Failure
    )  # fmt: skip
    # A replay of the first redemption is its first answer, not a second redemption.
    replayed = await redeem("w-1")
    assert (replayed.result.replayed, replayed.result.status, replayed.code) == (
        True, APPROVED, 0,
    )  # fmt: skip

    active = await served.awards.ListAwards(awards.ListAwardsRequest(account=card), timeout=10)
    assert list(active.awards) == []
    every = await served.awards.ListAwards(
        awards.ListAwardsRequest(account=card, include_inactive=True), timeout=10
    )
    assert [(a.code, a.status) for a in every.awards] == [
        (issued.code, awards.AWARD_STATUS_REDEEMED)
    ]
    assert await served.store.reconcile() == []


async def test_e_award_value_a_card_lacks_is_a_reward_redemption_failure_2003(
    served: Served, cards: list[str]
) -> None:
    card = cards[33]
    # Activating the gift card opens the rewards wallet (its welcome certificate), empty.
    await served.tender.Activate(
        tender.ActivateRequest(context=context(card, "e-act"), amount=usd(2_000)), timeout=10
    )
    answer = await served.awards.RedeemAwardValue(
        awards.RedeemAwardValueRequest(
            context=context(card, "e-1"), program="rewards", amount=usd(500)
        ),
        timeout=10,
    )
    assert (answer.result.status, answer.code) == (DECLINED, 2003)
    assert answer.result.reason  # why: the wallet holds no value
    assert answer.result.balances["award:rewards"] == 0
    assert await served.store.reconcile() == []


# --------------------------------------------------------------------------- program changes


def demo_version_2() -> str:
    """The demo program at version 2, its base rule earning two stars per dollar."""
    text = DEMO.read_text(encoding="utf-8")
    old_base = "        calculation: item_value\n        multiplier: 1\n        item_exclude:"
    assert text.count("\nversion: 1\n") == 1 and text.count(old_base) == 1
    return text.replace("\nversion: 1\n", "\nversion: 2\n").replace(
        old_base, old_base.replace("multiplier: 1", "multiplier: 2")
    )


async def test_an_activated_program_version_is_served_without_a_restart(
    start_served: StartServed, cards: list[str]
) -> None:
    # Two servers on one schema: the version is activated through the first, and the second
    # sees it through its registry refresher alone.
    first = await start_served(registry_refresh_seconds=0.2)
    second = await start_served(registry_refresh_seconds=0.2)
    card = cards[34]

    async def earned(server: Served, request_id: str, dry_run: bool = False) -> Any:
        fields = {"dry_run": True} if dry_run else None
        request = purchase(card, request_id, lines=[line(1, 1_000)], context_fields=fields)
        return (await server.transactions.PostTransaction(request, timeout=10)).result

    before = await earned(second, "v-1")
    assert [(p.rule, p.amount, p.program_version) for p in before.postings] == [("base", 10, 1)]

    updated = await first.admin.UpdateProgram(
        admin.UpdateProgramRequest(content=demo_version_2(), file_name="demo-v2.yaml"), timeout=10
    )
    assert (updated.program_id, updated.version) == ("northwind", 2)
    # Stored but not active: nothing changes yet.
    assert [p.amount for p in (await earned(first, "v-dry-1", dry_run=True)).postings] == [10]
    activated = await first.admin.ActivateProgram(
        admin.ActivateProgramRequest(program_id="northwind", version=2), timeout=10
    )
    assert activated.previous_version == 1

    # The activating server answers under version 2 at once.
    now = await earned(first, "v-2")
    assert [(p.rule, p.amount, p.program_version) for p in now.postings] == [("base", 20, 2)]

    # The other one within a few refresh intervals, never restarted.
    deadline = time.monotonic() + 10
    attempt = 0
    while True:
        attempt += 1
        probe = await earned(second, f"v-dry-{attempt + 1}", dry_run=True)
        if [p.program_version for p in probe.postings] == [2]:
            break
        assert time.monotonic() < deadline, "the second server never picked up version 2"
        await asyncio.sleep(0.1)
    later = await earned(second, "v-3")
    assert [(p.rule, p.amount, p.program_version) for p in later.postings] == [("base", 20, 2)]
    assert later.balances[POINTS] == 10 + 20 + 20
    assert await first.store.ledger_sums(card) == {(card, "points", "points"): 50}

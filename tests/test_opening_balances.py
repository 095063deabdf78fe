"""The opening-balances job on real PostgreSQL: the balances a card import queued are posted
once per card (stored value as an activation, points and e-award value as opening lots), a
card that cannot take them is declined whole with its reason, a run stopped after a commit
resumes without posting twice, a second run the same day takes what was queued since, and
the scorecards count the opening balances as issued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from plugins.posting import post, progress_dying_at, registry_of, run_job, state_of
from plugins.server import DemoSummary

from processor import calendar
from processor.engine import OpeningBalances, compile_program, open_balances
from processor.engine.types import AccountState, TenderRequest
from processor.flow.registry import ProgramRegistry
from processor.program.loader import parse_program_text
from processor.store.catalog import Catalog
from processor.store.job_runs import JobRuns
from processor.store.ledger import Store
from processor.store.scorecards import Scorecards

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DAY = "2026-04-15"
# examples/cards/demo_import.csv, into demo-v2.yaml's partners series: $25.00 and 100 stars;
# $10.00 and $5.50 of e-award value; 250 stars; nothing (no queued row); $0.00 from a legacy
# system, below the gift card's $5.00 minimum activation.
STARS_AND_VALUE, VALUE_AND_WALLET, STARS, NOTHING, LEGACY = (
    "6001200009000011", "6001200009000029", "6001200009000037", "6001200009000045", "60012777",
)  # fmt: skip
POSTED = (STARS_AND_VALUE, VALUE_AND_WALLET, STARS)


async def imported(store: Store) -> ProgramRegistry:
    """The demo at version 2, with the partners' cards imported (and their balances queued)."""
    catalog = Catalog(store)
    v2 = (ROOT / "examples" / "programs" / "demo-v2.yaml").read_text(encoding="utf-8")
    _, version = await catalog.update_program(v2, "demo-v2.yaml")
    await catalog.activate("northwind", version)
    text = (ROOT / "examples" / "cards" / "demo_import.csv").read_text(encoding="utf-8")
    await catalog.import_cards("northwind", "partners", text, "demo_import.csv")
    return await registry_of(store)


def run_opening(store: Store, registry: ProgramRegistry, day: str = DAY, **options: Any) -> Any:
    return run_job(store, registry, "opening-balances", day, **options)


async def queue_rows(store: Store) -> dict[str, tuple[bool, str]]:
    """Each queued card: (taken, outcome)."""
    async with store.pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT card_number, posted_at IS NOT NULL, outcome FROM card_opening_balances"
        )
        return {card: (taken, outcome) for card, taken, outcome in await cursor.fetchall()}


async def ledger_of(store: Store, card: str) -> list[tuple[str, str, str, int]]:
    async with store.pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT request_id, balance, kind, amount FROM ledger WHERE account_id = %s"
            " ORDER BY balance, kind",
            (card,),
        )
        return [tuple(row) for row in await cursor.fetchall()]  # type: ignore[misc]


async def test_the_queued_balances_post_once_per_card_and_close_their_rows(
    store: Store, demo_summary: DemoSummary
) -> None:
    registry = await imported(store)
    assert set(await queue_rows(store)) == {*POSTED, LEGACY}
    report = await run_opening(store, registry)
    assert (report.accounts_total, report.accounts_done, report.accounts_changed) == (4, 4, 3)
    assert report.postings == 5  # value and stars; value and e-award value; stars

    one = await state_of(store, STARS_AND_VALUE)
    assert (one.tender.status, one.tender.balance, one.tender.book_value) == (
        "active",
        2_500,
        2_500,
    )
    assert [(lot.rule, lot.points, lot.available_day) for lot in one.loyalty["points"].lots] == [
        ("opening", 100, calendar.parse_day(DAY))
    ]
    assert [award.rule for award in one.awards["rewards"].awards] == ["welcome"]  # activated
    request = "job:opening-balances:" + STARS_AND_VALUE
    assert await ledger_of(store, STARS_AND_VALUE) == [
        (request, "points", "opening", 100), (request, "tender", "activate", 2_500),
    ]  # fmt: skip
    two = await state_of(store, VALUE_AND_WALLET)
    assert (two.tender.balance, two.awards["rewards"].balance) == (1_000, 550)
    assert (await state_of(store, STARS)).loyalty["points"].lots[0].points == 250
    assert NOTHING not in await store.load([NOTHING])
    rows = await queue_rows(store)
    assert {card: rows[card] for card in POSTED} == dict.fromkeys(POSTED, (True, "posted"))
    assert rows[LEGACY] == (
        True,
        "declined BELOW_MINIMUM_ACTIVATION: opening balance 0.00 is below the activation "
        "minimum 5.00",
    )
    assert LEGACY not in await store.load([LEGACY])
    assert await store.reconcile() == []

    again = await run_opening(store, registry)  # the same day: nothing queued since
    assert (again.already, again.attempts, again.accounts_changed, again.postings) == (
        True, 1, 3, 5,
    )  # fmt: skip
    assert await ledger_of(store, STARS_AND_VALUE) == [
        (request, "points", "opening", 100), (request, "tender", "activate", 2_500),
    ]  # fmt: skip
    next_day = await run_opening(store, registry, "2026-04-16")
    assert (next_day.accounts_total, next_day.accounts_changed) == (0, 0)

    # The scorecards count them as issued.
    await run_job(store, registry, "scorecards", DAY)
    rows = await Scorecards(store).months("northwind", calendar.parse_month("2026-04"), 1)
    totals = {row.part.part: row.figures for row in rows if row.level == ""}
    assert totals["giftcard"].issued_ltd == 3_500
    assert totals["points"].issued_ltd == 350
    assert totals["rewards"].issued_ltd == 550


async def test_a_card_that_cannot_take_its_balances_is_declined_whole_with_its_reason(
    store: Store, demo_summary: DemoSummary
) -> None:
    registry = await imported(store)
    # Activated at a till before the job ran: the import's $10.00 cannot activate it again.
    activation = TenderRequest(
        "till-1", VALUE_AND_WALLET, calendar.parse_day(DAY), 9 * 3600, "S001", pin_verified=True,
        op="activate", amount=2_000,
    )  # fmt: skip
    await post(store, registry, [activation])
    before = await store.load([VALUE_AND_WALLET])
    report = await run_opening(store, registry)
    assert (report.accounts_done, report.accounts_changed) == (4, 2)
    assert await store.load([VALUE_AND_WALLET]) == before  # not the $5.50 either
    assert (await queue_rows(store))[VALUE_AND_WALLET] == (
        True, "declined ALREADY_ACTIVE: cannot activate again",
    )  # fmt: skip
    assert (await queue_rows(store))[STARS] == (True, "posted")
    assert await store.reconcile() == []


async def test_a_run_stopped_after_a_commit_resumes_and_posts_each_card_once(
    store: Store, demo_summary: DemoSummary, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = await imported(store)
    monkeypatch.setattr(JobRuns, "progress", progress_dying_at(2))
    with pytest.raises(ConnectionError):
        await run_opening(store, registry, chunk_accounts=1)
    assert (await queue_rows(store))[VALUE_AND_WALLET] == (False, "")  # committed, not closed
    resumed = await run_opening(store, registry, chunk_accounts=1)
    assert (resumed.attempts, resumed.accounts_changed) == (2, 3)
    rows = await queue_rows(store)
    assert {card: rows[card] for card in POSTED} == dict.fromkeys(POSTED, (True, "posted"))
    rows = await ledger_of(store, VALUE_AND_WALLET)
    assert [(balance, kind, amount) for _, balance, kind, amount in rows] == [
        ("award_value", "opening", 550), ("tender", "activate", 1_000),
    ]  # fmt: skip
    assert await store.reconcile() == []


async def test_a_card_deactivated_since_its_import_is_declined_and_posts_when_queued_again(
    store: Store, demo_summary: DemoSummary
) -> None:
    registry = await imported(store)
    catalog = Catalog(store)
    await catalog.set_batch_status(
        "northwind", "partners", "all", "inactive", first_number=STARS, last_number=STARS
    )
    first = await run_opening(store, registry)
    assert first.accounts_changed == 2
    assert (await queue_rows(store))[STARS] == (
        True, "declined CARD_INACTIVE: card 600120******0037 is inactive",
    )  # fmt: skip
    assert STARS not in await store.load([STARS])
    # Activated again, and its row queued again by hand (README, "Opening balances"): the
    # day's finished run is taken up again for it.
    await catalog.set_batch_status(
        "northwind", "partners", "all", "active", first_number=STARS, last_number=STARS
    )
    async with store.pool.connection() as connection:
        await connection.execute(
            "UPDATE card_opening_balances SET posted_at = NULL, outcome = ''"
            " WHERE card_number = %s",
            (STARS,),
        )
    again = await run_opening(store, registry)
    assert (again.already, again.attempts, again.accounts_changed) == (False, 2, 3)
    assert (await queue_rows(store))[STARS] == (True, "posted")
    assert (await state_of(store, STARS)).loyalty["points"].lots[0].points == 250
    assert await store.reconcile() == []


def test_an_opening_balance_is_the_whole_balance_the_initial_balance_is_not_added() -> None:
    # A program whose activations add $10.00: a batch activation queued it already (or an
    # amount that overrides it), and an import's balance is the card's whole balance.
    text = (ROOT / "examples" / "programs" / "demo.yaml").read_text(encoding="utf-8")
    assert text.count('  min_balance: "0.00"\n') == 1
    text = text.replace(
        '  min_balance: "0.00"\n', '  min_balance: "0.00"\n  initial_balance: "10.00"\n'
    )
    program = compile_program(parse_program_text(text, "demo.yaml"))
    day = calendar.parse_day(DAY)
    result, state = open_balances(
        program, AccountState(STARS_AND_VALUE), OpeningBalances(tender=2_500), "o-1", day
    )
    assert result.status == "approved"
    assert [(posting.kind, posting.amount) for posting in result.postings] == [("activate", 2_500)]
    assert (state.tender.balance, state.tender.book_value) == (2_500, 2_500)

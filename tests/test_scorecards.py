"""Program scorecards on real PostgreSQL: the scorecards job's exact figures for the demo
program (loyalty by level, tender, award), a customer with two cards counted once, a month's
figures taken from its latest run, a crash in the middle and the resume counting each account
once, two runners at once, GetScorecard and ``loyalty report scorecard`` (tables, JSON, and the
HTML page drawn by headless Chromium), and bad input."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from plugins.admin_api import Harness, fails
from plugins.pages import NEEDS_CHROMIUM, drawn_bars, fetched_urls
from plugins.posting import post, registry_of, run_job
from plugins.server import DemoSummary, demo_cards, loyalty

from processor import calendar, proto
from processor.engine import CompiledProgram, compile_program
from processor.engine.types import (
    AccountState,
    Award,
    AwardAccount,
    Line,
    Purchase,
    TenderRequest,
    ValueLot,
)
from processor.flow.registry import ProgramRegistry
from processor.jobs.scorecards import Tally, count_account
from processor.program.loader import load_program
from processor.reports import scorecard
from processor.store.catalog import Catalog
from processor.store.ledger import Store
from processor.store.scorecards import Figures, LedgerSum, Scorecards

pytestmark = pytest.mark.integration

admin = proto.admin

AS_OF = "2026-04-15"
APRIL = calendar.parse_month("2026-04")


def sale(request_id: str, card: str, amount: int, day: str) -> Purchase:
    """A weekday-morning purchase at S002, an outlet: the base star per dollar and nothing
    else for silver and gold (no visit points, no gold bonus, no weekend bonus)."""
    return Purchase(
        request_id, card, calendar.parse_day(day), 10 * 3600, "S002", card_present=True,
        pin_verified=True, lines=(Line(1, "JACKET", amount, 1, ("OUTERWEAR",)),),
    )  # fmt: skip


def tender(request_id: str, card: str, op: Any, amount: int, day: str) -> TenderRequest:
    return TenderRequest(
        request_id, card, calendar.parse_day(day), 9 * 3600, "S001", pin_verified=True, op=op,
        amount=amount,
    )  # fmt: skip


@pytest.fixture
def cards(demo_summary: DemoSummary) -> list[str]:
    return demo_cards(demo_summary)


async def the_month(store: Store, cards: list[str]) -> ProgramRegistry:
    """February and April of the demo program (the demo registers cards 0-2 to DEMO-1..3):

    - cards[1] (DEMO-2): 100 stars in February, 50 in April; silver.
    - cards[6], registered to DEMO-2 as well: 30 stars in April; silver.
    - cards[3], anonymous: 1,000 stars on 9 April, spent at once on two $5 coupons (500
      each), and moved to gold; then 200 stars on 10 April, in gold's 14-day escrow.
    - cards[4]: a gift card activated with $25.00 on 1 April, $5.00 redeemed on 3 April;
      cards[5]: activated with $40.00 in February. Each activation gives the rewards wallet
      a welcome certificate.
    """
    await Catalog(store).register_card(cards[6], "DEMO-2")
    registry = await registry_of(store)
    await post(store, registry, [sale("r1", cards[1], 10_000, "2026-02-10")])
    await post(store, registry, [sale("r2", cards[1], 5_000, "2026-04-07")])
    await post(store, registry, [sale("r3", cards[6], 3_000, "2026-04-08")])
    await post(store, registry, [sale("g1", cards[3], 100_000, "2026-04-09")])
    await post(store, registry, [sale("g2", cards[3], 20_000, "2026-04-10")])
    await post(store, registry, [tender("t1", cards[4], "activate", 2_500, "2026-04-01")])
    await post(store, registry, [tender("t2", cards[4], "redeem", 500, "2026-04-03")])
    await post(store, registry, [tender("t3", cards[5], "activate", 4_000, "2026-02-10")])
    return registry


def run_scorecards(
    store: Store, registry: ProgramRegistry, day: str = AS_OF, **options: Any
) -> Any:
    return run_job(store, registry, "scorecards", day, **options)


async def figures_of(store: Store, registry: ProgramRegistry) -> dict[tuple[str, str], Figures]:
    """April's figures: (program, level) -> figures, level "all" for the whole program."""
    rows = await Scorecards(store).months("northwind", APRIL, 1)
    found = {}
    for card in scorecard.assemble(rows, registry.programs()):
        found[(card.program, "all")] = card.total
        found.update({(card.program, level): figures for level, figures in card.levels})
    return found


SILVER = Figures(
    accounts_active=2, accounts_registered=2, issued_ltd=180, issued_mtd=80, outstanding=180,
    spent_mtd=8_000, spending_mtd=2, customers=1, members_with_points=1,
)  # fmt: skip
GOLD = Figures(
    accounts_active=1, issued_ltd=1_000, issued_mtd=1_000, redeemed_ltd=1_000,
    redeemed_mtd=1_000, escrowed=200, spent_mtd=120_000, spending_mtd=1,
)  # fmt: skip
LOYALTY = Figures(
    accounts_active=3, accounts_registered=2, issued_ltd=1_180, issued_mtd=1_080,
    redeemed_ltd=1_000, redeemed_mtd=1_000, outstanding=180, escrowed=200, spent_mtd=128_000,
    spending_mtd=3, customers=1, members_with_points=1, customers_total=3, cards_total=50,
    card_series=1,
)  # fmt: skip
GIFT_CARD = Figures(
    accounts_active=2, issued_ltd=6_500, issued_mtd=2_500, redeemed_ltd=500, redeemed_mtd=500,
    outstanding=6_000, customers_total=3, cards_total=50, card_series=1,
)  # fmt: skip
WALLET = Figures(
    accounts_active=2, certificates_issued_ltd=2, certificates_issued_mtd=1,
    certificates_outstanding=2, customers_total=3, cards_total=50, card_series=1,
)  # fmt: skip


async def test_the_scorecards_job_counts_the_demo_programs_figures_by_level(
    store: Store, cards: list[str]
) -> None:
    registry = await the_month(store, cards)
    before = await store.load(cards[:8])
    # One account per chunk: DEMO-2's two cards are counted in different chunks, and the
    # customer still once.
    report = await run_scorecards(store, registry, chunk_accounts=1)
    assert (report.accounts_done, report.accounts_changed, report.postings) == (5, 0, 0)
    assert await figures_of(store, registry) == {
        ("points", "all"): LOYALTY,
        ("points", "silver"): SILVER,
        ("points", "gold"): GOLD,
        ("points", "platinum"): Figures(),  # no account holds it: zeros
        ("giftcard", "all"): GIFT_CARD,
        ("rewards", "all"): WALLET,
    }
    assert await store.load(cards[:8]) == before  # counted, not changed
    async with store.pool.connection() as connection:  # the run's customers are forgotten
        cursor = await connection.execute("SELECT count(*) FROM scorecard_members")
        assert await cursor.fetchone() == (0,)


async def test_a_second_run_of_the_day_counts_nothing_again_and_the_month_shows_its_latest(
    store: Store, cards: list[str]
) -> None:
    registry = await the_month(store, cards)
    await run_scorecards(store, registry, "2026-04-10")
    again = await run_scorecards(store, registry, "2026-04-10")
    assert again.already
    tenth = await figures_of(store, registry)
    # On the 10th the 200 escrowed stars were posted and the fifteenth's sale not yet made.
    assert tenth[("points", "all")].accounts_active == 3
    await post(store, registry, [sale("late", cards[1], 2_000, "2026-04-14")])
    await run_scorecards(store, registry, AS_OF)
    latest = await figures_of(store, registry)
    assert latest[("points", "silver")].issued_mtd == SILVER.issued_mtd + 20
    assert latest[("points", "all")].issued_ltd == LOYALTY.issued_ltd + 20


async def test_a_run_that_crashed_in_the_middle_resumes_and_counts_each_account_once(
    store: Store, cards: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = await the_month(store, cards)
    real = Scorecards.ledger_sums
    calls = 0

    async def crash_at_the_third_chunk(self: Scorecards, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionError("the server went away")
        return await real(self, *args)

    monkeypatch.setattr(Scorecards, "ledger_sums", crash_at_the_third_chunk)
    with pytest.raises(ConnectionError):
        await run_scorecards(store, registry, chunk_accounts=2)
    resumed = await run_scorecards(store, registry, chunk_accounts=2)
    assert (resumed.attempts, resumed.accounts_done) == (2, 5)
    found = await figures_of(store, registry)
    assert found[("points", "all")] == LOYALTY
    assert found[("giftcard", "all")] == GIFT_CARD
    assert found[("rewards", "all")] == WALLET


async def test_two_runners_at_once_count_the_accounts_once(store: Store, cards: list[str]) -> None:
    registry = await the_month(store, cards)
    first, second = await asyncio.gather(
        run_scorecards(store, registry, chunk_accounts=1),
        run_scorecards(store, registry, chunk_accounts=1),
    )
    assert sorted([first.already, second.already]) == [False, True]
    assert (await figures_of(store, registry))[("points", "all")] == LOYALTY


async def test_get_scorecard_answers_the_months_counted_with_the_manuals_ratios(
    api: Harness, demo_summary: DemoSummary
) -> None:
    cards = demo_cards(demo_summary)
    registry = await the_month(api.store, cards)
    await run_scorecards(api.store, registry, "2026-02-28")
    await run_scorecards(api.store, registry, AS_OF)
    answer = await api.stub.GetScorecard(
        admin.GetScorecardRequest(program_id="northwind", month="2026-04", months=3)
    )
    assert (answer.program_id, answer.job, answer.month_counted) == (
        "northwind", "scorecards", True,
    )  # fmt: skip
    listed = [(card.month, card.as_of, card.program) for card in answer.scorecards]
    assert listed == [
        ("2026-04", AS_OF, "giftcard"), ("2026-04", AS_OF, "points"),
        ("2026-04", AS_OF, "rewards"), ("2026-02", "2026-02-28", "giftcard"),
        ("2026-02", "2026-02-28", "points"), ("2026-02", "2026-02-28", "rewards"),
    ]  # fmt: skip
    points = answer.scorecards[1]
    assert (points.type, points.exponent) == (admin.PROGRAM_TYPE_LOYALTY, 0)
    levels = [level.level for level in points.levels]
    assert levels == ["silver", "gold", "platinum"]  # the program's order, empty ones too
    total = points.total
    assert (total.issued_ltd, total.redeemed_ltd, total.outstanding) == (1_180, 1_000, 180)
    assert total.average_balance == 60  # 180 stars over 3 accounts
    assert total.registered_rate == pytest.approx(2 / 3)
    assert total.customers_rate == pytest.approx(1 / 3)  # DEMO-2 of 3 customers
    assert total.active_account_rate == pytest.approx(3 / 50)
    assert total.redemption_rate == pytest.approx(1_000 / 1_180)
    silver = points.levels[0].figures
    assert (silver.accounts_active, silver.share_of_program, silver.average_balance) == (
        2, pytest.approx(2 / 3), 90,
    )  # fmt: skip
    # April's spend, in cents: silver $50.00 and $30.00, gold $1,000.00 and $200.00.
    assert points.spend_exponent == 2
    gold = points.levels[1].figures
    assert (silver.spent_mtd, silver.spending_mtd, silver.average_spend) == (8_000, 2, 4_000)
    assert (gold.spent_mtd, gold.spending_mtd, gold.average_spend) == (120_000, 1, 120_000)
    assert (total.spent_mtd, total.average_spend) == (128_000, 42_667)  # half to even
    gift = answer.scorecards[0]
    assert (gift.exponent, gift.total.outstanding, gift.total.average_balance) == (2, 6_000, 3_000)
    # February's run: the state of the accounts on its day was April's (a run reads the
    # accounts as they are), the ledger only February's.
    february_gift = answer.scorecards[3].total
    assert (february_gift.issued_ltd, february_gift.issued_mtd) == (4_000, 4_000)

    empty = await api.stub.GetScorecard(
        admin.GetScorecardRequest(program_id="northwind", month="2026-05", months=1)
    )
    assert (empty.month_counted, len(empty.scorecards)) == (False, 0)


INVALID = ("INVALID_ARGUMENT", "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("request_fields", "code", "reason"),
    [
        ({"program_id": "northwind", "month": "2026-13"}, *INVALID),
        ({"program_id": "northwind", "month": "April"}, *INVALID),
        ({"program_id": "northwind", "months": 37}, *INVALID),
        ({"program_id": "northwind", "month": "9999-12"}, *INVALID),
        ({"program_id": "northwind", "month": "0001-01"}, *INVALID),
        ({"program_id": "northwind", "month": "\uff12\uff10\uff12\uff16-04"}, *INVALID),
        ({"program_id": ""}, *INVALID),
        ({"program_id": "bad\x00id"}, *INVALID),
        ({"program_id": "southwind"}, "NOT_FOUND", "UNKNOWN_PROGRAM"),
    ],
)
async def test_get_scorecard_refuses_bad_requests_with_their_reasons(
    api: Harness, demo_summary: DemoSummary, request_fields: dict[str, Any], code: str,
    reason: str,
) -> None:  # fmt: skip
    call = api.stub.GetScorecard(admin.GetScorecardRequest(**request_fields))
    await fails(call, getattr(grpc.StatusCode, code), reason)


async def test_loyalty_report_scorecard_prints_the_months_tables_and_json(
    store: Store, schema_url: str, redis_url: str, cards: list[str]
) -> None:
    registry = await the_month(store, cards)
    await run_scorecards(store, registry)

    def report(*args: str) -> Any:
        return loyalty(
            "report", "scorecard", "northwind", *args, database_url=schema_url,
            redis_url=redis_url,
        )  # fmt: skip

    printed = await asyncio.to_thread(report, "--month", "2026-04")
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout
    assert "loyalty program points" in text and "as of 2026-04-15" in text
    silver = next(line.split() for line in text.splitlines() if line.strip().startswith("silver"))
    # level, accounts, share, registered, customers, with points, issued LTD, issued MTD, ...
    assert silver[:8] == ["silver", "2", "66.7%", "100.0%", "1", "1", "180", "80"]
    assert silver[-2:] == ["80.00", "40.00"]  # spent MTD and average spend, in dollars
    gift = text[text.index("tender program giftcard") :]
    assert "65.00" in gift and "60.00" in gift and "30.00" in gift  # issued, open, average

    as_json = await asyncio.to_thread(report, "--month", "2026-04", "--json")
    assert as_json.returncode == 0, as_json.stderr
    by_program = {card["program"]: card for card in json.loads(as_json.stdout)}
    assert by_program["giftcard"]["total"]["outstanding"] == "60.00"
    assert by_program["points"]["total"]["issued_ltd"] == "1180"  # no thousands separator
    assert by_program["points"]["levels"][1]["level"] == "gold"
    assert by_program["points"]["levels"][1]["escrowed"] == "200"
    assert by_program["points"]["spend_exponent"] == 2
    assert by_program["points"]["levels"][1]["spent_mtd"] == "1200.00"  # dollars, not stars
    assert by_program["points"]["levels"][0]["average_spend"] == "40.00"

    not_yet = await asyncio.to_thread(report, "--month", "2026-05")
    assert not_yet.returncode == 0
    assert "no figures for 2026-05" in not_yet.stdout
    assert "scorecards job has not finished a run" in not_yet.stderr

    refusals = (
        ("--month", "2026-13"), ("--month", "9999-12"), ("--months", "0"), ("--months", "37"),
    )  # fmt: skip
    for bad, named in refusals:
        refused = await asyncio.to_thread(report, bad, named)
        assert refused.returncode == 2
        assert bad in refused.stderr
    nowhere = await asyncio.to_thread(report, "--html", "/nonexistent-directory/page.html")
    assert nowhere.returncode == 2
    assert "--html" in nowhere.stderr and "/nonexistent-directory/page.html" in nowhere.stderr
    unknown = await asyncio.to_thread(
        loyalty, "report", "scorecard", "southwind", database_url=schema_url,
        redis_url=redis_url,
    )  # fmt: skip
    assert unknown.returncode == 2 and "southwind" in unknown.stderr


async def test_loyalty_jobs_run_scorecards_counts_as_of_yesterday_by_default(
    store: Store, schema_url: str, redis_url: str, cards: list[str]
) -> None:
    ran = await asyncio.to_thread(
        loyalty, "jobs", "run", "scorecards", database_url=schema_url, redis_url=redis_url
    )
    assert ran.returncode == 0, ran.stderr
    yesterday = calendar.to_day(datetime.date.today()) - 1  # the last whole day
    assert json.loads(ran.stdout)["as_of"] == calendar.format_day(yesterday)


@NEEDS_CHROMIUM
async def test_the_html_report_draws_its_charts_with_the_figures_in_headless_chromium(
    store: Store, schema_url: str, redis_url: str, cards: list[str], tmp_path: Path
) -> None:
    registry = await the_month(store, cards)
    await run_scorecards(store, registry, "2026-02-28")
    await run_scorecards(store, registry)
    path = tmp_path / "northwind.html"
    written = await asyncio.to_thread(
        loyalty, "report", "scorecard", "northwind", "--month", "2026-04", "--months", "3",
        "--html", str(path), database_url=schema_url, redis_url=redis_url,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    html = path.read_text(encoding="utf-8")
    assert fetched_urls(html) == []  # no script, style or image from elsewhere: opens offline
    assert "<td>1,180</td>" in html  # the month's table: all levels' stars issued

    drawn = await drawn_bars(path)
    expected = {
        f"chart-{program}-{name}" for program in ("giftcard", "points", "rewards")
        for name in ("issued", "redeemed", "outstanding", "accounts")
    } | {"chart-points-spend"}  # fmt: skip
    assert set(drawn) == expected
    # April's average spend: silver $40.00 a card, gold $1,200.00.
    assert {"40.00", "1,200.00"} <= set(drawn["chart-points-spend"])
    # Stars issued: silver 100 in February, 80 in April; gold 1,000 in April.
    assert {"100", "80", "1,000"} <= set(drawn["chart-points-issued"])
    assert {"1,000"} <= set(drawn["chart-points-redeemed"])
    # The gift cards: $40.00 loaded in February, $25.00 in April; $60.00 outstanding.
    assert {"40.00", "25.00"} <= set(drawn["chart-giftcard-issued"])
    assert "60.00" in drawn["chart-giftcard-outstanding"]


class _Demo:
    """The demo program for every card, compiled from examples/ (no database)."""

    def __init__(self) -> None:
        path = Path(__file__).resolve().parents[1] / "examples" / "programs" / "demo.yaml"
        self.program = compile_program(load_program(path))

    def for_card(self, card_number: str) -> CompiledProgram:
        return self.program


def test_an_award_account_counts_its_live_value_and_its_awards_by_count() -> None:
    day = calendar.parse_day(AS_OF)
    card = "6001200000000010"
    state = AccountState(card)
    state.awards["rewards"] = AwardAccount(
        "rewards",
        value=[
            ValueLot(day - 40, 1_000, day + 100, "ewallet-10"),
            ValueLot(day - 200, 500, day - 1, "ewallet-10"),  # lapsed yesterday, not swept
        ],
        awards=[
            Award("C1", "certificate", "welcome", "rewards", day - 3, None, 0, "redeemed"),
            Award("C2", "certificate", "welcome", "rewards", day - 60, day + 5, 1),
            Award("C3", "certificate", "welcome", "rewards", day - 90, day - 10, 1),  # lapsed
            Award("C4", "coupon", "coupon-5", "rewards", day - 1, None, 1),  # not a certificate
        ],
    )
    sums = [
        LedgerSum("rewards", "award_value", "e_award", 2_500, 1_000, 2, 1, 0),
        LedgerSum("rewards", "award_value", "redeem", -1_000, 0, 0, 0, 1),
        LedgerSum("rewards", "award_value", "expire", -500, -500, 0, 0, 1),
    ]
    tally = Tally()
    count_account(tally, _Demo(), state, sums, "DEMO-1", day)
    ((part, level), figures), = tally.counted.items()  # fmt: skip
    assert (part.part, part.type, level) == ("rewards", "award", "")
    assert figures == Figures(
        accounts_active=1, accounts_registered=1, issued_ltd=2_500, issued_mtd=1_000,
        redeemed_ltd=1_000, expired_ltd=500, expired_mtd=500, outstanding=1_000,
        certificates_issued_ltd=3, certificates_issued_mtd=1, certificates_redeemed_ltd=1,
        certificates_outstanding=1, e_awards_issued_ltd=2, e_awards_issued_mtd=1,
        e_awards_outstanding=1, e_awards_redeemed_ltd=1,
    )  # fmt: skip
    assert tally.members == {(part, "", "DEMO-1"): False}
    month = scorecard.ProgramMonth("2026-04", day, "rewards", "award", 2, figures)
    assert month.ratios(figures).redemption_rate == pytest.approx(2 / 5)  # C1 and one e-award

"""Scheduled jobs on real PostgreSQL: each job's exact effect on the demo program, a second
run that changes nothing, a crash in the middle and the resume, two runners at once, a
transaction racing a chunk, the schedule deferring a tick once, and the command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from plugins.posting import post, progress_dying_at, registry_of, run_job, state_of
from plugins.proxy import Proxy
from plugins.server import DemoSummary, StartServed, demo_cards, loyalty, unique_prefix

from processor import calendar, proto
from processor.cache.accounts import AccountCache
from processor.engine import ReferenceEngine
from processor.engine.types import Line, Purchase, TenderRequest
from processor.errors import InvalidFieldError
from processor.jobs import runner
from processor.jobs.named import JOBS, job_named
from processor.jobs.schedule import Schedule, check_cron, task_name
from processor.limits import LAPSED_AWARDS_KEPT_DAYS
from processor.runtime import metrics
from processor.service.events import EventReader
from processor.store.event_log import EventLog
from processor.store.events import AWARD_EXPIRING, POINTS_RELEASED, Event
from processor.store.job_runs import Chunk, JobRuns, RunLostError
from processor.store.ledger import CommitBatch, Store

pytestmark = pytest.mark.integration

DAY = calendar.parse_day("2026-03-04")  # a Wednesday
ROOT = Path(__file__).resolve().parents[1]


def sale(request_id: str, card: str, amount: int, day: int = DAY) -> Purchase:
    return Purchase(
        request_id, card, day, 13 * 3600, "S003", card_present=True, pin_verified=True,
        lines=(Line(1, "JACKET", amount, 1, ("OUTERWEAR",)),),
    )  # fmt: skip


def tender(request_id: str, card: str, op: Any, amount: int, day: int = DAY) -> TenderRequest:
    return TenderRequest(
        request_id, card, day, 9 * 3600, "S001", pin_verified=True, op=op, amount=amount
    )


async def certificates(store: Store, card: str) -> list[str]:
    """The rules of the certificates the card's rewards wallet holds."""
    wallet = (await state_of(store, card)).awards.get("rewards")
    return [] if wallet is None else [award.rule for award in wallet.awards]


async def job_rows(store: Store, card: str) -> list[tuple[str, str, str, int]]:
    """The card's ledger rows posted by jobs: (request id, balance, kind, amount)."""
    async with store.pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT request_id, balance, kind, amount FROM ledger"
            " WHERE account_id = %s AND request_id LIKE 'job:%%' ORDER BY request_id, seq",
            (card,),
        )
        return [tuple(row) for row in await cursor.fetchall()]  # type: ignore[misc]


@pytest.fixture
def demo_cards_list(demo_summary: DemoSummary) -> list[str]:
    return demo_cards(demo_summary)


# --------------------------------------------------------------------------- each job


async def test_the_award_job_issues_the_demo_coffee_certificate_once(
    store: Store, demo_cards_list: list[str], redis_url: str
) -> None:
    registry = await registry_of(store)
    rich, poor = demo_cards_list[:2]
    await post(store, registry, [sale("s1", rich, 35_000), sale("s2", poor, 10_000)])
    poor_before = await store.load([poor])
    async with AccountCache.from_url(redis_url, key_prefix=unique_prefix()) as cache:
        report = await run_job(store, registry, "create-loyalty-award", "2026-03-05", cache=cache)
        cached = await cache.get_many([rich])
    assert (report.accounts_done, report.accounts_changed, report.already) == (2, 1, False)
    awarded = await state_of(store, rich)
    assert await certificates(store, rich) == ["free-coffee"]
    assert sum(lot.points for lot in awarded.loyalty["points"].lots) == 55  # 355 - 300
    run = "job:create-loyalty-award:2026-03-05"
    assert await job_rows(store, rich) == [(f"{run}:{rich}", "points", "award_cost", -300)]
    assert cached[rich][0] == (await store.load([rich]))[rich][0]  # the cache has the new state
    # 105 points: the job left the poor card as it was, and did not write it.
    assert await store.load([poor]) == poor_before
    assert await job_rows(store, poor) == []
    assert await store.reconcile() == []

    again = await run_job(store, registry, "create-loyalty-award", "2026-03-05")
    assert again.already and again.accounts_changed == 1
    assert await state_of(store, rich) == awarded
    next_day = await run_job(store, registry, "create-loyalty-award", "2026-03-06")
    assert next_day.accounts_changed == 0  # 55 points: no second certificate
    assert await state_of(store, rich) == awarded


async def test_the_monthly_review_issues_last_months_spend_at_the_demo_rate_once(
    store: Store, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    card, other = demo_cards_list[:2]
    # March: $350.00 and $49.00 on one card; the other card buys in April only.
    await post(store, registry, [sale("s1", card, 35_000), sale("s2", card, 4_900, DAY + 1)])
    await post(store, registry, [sale("s3", other, 10_000, calendar.parse_day("2026-04-01"))])
    monthly = job_named("monthly-review")
    # Runs as of the 4th: a purchase of March posted up to three days late still counts.
    for started, as_of in (("2026-04-17", "2026-04-04"), ("2026-04-03", "2026-03-04")):
        assert monthly.as_of(calendar.parse_day(started)) == calendar.parse_day(as_of)
    report = await run_job(store, registry, "monthly-review", "2026-04-01")
    assert (report.accounts_done, report.accounts_changed) == (2, 1)
    run = "job:monthly-review:2026-04-01"
    # A tenth of a star per dollar of March's $399.00: 39, a bonus lot.
    assert await job_rows(store, card) == [(f"{run}:{card}", "points", "bonus", 39)]
    assert await job_rows(store, other) == []
    reviewed = await state_of(store, card)
    assert reviewed.loyalty["points"].rule_period["monthly-spend"] == (
        calendar.month_index(DAY), 1,
    )  # fmt: skip
    again = await run_job(store, registry, "monthly-review", "2026-04-01")
    assert again.already
    later = await run_job(store, registry, "monthly-review", "2026-04-20")
    assert later.accounts_changed == 0  # March reviewed already
    assert await state_of(store, card) == reviewed
    may = await run_job(store, registry, "monthly-review", "2026-05-01")
    assert may.accounts_changed == 1  # the other card's April: $100.00, 10 stars
    assert (await job_rows(store, other))[-1][2:] == ("bonus", 10)
    assert await store.reconcile() == []


async def test_the_movement_job_demotes_gold_to_silver_by_the_average_per_month_rule(
    store: Store, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    card = demo_cards_list[0]
    await post(store, registry, [sale("s1", card, 120_000)])
    assert (await state_of(store, card)).loyalty["points"].level == "gold"
    half_year = await run_job(store, registry, "movement", "2026-09-05")
    held = (await state_of(store, card)).loyalty["points"]
    assert (half_year.accounts_changed, held.level) == (1, "gold")  # its coupons lapsed only
    assert {coupon.status for coupon in held.awards} == {"expired"}
    a_year = await run_job(store, registry, "movement", "2027-03-05")
    assert a_year.accounts_changed == 1
    moved = (await state_of(store, card)).loyalty["points"]
    assert (moved.level, moved.level_since_day) == ("silver", calendar.parse_day("2027-03-05"))
    assert await store.reconcile() == []


async def test_points_aging_expires_lots_that_are_due_and_posts_them(
    store: Store, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    card = demo_cards_list[0]
    await post(store, registry, [sale("s1", card, 25_000)])
    early = await run_job(store, registry, "points-aging", "2028-03-03")
    assert sum(lot.points for lot in (await state_of(store, card)).loyalty["points"].lots) == 255
    assert early.accounts_changed == 1  # the year rolled; no lot was due yet
    report = await run_job(store, registry, "points-aging", "2028-03-04")
    assert report.postings == 1
    assert (await state_of(store, card)).loyalty["points"].lots == []
    run = "job:points-aging:2028-03-04"
    assert await job_rows(store, card) == [(f"{run}:{card}", "points", "expire", -255)]
    assert await store.reconcile() == []


async def test_tender_expiry_releases_lapsed_holds_and_expires_the_account(
    store: Store, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    card = demo_cards_list[0]
    await post(
        store,
        registry,
        [tender("a1", card, "activate", 10_000), tender("h1", card, "preauth", 2_500)],
    )
    assert list((await state_of(store, card)).tender.holds) == ["h1"]  # type: ignore[union-attr]
    await run_job(store, registry, "tender-expiry", "2026-03-10")
    assert list((await state_of(store, card)).tender.holds) == ["h1"]  # type: ignore[union-attr]
    released = await run_job(store, registry, "tender-expiry", "2026-03-11")
    assert released.accounts_changed == 1
    account = (await state_of(store, card)).tender
    assert account is not None and (account.holds, account.status) == ({}, "active")
    expired = await run_job(store, registry, "tender-expiry", "2031-03-04")
    assert expired.accounts_changed == 1
    account = (await state_of(store, card)).tender
    assert account is not None and (account.status, account.balance) == ("expired", 10_000)
    assert await store.reconcile() == []


async def test_award_expiry_expires_the_welcome_certificate_after_three_months(
    store: Store, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    card = demo_cards_list[0]
    await post(store, registry, [tender("a1", card, "activate", 10_000)])
    welcome = (await state_of(store, card)).awards["rewards"].awards
    assert [(award.rule, award.status) for award in welcome] == [("welcome", "active")]
    await run_job(store, registry, "award-expiry", "2026-06-03")
    assert (await state_of(store, card)).awards["rewards"].awards[0].status == "active"
    report = await run_job(store, registry, "award-expiry", "2026-06-04")
    assert report.accounts_changed == 1
    assert (await state_of(store, card)).awards["rewards"].awards[0].status == "expired"


async def test_award_expiry_removes_lapsed_coupons_a_month_after_expiry_and_keeps_certificates(
    store: Store, demo_cards_list: list[str]
) -> None:
    # Seed 003's "remove expired vouchers": kept LAPSED_AWARDS_KEPT_DAYS after their expiry
    # day (one presented then is told it expired), then gone from the state; the ledger
    # keeps what was posted of them, and nothing is posted by the removal. Certificates
    # stay: the scorecard counts them, issued and redeemed, for life.
    registry = await registry_of(store)
    card = demo_cards_list[0]
    await post(store, registry, [tender("a1", card, "activate", 10_000), sale("s1", card, 120_000)])
    state = await state_of(store, card)
    coupons = state.loyalty["points"].awards  # two $5 coupons for the 1,200 stars
    (welcome,) = state.awards["rewards"].awards
    assert [c.rule for c in coupons] == ["coupon-5"] * 2 and welcome.rule == "welcome"
    assert len({c.expires_day for c in coupons}) == 1
    coupon = coupons[0]
    assert coupon.expires_day is not None and welcome.expires_day is not None
    assert coupon.expires_day + LAPSED_AWARDS_KEPT_DAYS < welcome.expires_day
    rows_before = await job_rows(store, card)

    def on(day: int) -> str:
        return calendar.format_day(day)

    await run_job(store, registry, "award-expiry", on(coupon.expires_day))
    state = await state_of(store, card)
    assert [c.status for c in state.loyalty["points"].awards] == ["expired"] * 2  # kept a while
    await run_job(store, registry, "award-expiry", on(coupon.expires_day + 29))
    assert len((await state_of(store, card)).loyalty["points"].awards) == 2
    removed = await run_job(store, registry, "award-expiry", on(coupon.expires_day + 30))
    assert removed.accounts_changed == 1 and removed.postings == 0
    state = await state_of(store, card)
    assert state.loyalty["points"].awards == []
    assert [a.status for a in state.awards["rewards"].awards] == ["active"]  # not lapsed yet

    await run_job(store, registry, "award-expiry", on(welcome.expires_day + 30))
    assert [a.status for a in (await state_of(store, card)).awards["rewards"].awards] == ["expired"]
    again = await run_job(store, registry, "award-expiry", on(welcome.expires_day + 31))
    assert again.accounts_changed == 0  # a run after it changes nothing
    assert await job_rows(store, card) == rows_before  # nothing posted by any of it
    assert await store.reconcile() == []


async def test_award_expiry_tells_of_each_award_in_its_last_week_once(
    store: Store, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    card = demo_cards_list[0]
    await post(store, registry, [sale("s1", card, 120_000)])
    coupons = (await state_of(store, card)).loyalty["points"].awards  # two $5 coupons
    expires_day = coupons[0].expires_day
    assert expires_day is not None and {c.expires_day for c in coupons} == {expires_day}
    last_day = expires_day - 1  # the engine keeps the first day a coupon cannot be used

    async def expiring() -> list[Event]:
        await EventLog(store).position()
        rows = await EventLog(store).after(0, 100, kinds=[AWARD_EXPIRING])
        return [row.event for row in rows]

    await run_job(store, registry, "award-expiry", calendar.format_day(last_day - 8))
    assert await expiring() == []  # more than a week left
    await run_job(store, registry, "award-expiry", calendar.format_day(last_day - 7))
    told = await expiring()
    assert sorted((e.request_id, e.program, e.data["rule"]) for e in told) == sorted(
        (f"expiring:{c.code}:{expires_day}", "points", "coupon-5") for c in coupons
    )
    assert all(e.data["expires_day"] == expires_day for e in told)
    # Later runs in the week (or the same run taken up again) tell nothing more.
    await run_job(store, registry, "award-expiry", calendar.format_day(last_day - 6))
    await run_job(store, registry, "award-expiry", calendar.format_day(last_day))
    assert len(await expiring()) == 2
    # As ListEvents serves them: the coupon's last usable day, as the API shows dates.
    reader = EventReader(EventLog(store), registry)
    listed = await reader.list_events(
        proto.admin.ListEventsRequest(kinds=[proto.admin.EVENT_KIND_AWARD_EXPIRING])
    )
    assert {e.award_expiring.code for e in listed.events} == {c.code for c in coupons}
    assert {
        (e.award_expiring.award_kind, e.award_expiring.expires_date) for e in listed.events
    } == {("coupon", calendar.format_day(last_day))}
    assert await store.reconcile() == []


async def test_escrow_release_tells_of_the_points_released_each_day_once(
    store: Store, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    card = demo_cards_list[0]
    # $1,200.00 moves the card to gold, whose points wait 14 days in escrow: the next
    # sale's are released on DAY + 15.
    await post(store, registry, [sale("s1", card, 120_000)])
    await post(store, registry, [sale("s2", card, 10_000, DAY + 1)])
    lots = (await state_of(store, card)).loyalty["points"].lots
    escrowed = sum(lot.points for lot in lots if lot.available_day == DAY + 15)
    assert escrowed >= 100 and all(lot.available_day in (DAY, DAY + 15) for lot in lots)
    before = await state_of(store, card)

    async def released() -> list[Event]:
        await EventLog(store).position()
        rows = await EventLog(store).after(0, 100, kinds=[POINTS_RELEASED])
        return [row.event for row in rows]

    early = await run_job(store, registry, "escrow-release", calendar.format_day(DAY + 14))
    assert early.accounts_changed == 0 and await released() == []
    await run_job(store, registry, "escrow-release", calendar.format_day(DAY + 15))
    (told,) = await released()
    assert (told.account_id, told.request_id, told.program) == (
        card, f"released:points:{DAY + 15}", "points",
    )  # fmt: skip
    assert told.data == {"points": escrowed, "released_day": DAY + 15}
    # Later runs within the week tell nothing more, and no run changes the account.
    for later in (DAY + 16, DAY + 21):
        report = await run_job(store, registry, "escrow-release", calendar.format_day(later))
        assert report.accounts_changed == 0
    assert len(await released()) == 1
    assert await state_of(store, card) == before
    reader = EventReader(EventLog(store), registry)
    listed = await reader.list_events(
        proto.admin.ListEventsRequest(kinds=[proto.admin.EVENT_KIND_POINTS_RELEASED])
    )
    (message,) = [event.points_released for event in listed.events]
    assert (message.program, message.points.units, message.released_date) == (
        "points", escrowed, calendar.format_day(DAY + 15),
    )  # fmt: skip
    assert await store.reconcile() == []


# --------------------------------------------------------------------------- the run itself


async def test_a_run_stopped_after_a_commit_resumes_and_changes_no_account_twice(
    store: Store, demo_cards_list: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = await registry_of(store)
    cards = demo_cards_list[:3]
    await post(store, registry, [sale(f"s{i}", card, 35_000) for i, card in enumerate(cards)])
    monkeypatch.setattr(JobRuns, "progress", progress_dying_at(2))
    with pytest.raises(ConnectionError):
        await run_job(store, registry, "create-loyalty-award", "2026-03-05", chunk_accounts=1)
    (stopped,) = await JobRuns(store).recent("create-loyalty-award")
    assert (stopped.status, stopped.after_account, stopped.accounts_done) == (
        "failed",
        cards[0],
        1,
    )
    assert "the process died here" in stopped.error
    monkeypatch.undo()  # the process started again

    report = await run_job(store, registry, "create-loyalty-award", "2026-03-05", chunk_accounts=1)
    # Every card changed once by the run: the first and second in the first attempt (the
    # second's commit found by the resume's look-up), the third in the second.
    assert (report.accounts_done, report.accounts_changed, report.attempts) == (3, 3, 2)
    for card in cards:  # one certificate each
        assert await certificates(store, card) == ["free-coffee"]
        assert len(await job_rows(store, card)) == 1
    assert await store.reconcile() == []


async def test_two_runners_started_at_once_run_the_job_once(
    schema_url: str, demo_cards_list: list[str]
) -> None:
    async with Store(schema_url, pool_size_max=3) as one, Store(schema_url, pool_size_max=3) as two:
        registry = await registry_of(one)
        cards = demo_cards_list[:4]
        await post(one, registry, [sale(f"s{i}", card, 35_000) for i, card in enumerate(cards)])
        reports = await asyncio.gather(
            run_job(one, registry, "create-loyalty-award", "2026-03-05", chunk_accounts=1),
            run_job(two, await registry_of(two), "create-loyalty-award", "2026-03-05"),
        )
        assert sorted(report.already for report in reports) == [False, True]
        for card in cards:
            assert await certificates(one, card) == ["free-coffee"]
        assert await one.reconcile() == []


async def test_a_runner_waits_for_the_lock_longer_than_a_statement_may_last(
    schema_url: str, demo_cards_list: list[str]
) -> None:
    # Statements end after 200 ms here: a runner waiting on the lock in one statement failed
    # (1001) while another held it; it asks again until it is free.
    async with Store(schema_url, pool_size_max=3, statement_timeout_ms=200) as store:
        registry = await registry_of(store)
        await post(store, registry, [sale("s1", demo_cards_list[0], 35_000)])
        runs = JobRuns(store)
        async with runs.exclusive("create-loyalty-award"):
            waiting = asyncio.ensure_future(
                run_job(store, registry, "create-loyalty-award", "2026-03-05")
            )
            for _ in range(30):  # the waiting runner has asked for the lock a few times
                await asyncio.sleep(0.1)
            assert not waiting.done()
        report = await asyncio.wait_for(waiting, 60)
    assert (report.already, report.accounts_changed) == (False, 1)


async def test_a_runner_whose_run_another_took_over_stops_at_its_next_chunk(
    store: Store,
) -> None:
    runs = JobRuns(store)
    await runs.begin("movement", DAY)
    async with store.pool.connection() as connection:  # another runner finished it
        await connection.execute("UPDATE job_runs SET status = 'finished'")
    with pytest.raises(RunLostError, match="no longer running"):
        await runs.progress("movement", DAY, Chunk("", "6001200000000010", 1))


async def test_an_account_a_transaction_changed_meanwhile_is_evaluated_again(
    store: Store, demo_cards_list: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = await registry_of(store)
    card = demo_cards_list[0]
    await post(store, registry, [sale("s1", card, 35_000)])
    real_commit = Store.commit
    raced = False

    async def a_sale_gets_there_first(self: Store, batch: CommitBatch) -> Any:
        nonlocal raced
        if not raced and any(write.account_id == card for write in batch.accounts):
            raced = True
            await post(store, registry, [sale("s2", card, 10_000, DAY + 1)])
        return await real_commit(self, batch)

    monkeypatch.setattr(Store, "commit", a_sale_gets_there_first)
    retries = metrics.CONCURRENCY_RETRIES._value.get()
    report = await run_job(store, registry, "create-loyalty-award", "2026-03-05")
    assert raced and report.accounts_changed == 1
    assert metrics.CONCURRENCY_RETRIES._value.get() == retries + 1
    assert await certificates(store, card) == ["free-coffee"]
    points = (await state_of(store, card)).loyalty["points"]
    assert sum(lot.points for lot in points.lots) == 355 + 105 - 300  # both changes kept
    assert await store.reconcile() == []


async def test_a_finished_run_counts_in_the_job_metrics(
    store: Store, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    await post(store, registry, [sale("s1", demo_cards_list[0], 35_000)])
    finished = metrics.JOB_RUNS.labels("create-loyalty-award", "finished")
    changed = metrics.JOB_STATES.labels("create-loyalty-award", "changed")
    issued = metrics.AWARDS_ISSUED.labels("rewards", "certificate")
    before = (finished._value.get(), changed._value.get(), issued._value.get())
    await run_job(store, registry, "create-loyalty-award", "2026-03-05")
    after = (finished._value.get(), changed._value.get(), issued._value.get())
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    assert metrics.JOB_PROGRESS.labels("create-loyalty-award")._value.get() == 1.0


# --------------------------------------------------------------------------- the schedule


async def test_a_tick_is_deferred_once_across_two_processes_and_run(
    store: Store, schema_url: str, demo_cards_list: list[str]
) -> None:
    from procrastinate.periodic import PeriodicDeferrer

    registry = await registry_of(store)
    await post(store, registry, [sale("s1", demo_cards_list[0], 35_000)])
    context = runner.JobContext(store, registry)
    schedules = [Schedule(schema_url, context, cron="15 2 * * *") for _ in range(2)]
    tick = int(calendar.to_date(calendar.parse_day("2026-03-05")).strftime("%s")) + 2 * 3600 + 900
    for schedule in schedules:
        async with schedule.app.open_async():
            deferrer = PeriodicDeferrer(schedule.app.periodic_registry)
            award = next(
                task
                for task in schedule.app.periodic_registry.periodic_tasks.values()
                if task.task.name == task_name(JOBS["create-loyalty-award"])
            )
            await deferrer.defer_jobs([(award, tick)])
    async with store.pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s",
            (task_name(JOBS["create-loyalty-award"]),),
        )
        assert (await cursor.fetchone()) == (1,)
    await schedules[0].run(wait=False)
    (run,) = await JobRuns(store).recent("create-loyalty-award")
    assert (run.status, calendar.format_day(run.as_of)) == ("finished", "2026-03-05")
    assert await certificates(store, demo_cards_list[0]) == ["free-coffee"]


async def test_a_server_runs_a_deferred_job_and_stops_while_postgres_is_cut(
    store: Store,
    schema_url: str,
    postgres_proxy: Proxy,
    start_served: StartServed,
    demo_cards_list: list[str],
) -> None:
    registry = await registry_of(store)
    card = demo_cards_list[0]
    await post(store, registry, [sale("s1", card, 35_000)])
    served = await start_served(database_url=postgres_proxy.url, jobs_schedule=True)
    elsewhere = Schedule(schema_url, runner.JobContext(store, registry), cron="15 2 * * *")
    async with elsewhere.app.open_async():  # as `loyalty jobs` or another host would
        assert await elsewhere.defer(JOBS["create-loyalty-award"], DAY + 1) is not None
    finished = None
    for _ in range(600):  # the server's worker fetches it (woken by NOTIFY, or its poll)
        runs = await JobRuns(store).recent("create-loyalty-award")
        if runs and runs[0].status == "finished":
            finished = runs[0]
            break
        await asyncio.sleep(0.1)
    assert finished is not None and calendar.format_day(finished.as_of) == "2026-03-05"
    assert await certificates(store, card) == ["free-coffee"]
    await postgres_proxy.cut()
    # The worker's last statements find no database: the stop still ends (a hang fails
    # here, at the guard, rather than at the suite's timeout).
    await asyncio.wait_for(served.stop(), 120)


def test_a_job_in_place_does_what_a_job_on_copies_does_and_copies_leave_the_input() -> None:
    from processor.engine import JOB_STEPS, compile_program, run_job
    from processor.program.loader import load_program
    from processor.store import codec

    program = compile_program(load_program(ROOT / "examples" / "programs" / "demo.yaml"))
    card = "6001200000000010"
    sold = ReferenceEngine().evaluate(program, {}, [sale("s1", card, 120_000)])
    stored = codec.encode_state(sold.accounts[card])
    for day in ("2026-03-05", "2027-03-05", "2031-03-04"):
        given = {card: codec.decode_state(stored, card)}
        copied = run_job(program, given, calendar.parse_day(day), "job:x", JOB_STEPS)
        assert given[card] == codec.decode_state(stored, card)  # the input untouched
        changed = run_job(
            program, given, calendar.parse_day(day), "job:x", JOB_STEPS, in_place=True
        )
        assert (changed.results, changed.accounts) == (copied.results, copied.accounts)
        assert given[card] is changed.accounts[card]


def test_the_schedule_refuses_a_cron_expression_it_cannot_read() -> None:
    assert check_cron("15 2 * * *") == "15 2 * * *"
    for bad in ("", "every night", "61 2 * * *", "15 2 * * * *"):
        with pytest.raises(ValueError, match="cron expression"):
            check_cron(bad)


def test_an_unknown_job_is_refused_naming_the_jobs() -> None:
    with pytest.raises(InvalidFieldError, match="points-aging, award-expiry"):
        job_named("points-expiry")


# --------------------------------------------------------------------------- the command line


async def test_loyalty_jobs_run_fires_the_demo_award_rule_and_lists_the_run(
    store: Store, schema_url: str, redis_url: str, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    card = demo_cards_list[0]
    await post(store, registry, [sale("s1", card, 35_000)])
    ran = await asyncio.to_thread(
        loyalty, "jobs", "run", "create-loyalty-award", "--as-of", "2026-03-05",
        database_url=schema_url, redis_url=redis_url,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {
        "job": "create-loyalty-award",
        "as_of": "2026-03-05",
        "status": "finished",
        "accounts_total": 1,
        "accounts_done": 1,
        "accounts_changed": 1,
        "postings": 1,
        "attempts": 1,
    }
    assert await certificates(store, card) == ["free-coffee"]
    listed = await asyncio.to_thread(
        loyalty, "jobs", "list", database_url=schema_url, redis_url=redis_url
    )
    assert listed.returncode == 0, listed.stderr
    lines = dict(line.split("\t", 1) for line in listed.stdout.splitlines())
    assert list(lines) == list(JOBS)
    assert lines["create-loyalty-award"].startswith("as of 2026-03-05: finished, 1 of 1")
    assert lines["movement"].startswith("never run")


async def test_loyalty_jobs_run_makes_the_demo_moves_and_expiries(
    store: Store, schema_url: str, redis_url: str, demo_cards_list: list[str]
) -> None:
    registry = await registry_of(store)
    gold, gift = demo_cards_list[:2]
    await post(store, registry, [sale("s1", gold, 120_000)])
    await post(store, registry, [tender("a1", gift, "activate", 10_000)])
    jobs = (("monthly-review", "2026-04-01"), ("movement", "2027-03-05"),
            ("award-expiry", "2026-06-04"))  # fmt: skip
    for job, day in jobs:
        ran = await asyncio.to_thread(
            loyalty, "jobs", "run", job, "--as-of", day, "--chunk-accounts", "1",
            database_url=schema_url, redis_url=redis_url,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["accounts_done"] == 2
    # March's $1,200.00 at the demo's tenth of a star a dollar, in gold's escrow.
    reviewed = [row for row in await job_rows(store, gold) if "monthly-review" in row[0]]
    assert [row[1:] for row in reviewed] == [("points", "escrow", 120)]
    assert (await state_of(store, gold)).loyalty["points"].level == "silver"  # drop-gold
    welcome = (await state_of(store, gift)).awards["rewards"].awards
    assert [(award.rule, award.status) for award in welcome] == [("welcome", "expired")]
    history = await asyncio.to_thread(
        loyalty, "jobs", "history", database_url=schema_url, redis_url=redis_url
    )
    assert [line.split("\t")[0] for line in history.stdout.splitlines()] == [
        "award-expiry",
        "movement",
        "monthly-review",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("jobs", "run", "points-expiry"), "job: 'points-expiry' is not a job"),
        (("jobs", "run", "movement", "--as-of", "2026-13-01"), "--as-of: '2026-13-01' is not"),
        (("jobs", "run", "movement", "--chunk-accounts", "0"), "0 is not in 1..5000"),
        (("jobs", "history", "movement", "--limit", "0"), "0 is not in 1..1000"),
    ],
)
def test_loyalty_jobs_refuses_bad_input_naming_it_and_writes_nothing(
    schema_url: str, redis_url: str, args: tuple[str, ...], message: str
) -> None:
    refused = loyalty(*args, database_url=schema_url, redis_url=redis_url)
    assert refused.returncode == 2
    assert message in refused.stderr
    with psycopg.connect(schema_url) as connection:
        assert connection.execute("SELECT count(*) FROM job_runs").fetchone() == (0,)

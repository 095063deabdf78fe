"""The jobs a deployment runs, by name: what each does to every account it goes through.

Most are a selection of the reference engine's job steps (processor.engine.reference
``JOB_STEPS``). A loyalty account is aged before its job rules run, as before any
transaction, so ``create-loyalty-award`` and ``movement`` age the accounts they go through
as ``points-aging`` does. Two are not: ``opening-balances`` goes through the queue of
card-import balances, not every account, and posts them (processor.engine.reference
``open_balances``), first, so the night's other jobs see them; ``scorecards`` changes no
account: it counts them, last, so its figures follow the day's expiries and moves
(processor.jobs.scorecards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from processor import calendar
from processor.engine.types import AccountState
from processor.errors import InvalidFieldError
from processor.limits import MONTHLY_REVIEW_GRACE_DAYS
from processor.store.events import Event, expiring_of, released_of


@dataclass(frozen=True, slots=True)
class Job:
    """A scheduled job: its name, the engine's steps it runs and what it does."""

    name: str
    steps: tuple[str, ...]
    summary: str
    counts: bool = False  # counts the accounts (processor.jobs.scorecards), changes none
    days_behind: int = 0  # runs as of this many days before its tick's day (or today)
    # What a run goes through: every account, or the queue of card-import opening balances
    # (each card once ever, and a run taken up again the same day takes what was queued).
    walks: Literal["accounts", "opening_balances"] = "accounts"
    # The events it tells of each account it goes through, changed or not, written after
    # each chunk's commit, each once (awards about to expire, points released from escrow).
    reminders: Callable[[AccountState, int], list[Event]] | None = None
    # Runs as of the same day of every month (MONTHLY_REVIEW_GRACE_DAYS after its first):
    # that day's first tick runs it, and the ticks after, to the next month's, find that
    # run finished (or go on with it, stopped), so it walks the accounts once a month.
    monthly: bool = False

    def as_of(self, day: int) -> int:
        """The day a run started on ``day`` with no day given is as of."""
        behind = day - self.days_behind
        if not self.monthly:
            return behind
        grace = MONTHLY_REVIEW_GRACE_DAYS
        return calendar.month_start(behind - grace) + grace


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            "opening-balances",
            (),
            "posts the opening balances of imported cards (stored value, points, e-award "
            "value), each card once; a card whose balances cannot post is declined whole",
            walks="opening_balances",
        ),
        Job(
            "points-aging",
            ("age",),
            "expires points whose lots are due, and an inactive account's points where its "
            "level ages them on inactivity; marks lapsed coupons expired",
        ),
        Job(
            "award-expiry",
            ("expire_awards",),
            "expires award accounts, e-award value, certificates and coupons whose day has "
            "come; removes coupons lapsed a month ago; tells of awards expiring within a week",
            reminders=expiring_of,
        ),
        Job(
            "escrow-release",
            (),
            "tells of the points released from escrow (a `points_released` event per "
            "program and release day, once); changes no account: escrowed points are in the "
            "balance from their earning and spendable from their release day",
            reminders=released_of,
        ),
        Job(
            "tender-expiry",
            ("expire_tender",),
            "expires stored-value accounts on their expiry day and releases lapsed "
            "pre-authorizations",
        ),
        Job(
            "monthly-review",
            ("review",),
            "issues the points of last month's spend (issue rules whose calculation is "
            "`month_spend`), once a month, as of its 4th (purchases posted late count): "
            "before the award and movement jobs, so the night's awards and level moves "
            "count them",
            monthly=True,
        ),
        Job(
            "create-loyalty-award",
            ("award",),
            "issues the awards whose rule says `issue: job` to the accounts that qualify",
        ),
        Job(
            "movement",
            ("move",),
            "makes the level moves whose rule says `change: job`: sustains, and demotions "
            "with their extensions",
        ),
        Job(
            "scorecards",
            (),
            "counts each program's scorecard as of the day: accounts, customers, issued, "
            "redeemed, expired and outstanding, by level (`loyalty report scorecard`); as of "
            "yesterday, the last whole day",
            counts=True,
            # The night's tick counts the day that just ended: a run as of its own day
            # would leave the rest of that day out of every month (the month's figures
            # are its last run's, and the next month's MTD begins on the 1st).
            days_behind=1,
        ),
    )
}
"""Every job, in the order a tick of the schedule runs them, one after another."""

CARD_REGISTERED = Job(
    "card-registered",
    ("registered",),
    "issues the certificates given when a card is registered to a customer",
)
"""Not scheduled: RegisterCard runs it on the card it links (processor.jobs.runner.apply)."""


def job_named(name: str) -> Job:
    """The job called ``name``; InvalidFieldError naming the known ones otherwise."""
    job = JOBS.get(name)
    if job is None:
        raise InvalidFieldError("job", f"{name!r} is not a job; the jobs are {', '.join(JOBS)}")
    return job

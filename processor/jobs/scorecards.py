"""The scorecards job: each program's scorecard as of a day, counted account by account.

The manual's Program Scorecard, kept as monthly aggregates. A run walks every account as
the other jobs do, and changes none: for each chunk it reads the accounts' ledger (summed
in PostgreSQL) and the customers their cards are registered to, counts them here, and adds
the counts to the run's rows in the transaction that records the chunk, so a run resumed
after a crash counts each account once (processor.store.scorecards).

What counts, per program of the card's active program file:

- **Only active accounts**, as the manual says ("to all active account holders"): a card
  whose state is active and, for a tender or award program, whose account there is active.
  A loyalty account counts at the level it holds on the run's day; its ledger rows count
  there too, whatever level it held when they were posted.
- **Issued, redeemed, expired** are the ledger's postings to the as-of day (LTD), and from
  the first of its month (MTD):
  points issued are earned, bonus and opening points net of returns, without those still in escrow
  on the as-of day (released later, they count in LTD from then, and in the MTD of the
  month they were earned only if that month is counted again); points
  redeemed are those spent on awards and level moves. Tender value issued is activation,
  initial and reload amounts and value returned to the account, less voided loads;
  redeemed is redemptions, captures of pre-authorizations and cash-outs. E-award value
  issued is initial value, e-awards and opening balances; redeemed is redemptions. Merges move value
  between cards and count in neither.
- **Outstanding** is the accounts' balances on the as-of day: available points (escrow
  apart), stored value (pre-authorized holds included: not yet redeemed), e-award value not
  lapsed by that day (whether award-expiry has swept it yet or not).
- **Certificates** issued, redeemed and outstanding are counted from the award accounts;
  e-awards issued are the ledger's e-award credits, e-awards redeemed its redemptions of
  e-award value, outstanding the value lots not lapsed and not spent.
- **Spend** (loyalty) is what the accounts spent in purchases in the as-of day's month,
  from each account's spend by month (net of returns and voids, in the program's currency),
  at the level the account holds: a run as of an earlier day of the month still counts the
  month's spend to the time it runs. ``spending_mtd`` counts the accounts that spent.
- **Customers** are counted once however many cards they hold, when the run finishes;
  ``members_with_points`` are those whose accounts at the level were ever issued points
  (earned, bonus or escrowed: returned or still in escrow, they were issued).
- **The day**: the schedule counts as of yesterday, the last whole day (``days_behind``), so
  a month's last run sees all of it. Accounts are read as they are when the run runs, so a
  run as of an earlier day mixes that day's ledger with today's balances and levels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from processor import calendar
from processor.engine.types import AccountState, AwardAccount, LoyaltyAccount
from processor.errors import NotFoundError
from processor.flow.pipeline import Programs
from processor.limits import JOB_SLICE_ACCOUNTS
from processor.store import codec
from processor.store import scorecards as stored
from processor.store.job_runs import Chunk, JobRuns, Writes
from processor.store.scorecards import Figures, LedgerSum, Part

if TYPE_CHECKING:
    from processor.jobs.runner import JobContext

POINTS_ISSUED: Final = frozenset(
    {"regular", "bonus", "escrow", "opening", "return", "return_reversal"}
)
POINTS_EARNED: Final = frozenset({"regular", "bonus", "escrow", "opening"})
"""The postings that issue points to an account ("members who received points")."""
POINTS_REDEEMED: Final = frozenset({"award_cost", "move_cost"})
TENDER_ISSUED: Final = frozenset(
    {"activate", "initial", "reload", "credit_reversal", "debit_reversal"}
)
TENDER_REDEEMED: Final = frozenset({"redeem", "capture", "cash_out"})
AWARD_VALUE_ISSUED: Final = frozenset({"initial", "e_award", "opening"})
AWARD_VALUE_REDEEMED: Final = frozenset({"redeem"})
EXPIRED: Final = frozenset({"expire"})

ALL_LEVELS: Final = ""
"""The level of a program's whole row."""

Counted = dict[tuple[Part, str], Figures]
Members = dict[tuple[Part, str, str], bool]  # (program, level, customer) -> ever issued points


class Tally:
    """A chunk's counts: figures per (program, level), and the customers met."""

    def __init__(self) -> None:
        self.counted: Counted = {}
        self.members: Members = {}

    def figures(self, part: Part, level: str) -> Figures:
        key = (part, level)
        found = self.counted.get(key)
        if found is None:
            found = self.counted[key] = Figures()
        return found

    def member(self, part: Part, level: str, customer: str, has_points: bool) -> None:
        key = (part, level, customer)
        self.members[key] = self.members.get(key, False) or has_points


@dataclass(frozen=True, slots=True)
class ChunkReads:
    """What counting a chunk needs from PostgreSQL: its accounts (id, version, stored
    state), their ledger summed, and the customers their cards are registered to."""

    rows: list[tuple[str, int, bytes]]
    sums: dict[str, list[LedgerSum]]
    customers: dict[str, str]


class Reader:
    """A run's chunks, read one ahead: while one chunk is counted here, the next one's
    accounts, ledger sums and customers are read, so PostgreSQL's share of the run goes on
    beside this process's (two cores at work, not one after the other). ``close`` drops a
    read ahead that will not be needed (the run stopped)."""

    def __init__(self, context: JobContext, runs: JobRuns, as_of: int, size: int) -> None:
        self._store = stored.Scorecards(context.store)
        self._runs = runs
        self._as_of = as_of
        self._size = size
        self._ahead: tuple[str, asyncio.Task[ChunkReads]] | None = None
        self._closing: asyncio.Task[ChunkReads] | None = None

    async def after(self, after: str) -> ChunkReads:
        """The chunk after account ``after`` (no rows at the end), and the next one asked
        for."""
        if self._ahead is not None and self._ahead[0] == after:
            task = self._ahead[1]
            self._ahead = None
            reads = await task
        else:
            self.close()
            reads = await self._read(after)
        if reads.rows:
            last = reads.rows[-1][0]
            self._ahead = (last, asyncio.create_task(self._read(last)))
        return reads

    def close(self) -> None:
        """Cancel a read ahead (its failure, if it failed first, is not the run's)."""
        if self._ahead is not None:
            task = self._ahead[1]
            self._ahead = None
            task.cancel()
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._closing = task

    async def aclose(self) -> None:
        """Cancel a read ahead and wait until it has let its connection go, so a run ends
        (and lets its job's lock go) with nothing of it still at work."""
        self.close()
        if self._closing is not None:
            await asyncio.gather(self._closing, return_exceptions=True)
            self._closing = None

    async def _read(self, after: str) -> ChunkReads:
        rows = await self._runs.accounts_after(after, self._size)
        if not rows:
            return ChunkReads([], {}, {})
        accounts = [account for account, _, _ in rows]
        sums = await self._store.ledger_sums(accounts, self._as_of)
        customers = await self._store.customers_of(accounts)
        return ChunkReads(rows, sums, customers)


async def count_chunk(
    context: JobContext, as_of: int, previous: str, reads: ChunkReads
) -> tuple[Chunk, Writes]:
    """Count one chunk of accounts: the chunk, and the writes that add its counts to the
    run's rows, for the transaction that records the chunk (JobRuns.progress)."""
    rows, sums, customers = reads.rows, reads.sums, reads.customers
    tally = Tally()
    for start in range(0, len(rows), JOB_SLICE_ACCOUNTS):
        if start:
            await asyncio.sleep(0)  # the server's batches go on
        for account, _, blob in rows[start : start + JOB_SLICE_ACCOUNTS]:
            count_account(
                tally,
                context.programs,
                codec.decode_state(blob, account),
                sums.get(account, ()),
                customers.get(account),
                as_of,
            )

    async def write(cursor: stored.Cursor) -> None:
        await stored.add(cursor, as_of, tally.counted, tally.members)

    return Chunk(previous, rows[-1][0], len(rows)), write


def closing(as_of: int) -> Writes:
    """What a finished run writes with its finish (processor.store.scorecards ``close``)."""

    async def close(cursor: stored.Cursor) -> None:
        await stored.close(cursor, as_of)

    return close


def count_account(
    tally: Tally,
    programs: Programs,
    state: AccountState,
    sums: Sequence[LedgerSum],
    customer: str | None,
    as_of: int,
) -> None:
    """Add one account to ``tally``: to each program of its program file it is active in."""
    if state.status != "active":
        return
    try:
        program = programs.for_card(state.account)
    except NotFoundError:
        return  # no active program file serves the card
    if customer is None and state.customer is not None:
        customer = state.customer.id
    month_start = calendar.month_start(as_of)
    for plan in program.loyalty:
        loyalty = state.loyalty.get(plan.program.id)
        if loyalty is not None:
            part = Part(program.id, plan.program.id, "loyalty")
            _count_loyalty(tally, part, loyalty, sums, customer, as_of, month_start)
    tender = state.tender
    if program.tender is not None and tender is not None and tender.status == "active":
        part = Part(program.id, program.tender.id, "tender")
        figures = _account(tally, part, ALL_LEVELS, customer)
        _add_flows(figures, _flows(sums, part.part, "tender", TENDER_ISSUED, TENDER_REDEEMED))
        figures.outstanding += tender.balance
        _customer(tally, part, ALL_LEVELS, customer, has_points=False)
    for award_id in program.award_programs:
        award = state.awards.get(award_id)
        if award is not None and award.status == "active":
            part = Part(program.id, award_id, "award")
            _count_award(tally, part, award, sums, customer, as_of, month_start)


def _count_loyalty(
    tally: Tally,
    part: Part,
    loyalty: LoyaltyAccount,
    sums: Sequence[LedgerSum],
    customer: str | None,
    as_of: int,
    month_start: int,
) -> None:
    escrowed = escrowed_mtd = 0
    for lot in loyalty.lots:
        # Earned by the as-of day (a run as of an earlier day reads today's lots) and not
        # released by it.
        if lot.earned_day <= as_of < lot.available_day:
            escrowed += lot.points
            if lot.earned_day >= month_start:
                escrowed_mtd += lot.points
    flows = _flows(sums, part.part, "points", POINTS_ISSUED, POINTS_REDEEMED)
    flows[0] -= escrowed  # issued LTD and MTD: points still in escrow are not issued yet
    flows[1] -= escrowed_mtd
    outstanding = loyalty.available(as_of)
    spent = loyalty.spent_by_month.get(calendar.month_index(as_of), 0)
    # Issued points, even if returned since or still in escrow: what the manual's "members
    # who received points" asks.
    has_points = any(
        row.credits_ltd
        for row in sums
        if row.program == part.part and row.balance == "points" and row.kind in POINTS_EARNED
    )
    for level in (loyalty.level, ALL_LEVELS):
        figures = _account(tally, part, level, customer)
        _add_flows(figures, flows)
        figures.outstanding += outstanding
        figures.escrowed += escrowed
        figures.spent_mtd += spent
        figures.spending_mtd += spent > 0
        _customer(tally, part, level, customer, has_points=has_points)


def _count_award(
    tally: Tally,
    part: Part,
    award: AwardAccount,
    sums: Sequence[LedgerSum],
    customer: str | None,
    as_of: int,
    month_start: int,
) -> None:
    figures = _account(tally, part, ALL_LEVELS, customer)
    flows = _flows(sums, part.part, "award_value", AWARD_VALUE_ISSUED, AWARD_VALUE_REDEEMED)
    _add_flows(figures, flows)
    for row in sums:
        if row.program != part.part or row.balance != "award_value":
            continue
        if row.kind == "e_award":
            figures.e_awards_issued_ltd += row.credits_ltd
            figures.e_awards_issued_mtd += row.credits_mtd
        elif row.kind in AWARD_VALUE_REDEEMED:
            figures.e_awards_redeemed_ltd += row.debits_ltd
    # Value lapsed by the as-of day is not outstanding, swept by award-expiry yet or not.
    alive = [
        lot.amount
        for lot in award.value
        if lot.amount > 0 and (lot.expires_day is None or lot.expires_day > as_of)
    ]
    figures.outstanding += sum(alive)
    figures.e_awards_outstanding += len(alive)
    for certificate in award.awards:
        if certificate.kind != "certificate" or certificate.issued_day > as_of:
            continue
        figures.certificates_issued_ltd += 1
        figures.certificates_issued_mtd += certificate.issued_day >= month_start
        figures.certificates_redeemed_ltd += certificate.status == "redeemed"
        figures.certificates_outstanding += certificate.status == "active" and (
            certificate.expires_day is None or certificate.expires_day > as_of
        )
    _customer(tally, part, ALL_LEVELS, customer, has_points=False)


def _account(tally: Tally, part: Part, level: str, customer: str | None) -> Figures:
    figures = tally.figures(part, level)
    figures.accounts_active += 1
    figures.accounts_registered += customer is not None
    return figures


def _customer(tally: Tally, part: Part, level: str, customer: str | None, has_points: bool) -> None:
    if customer is not None:
        tally.member(part, level, customer, has_points)


def _flows(
    sums: Sequence[LedgerSum],
    program: str,
    balance: str,
    issued: frozenset[str],
    redeemed: frozenset[str],
) -> list[int]:
    """One account's ledger of ``program``'s ``balance``: [issued LTD, issued MTD, redeemed
    LTD, redeemed MTD, expired LTD, expired MTD], redeemed and expired as positive amounts."""
    flows = [0, 0, 0, 0, 0, 0]
    for row in sums:
        if row.program != program or row.balance != balance:
            continue
        if row.kind in issued:
            flows[0] += row.amount_ltd
            flows[1] += row.amount_mtd
        elif row.kind in redeemed:
            flows[2] -= row.amount_ltd
            flows[3] -= row.amount_mtd
        elif row.kind in EXPIRED:
            flows[4] -= row.amount_ltd
            flows[5] -= row.amount_mtd
    return flows


def _add_flows(figures: Figures, flows: list[int]) -> None:
    figures.issued_ltd += flows[0]
    figures.issued_mtd += flows[1]
    figures.redeemed_ltd += flows[2]
    figures.redeemed_mtd += flows[3]
    figures.expired_ltd += flows[4]
    figures.expired_mtd += flows[5]

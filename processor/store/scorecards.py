"""Program scorecards in PostgreSQL (migration 0009): what a scorecards run reads besides
the accounts, what it adds to its rows, and what GetScorecard reads back.

A run's rows are keyed by (program file, program, as-of day, level); each chunk adds to them
in the transaction that records the chunk (processor.store.job_runs ``progress``), and the
run's finish sets what only the whole run can count: distinct customers, and the catalog's
cards, series and customers. A month's figures are those of its latest finished run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

import psycopg

from processor import calendar
from processor.store.catalog_base import CatalogBase
from processor.store.ledger import SCAN_STATEMENT_TIMEOUT_MS, ledger_month

Cursor = psycopg.AsyncCursor[Any]

SCORECARDS_JOB: Final = "scorecards"
"""The job whose runs fill the table (processor.jobs.named)."""


_AT_FINISH: Final = {"counted": "when the run finishes"}


@dataclass(slots=True)
class Figures:
    """The figures of one program (one level of it, or all with level ""), as of a day.

    Values are in the program's units: points, or minor units of its currency (e-award
    value for an award program). LTD is lifetime to the as-of day, MTD from the first of
    its month.
    """

    accounts_active: int = 0
    accounts_registered: int = 0
    issued_ltd: int = 0
    issued_mtd: int = 0
    redeemed_ltd: int = 0
    redeemed_mtd: int = 0
    expired_ltd: int = 0
    expired_mtd: int = 0
    outstanding: int = 0
    escrowed: int = 0
    certificates_issued_ltd: int = 0
    certificates_issued_mtd: int = 0
    certificates_redeemed_ltd: int = 0
    certificates_outstanding: int = 0
    e_awards_issued_ltd: int = 0
    e_awards_issued_mtd: int = 0
    e_awards_outstanding: int = 0
    e_awards_redeemed_ltd: int = 0
    # Loyalty: what the accounts spent in purchases in the as-of day's month (net of returns
    # and voids, to when the run read them), in minor units of the program's currency; and
    # how many of them spent anything in it.
    spent_mtd: int = 0
    spending_mtd: int = 0
    # Counted when the run finishes, not added chunk by chunk.
    customers: int = field(default=0, metadata=_AT_FINISH)
    members_with_points: int = field(default=0, metadata=_AT_FINISH)
    customers_total: int = field(default=0, metadata=_AT_FINISH)
    cards_total: int = field(default=0, metadata=_AT_FINISH)
    card_series: int = field(default=0, metadata=_AT_FINISH)


COLUMNS: Final = tuple(figure.name for figure in fields(Figures))
"""Every figure, by name: Figures' fields, the table's columns and ScorecardFigures' fields."""

ADDED: Final = tuple(figure.name for figure in fields(Figures) if not figure.metadata)
"""The figures a chunk adds to; the rest are counted at the finish."""


@dataclass(frozen=True, slots=True)
class Part:
    """One program of a program file, as the table keys it."""

    program_id: str  # the program file
    part: str  # the tender, award or loyalty program's id
    type: str  # tender, award or loyalty


@dataclass(frozen=True, slots=True)
class LedgerSum:
    """One account's ledger rows of one program, balance and kind, summed to the as-of day:
    amounts and how many rows added (a positive amount), LTD and MTD, and how many took
    away (LTD)."""

    program: str
    balance: str
    kind: str
    amount_ltd: int
    amount_mtd: int
    credits_ltd: int
    credits_mtd: int
    debits_ltd: int


@dataclass(frozen=True, slots=True)
class Row:
    """A stored scorecard row."""

    part: Part
    as_of: int
    level: str
    figures: Figures


_SUMS = """
SELECT account_id, program, balance, kind,
       sum(amount)::bigint,
       coalesce(sum(amount) FILTER (WHERE day >= %(month_start)s), 0)::bigint,
       count(*) FILTER (WHERE amount > 0),
       count(*) FILTER (WHERE amount > 0 AND day >= %(month_start)s),
       count(*) FILTER (WHERE amount < 0)
FROM ledger
WHERE account_id = ANY(%(accounts)s) AND month <= %(month)s AND day <= %(as_of)s
GROUP BY account_id, program, balance, kind
"""
_CUSTOMERS = """
SELECT card_number, customer_id FROM cards
WHERE card_number = ANY(%s) AND customer_id IS NOT NULL
"""
_ADD = f"""
INSERT INTO scorecards (program_id, part, part_type, as_of, level, {", ".join(ADDED)})
VALUES (%s, %s, %s, %s, %s, {", ".join(["%s"] * len(ADDED))})
ON CONFLICT (program_id, part, as_of, level) DO UPDATE SET
{", ".join(f"{name} = scorecards.{name} + excluded.{name}" for name in ADDED)}
"""
# One statement for a chunk's customers (rows as arrays): a chunk meets thousands. A key is
# in a chunk once, as ON CONFLICT DO UPDATE needs.
_MEMBERS = """
INSERT INTO scorecard_members (as_of, program_id, part, level, customer_id, has_points)
SELECT %s, program_id, part, level, customer_id, has_points
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[])
    AS chunk (program_id, part, level, customer_id, has_points)
ON CONFLICT (as_of, program_id, part, level, customer_id) DO UPDATE SET
    has_points = scorecard_members.has_points OR excluded.has_points
"""
# Every program of every active program file has its row, accounts or none.
_EVERY_PART = """
INSERT INTO scorecards (program_id, part, part_type, as_of, level)
SELECT parts.program_id, parts.part_id, parts.type, %(as_of)s, ''
FROM program_parts parts
JOIN programs ON programs.id = parts.program_id AND programs.version = parts.version
WHERE programs.status = 'active'
ON CONFLICT (program_id, part, as_of, level) DO NOTHING
"""
_CUSTOMERS_COUNTED = """
UPDATE scorecards SET customers = members.customers, members_with_points = members.with_points
FROM (
    SELECT program_id, part, level, count(*) AS customers,
           count(*) FILTER (WHERE has_points) AS with_points
    FROM scorecard_members WHERE as_of = %(as_of)s
    GROUP BY program_id, part, level
) AS members
WHERE scorecards.as_of = %(as_of)s AND scorecards.program_id = members.program_id
  AND scorecards.part = members.part AND scorecards.level = members.level
"""
_CATALOG_COUNTED = """
UPDATE scorecards SET
    customers_total = (SELECT count(*) FROM customers),
    cards_total = (SELECT count(*) FROM cards WHERE cards.program = scorecards.program_id),
    card_series = (
        SELECT count(DISTINCT series) FROM cards
        WHERE cards.program = scorecards.program_id AND series <> ''
    )
WHERE as_of = %(as_of)s AND level = ''
"""
# An older run's customers too: a run stopped and never resumed (the next night's supersedes
# it) would keep them for ever. (An older run resumed by hand after a newer one finished
# then counts the customers of the chunks it goes on with, not of those before.)
_FORGET_MEMBERS = "DELETE FROM scorecard_members WHERE as_of <= %(as_of)s"
_MONTHS = f"""
SELECT DISTINCT ON (date_trunc('month', as_of)) as_of FROM job_runs
WHERE job = '{SCORECARDS_JOB}' AND status = 'finished' AND as_of >= %s AND as_of < %s
ORDER BY date_trunc('month', as_of) DESC, as_of DESC
"""
_ROWS = f"""
SELECT program_id, part, part_type, as_of, level, {", ".join(COLUMNS)} FROM scorecards
WHERE program_id = %s AND as_of = ANY(%s)
ORDER BY as_of DESC, part, level
"""


class Scorecards(CatalogBase):
    """The reads of a scorecards run, and the scorecards read back, through the Store's
    pool. A run's writes are ``add`` and ``close``, on the cursor of its progress and
    finish transactions."""

    async def ledger_sums(self, accounts: Sequence[str], as_of: int) -> dict[str, list[LedgerSum]]:
        """The ledger of ``accounts`` to ``as_of``, summed per program, balance and kind."""
        month_start = calendar.month_start(as_of)
        parameters = {
            "accounts": list(accounts),
            "as_of": as_of,
            "month_start": month_start,
            "month": ledger_month(as_of),
        }
        sums: dict[str, list[LedgerSum]] = {}
        async with self._reading("read the ledger for the scorecards") as cursor:
            await cursor.execute(_SUMS, parameters)
            for account, *row in await cursor.fetchall():
                sums.setdefault(account, []).append(LedgerSum(*row))
        return sums

    async def customers_of(self, accounts: Sequence[str]) -> dict[str, str]:
        """The customer each of ``accounts`` is registered to, for those registered."""
        async with self._reading("read the cards' customers for the scorecards") as cursor:
            await cursor.execute(_CUSTOMERS, (list(accounts),))
            return dict(await cursor.fetchall())

    async def months(self, program_id: str, last_month: int, count: int) -> list[Row]:
        """The rows of ``program_id`` of up to ``count`` months ending with ``last_month``
        (its first day's number), newest first: each month's latest finished run."""
        first = calendar.add_period(last_month, 1 - count, "month")
        after_last = calendar.add_period(last_month, 1, "month")
        async with self._reading("read the scorecards") as cursor:
            await cursor.execute(_MONTHS, (calendar.to_date(first), calendar.to_date(after_last)))
            days = [row[0] for row in await cursor.fetchall()]
            if not days:
                return []
            await cursor.execute(_ROWS, (program_id, days))
            rows = await cursor.fetchall()
        return [_row(row) for row in rows]


async def add(
    cursor: Cursor,
    as_of: int,
    counted: dict[tuple[Part, str], Figures],
    members: dict[tuple[Part, str, str], bool],
) -> None:
    """Add a chunk's figures and the customers it met to the run's rows."""
    day = calendar.to_date(as_of)
    await cursor.executemany(
        _ADD,
        [
            (part.program_id, part.part, part.type, day, level,
             *(getattr(figures, name) for name in ADDED))
            for (part, level), figures in counted.items()
        ],
    )  # fmt: skip
    if members:
        columns: tuple[list[Any], ...] = ([], [], [], [], [])
        for (part, level, customer), has_points in members.items():
            for column, value in zip(
                columns, (part.program_id, part.part, level, customer, has_points), strict=True
            ):
                column.append(value)
        await cursor.execute(_MEMBERS, (day, *columns))


async def close(cursor: Cursor, as_of: int) -> None:
    """Finish a run's rows: every active program's, distinct customers, the catalog's counts.
    These scan every card and every customer the run met: not under the pool's statement
    timeout, which is for transactions."""
    parameters = {"as_of": calendar.to_date(as_of)}
    await cursor.execute(f"SET LOCAL statement_timeout = {SCAN_STATEMENT_TIMEOUT_MS}")
    for statement in (_EVERY_PART, _CUSTOMERS_COUNTED, _CATALOG_COUNTED, _FORGET_MEMBERS):
        await cursor.execute(statement, parameters)


def _row(row: Iterable[Any]) -> Row:
    program_id, part, part_type, as_of, level, *values = row
    return Row(Part(program_id, part, part_type), calendar.to_day(as_of), level, Figures(*values))

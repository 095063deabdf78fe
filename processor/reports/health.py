"""The monthly loyalty health report: points distributed and members moved to higher levels.

For each loyalty program of a program file, month by month (``loyalty report health``):
the points issued, redeemed and expired in the month and the active accounts, as the
scorecards job counted them (processor.store.scorecards, each month's latest finished run),
beside the level moves of the month, counted from the events written in the moves' own
commits (processor.store.events): members moved up (advancements), down (demotions) and
kept (sustains and extensions), and each path between two levels. Moves are counted from
the day events were first written (migration 0011): months before it show none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processor import calendar
from processor.flow.registry import ProgramRegistry
from processor.reports.scorecard import decimal_text, load_with_program, text_table
from processor.store.catalog import Catalog
from processor.store.event_log import EventLog
from processor.store.ledger import Store


@dataclass(frozen=True, slots=True)
class Path:
    """Members moved from one level to another in the month (by one kind of move)."""

    move: str
    from_level: str
    to_level: str
    members: int


@dataclass(slots=True)
class HealthMonth:
    """One loyalty program's health in one month."""

    month: str  # YYYY-MM
    program: str
    exponent: int  # of its points
    counted: bool  # whether the scorecards job finished a run in the month
    points_issued: int = 0
    points_redeemed: int = 0
    points_expired: int = 0
    accounts_active: int = 0
    moved_up: int = 0  # distinct members: one who moved up twice in the month counts once
    moved_down: int = 0
    kept: int = 0
    paths: list[Path] = field(default_factory=list)


async def load(
    catalog: Catalog, registry: ProgramRegistry, store: Store, program_id: str, month: int,
    months: int,
) -> list[HealthMonth]:  # fmt: skip
    """The health of ``program_id``'s loyalty programs over ``months`` months ending with
    ``month`` (its first day), newest month first; NotFoundError for an unknown file."""
    compiled, cards = await load_with_program(catalog, registry, store, program_id, month, months)
    programs = [plan.program.id for plan in compiled.loyalty]
    first = calendar.add_period(month, 1 - months, "month")
    last = calendar.add_period(month, 1, "month") - 1
    log = EventLog(store)
    moves = await log.moves(programs, first, last)
    members = await log.members_moved(programs, first, last)
    exponents = {
        program: compiled.balance_digits.get(f"points:{program}", 0) for program in programs
    }
    report: list[HealthMonth] = []
    for back in range(months):  # newest first
        day = calendar.add_period(month, -back, "month")
        name = calendar.format_month(day)
        for program in programs:
            card = next((c for c in cards if c.month == name and c.program == program), None)
            health = HealthMonth(name, program, exponents[program], card is not None)
            if card is not None:
                total = card.total
                health.points_issued = total.issued_mtd
                health.points_redeemed = total.redeemed_mtd
                health.points_expired = total.expired_mtd
                health.accounts_active = total.accounts_active
            health.moved_up = members.get((program, name, "up"), 0)
            health.moved_down = members.get((program, name, "down"), 0)
            health.kept = members.get((program, name, "kept"), 0)
            health.paths = [
                Path(m.move, m.from_level, m.to_level, m.members)
                for m in moves
                if m.program == program and m.month == name
            ]
            report.append(health)
    return report


def month_rows(mine: list[HealthMonth]) -> list[list[str]]:
    """One program's months as rows of text, the titles first."""
    rows = [[
        "month", "points issued", "redeemed", "expired", "active accounts",
        "moved up", "moved down", "kept",
    ]]  # fmt: skip
    for health in mine:
        amounts = (
            [
                decimal_text(value, health.exponent, grouped=True)
                for value in (health.points_issued, health.points_redeemed, health.points_expired)
            ] + [f"{health.accounts_active:,}"]
            if health.counted
            else ["not counted"] + ["-"] * 3
        )  # fmt: skip
        rows.append(
            [health.month, *amounts]
            + [f"{count:,}" for count in (health.moved_up, health.moved_down, health.kept)]
        )
    return rows


def path_rows(mine: list[HealthMonth]) -> list[list[str]]:
    """One program's level moves, month by month, as rows of text, the titles first."""
    return [["month", "move", "from", "to", "members"]] + [
        [health.month, path.move, path.from_level, path.to_level, f"{path.members:,}"]
        for health in mine
        for path in health.paths
    ]


def by_program(report: list[HealthMonth]) -> dict[str, list[HealthMonth]]:
    """The report's months of each loyalty program, newest first."""
    programs: dict[str, list[HealthMonth]] = {}
    for health in report:
        programs.setdefault(health.program, []).append(health)
    return programs


def text(report: list[HealthMonth]) -> str:
    """``loyalty report health``'s tables: each loyalty program's months, newest first,
    then the paths members moved along in them."""
    out: list[str] = []
    for program, mine in by_program(report).items():
        out.append(f"loyalty program {program}")
        out.extend("  " + line for line in text_table(month_rows(mine)))
        paths = path_rows(mine)
        if len(paths) > 1:
            out.append("  level moves")
            out.extend("  " + line for line in text_table(paths))
        out.append("")
    return "\n".join(out)


def as_dict(health: HealthMonth) -> dict[str, object]:
    """A month of one program as JSON (``loyalty report health --json``): points as decimal
    strings in the program's units, null where the scorecards job did not count the month."""

    def amount(value: int) -> str | None:
        return decimal_text(value, health.exponent) if health.counted else None

    return {
        "month": health.month,
        "program": health.program,
        "points_issued": amount(health.points_issued),
        "points_redeemed": amount(health.points_redeemed),
        "points_expired": amount(health.points_expired),
        "accounts_active": health.accounts_active if health.counted else None,
        "moved_up": health.moved_up,
        "moved_down": health.moved_down,
        "kept": health.kept,
        "paths": [
            {"move": p.move, "from": p.from_level, "to": p.to_level, "members": p.members}
            for p in health.paths
        ],
    }

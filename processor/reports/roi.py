"""The program ROI report: what the members of each level spend, against the base level's.

For each loyalty program of a program file, month by month (``loyalty report roi``), from
the scorecards job's figures (processor.store.scorecards, each month's latest finished run):
at each level, the active accounts, what they spent in the month (each account's spend by
month, net of returns and voids, at the level it held on the run's day), the average spend
per account, and that average against the program's first level's (the loyalty workflow's "average
spend of Gold tier members vs Silver tier members"): 2.5 means a member of the level spent
two and a half times what a member of the first level did. Beside it, the points issued to
the level in the month and, where the program gives its points a currency value (the
manual's "points currency value, informational and reporting use only"), what they are
worth and the spend per unit of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from processor import calendar, money
from processor.flow.registry import ProgramRegistry
from processor.reports.scorecard import ProgramMonth, decimal_text, load_with_program, text_table
from processor.store.catalog import Catalog
from processor.store.ledger import Store
from processor.store.scorecards import Figures

RATIO_DIGITS = 2
"""Decimals of the ratios shown (against the base level, spend per points' worth)."""


@dataclass(frozen=True, slots=True)
class LevelSpend:
    """One level's spend in one month."""

    level: str
    accounts: int
    spent: int  # minor units of the program's currency
    average_spend: int  # per active account, rounded half to even
    versus_base: Decimal | None  # average spend / the base level's; None when it spent none
    points_issued: int  # in the program's point units
    points_worth: int | None  # in minor units; None without a points currency value
    spend_per_worth: Decimal | None  # spent / points_worth; None when either is missing


@dataclass(slots=True)
class RoiMonth:
    """One loyalty program's spend by level in one month."""

    month: str  # YYYY-MM
    program: str
    base_level: str  # the program's first level: what the others are compared with
    currency: str
    spend_exponent: int
    points_exponent: int
    counted: bool  # whether the scorecards job finished a run in the month
    total: LevelSpend | None = None
    levels: list[LevelSpend] = field(default_factory=list)


async def load(
    catalog: Catalog, registry: ProgramRegistry, store: Store, program_id: str, month: int,
    months: int,
) -> list[RoiMonth]:  # fmt: skip
    """The ROI of ``program_id``'s loyalty programs over ``months`` months ending with
    ``month`` (its first day), newest month first; NotFoundError for an unknown file."""
    compiled, cards = await load_with_program(catalog, registry, store, program_id, month, months)
    report: list[RoiMonth] = []
    for back in range(months):  # newest first
        name = calendar.format_month(calendar.add_period(month, -back, "month"))
        for plan in compiled.loyalty:
            program = plan.program
            card = next((c for c in cards if c.month == name and c.program == program.id), None)
            report.append(
                assemble(
                    name,
                    program.id,
                    program.levels[0].id,
                    program.currency,
                    compiled.balance_digits.get(f"points:{program.id}", 0),
                    program.points_currency_value,
                    card,
                )
            )
    return report


def assemble(
    month: str,
    program: str,
    base_level: str,
    currency: str,
    points_exponent: int,
    point_value: Decimal | None,
    card: ProgramMonth | None,
) -> RoiMonth:
    """A month of one program from its scorecard (None: the month was not counted)."""
    roi = RoiMonth(
        month, program, base_level, currency, money.currency_exponent(currency),
        points_exponent, card is not None,
    )  # fmt: skip
    if card is None:
        return roi
    base = next((figures for level, figures in card.levels if level == base_level), Figures())
    base_average = card.spend(base)

    def spend(level: str, figures: Figures) -> LevelSpend:
        average = card.spend(figures)
        worth = _worth(figures.issued_mtd, points_exponent, point_value, roi.spend_exponent)
        return LevelSpend(
            level,
            figures.accounts_active,
            figures.spent_mtd,
            average,
            _ratio(average, base_average),
            figures.issued_mtd,
            worth,
            None if worth is None else _ratio(figures.spent_mtd, worth),
        )

    roi.total = spend("all", card.total)
    roi.levels = [spend(level, figures) for level, figures in card.levels]
    return roi


def _worth(
    points: int, exponent: int, point_value: Decimal | None, spend_exponent: int
) -> int | None:
    """What ``points`` (in units of 10**-exponent) are worth at ``point_value`` a point, in
    minor units of the currency (rounded half to even); None without a value."""
    if point_value is None:
        return None
    worth = Decimal(points).scaleb(-exponent) * point_value
    return int(worth.scaleb(spend_exponent).to_integral_value(rounding=ROUND_HALF_EVEN))


def _ratio(part: int, whole: int) -> Decimal | None:
    if whole <= 0:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(
        Decimal(1).scaleb(-RATIO_DIGITS), rounding=ROUND_HALF_EVEN
    )


def by_program(report: list[RoiMonth]) -> dict[str, list[RoiMonth]]:
    """The report's months of each loyalty program, newest first."""
    programs: dict[str, list[RoiMonth]] = {}
    for roi in report:
        programs.setdefault(roi.program, []).append(roi)
    return programs


def level_rows(roi: RoiMonth) -> list[list[str]]:
    """One program's month as rows of text, the titles first: each level, then all."""
    rows = [[
        "level", "accounts", f"spent ({roi.currency})", "average spend",
        f"vs {roi.base_level}", "points issued", f"points worth ({roi.currency})",
        "spend per worth",
    ]]  # fmt: skip
    if roi.total is None:
        return rows
    for spend in [*roi.levels, roi.total]:
        rows.append(
            [
                spend.level,
                f"{spend.accounts:,}",
                decimal_text(spend.spent, roi.spend_exponent, grouped=True),
                decimal_text(spend.average_spend, roi.spend_exponent, grouped=True),
                _times(spend.versus_base),
                decimal_text(spend.points_issued, roi.points_exponent, grouped=True),
                "-"
                if spend.points_worth is None
                else decimal_text(spend.points_worth, roi.spend_exponent, grouped=True),
                _times(spend.spend_per_worth),
            ]
        )
    return rows


def month_rows(mine: list[RoiMonth]) -> list[list[str]]:
    """One program's months as rows of text, the titles first: each level's average spend
    and its ratio to the base level's, month by month."""
    names = list(dict.fromkeys(spend.level for roi in mine for spend in roi.levels))
    base = mine[0].base_level
    compared = [name for name in names if name != base]
    rows = [
        ["month", *(f"{name} average" for name in names), *(f"{n} vs {base}" for n in compared)]
    ]
    for roi in mine:
        if roi.total is None:
            rows.append([roi.month, "not counted", *["-"] * (len(names) + len(compared) - 1)])
            continue
        found = {spend.level: spend for spend in roi.levels}
        averages = [
            decimal_text(found[n].average_spend, roi.spend_exponent, grouped=True)
            if n in found
            else "-"
            for n in names
        ]
        ratios = [_times(found[n].versus_base) if n in found else "-" for n in compared]
        rows.append([roi.month, *averages, *ratios])
    return rows


def _times(ratio: Decimal | None) -> str:
    return "-" if ratio is None else f"{ratio}x"


def text(report: list[RoiMonth]) -> str:
    """``loyalty report roi``'s tables: each loyalty program's newest month by level, then
    its months side by side."""
    out: list[str] = []
    for program, mine in by_program(report).items():
        current = mine[0]
        out.append(f"loyalty program {program}: spend against {current.base_level}")
        if current.counted:
            out.append(f"  {current.month}")
            out.extend("  " + line for line in text_table(level_rows(current)))
        else:
            out.append(f"  no figures for {current.month}: the scorecards job has not counted it")
        out.append("  by month")
        out.extend("  " + line for line in text_table(month_rows(mine)))
        out.append("")
    return "\n".join(out)


def as_dict(roi: RoiMonth) -> dict[str, object]:
    """A month of one program as JSON (``loyalty report roi --json``): money as decimal
    strings in the program's currency, ratios as decimal strings, null where there is none
    (a month not counted, a base level that spent nothing, points without a value)."""

    def level(spend: LevelSpend) -> dict[str, object]:
        def money_text(value: int | None) -> str | None:
            return None if value is None else decimal_text(value, roi.spend_exponent)

        return {
            "level": spend.level,
            "accounts": spend.accounts,
            "spent": money_text(spend.spent),
            "average_spend": money_text(spend.average_spend),
            "versus_base": None if spend.versus_base is None else str(spend.versus_base),
            "points_issued": decimal_text(spend.points_issued, roi.points_exponent),
            "points_worth": money_text(spend.points_worth),
            "spend_per_worth": None
            if spend.spend_per_worth is None
            else str(spend.spend_per_worth),
        }

    return {
        "month": roi.month,
        "program": roi.program,
        "currency": roi.currency,
        "base_level": roi.base_level,
        "counted": roi.counted,
        "total": None if roi.total is None else level(roi.total),
        "levels": [level(spend) for spend in roi.levels],
    }

"""Program scorecards as a program manager reads them: the stored rows of the scorecards job
(processor.store.scorecards) put in order, with the manual's ratios, for GetScorecard and
``loyalty report scorecard``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from processor import calendar, money
from processor.engine import CompiledProgram
from processor.errors import InvalidFieldError
from processor.flow.registry import ProgramRegistry
from processor.store.cards import today
from processor.store.catalog import Catalog
from processor.store.ledger import Store
from processor.store.scorecards import COLUMNS, Figures, Row, Scorecards

MONTHS_DEFAULT: Final = 12
"""Months of a scorecard when the request leaves the number at zero."""


@dataclass(frozen=True, slots=True)
class Ratios:
    """What the manual derives from the counted figures (zero where it would divide by 0)."""

    average_balance: int
    average_spend: int
    registered_rate: float
    customers_rate: float
    active_account_rate: float
    share_of_program: float
    redemption_rate: float


@dataclass(slots=True)
class ProgramMonth:
    """One program's scorecard in one month: the whole program, and each level."""

    month: str  # YYYY-MM
    as_of: int
    program: str
    type: str  # tender, award or loyalty
    exponent: int
    total: Figures
    levels: list[tuple[str, Figures]] = field(default_factory=list)
    spend_exponent: int = 0  # of a loyalty program's spend: its currency's

    def spend(self, figures: Figures) -> int:
        """The month's spend per active account: the average spend the ROI report compares."""
        return _divided(figures.spent_mtd, figures.accounts_active)

    def ratios(self, figures: Figures) -> Ratios:
        total = self.total
        whole = figures is total
        return Ratios(
            average_balance=_divided(figures.outstanding, figures.accounts_active),
            average_spend=self.spend(figures),
            registered_rate=_rate(figures.accounts_registered, figures.accounts_active),
            customers_rate=_rate(total.customers, total.customers_total) if whole else 0.0,
            active_account_rate=_rate(total.accounts_active, total.cards_total) if whole else 0.0,
            share_of_program=_rate(figures.accounts_active, total.accounts_active),
            redemption_rate=_redemption_rate(self.type, figures),
        )


def last_month(text: str, field: str) -> int:
    """The first day of the month asked for (``YYYY-MM``), or of the business day's month when
    none is; InvalidFieldError naming ``field`` otherwise."""
    if not text:
        return calendar.month_start(today())
    try:
        return calendar.parse_month(text)
    except ValueError as error:
        raise InvalidFieldError(field, str(error)) from None


async def load(
    catalog: Catalog, registry: ProgramRegistry, store: Store, program_id: str, month: int,
    months: int,
) -> list[ProgramMonth]:  # fmt: skip
    """``program_id``'s scorecards of ``months`` months ending with ``month`` (its first day),
    as GetScorecard and ``loyalty report scorecard`` show them; NotFoundError for an unknown
    program file."""
    return (await load_with_program(catalog, registry, store, program_id, month, months))[1]


async def load_with_program(
    catalog: Catalog, registry: ProgramRegistry, store: Store, program_id: str, month: int,
    months: int,
) -> tuple[CompiledProgram, list[ProgramMonth]]:  # fmt: skip
    """``load``'s scorecards with the active program file they were read for: for a report
    that reads both (the program read once)."""
    record = await catalog.get(program_id, counts=False)
    compiled = await registry.load(record.id, record.version)
    rows = await Scorecards(store).months(record.id, month, months)
    return compiled, assemble(rows, [compiled])


def assemble(rows: Iterable[Row], programs: Sequence[CompiledProgram]) -> list[ProgramMonth]:
    """The stored rows as scorecards, newest month first, then by program; levels in each
    loyalty program's own order (levels no longer in it after theirs, by name)."""
    compiled = {program.id: program for program in programs}
    months: dict[tuple[int, str], ProgramMonth] = {}
    for row in rows:
        key = (row.as_of, row.part.part)
        card = months.get(key)
        if card is None:
            program = compiled.get(row.part.program_id)
            card = months[key] = ProgramMonth(
                calendar.format_month(row.as_of),
                row.as_of,
                row.part.part,
                row.part.type,
                _exponent(program, row.part.type, row.part.part),
                Figures(),
                spend_exponent=_spend_exponent(program, row.part.type, row.part.part),
            )
        if row.level == "":
            card.total = row.figures
        else:
            card.levels.append((row.level, row.figures))
    for card in months.values():
        order = _level_order(compiled, card.program)
        # A level with no active account on the day has no row: it is shown with zeros.
        held = {level for level, _ in card.levels}
        card.levels.extend((level, Figures()) for level in order if level not in held)
        card.levels.sort(key=lambda level: (order.get(level[0], len(order)), level[0]))
    return sorted(months.values(), key=lambda card: (-card.as_of, card.program))


def _redemption_rate(type_: str, figures: Figures) -> float:
    """Of an award program, awards by count: certificates and e-awards (the manual's
    "awards redeemed from those issued"); of the others, value or points."""
    if type_ == "award":
        issued = figures.certificates_issued_ltd + figures.e_awards_issued_ltd
        redeemed = figures.certificates_redeemed_ltd + figures.e_awards_redeemed_ltd
        return _rate(redeemed, issued)
    return _rate(figures.redeemed_ltd, figures.issued_ltd)


def _exponent(program: CompiledProgram | None, type_: str, part: str) -> int:
    if program is None:
        return 0
    key = {"loyalty": f"points:{part}", "tender": "tender", "award": f"award:{part}"}[type_]
    return program.balance_digits.get(key, 0)


def _spend_exponent(program: CompiledProgram | None, type_: str, part: str) -> int:
    if program is None or type_ != "loyalty":
        return 0
    for plan in program.loyalty:
        if plan.program.id == part:
            return money.currency_exponent(plan.program.currency)
    return 0


def _level_order(compiled: dict[str, CompiledProgram], part: str) -> dict[str, int]:
    for program in compiled.values():
        for plan in program.loyalty:
            if plan.program.id == part:
                return {level.id: rank for rank, level in enumerate(plan.program.levels)}
    return {}


def _divided(amount: int, count: int) -> int:
    if count <= 0:
        return 0
    return int((Decimal(amount) / Decimal(count)).to_integral_value(rounding=ROUND_HALF_EVEN))


def _rate(part: int, whole: int) -> float:
    return part / whole if whole > 0 else 0.0


# --------------------------------------------------------------------------- text tables

_COLUMNS: Final = {
    "loyalty": (
        ("accounts", "accounts_active", "count"),
        ("share", "share_of_program", "rate"),
        ("registered", "registered_rate", "rate"),
        ("customers", "customers", "count"),
        ("with points", "members_with_points", "count"),
        ("issued LTD", "issued_ltd", "amount"),
        ("issued MTD", "issued_mtd", "amount"),
        ("redeemed LTD", "redeemed_ltd", "amount"),
        ("redeemed MTD", "redeemed_mtd", "amount"),
        ("expired MTD", "expired_mtd", "amount"),
        ("outstanding", "outstanding", "amount"),
        ("escrow", "escrowed", "amount"),
        ("average", "average_balance", "amount"),
        ("spent MTD", "spent_mtd", "money"),
        ("average spend", "average_spend", "money"),
    ),
    "tender": (
        ("accounts", "accounts_active", "count"),
        ("cards", "cards_total", "count"),
        ("active rate", "active_account_rate", "rate"),
        ("series", "card_series", "count"),
        ("issued LTD", "issued_ltd", "amount"),
        ("issued MTD", "issued_mtd", "amount"),
        ("redeemed LTD", "redeemed_ltd", "amount"),
        ("redeemed MTD", "redeemed_mtd", "amount"),
        ("outstanding", "outstanding", "amount"),
        ("average", "average_balance", "amount"),
    ),
    "award": (
        ("accounts", "accounts_active", "count"),
        ("registered", "registered_rate", "rate"),
        ("in program", "customers_rate", "rate"),
        ("certs issued", "certificates_issued_ltd", "count"),
        ("certs MTD", "certificates_issued_mtd", "count"),
        ("certs redeemed", "certificates_redeemed_ltd", "count"),
        ("certs open", "certificates_outstanding", "count"),
        ("e-awards", "e_awards_issued_ltd", "count"),
        ("e-awards open", "e_awards_outstanding", "count"),
        ("e-award redemptions", "e_awards_redeemed_ltd", "count"),
        ("value redeemed", "redeemed_ltd", "amount"),
        ("value open", "outstanding", "amount"),
        ("redemption", "redemption_rate", "rate"),
    ),
}
_HISTORY: Final = (
    ("accounts", "accounts_active", "count"),
    ("issued MTD", "issued_mtd", "amount"),
    ("redeemed MTD", "redeemed_mtd", "amount"),
    ("expired MTD", "expired_mtd", "amount"),
    ("outstanding", "outstanding", "amount"),
)


def text(cards: Sequence[ProgramMonth], month: str) -> str:
    """``loyalty report scorecard``'s tables: each program's figures in ``month`` (the whole
    program and each level), then its months side by side."""
    out: list[str] = []
    for program in dict.fromkeys(card.program for card in cards):
        mine = [card for card in cards if card.program == program]
        current = next((card for card in mine if card.month == month), None)
        head = mine[0]
        out.append(f"{head.type} program {program}")
        if current is None:
            out.append(f"  no figures for {month}: the scorecards job has not finished a run in it")
        else:
            out.append(f"  as of {calendar.format_day(current.as_of)}")
            out.extend("  " + line for line in text_table(month_table(current)))
        history = [["month", "as of", *(title for title, _, _ in _HISTORY)]]
        for card in mine:
            history.append(
                [card.month, calendar.format_day(card.as_of)]
                + [_cell(card, card.total, key, how) for _, key, how in _HISTORY]
            )
        out.append("  by month")
        out.extend("  " + line for line in text_table(history))
        out.append("")
    return "\n".join(out)


def month_table(card: ProgramMonth) -> list[list[str]]:
    """A program's figures in its month as rows of text, the titles first: the whole
    program ("all"), then each level."""
    columns = _COLUMNS[card.type]
    rows = [["level", *(title for title, _, _ in columns)]]
    for name, figures in [("all", card.total), *card.levels]:
        rows.append([name, *(_cell(card, figures, key, how) for _, key, how in columns)])
    return rows


def _cell(card: ProgramMonth, figures: Figures, key: str, how: str) -> str:
    ratios = card.ratios(figures)
    value = getattr(figures, key) if hasattr(figures, key) else getattr(ratios, key)
    if how == "rate":
        return f"{value:.1%}"
    if how == "amount":
        return decimal_text(value, card.exponent, grouped=True)
    if how == "money":
        return decimal_text(value, card.spend_exponent, grouped=True)
    return f"{value:,}"


def decimal_text(amount: int, exponent: int, *, grouped: bool = False) -> str:
    """An integer amount in units of 10**-exponent, as a decimal: 123456, 2 -> "1234.56"
    ("1,234.56" ``grouped``)."""
    if not grouped:
        return money.format_units(amount, max(exponent, 0))
    if exponent <= 0:
        return f"{amount:,}"
    return f"{Decimal(amount).scaleb(-exponent):,.{exponent}f}"


def text_table(rows: list[list[str]]) -> list[str]:
    """Rows of cells as aligned lines: the first column to the left, the rest to the right."""
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


AMOUNTS: Final = frozenset(
    {
        "issued_ltd", "issued_mtd", "redeemed_ltd", "redeemed_mtd", "expired_ltd",
        "expired_mtd", "outstanding", "escrowed",
    }
)  # fmt: skip
"""The figures that are amounts in the program's units (the rest are counts)."""
SPEND: Final = frozenset({"spent_mtd", "average_spend"})
"""The figures that are amounts of a loyalty program's currency (``spend_exponent``)."""


def as_dict(card: ProgramMonth) -> dict[str, object]:
    """A scorecard as JSON (``loyalty report scorecard --json``): as GetScorecard's
    ProgramScorecard, amounts as decimal strings in the program's units."""

    def figures(values: Figures) -> dict[str, object]:
        ratios = card.ratios(values)
        out: dict[str, object] = {}
        for name in COLUMNS:
            value = getattr(values, name)
            out[name] = _json_value(card, name, value) if name in AMOUNTS | SPEND else value
        for name, value in asdict(ratios).items():
            out[name] = (
                _json_value(card, name, value)
                if name in ("average_balance", "average_spend")
                else round(value, 6)
            )
        return out

    return {
        "month": card.month,
        "as_of": calendar.format_day(card.as_of),
        "program": card.program,
        "type": card.type,
        "spend_exponent": card.spend_exponent,
        "total": figures(card.total),
        "levels": [{"level": level, **figures(values)} for level, values in card.levels],
    }


def _json_value(card: ProgramMonth, name: str, value: int) -> str:
    return decimal_text(value, card.spend_exponent if name in SPEND else card.exponent)

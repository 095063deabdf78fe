"""Scorecards as one self-contained HTML page (``loyalty report scorecard --html``): the
month's table of each program, and charts of its months, by level. Everything the page
needs is in the file, plotly's script included, so it opens with no network (a few MB).

The page is a Jinja template (scorecard.html beside this module on the layout of report.html,
autoescaped); the charts are plotly
figures, drawn by its script when the page opens, with each bar labelled by its value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Final

import jinja2
import plotly.graph_objects as go  # type: ignore[import-untyped]
import plotly.offline  # type: ignore[import-untyped]

from processor import calendar
from processor.reports.scorecard import ProgramMonth, month_table
from processor.store.scorecards import SCORECARDS_JOB, Figures

CHARTS: Final = {
    # chart name: (title, figure, its unit: the program's, its currency's or a count)
    "issued": ("Issued in the month", "issued_mtd", "amount"),
    "redeemed": ("Redeemed in the month", "redeemed_mtd", "amount"),
    "outstanding": ("Outstanding on the as-of day", "outstanding", "amount"),
    "accounts": ("Active accounts", "accounts_active", "count"),
}
"""The charts of every program, one trace per level of a loyalty program."""
LOYALTY_CHARTS: Final = {
    "spend": ("Average spend in the month, per active account", "average_spend", "money"),
}
"""A loyalty program's charts besides those (``average_spend``: ProgramMonth.spend)."""


@dataclass(frozen=True, slots=True)
class Chart:
    name: str
    html: str


@dataclass(frozen=True, slots=True)
class Section:
    program: str
    type: str
    current: bool
    current_as_of: str
    columns: list[str]
    rows: list[list[str]]
    charts: list[Chart]


def render(program_id: str, cards: Sequence[ProgramMonth], month: str, months: int) -> str:
    """The page of ``program_id``'s scorecards ``cards`` (newest month first), ``months``
    months ending with ``month`` (YYYY-MM)."""
    template = templates().get_template("scorecard.html")
    sections = [
        _section(program, [card for card in cards if card.program == program], month)
        for program in dict.fromkeys(card.program for card in cards)
    ]
    return template.render(
        program_id=program_id,
        month=month,
        months=months,
        job=SCORECARDS_JOB,
        month_counted=any(card.month == month for card in cards),
        sections=sections,
        plotly_js=plotly.offline.get_plotlyjs(),
    )


def templates() -> jinja2.Environment:
    """The report pages' templates (this package's *.html, on report.html's layout),
    autoescaped, and strict: a name a template uses that a page does not give fails."""
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: resources.files("processor.reports").joinpath(name).read_text("utf-8")
        ),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _section(program: str, cards: list[ProgramMonth], month: str) -> Section:
    current = next((card for card in cards if card.month == month), None)
    table = month_table(current) if current is not None else [[]]
    return Section(
        program=program,
        type=cards[0].type,
        current=current is not None,
        current_as_of="" if current is None else calendar.format_day(current.as_of),
        columns=table[0],
        rows=table[1:],
        charts=[
            _chart(program, name, cards)
            for name in (CHARTS | LOYALTY_CHARTS if cards[0].type == "loyalty" else CHARTS)
        ],
    )


def _chart(program: str, name: str, cards: list[ProgramMonth]) -> Chart:
    title, figure, unit = (CHARTS | LOYALTY_CHARTS)[name]
    ordered = sorted(cards, key=lambda card: card.as_of)  # oldest month on the left
    months = [card.month for card in ordered]
    last = ordered[-1]
    exponent = {"amount": last.exponent, "money": last.spend_exponent}.get(unit, 0)
    series: dict[str, list[Decimal]] = {}
    levels = [level for card in ordered for level, _ in card.levels]
    for level in [*dict.fromkeys(levels)] or ["all"]:
        series[level] = [_value(card, _figures(card, level), figure, exponent) for card in ordered]
    return bar_chart(f"chart-{program}-{name}", name, title, months, series, exponent)


def bar_chart(
    div_id: str,
    name: str,
    title: str,
    months: list[str],
    series: Mapping[str, Sequence[Decimal | None]],
    exponent: int,
) -> Chart:
    """A chart of bars by month, one trace per series, each bar labelled with its value
    (``exponent`` decimals; None: no bar), for a report page to place in its template."""
    shown = f",.{exponent}f" if exponent else ","
    traces = [
        go.Bar(
            name=level,
            x=months,
            y=[None if value is None else float(value) for value in values],
            text=["" if value is None else format(value, shown) for value in values],
            textposition="auto",
            hovertemplate=f"{level} %{{x}}: %{{text}}<extra></extra>",
        )
        for level, values in series.items()
    ]
    layout = go.Layout(
        title=title,
        barmode="group",
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        xaxis={"type": "category"},
        legend={"orientation": "h"},
    )
    html = go.Figure(traces, layout).to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        # A fixed size: plotly measures its box once when it draws, and a box a CSS grid
        # sizes later gets a chart cut to its first category.
        default_width="560px",
        default_height="320px",
        config={"displaylogo": False},
    )
    return Chart(name, html)


def _figures(card: ProgramMonth, level: str) -> Figures:
    if level == "all":
        return card.total
    return next((figures for name, figures in card.levels if name == level), Figures())


def _value(card: ProgramMonth, figures: Figures, figure: str, exponent: int) -> Decimal:
    value = card.spend(figures) if figure == "average_spend" else getattr(figures, figure)
    return Decimal(value).scaleb(-exponent)

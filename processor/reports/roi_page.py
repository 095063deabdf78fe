"""The ROI report as one self-contained HTML page (``loyalty report roi --html``): each
loyalty program's spend by level in the month, its months side by side, and charts of the
average spend per account and of the spend against the first level's, by month. Like the
scorecards' page, plotly's script is inlined: it opens with no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import plotly.offline  # type: ignore[import-untyped]

from processor.reports.page import Chart, bar_chart, templates
from processor.reports.roi import RoiMonth, by_program, level_rows, month_rows


@dataclass(frozen=True, slots=True)
class Section:
    program: str
    base_level: str
    month: str
    counted: bool
    columns: list[str]
    rows: list[list[str]]
    month_columns: list[str]
    months: list[list[str]]
    charts: list[Chart]


def render(program_id: str, report: list[RoiMonth], month: str, months: int) -> str:
    """The page of ``program_id``'s ROI ``report`` (newest month first), ``months`` months
    ending with ``month`` (YYYY-MM)."""
    template = templates().get_template("roi.html")
    sections = [_section(program, mine) for program, mine in by_program(report).items()]
    return template.render(
        program_id=program_id,
        month=month,
        months=months,
        all_counted=all(roi.counted for roi in report),
        sections=sections,
        plotly_js=plotly.offline.get_plotlyjs(),
    )


def _section(program: str, mine: list[RoiMonth]) -> Section:
    current = mine[0]
    table = level_rows(current)
    by_month = month_rows(mine)
    oldest_first = list(reversed(mine))
    labels = [roi.month for roi in oldest_first]
    exponent = current.spend_exponent
    levels = list(dict.fromkeys(spend.level for roi in mine for spend in roi.levels))

    def series(pick: str, scale: int) -> dict[str, list[Decimal | None]]:
        # A month the scorecards job did not count, or a ratio with nothing to compare
        # with, has no bar, not a bar of zero.
        out: dict[str, list[Decimal | None]] = {}
        for level in levels:
            values: list[Decimal | None] = []
            for roi in oldest_first:
                found = next((s for s in roi.levels if s.level == level), None)
                value = None if found is None else getattr(found, pick)
                values.append(None if value is None else Decimal(value).scaleb(-scale))
            out[level] = values
        return out

    charts = [
        bar_chart(
            f"chart-{program}-average", "average",
            f"Average spend per active account ({current.currency})", labels,
            series("average_spend", exponent), exponent,
        ),
        bar_chart(
            f"chart-{program}-versus", "versus",
            f"Average spend against {current.base_level}'s (times)", labels,
            series("versus_base", 0), 2,
        ),
    ]  # fmt: skip
    return Section(
        program, current.base_level, current.month, current.counted, table[0], table[1:],
        by_month[0], by_month[1:], charts,
    )  # fmt: skip

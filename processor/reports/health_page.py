"""The health report as one self-contained HTML page (``loyalty report health --html``): each
loyalty program's months and level moves as tables, and charts of points and members moved
by month. Like the scorecards' page, plotly's script is inlined: it opens with no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import plotly.offline  # type: ignore[import-untyped]

from processor.reports.health import HealthMonth, by_program, month_rows, path_rows
from processor.reports.page import Chart, bar_chart, templates


@dataclass(frozen=True, slots=True)
class Section:
    program: str
    columns: list[str]
    rows: list[list[str]]
    path_columns: list[str]
    paths: list[list[str]]
    charts: list[Chart]


def render(program_id: str, report: list[HealthMonth], month: str, months: int) -> str:
    """The page of ``program_id``'s health ``report`` (newest month first), ``months`` months
    ending with ``month`` (YYYY-MM)."""
    template = templates().get_template("health.html")
    sections = [_section(program, mine) for program, mine in by_program(report).items()]
    return template.render(
        program_id=program_id,
        month=month,
        months=months,
        all_counted=all(health.counted for health in report),
        sections=sections,
        plotly_js=plotly.offline.get_plotlyjs(),
    )


def _section(program: str, mine: list[HealthMonth]) -> Section:
    table = month_rows(mine)
    paths = path_rows(mine)
    oldest_first = list(reversed(mine))
    labels = [health.month for health in oldest_first]
    exponent = mine[0].exponent

    def points(values: list[int]) -> list[Decimal | None]:
        # A month the scorecards job did not count has no bar, not a bar of zero.
        return [
            Decimal(value).scaleb(-exponent) if health.counted else None
            for value, health in zip(values, oldest_first, strict=True)
        ]

    charts = [
        bar_chart(
            f"chart-{program}-points", "points", "Points issued and redeemed", labels,
            {
                "issued": points([h.points_issued for h in oldest_first]),
                "redeemed": points([h.points_redeemed for h in oldest_first]),
            },
            exponent,
        ),
        bar_chart(
            f"chart-{program}-members", "members", "Members moved", labels,
            {
                "up": [Decimal(h.moved_up) for h in oldest_first],
                "down": [Decimal(h.moved_down) for h in oldest_first],
                "kept": [Decimal(h.kept) for h in oldest_first],
            },
            0,
        ),
    ]  # fmt: skip
    return Section(program, table[0], table[1:], paths[0], paths[1:], charts)

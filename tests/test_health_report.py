"""The monthly loyalty health report (``loyalty report health``) on real PostgreSQL: points
issued in each month as the scorecards job counted them, and the members moved up, down or
kept, counted from the events of the moves; and its refusals of bad input."""

from __future__ import annotations

import html.parser
import json
from pathlib import Path
from typing import Any

import pytest
from plugins.posting import registry_of
from plugins.server import Served, line, loyalty, purchase

from processor import calendar
from processor.reports.scorecard import load as load_scorecards
from processor.store.catalog import Catalog
from processor.store.event_log import EventLog

pytestmark = pytest.mark.integration


def health(served: Served, *args: str) -> Any:
    return loyalty(
        "report", "health", *args, database_url=served.database_url, redis_url=served.redis_url
    )


class Cells(html.parser.HTMLParser):
    """The cells of each table (by its data-table), the charts' ids and the scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.charts: list[str] = []
        self.scripts: list[str] = []
        self._table = ""
        self._cell: list[str] | None = None
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table":
            self._table = found.get("data-table") or ""
            self.tables[self._table] = []
        elif tag == "tr":
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "div" and (found.get("id") or "").startswith("chart-"):
            self.charts.append(found["id"] or "")
        elif tag == "script":
            self._script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "script":
            self._script = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._script:
            self.scripts[-1] += data


async def test_the_health_report_counts_points_issued_and_members_moved_up_by_month(
    served: Served, cards: list[str], tmp_path: Path
) -> None:
    # March: two silver cards spend $1,200.00 each and move to gold; one spends $10.00.
    for number, card in enumerate(cards[21:23]):
        await served.transactions.PostTransaction(
            purchase(card, f"up-{number}", lines=[line(1, 120_000)]), timeout=10
        )
    await served.transactions.PostTransaction(purchase(cards[23], "small"), timeout=10)
    # And one spends $5,000.00: silver -> gold -> platinum, two moves up, one member.
    await served.transactions.PostTransaction(
        purchase(cards[25], "up-twice", lines=[line(1, 500_000)]), timeout=10
    )
    # The scorecards job as an operator runs it (a process of its own, not this test's loop,
    # which serves the server).
    job = loyalty(
        "jobs", "run", "scorecards", "--as-of", "2026-03-31",
        database_url=served.database_url, redis_url=served.redis_url,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    registry = await registry_of(served.store)
    await EventLog(served.store).position()

    answer = health(served, "northwind", "--month", "2026-04", "--months", "2", "--json")
    assert answer.returncode == 0, answer.stderr
    april, march = json.loads(answer.stdout)
    # April: nothing happened and the scorecards job did not run in it.
    assert april == {
        "month": "2026-04", "program": "points", "points_issued": None,
        "points_redeemed": None, "points_expired": None, "accounts_active": None,
        "moved_up": 0, "moved_down": 0, "kept": 0, "paths": [],
    }  # fmt: skip
    assert "'not counted'" in answer.stderr
    # March: the points are the scorecard's; the moves are the two cards' advancements.
    (card,) = [
        c
        for c in await load_scorecards(
            Catalog(served.store), registry, served.store, "northwind",
            calendar.parse_month("2026-03"), 1,
        )
        if c.program == "points"
    ]  # fmt: skip
    assert (march["points_issued"], march["points_redeemed"], march["accounts_active"]) == (
        str(card.total.issued_mtd), str(card.total.redeemed_mtd), card.total.accounts_active,
    )  # fmt: skip
    assert card.total.issued_mtd >= 2 * 1_200 + 10 + 5_000
    assert (march["moved_up"], march["moved_down"], march["kept"]) == (3, 0, 0)
    assert march["paths"] == [
        {"move": "advancement", "from": "gold", "to": "platinum", "members": 1},
        {"move": "advancement", "from": "silver", "to": "gold", "members": 3},
    ]

    table = health(served, "northwind", "--month", "2026-03", "--months", "1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "loyalty program points"
    assert lines[2].split()[0] == "2026-03" and lines[2].split()[-3:] == ["3", "0", "0"]
    assert lines[-1].split() == ["2026-03", "advancement", "silver", "gold", "3"]

    page_file = tmp_path / "health.html"
    written = health(served, "northwind", "--month", "2026-03", "--months", "2", "--html",
                     str(page_file))  # fmt: skip
    assert written.returncode == 0, written.stderr
    page = Cells()
    page.feed(page_file.read_text(encoding="utf-8"))
    # The same rows as the tables, and one chart of points and one of members per program.
    assert page.tables["months"][1] == [cell for cell in lines[2].split()]
    assert page.tables["paths"][-1] == ["2026-03", "advancement", "silver", "gold", "3"]
    assert page.charts == ["chart-points-points", "chart-points-members"]
    assert "plotly" in page.scripts[0][:2_000].lower()  # inlined: it opens with no network
    # February was not counted: no bar (null), not a bar of zero; March's bars are there.
    (points,) = [script for script in page.scripts if '"chart-points-points"' in script]
    figure = json.loads(points[points.index("[{") : points.index("}],") + 2])
    issued = next(trace for trace in figure if trace["name"] == "issued")
    assert issued["x"] == ["2026-02", "2026-03"]
    assert issued["y"][0] is None and issued["y"][1] == float(card.total.issued_mtd)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("northwind", "--month", "2026-13"), "--month"),
        (("northwind", "--months", "0"), "--months"),
        (("northwind", "--months", "37"), "--months"),
        (("nowhere",), "nowhere"),
        (("northwind", "--html", "/no/such/directory/health.html"), "--html"),
    ],
)
def test_the_health_report_refuses_bad_input_naming_it(
    served: Served, args: tuple[str, ...], says: str
) -> None:
    answer = health(served, *args)
    assert answer.returncode == 2, answer.stdout
    assert says in answer.stderr
    assert answer.stdout == ""

"""``loyalty report roi``: each level's spend in the month against the first level's, from
the scorecards job's figures, as tables, JSON and an HTML page with charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from plugins.pages import NEEDS_CHROMIUM, drawn_bars, fetched_urls
from plugins.posting import registry_of
from plugins.server import Served, line, loyalty, purchase
from test_health_report import Cells

from processor import calendar
from processor.reports.scorecard import load as load_scorecards
from processor.store.catalog import Catalog

pytestmark = pytest.mark.integration


def roi(served: Served, *args: str) -> Any:
    return loyalty(
        "report", "roi", *args, database_url=served.database_url, redis_url=served.redis_url
    )


async def test_the_roi_report_compares_each_levels_average_spend_with_the_first_levels(
    served: Served, cards: list[str], tmp_path: Path
) -> None:
    # March: two silver cards spend $1,200.00 each and move to gold; two stay silver,
    # spending $10.00 and $30.00.
    for number, card in enumerate(cards[21:23]):
        await served.transactions.PostTransaction(
            purchase(card, f"up-{number}", lines=[line(1, 120_000)]), timeout=10
        )
    await served.transactions.PostTransaction(purchase(cards[23], "small"), timeout=10)
    await served.transactions.PostTransaction(
        purchase(cards[24], "thirty", lines=[line(1, 3_000)]), timeout=10
    )
    job = loyalty(
        "jobs", "run", "scorecards", "--as-of", "2026-03-31",
        database_url=served.database_url, redis_url=served.redis_url,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    registry = await registry_of(served.store)
    (card,) = [
        c
        for c in await load_scorecards(
            Catalog(served.store), registry, served.store, "northwind",
            calendar.parse_month("2026-03"), 1,
        )
        if c.program == "points"
    ]  # fmt: skip
    issued = {level: figures.issued_mtd for level, figures in card.levels}
    assert issued["gold"] >= 2 * 1_200 and issued["silver"] >= 40

    answer = roi(served, "northwind", "--month", "2026-04", "--months", "2", "--json")
    assert answer.returncode == 0, answer.stderr
    april, march = json.loads(answer.stdout)
    assert (april["month"], april["counted"], april["total"], april["levels"]) == (
        "2026-04", False, None, [],
    )  # fmt: skip
    assert "'not counted'" in answer.stderr
    assert (march["program"], march["currency"], march["base_level"]) == ("points", "USD", "silver")
    levels = {level["level"]: level for level in march["levels"]}
    assert list(levels) == ["silver", "gold", "platinum"]
    # The demo's stars are worth $0.01 each: a star's worth is a cent.
    assert levels["silver"] == {
        "level": "silver", "accounts": 2, "spent": "40.00", "average_spend": "20.00",
        "versus_base": "1.00", "points_issued": str(issued["silver"]),
        "points_worth": f"{issued['silver'] / 100:.2f}",
        "spend_per_worth": f"{4_000 / issued['silver']:.2f}",
    }  # fmt: skip
    gold = levels["gold"]
    assert (gold["accounts"], gold["spent"], gold["average_spend"], gold["versus_base"]) == (
        2, "2400.00", "1200.00", "60.00",
    )  # fmt: skip
    # No member at platinum: an average of nothing, none of silver's.
    assert (levels["platinum"]["average_spend"], levels["platinum"]["versus_base"]) == (
        "0.00", "0.00",
    )  # fmt: skip
    total = march["total"]
    assert (total["accounts"], total["spent"], total["average_spend"], total["versus_base"]) == (
        4, "2440.00", "610.00", "30.50",
    )  # fmt: skip

    table = roi(served, "northwind", "--month", "2026-03", "--months", "1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "loyalty program points: spend against silver"
    gold_row = next(row.split() for row in lines if row.strip().startswith("gold"))
    assert gold_row[:5] == ["gold", "2", "2,400.00", "1,200.00", "60.00x"]
    assert lines[-1].split()[:3] == ["2026-03", "20.00", "1,200.00"]
    assert lines[-1].split()[-2:] == ["60.00x", "0.00x"]

    page_file = tmp_path / "roi.html"
    written = roi(served, "northwind", "--month", "2026-03", "--months", "2", "--html",
                  str(page_file))  # fmt: skip
    assert written.returncode == 0, written.stderr
    page = Cells()
    page.feed(page_file.read_text(encoding="utf-8"))
    assert page.tables["levels"][2][:5] == ["gold", "2", "2,400.00", "1,200.00", "60.00x"]
    assert page.tables["months"][1][0] == "2026-03"
    assert page.charts == ["chart-points-average", "chart-points-versus"]
    assert "plotly" in page.scripts[0][:2_000].lower()  # inlined: it opens with no network
    # February was not counted: no bar (null), not a bar of zero.
    (average,) = [script for script in page.scripts if '"chart-points-average"' in script]
    figure = json.loads(average[average.index("[{") : average.index("}],") + 2])
    gold_bars = next(trace for trace in figure if trace["name"] == "gold")
    assert gold_bars["x"] == ["2026-02", "2026-03"]
    assert gold_bars["y"] == [None, 1200.0]


@NEEDS_CHROMIUM
async def test_the_roi_page_draws_each_levels_average_spend_in_headless_chromium(
    served: Served, cards: list[str], tmp_path: Path
) -> None:
    await served.transactions.PostTransaction(
        purchase(cards[21], "up", lines=[line(1, 120_000)]), timeout=10
    )
    await served.transactions.PostTransaction(purchase(cards[23], "small"), timeout=10)
    job = loyalty(
        "jobs", "run", "scorecards", "--as-of", "2026-03-31",
        database_url=served.database_url, redis_url=served.redis_url,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    path = tmp_path / "roi.html"
    written = roi(served, "northwind", "--month", "2026-03", "--months", "2", "--html", str(path))
    assert written.returncode == 0, written.stderr
    assert fetched_urls(path.read_text(encoding="utf-8")) == []  # opens with no network
    drawn = await drawn_bars(path)
    assert set(drawn) == {"chart-points-average", "chart-points-versus"}
    # March: gold's one member spent $1,200.00, silver's $10.00: 120 times as much.
    assert {"1,200.00", "10.00"} <= set(drawn["chart-points-average"])
    assert {"120.00", "1.00"} <= set(drawn["chart-points-versus"])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("northwind", "--month", "2026-13"), "--month"),
        (("northwind", "--months", "0"), "--months"),
        (("northwind", "--months", "37"), "--months"),
        (("nowhere",), "nowhere"),
        (("northwind", "--html", "/no/such/directory/roi.html"), "--html"),
    ],
)
def test_the_roi_report_refuses_bad_input_naming_it(
    served: Served, args: tuple[str, ...], says: str
) -> None:
    answer = roi(served, *args)
    assert answer.returncode == 2, answer.stdout
    assert says in answer.stderr
    assert answer.stdout == ""

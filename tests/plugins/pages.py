"""The report pages as a browser shows them: headless Chromium draws a page's plotly charts,
and the value labels of their bars are read back from its DOM; and what a page would fetch
from elsewhere (nothing: it must open with no network)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium (apt-get install chromium); .ci/run installs it"
)


async def drawn_bars(path: Path) -> dict[str, list[str]]:
    """The value labels plotly drew in each chart of the page at ``path``, by the chart's
    id (``chart-<program>-<name>``), as headless Chromium renders it."""
    dumped = await asyncio.to_thread(
        subprocess.run,
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--virtual-time-budget=15000", "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    drawn = _BarTexts()
    drawn.feed(dumped.stdout)
    return drawn.charts


def fetched_urls(html: str) -> list[str]:
    """What the page's tags would fetch (src and href attributes)."""
    fetched = _Fetched()
    fetched.feed(html)
    return fetched.urls


class _Fetched(HTMLParser):
    """What a page's tags would fetch (src and href attributes), its scripts' text aside."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls.extend(value for name, value in attrs if name in {"src", "href"} and value)


class _BarTexts(HTMLParser):
    """The value labels plotly drew in each chart (``chart-<program>-<name>``) of a DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, list[str]] = {}
        self._chart = ""
        self._depth = 0
        self._in_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "div" and (found.get("id") or "").startswith("chart-"):
            self._chart, self._depth = found["id"] or "", 0
            self.charts[self._chart] = []
        elif self._chart and tag == "div":
            self._depth += 1
        self._in_text = tag == "text" and "bartext" in (found.get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "text":
            self._in_text = False
        elif tag == "div" and self._chart:
            if self._depth == 0:
                self._chart = ""
            else:
                self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._chart and self._in_text:
            self.charts[self._chart].append(data)

"""The Python examples of README.md and docs/api.md, run as written against a demo server.

The snippets are read from the files, not copied here: docs/api.md's preamble first, then
every snippet after it in order, in one namespace, as the file says they run; the README's
first call on its own. Only the address is the test server's (the files say 127.0.0.1:50051,
the port `make run` takes). A snippet that raises fails the test, naming it.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plugins.server import ThreadedServer

from processor.runtime import serve
from processor.runtime.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED_ADDRESS = "127.0.0.1:50051"


def python_snippets(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def demo_server(schema_url: str, redis_url: str) -> Iterator[str]:
    """A server of the demo, its keys included (as `make run` serves it); its address."""
    server = ThreadedServer(schema_url, redis_url, demo=True)
    try:
        address = server.start()
        server.run(serve.load_demo(Settings(demo=True), schema_url))  # the demo's keys
        yield address
    finally:
        server.stop()


def run_snippet(code: str, namespace: dict[str, Any], address: str, where: str) -> str:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code.replace(DOCUMENTED_ADDRESS, address), where, "exec"), namespace)
    except Exception as error:  # the snippet's own failure is the test's
        raise AssertionError(f"{where} failed: {type(error).__name__}: {error}\n{code}") from error
    return printed.getvalue()


def test_every_python_example_of_docs_api_runs_in_order(
    demo_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the examples read files of examples/ by relative paths
    snippets = python_snippets(ROOT / "docs" / "api.md")
    preamble = next(index for index, code in enumerate(snippets) if "channel = grpc" in code)
    namespace: dict[str, Any] = {"__name__": "docs_api"}
    outputs = [
        run_snippet(code, namespace, demo_server, f"docs/api.md python snippet {index + 1}")
        for index, code in enumerate(snippets)
        if index >= preamble
    ]
    assert "RESULT_STATUS_APPROVED" in outputs[1], outputs[1]  # PostTransaction's example
    # The snippet before the preamble shows how to read an error's details: it runs too,
    # on a call that fails (an unknown card).
    (handling,) = [code for code in snippets[:preamble] if "ErrorInfo" in code]
    common, transactions = namespace["common"], namespace["transactions"]
    unknown_card = common.RequestContext(
        request_id="unknown-card", account="6001299999999999",
        local_time="2026-03-02T09:05:00", location="S001",
    )  # fmt: skip
    namespace["request"] = transactions.PostTransactionRequest(
        transaction=transactions.Transaction(
            context=unknown_card,
            purchase=transactions.Purchase(
                currency="USD", lines=[common.Line(number=1, item="A", amount=100, quantity=1)]
            ),
        )
    )
    namespace["stub"] = namespace["transactions_grpc"].TransactionServiceStub(namespace["channel"])
    printed = run_snippet(handling, namespace, demo_server, "docs/api.md error example")
    assert "UNKNOWN_CARD" in printed, printed


def test_the_readme_first_python_call_runs_as_written(
    demo_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    (first_call,) = python_snippets(ROOT / "README.md")
    printed = run_snippet(first_call, {"__name__": "readme"}, demo_server, "README.md first call")
    assert "RESULT_STATUS_APPROVED" in printed, printed

"""Fixtures shared by the whole suite.

Modules with a compiled twin are tested through a fixture parametrized ``py`` / ``c``, so
the same test holds both to one definition. A missing compiled module is a failure, never
a skip, unless ``LOYALTY_NO_EXTENSIONS=1`` says the extensions were deliberately not built.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import settings

from processor.engine import Engine, get_engine

NO_EXTENSIONS = os.environ.get("LOYALTY_NO_EXTENSIONS", "") == "1"

# The jobs' schedule runs in every server by default; the servers of the suite (in process
# and `loyalty serve` children) run without it, so no tick can change a test's accounts
# while it looks at them. tests/test_jobs.py runs servers with it on, on purpose.
os.environ.setdefault("LOYALTY_JOBS_SCHEDULE", "false")

# Servers for integration tests: the ones the environment names, else embedded ones.
# pytester runs a small suite of its own where a test proves how the suite itself behaves.
pytest_plugins = [
    "plugins.postgres", "plugins.redis", "plugins.server", "plugins.proxy", "plugins.admin_api",
    "pytester",
]  # fmt: skip

# "ci" replays the same examples on every run, so a red build is reproducible from its log;
# "dev" explores new examples each run. Neither has a deadline: timing on shared machines is
# noise, not a property of the code.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _implementation(pure_name: str, compiled_name: str, which: str) -> ModuleType:
    if which == "py":
        return importlib.import_module(pure_name)
    if NO_EXTENSIONS:
        pytest.skip("LOYALTY_NO_EXTENSIONS=1: compiled modules not built")
    try:
        return importlib.import_module(compiled_name)
    except ImportError as error:
        pytest.fail(
            f"cannot import {compiled_name} ({error}); build it with `make build`, "
            "or set LOYALTY_NO_EXTENSIONS=1 to test the pure-Python code alone",
            pytrace=False,
        )


# Session scope: hypothesis refuses function-scoped fixtures under @given, and a module
# is the same object for every test anyway.
@pytest.fixture(scope="session", params=["py", "c"])
def calendar_impl(request: pytest.FixtureRequest) -> ModuleType:
    """processor.calendar ("py") or its compiled twin processor._calendar ("c")."""
    return _implementation("processor.calendar", "processor._calendar", request.param)


@pytest.fixture(scope="session")
def calendar_c() -> ModuleType:
    """The compiled calendar alone, for tests that hold it against the reference."""
    return _implementation("processor.calendar", "processor._calendar", "c")


@pytest.fixture(scope="session", params=["python", "cython"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The reference engine ("python") or the compiled one ("cython"): the same tests hold
    both to one behaviour."""
    if request.param == "cython":
        _implementation("processor.engine.reference", "processor._engine", "c")
    return get_engine(request.param)


@pytest.fixture
def every_engine(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """Runs a test once per engine, with the loyalty builders' Ledger on that engine."""
    import loyalty_builders

    monkeypatch.setattr(loyalty_builders, "ENGINE", engine)
    return engine

"""The compiled modules are really compiled and really loaded.

The imports run in a fresh interpreter so nothing this test session imported earlier (a
stale module, a path tweak) can stand in for the built extension.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPILED_MODULES = [
    "processor._calendar",
    "processor._engine",
    "processor._arrays",
    "processor._codec",
    "processor._answers",
    "processor._admission",
]
NO_EXTENSIONS = os.environ.get("LOYALTY_NO_EXTENSIONS", "") == "1"


@pytest.mark.skipif(NO_EXTENSIONS, reason="LOYALTY_NO_EXTENSIONS=1: compiled modules not built")
@pytest.mark.parametrize("module", COMPILED_MODULES)
def test_compiled_module_is_an_extension(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module} as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"cannot import {module}:\n{result.stderr}"
    path = result.stdout.strip()
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    assert path.endswith(suffixes), f"{module} loaded from {path}, not a compiled extension"


def test_every_cython_source_is_built() -> None:
    # A .pyx that setup.py does not list would silently never be compiled.
    listed = {f"{name.rpartition('.')[2]}.pyx" for name in COMPILED_MODULES}
    sources = {path.name for path in (ROOT / "ext").glob("*.pyx")}
    assert sources == listed, "keep COMPILED_MODULES here in step with setup.py and ext/"


def test_cython_is_pinned_to_a_range() -> None:
    with open(ROOT / "pyproject.toml", "rb") as file:
        requires = tomllib.load(file)["build-system"]["requires"]
    # setup.py enforces this requirement at build time; it must bound both ends, since a new
    # Cython major release changes defaults that the extensions rely on.
    cython = [requirement for requirement in requires if requirement.lower().startswith("cython")]
    assert len(cython) == 1, requires
    assert re.search(r">=\s*\d", cython[0]) and re.search(r"<\s*\d", cython[0]), cython[0]


@pytest.mark.skipif(NO_EXTENSIONS, reason="LOYALTY_NO_EXTENSIONS=1: compiled modules not built")
def test_the_compiled_engine_is_the_default_engine() -> None:
    env = {key: value for key, value in os.environ.items() if key != "LOYALTY_ENGINE"}
    result = subprocess.run(
        [sys.executable, "-c",
         "from processor.engine import get_engine; print(get_engine().name)"],
        capture_output=True, text=True, check=True, env=env,
    )
    assert result.stdout.strip() == "cython"


def test_the_environment_can_force_the_reference_engine() -> None:
    env = dict(os.environ, LOYALTY_ENGINE="python")
    result = subprocess.run(
        [sys.executable, "-c",
         "from processor.engine import get_engine; print(get_engine().name)"],
        capture_output=True, text=True, check=True, env=env,
    )
    assert result.stdout.strip() == "python"

"""Builds the Cython extensions; everything else about the package is in pyproject.toml.

Environment knobs (set them before ``make build`` or ``pip install``):

- ``LOYALTY_CYTHON_ANNOTATE=1`` writes ``ext/<module>.html`` (``cython -a``), showing which
  lines call into the Python C-API;
- ``LOYALTY_CYTHON_TRACE=1`` compiles with line tracing, for profilers and coverage (slower).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

ROOT = Path(__file__).resolve().parent
EXT_DIR = "ext"

# Compiled modules of the package: (module name, Cython source). Each source may cimport
# any .pxd in ext/. To add one, append a line here and write ext/<name>.pyx and
# processor/<name>.pyi.
CYTHON_MODULES: list[tuple[str, str]] = [
    ("processor._calendar", f"{EXT_DIR}/_calendar.pyx"),
]

COMPILER_DIRECTIVES: dict[str, object] = {
    "language_level": 3,
    # Indexes in the engine are computed, never user-supplied; the checks cost more than they
    # catch. Division semantics are chosen per function (see ext/calendar.pxd).
    "boundscheck": False,
    "wraparound": False,
}

# Where the options of the last cythonize run are recorded, so that switching a knob on or
# off regenerates the C files (Cython itself only compares timestamps).
OPTIONS_RECORD = ROOT / "build" / "cython-options.json"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _version_tuple(text: str) -> tuple[int, ...]:
    # "3.1.0a1" -> (3, 1, 0): pre-releases count as their release, enough for a range check.
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def _cython_requirement() -> str:
    """The Cython requirement of [build-system].requires, the single place it is pinned."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        requires = tomllib.load(file)["build-system"]["requires"]
    for requirement in requires:
        if re.match(r"cython\b", requirement, re.IGNORECASE):
            return str(requirement)
    raise RuntimeError("pyproject.toml [build-system].requires names no Cython version")


def _check_cython_version() -> None:
    requirement = _cython_requirement()
    try:
        import Cython
    except ImportError:
        raise RuntimeError(
            f"building loyalty-processor needs {requirement}; install it "
            f"(pip install '{requirement}') or build through pip, which installs it"
        ) from None
    installed = _version_tuple(Cython.__version__)
    comparisons = {
        ">=": lambda bound: installed >= bound,
        ">": lambda bound: installed > bound,
        "<=": lambda bound: installed <= bound,
        "<": lambda bound: installed < bound,
        "==": lambda bound: installed[: len(bound)] == bound,
        "!=": lambda bound: installed[: len(bound)] != bound,
    }
    for operator, bound in re.findall(r"(>=|<=|==|!=|>|<)\s*([\w.]+)", requirement):
        if not comparisons[operator](_version_tuple(bound)):
            raise RuntimeError(
                f"loyalty-processor requires {requirement}, but Cython {Cython.__version__} "
                f"is installed ({Cython.__file__}); install a version in the range"
            )


class build_ext(_build_ext):
    """build_ext that runs cythonize lazily, so metadata-only steps never need Cython."""

    def finalize_options(self) -> None:
        # setuptools may call finalize_options more than once on the same command object.
        if getattr(self, "_cythonized", False):
            super().finalize_options()
            return
        _check_cython_version()
        from Cython.Build import cythonize

        directives = dict(COMPILER_DIRECTIVES)
        annotate = _env_flag("LOYALTY_CYTHON_ANNOTATE")
        if _env_flag("LOYALTY_CYTHON_TRACE"):
            directives["linetrace"] = True
            for extension in self.distribution.ext_modules:
                extension.define_macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]

        options = json.dumps({"directives": directives, "annotate": annotate}, sort_keys=True)
        previous = OPTIONS_RECORD.read_text() if OPTIONS_RECORD.exists() else None
        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules,
            compiler_directives=directives,
            include_path=[EXT_DIR],
            annotate=annotate,
            force=options != previous,
        )
        OPTIONS_RECORD.parent.mkdir(parents=True, exist_ok=True)
        OPTIONS_RECORD.write_text(options)
        self._cythonized = True
        super().finalize_options()


def _extensions() -> list[Extension]:
    # Every .pxd is a dependency of every module: they are few and small, and a stale
    # inline function compiled into a module is a silent wrong answer. The .pyx is listed
    # too because cythonize replaces it in `sources` by the generated .c, and the sdist
    # takes its files from both lists.
    declarations = sorted(str(path.relative_to(ROOT)) for path in (ROOT / EXT_DIR).glob("*.pxd"))
    return [
        Extension(name, [source], include_dirs=[EXT_DIR], depends=[source, *declarations])
        for name, source in CYTHON_MODULES
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext})

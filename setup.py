"""Builds the Cython extensions and generates the gRPC contract's Python modules; everything
else about the package is in pyproject.toml.

The modules of the public gRPC contract (``proto/loyalty/v1/*.proto``, package loyalty.v1) are
generated at build time with grpc_tools.protoc into the top-level package ``loyalty.v1``
(``loyalty/v1/*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``) beside ``processor/``, because
generated modules import each other by absolute path (``from loyalty.v1 import common_pb2``).
They are never edited or committed: every build, wheel or editable install (``build_py``,
``build``, ``develop``) regenerates them, and ``python setup.py build_proto`` does it alone
after a ``.proto`` changes.

Environment knobs (set them before ``make build`` or ``pip install``):

- ``LOYALTY_CYTHON_ANNOTATE=1`` writes ``ext/<module>.html`` (``cython -a``), showing which
  lines call into the Python C-API;
- ``LOYALTY_CYTHON_TRACE=1`` compiles with line tracing, for profilers and coverage (slower).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from importlib import resources
from pathlib import Path
from typing import ClassVar

from setuptools import Command, Extension, setup
from setuptools.command.build import build as _build
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.develop import develop as _develop

ROOT = Path(__file__).resolve().parent
EXT_DIR = "ext"

# Compiled modules of the package: (module name, Cython source). Each source may cimport
# any .pxd in ext/ and include any .pxi. To add one, append a line here and write ext/<name>.pyx and
# processor/<name>.pyi.
CYTHON_MODULES: list[tuple[str, str]] = [
    ("processor._calendar", f"{EXT_DIR}/_calendar.pyx"),
    ("processor._engine", f"{EXT_DIR}/_engine.pyx"),
    ("processor._arrays", f"{EXT_DIR}/_arrays.pyx"),
    ("processor._codec", f"{EXT_DIR}/_codec.pyx"),
    ("processor._answers", f"{EXT_DIR}/_answers.pyx"),
    ("processor._admission", f"{EXT_DIR}/_admission.pyx"),
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
    # Every .pxd and .pxi is a dependency of every module: they are few and small, and a
    # stale inline function compiled into a module is a silent wrong answer. The .pyx is listed
    # too because cythonize replaces it in `sources` by the generated .c, and the sdist
    # takes its files from both lists.
    declarations = sorted(
        str(path.relative_to(ROOT))
        for pattern in ("*.pxd", "*.pxi")
        for path in (ROOT / EXT_DIR).glob(pattern)
    )
    return [
        Extension(name, [source], include_dirs=[EXT_DIR], depends=[source, *declarations])
        for name, source in CYTHON_MODULES
    ]


# --------------------------------------------------------------------------- gRPC contract

PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE = "loyalty.v1"
# The generated packages, parents first; they mirror the proto package's directory.
PROTO_PACKAGES = ["loyalty", PROTO_PACKAGE]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
GENERATED_NOTICE = '"""Generated from proto/ by setup.py (build_proto): never edit or commit."""\n'


def _grpc_tools_requirement() -> str:
    with open(ROOT / "pyproject.toml", "rb") as file:
        requires = tomllib.load(file)["build-system"]["requires"]
    for requirement in requires:
        if re.match(r"grpcio-tools\b", requirement, re.IGNORECASE):
            return str(requirement)
    raise RuntimeError("pyproject.toml [build-system].requires names no grpcio-tools version")


def _protoc_sources() -> list[Path]:
    directory = PROTO_ROOT.joinpath(*PROTO_PACKAGE.split("."))
    sources = sorted(directory.glob("*.proto"))
    if not sources:
        raise RuntimeError(f"no .proto files in {directory}: the gRPC contract is missing")
    return sources


def _write_if_changed(path: Path, content: bytes) -> bool:
    # Rewriting identical files would needlessly invalidate the caches of mypy and pytest.
    if path.exists() and path.read_bytes() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return True


def generate_proto() -> list[Path]:
    """Runs protoc over proto/ and syncs the output into loyalty/v1; returns the files changed.

    protoc writes into a scratch directory first, so a failed run leaves the previous modules
    as they were, and modules of a .proto file that no longer exists are removed.
    """
    requirement = _grpc_tools_requirement()
    try:
        from grpc_tools import protoc
    except ImportError:
        raise RuntimeError(
            f"building loyalty-processor needs {requirement} to generate the gRPC modules; "
            f"install it (pip install '{requirement}') or build through pip, which installs it"
        ) from None
    well_known = resources.files("grpc_tools").joinpath("_proto")
    package_path = Path(*PROTO_PACKAGE.split("."))
    changed: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="loyalty-proto-") as scratch:
        arguments = [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(str(source) for source in _protoc_sources()),
        ]
        if protoc.main(arguments) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_ROOT} (its messages are above)")
        generated = {
            path.name: path.read_bytes()
            for path in Path(scratch, package_path).iterdir()
            if path.name.endswith(GENERATED_SUFFIXES)
        }
    target = ROOT / package_path
    for name in PROTO_PACKAGES:
        init = ROOT.joinpath(*name.split("."), "__init__.py")
        if _write_if_changed(init, GENERATED_NOTICE.encode()):
            changed.append(init)
    for name, content in sorted(generated.items()):
        if _write_if_changed(target / name, content):
            changed.append(target / name)
    for stale in target.iterdir():
        if stale.name.endswith(GENERATED_SUFFIXES) and stale.name not in generated:
            stale.unlink()
            changed.append(stale)
    return changed


class build_proto(Command):
    """Generates the gRPC contract's Python modules (package loyalty.v1) from proto/."""

    description = "generate loyalty/v1/*_pb2*.py[i] from proto/loyalty/v1/*.proto"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        for path in generate_proto():
            print(f"generated {path.relative_to(ROOT)}")
        # packages.find ran before the modules existed on a fresh clone; the build and the
        # editable install's finder both take the package list from here, after this command.
        packages = self.distribution.packages
        if packages is None:
            packages = self.distribution.packages = []
        packages.extend(name for name in PROTO_PACKAGES if name not in packages)
        # The stubs go into wheels too, for type checkers of installed copies.
        stubs = self.distribution.package_data.setdefault(PROTO_PACKAGE, [])
        if "*.pyi" not in stubs:
            stubs.append("*.pyi")


class build(_build):
    """build whose first step generates the gRPC modules.

    editable installs run build's steps one by one but swallow errors of a customized
    build_py, so generation is a step of its own: a protoc failure fails the install.
    """

    sub_commands: ClassVar = [("build_proto", None), *_build.sub_commands]


class build_py(_build_py):
    """build_py that generates the gRPC modules first (``setup.py build_py`` alone too)."""

    def run(self) -> None:
        self.run_command("build_proto")
        super().run()


class develop(_develop):
    """develop that generates the gRPC modules first, for setuptools that builds in place."""

    def run(self) -> None:
        self.run_command("build_proto")
        super().run()


setup(
    ext_modules=_extensions(),
    cmdclass={
        "build": build,
        "build_ext": build_ext,
        "build_proto": build_proto,
        "build_py": build_py,
        "develop": develop,
    },
)

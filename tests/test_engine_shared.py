"""The seam between the compiled engine and the reference: public names, one module.

ext/_engine.pyx hands every path but plain purchases to the reference engine. What it takes
from there is named in processor.engine.shared; these tests read the Cython source (it is
not Python, so no linter or type checker follows its imports) and hold it to that module.
"""

from __future__ import annotations

import re
from pathlib import Path

from processor.engine import shared

ROOT = Path(__file__).resolve().parent.parent
ENGINE_SOURCE = (ROOT / "ext" / "_engine.pyx").read_text(encoding="utf-8")
# Modules of the package the compiled engine may import at run time: the seam, the engine's
# types and codes, and the program model's public location check.
ALLOWED = {
    "processor.engine.shared",
    "processor.engine.types",
    "processor.engine.codes",
    "processor.program.rules",
}


def test_the_compiled_engine_imports_only_the_shared_module_types_and_codes() -> None:
    imported = set()
    pattern = r"^\s*from (processor[\w.]*) import (\w+)"
    for package, name in re.findall(pattern, ENGINE_SOURCE, re.M):
        # `from processor.engine import shared` imports the module processor.engine.shared.
        imported.add(f"{package}.{name}" if package == "processor.engine" else package)
    assert imported, "no import of the package found in ext/_engine.pyx"
    assert imported <= ALLOWED, f"ext/_engine.pyx imports {sorted(imported - ALLOWED)}"


def test_every_name_the_compiled_engine_takes_is_a_public_name_of_the_shared_module() -> None:
    used = set(re.findall(r"\bshared\.(\w+)", ENGINE_SOURCE))
    assert used, "ext/_engine.pyx no longer uses processor.engine.shared"
    assert used <= set(shared.__all__), (
        f"not in shared.__all__: {sorted(used - set(shared.__all__))}"
    )
    assert not [name for name in used if name.startswith("_")]
    for name in used:
        assert getattr(shared, name) is not None


def test_the_shared_module_exports_only_what_the_compiled_engine_uses() -> None:
    used = set(re.findall(r"\bshared\.(\w+)", ENGINE_SOURCE))
    assert set(shared.__all__) == used, "a name in shared.__all__ the compiled engine never uses"


def test_the_compiled_engine_has_no_def_constant() -> None:
    # Cython 3 deprecates DEF: constants are cdef enums, macros, or cimported from ext/*.pxd.
    assert not re.findall(r"^DEF ", ENGINE_SOURCE, flags=re.M)

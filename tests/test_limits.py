"""Every limit is defined once, in processor/limits.py, and its copies cannot drift.

Read from the source (nothing but processor.limits is imported), so a definition anywhere in
the package counts, whether or not a test imports its module. The compiled engine cannot
import Python, so ext/limits.pxd holds a hand-kept copy of the limits it needs; it is held
here to the values of processor/limits.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from processor import limits

ROOT = Path(__file__).resolve().parent.parent
LIMITS_SOURCE = ROOT / "processor" / "limits.py"
LIMITS_PXD = ROOT / "ext" / "limits.pxd"


def _defined(path: Path) -> list[tuple[str, int, ast.stmt]]:
    """(name, line, statement) of every module-level assignment of ``path``, including the
    ones under a module-level ``if`` or ``try``."""
    found: list[tuple[str, int, ast.stmt]] = []

    def visit(body: list[ast.stmt]) -> None:
        for statement in body:
            if isinstance(statement, ast.Assign):
                for target in statement.targets:
                    names = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
                    found.extend(
                        (name.id, statement.lineno, statement)
                        for name in names
                        if isinstance(name, ast.Name)
                    )
            elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                found.append((statement.target.id, statement.lineno, statement))
            elif isinstance(statement, ast.If | ast.Try):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(statement, block, []))
                for handler in getattr(statement, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


LIMITS = {name for name, _, _ in _defined(LIMITS_SOURCE)}

# Names limits once had in the layers, for the same meaning as a name of processor.limits: a
# definition under one of them is a second definition of that limit.
RETIRED = {
    "ACCOUNT_DIGITS_MIN": "CARD_DIGITS_MIN",
    "NUMBER_DIGITS_MIN": "CARD_DIGITS_MIN",
    "ACCOUNT_DIGITS_MAX": "CARD_DIGITS_MAX",
    "CARD_NUMBER_DIGITS_MAX": "CARD_DIGITS_MAX",
    "IMPORTED_NUMBER_DIGITS_MAX": "CARD_DIGITS_MAX",
    "NUMBER_DIGITS_MAX": "GENERATED_CARD_DIGITS_MAX",
    "SERIAL_PREFIX_DIGITS": "CARD_SERIAL_PREFIX_DIGITS",
    "CODES_MAX": "REDEEM_CODES_MAX",
    "ACCOUNT_ID_CHARS_MAX": "CARD_NUMBER_STORED_CHARS_MAX",
    "ACCOUNT_ID_LENGTH_MAX": "CARD_NUMBER_STORED_CHARS_MAX",
    "CARD_NUMBER_CHARS_MAX": "CARD_NUMBER_STORED_CHARS_MAX",
    "PROGRAM_ID_CHARS_MAX": "IDENTIFIER_CHARS_MAX",
    "SERIES_ID_CHARS_MAX": "IDENTIFIER_CHARS_MAX",
    "BATCH_NAME_CHARS_MAX": "TEXT_CHARS_MAX",
    "TEXT_LENGTH_MAX": "TEXT_CHARS_MAX",
    "PROGRAM_TEXT_BYTES_MAX": "PROGRAM_FILE_BYTES_MAX",
    "IMPORT_TEXT_BYTES_MAX": "CARD_IMPORT_BYTES_MAX",
    "KEY_PREFIX_LENGTH_MAX": "CACHE_KEY_PREFIX_CHARS_MAX",
    "VERSION_MAX": "ACCOUNT_VERSION_MAX",
    "ENCODED_BYTES_MAX": "ENCODED_BLOB_BYTES_MAX",
    "MESSAGE_CHARS_MAX": "STATUS_MESSAGE_CHARS_MAX",
    "DETAILS_BYTES_MAX": "STATUS_DETAILS_BYTES_MAX",
}


def _meaning(name: str) -> str | None:
    """The limit of processor.limits a definition named ``name`` defines again, if any."""
    upper = name.upper()
    if upper in LIMITS:
        return upper
    if upper in RETIRED:
        return RETIRED[upper]
    # A qualified name (PURCHASE_LINES_MAX) means the same as the limit it ends with.
    return next((limit for limit in sorted(LIMITS) if upper.endswith(f"_{limit}")), None)


def _python_definitions() -> list[str]:
    found = []
    for path in sorted((ROOT / "processor").rglob("*.py")):
        if path == LIMITS_SOURCE:
            continue
        for name, line, _ in _defined(path):
            meaning = _meaning(name)
            if meaning is not None:
                where = path.relative_to(ROOT)
                found.append(f"{where}:{line}: {name} defines processor.limits.{meaning}")
    return found


# DEF NAME = ..., NAME = ... at module level, and the members of a cdef enum (indented).
_CYTHON_DEFINITION = re.compile(r"^\s*(?:DEF\s+|cdef\s+(?:[\w.]+\s+)*)?([A-Za-z_]\w*)\s*=[^=]")


def _cython_definitions() -> list[str]:
    found = []
    for path in sorted([*(ROOT / "ext").glob("*.pyx"), *(ROOT / "ext").glob("*.pxd")]):
        if path == LIMITS_PXD:
            continue
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = _CYTHON_DEFINITION.match(text)
            if match is None or not match.group(1).isupper():
                continue
            meaning = _meaning(match.group(1))
            if meaning is not None:
                where = path.relative_to(ROOT)
                found.append(
                    f"{where}:{number}: {match.group(1)} defines processor.limits.{meaning}"
                )
    return found


def test_each_limit_is_defined_once_in_processor_limits() -> None:
    twice = _python_definitions() + _cython_definitions()
    assert not twice, "import these from processor.limits (or cimport from ext/limits.pxd):\n" + (
        "\n".join(twice)
    )


def test_the_duplicate_finder_sees_python_and_cython_definitions(tmp_path: Path) -> None:
    # The finder must recognise each form a second definition has taken.
    module = tmp_path / "module.py"
    module.write_text(
        "LINES_MAX = 1000\n"
        "ACCOUNT_ID_LENGTH_MAX: int = 128\n"
        "if True:\n"
        "    PURCHASE_LINES_MAX = 10\n"
        "CERTIFICATES_MAX = 1000\n",
        encoding="utf-8",
    )
    assert [(name, _meaning(name)) for name, _, _ in _defined(module)] == [
        ("LINES_MAX", "LINES_MAX"),
        ("ACCOUNT_ID_LENGTH_MAX", "CARD_NUMBER_STORED_CHARS_MAX"),
        ("PURCHASE_LINES_MAX", "LINES_MAX"),
        ("CERTIFICATES_MAX", None),
    ]
    lines = [
        "DEF LINES_MAX = 1000",
        "cdef enum:",
        "    REDEEM_CODES_MAX = 32",
        "if x == LINES_MAX:",
    ]
    matched = [_CYTHON_DEFINITION.match(line) for line in lines]
    assert [match.group(1) if match else None for match in matched] == [
        "LINES_MAX",
        None,
        "REDEEM_CODES_MAX",
        None,
    ]


def test_every_limit_is_final_and_says_why() -> None:
    tree = ast.parse(LIMITS_SOURCE.read_text(encoding="utf-8"))
    body = tree.body
    problems = []
    for index, statement in enumerate(body):
        if isinstance(statement, ast.Assign):
            names = ", ".join(ast.unparse(target) for target in statement.targets)
            problems.append(f"line {statement.lineno}: {names} is not typed Final")
            continue
        if not isinstance(statement, ast.AnnAssign):
            continue
        name = ast.unparse(statement.target)
        if ast.unparse(statement.annotation) != "Final":
            problems.append(f"line {statement.lineno}: {name} is not typed Final")
        following = body[index + 1] if index + 1 < len(body) else None
        documented = (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
            and following.value.value.strip()
        )
        if not documented:
            problems.append(f"line {statement.lineno}: {name} has no docstring saying why")
    assert not problems, "\n".join(problems)
    assert LIMITS, "processor/limits.py defines no limit"


def _pxd_limits() -> dict[str, int]:
    """The members of the ``cdef enum:`` blocks of ext/limits.pxd."""
    values: dict[str, int] = {}
    inside = False
    for text in LIMITS_PXD.read_text(encoding="utf-8").splitlines():
        code = text.split("#", 1)[0].rstrip()
        if not code:
            continue
        if re.fullmatch(r"cdef enum\s*:", code):
            inside = True
            continue
        if inside and code.startswith((" ", "\t")):
            match = re.fullmatch(r"\s+([A-Z][A-Z0-9_]*)\s*=\s*([0-9_]+)", code)
            assert match is not None, f"ext/limits.pxd: cannot read {text.strip()!r}"
            values[match.group(1)] = int(match.group(2))
            continue
        inside = False
        pytest.fail(f"ext/limits.pxd: only cdef enum blocks belong here, not {text.strip()!r}")
    return values


def test_the_compiled_engines_limits_are_those_of_processor_limits() -> None:
    copied = _pxd_limits()
    assert "LINES_MAX" in copied
    for name, value in copied.items():
        assert name in LIMITS, f"ext/limits.pxd: {name} is not a limit of processor/limits.py"
        assert value == getattr(limits, name), (
            f"ext/limits.pxd: {name} = {value}, processor/limits.py says {getattr(limits, name)}"
        )


def test_the_compiled_engine_takes_its_limits_from_limits_pxd() -> None:
    source = (ROOT / "ext" / "_engine.pyx").read_text(encoding="utf-8")
    cimported = re.search(r"^from limits cimport ([\w, ]+)$", source, re.MULTILINE)
    assert cimported is not None, "ext/_engine.pyx does not cimport ext/limits.pxd"
    names = {name.strip() for name in cimported.group(1).split(",")}
    assert names <= set(_pxd_limits()), names


# The contract's documentation states these values: changing one of them is a change of
# the contract, and its text must change with it.
DOCUMENTED = [
    ("proto/loyalty/v1/common.proto", "transaction id, 1 to {REQUEST_ID_CHARS_MAX} characters"),
    (
        "proto/loyalty/v1/common.proto",
        "customer's id in the client's systems, 1 to {CUSTOMER_ID_CHARS_MAX} characters",
    ),
    ("proto/loyalty/v1/common.proto", "item id (SKU), 1 to {NAME_CHARS_MAX} characters"),
    ("proto/loyalty/v1/common.proto", "How many units were sold, 1 to {LINE_QUANTITY_MAX:,}"),
    ("proto/loyalty/v1/common.proto", "(at most {HIERARCHY_NODES_MAX}), for item rules"),
    ("proto/loyalty/v1/common.proto", "(at most {AUDIENCES_MAX}), for audience rules"),
    ("proto/loyalty/v1/transactions.proto", "The lines of the sale, at most {LINES_MAX:,}"),
    ("proto/loyalty/v1/transactions.proto", "at most {TENDERS_MAX} tenders"),
    ("proto/loyalty/v1/transactions.proto", "for redemption, at most {REDEEM_CODES_MAX}"),
    ("proto/loyalty/v1/transactions.proto", "How many engagements, 1 to {ENGAGEMENT_COUNT_MAX:,}"),
    ("proto/loyalty/v1/transactions.proto", "The transactions, 1 to {TRANSACTIONS_PER_CALL_MAX:,}"),
    ("proto/loyalty/v1/awards.proto", "at most {AWARDS_PAGE_MAX}; zero means"),
    ("proto/loyalty/v1/admin.proto", "at most {SEARCH_PAGE_SIZE_MAX}; zero means"),
    ("proto/loyalty/v1/admin.proto", "How many cards, 1 to {GENERATE_CARDS_MAX:,} per call"),
    ("proto/loyalty/v1/admin.proto", "at most {LEDGER_PAGE_SIZE_MAX:,}; zero means"),
    ("proto/loyalty/v1/admin.proto", "YAML or JSON text, at most {PROGRAM_FILE_BYTES_MAX:MiB}"),
    ("proto/loyalty/v1/admin.proto", "At most {CARD_IMPORT_BYTES_MAX:MiB} per call"),
]


class _Values(dict[str, int]):
    """The limits for str.format_map, with a ``MiB`` format for byte sizes."""

    def __missing__(self, key: str) -> _Sized:
        return _Sized(getattr(limits, key))


class _Sized(int):
    def __format__(self, spec: str) -> str:
        if spec == "MiB":
            assert self % (1024 * 1024) == 0, f"{int(self)} bytes is not a whole MiB"
            return f"{self // (1024 * 1024)} MiB"
        return format(int(self), spec)


@pytest.mark.parametrize(("document", "template"), DOCUMENTED)
def test_the_contract_documents_the_limits(document: str, template: str) -> None:
    text = " ".join((ROOT / document).read_text(encoding="utf-8").split())
    text = text.replace(" // ", " ")
    expected = template.format_map(_Values())
    assert expected in text, f"{document} does not say {expected!r}"

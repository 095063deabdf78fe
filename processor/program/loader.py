"""Loading a program file: parse YAML or JSON, validate, report every problem.

Validation runs in two passes. Pydantic checks each field (types, ranges,
unknown fields); then ``program_problems`` checks what spans fields (a
movement rule to an unknown level, a threshold below its cost, money with
more decimals than its currency). Either way the error names the file, the
field path and the reason, for every problem at once. ``load_program``, which
knows where the file is, also reads each card series' ``import_file`` (a path
relative to the program file) and reports its problems with the others.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from processor.cards import read_card_import
from processor.errors import InputFileError, InternalError, Problem
from processor.limits import PROGRAM_FILE_BYTES_MAX, PROGRAM_FILE_DEPTH_MAX, PROGRAM_FILE_NODES_MAX
from processor.money import is_currency
from processor.program.award import AwardProgram
from processor.program.cards import card_problems
from processor.program.loyalty import loyalty_problems
from processor.program.model import PROGRAMS_PER_CARD_MAX, ProgramFile


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 integers, so ``start_time: 10:30`` is a time."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, pattern)
        for tag, pattern in resolvers
        if not (tag == "tag:yaml.org,2002:int" and ":" in pattern.pattern)
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_program(path: str | Path) -> ProgramFile:
    """Read and validate a program file; raise InputFileError naming every problem."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise InputFileError(name, [Problem("", f"cannot be read: {error.strerror}")]) from None
    if len(raw) > PROGRAM_FILE_BYTES_MAX:
        raise InputFileError(name, [Problem("", f"is larger than {PROGRAM_FILE_BYTES_MAX} bytes")])
    data = parse_document(name, raw)
    program = _parse_program(name, data)
    problems = program_problems(program)
    problems += import_problems(program, Path(path).parent)
    if problems:
        raise InputFileError(name, problems)
    return program


def parse_document(name: str, raw: bytes) -> Any:
    """YAML or JSON by file extension (JSON is YAML, but its errors read better)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputFileError(name, [Problem("", f"is not UTF-8 text: {error.reason}")]) from None
    try:
        if name.endswith(".json"):
            data = json.loads(text)
            _check_tree(name, data)
            return data
        _check_events(name, text)
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except RecursionError:
        raise InputFileError(name, [_too_deep()]) from None
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise InputFileError(name, [Problem(where, f"invalid JSON: {error.msg}")]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error)
        raise InputFileError(name, [Problem(where, f"invalid YAML: {reason}")]) from None


def _too_deep() -> Problem:
    return Problem("", f"nests mappings and lists more than {PROGRAM_FILE_DEPTH_MAX} deep")


def _too_many() -> Problem:
    return Problem("", f"has more than {PROGRAM_FILE_NODES_MAX:,} mappings, lists and values")


def _check_events(name: str, text: str) -> None:
    """Refuse a YAML document too deep, too large or with aliases, from its event stream
    (parsed without building anything, and without recursion) before it is built."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            # An alias repeats a whole subtree without its size showing here: a few lines
            # can stand for billions of values to validate. Program files need none.
            mark = event.start_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise InputFileError(name, [Problem(where, "YAML aliases (*name) are not supported")])
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > PROGRAM_FILE_DEPTH_MAX:
                raise InputFileError(name, [_too_deep()])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            continue
        elif not isinstance(event, yaml.ScalarEvent):
            continue
        nodes += 1
        if nodes > PROGRAM_FILE_NODES_MAX:
            raise InputFileError(name, [_too_many()])


def _check_tree(name: str, data: Any) -> None:
    """Refuse a parsed JSON document too deep or too large, walking it without recursion."""
    stack = [(data, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > PROGRAM_FILE_NODES_MAX:
            raise InputFileError(name, [_too_many()])
        if isinstance(value, dict | list):
            if depth > PROGRAM_FILE_DEPTH_MAX:
                raise InputFileError(name, [_too_deep()])
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def parse_program_text(text: str, file_name: str = "program.yaml") -> ProgramFile:
    """Validate a program file given as text; InputFileError names every problem."""
    raw = text.encode("utf-8")
    if len(raw) > PROGRAM_FILE_BYTES_MAX:
        problem = Problem("", f"is larger than {PROGRAM_FILE_BYTES_MAX} bytes")
        raise InputFileError(file_name, [problem])
    return validate_program(file_name, parse_document(file_name, raw))


_parser: ProcessPoolExecutor | None = None


async def parse_program_text_elsewhere(text: str, file_name: str = "program.yaml") -> ProgramFile:
    """:func:`parse_program_text` in a worker process, so that building and validating a
    large upload (seconds for a 4 MiB file) never holds the serving event loop, and so
    every call of this process keeps being answered meanwhile. One worker per process,
    started by the first upload (spawned, not forked: the server's gRPC and pool threads
    must not be copied); uploads wait for each other there, never for the loop."""
    global _parser
    try:
        return await _check_in_worker(text, file_name)
    except BrokenProcessPool:
        _parser = None  # the worker died (killed, out of memory): a new one takes the retry
    try:
        return await _check_in_worker(text, file_name)
    except BrokenProcessPool:
        _parser = None
        raise InternalError(f"{file_name}: the process checking it ended") from None


async def _check_in_worker(text: str, file_name: str) -> ProgramFile:
    global _parser
    if _parser is None:
        _parser = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_parser, parse_program_text, text, file_name)


def validate_program(name: str, data: Any) -> ProgramFile:
    """Validate parsed data as a program file; ``name`` is used in error messages.

    Reads no other file: a series' ``import_file`` is checked by ``load_program``.
    """
    program = _parse_program(name, data)
    problems = program_problems(program)
    if problems:
        raise InputFileError(name, problems)
    return program


def _parse_program(name: str, data: Any) -> ProgramFile:
    """The field-by-field pass: parsed data as a ProgramFile, or InputFileError."""
    if not isinstance(data, dict):
        raise InputFileError(name, [Problem("", "must be a mapping of fields at the top level")])
    try:
        return ProgramFile.model_validate(data)
    except ValidationError as error:
        raise InputFileError(name, pydantic_problems(error)) from None


def import_problems(program: ProgramFile, directory: Path) -> list[Problem]:
    """Every problem of the card import files of ``program``'s series.

    Each file is read with the program's card definition, the tender program's
    currency (else the first program's) and the first loyalty program's points
    precision (0 without one). A problem is reported at ``series[i].import_file``
    and names the file as written; when the file is valid, its card count must
    fit the series. Without a program, or with an unknown currency (reported by
    ``program_problems``), balances cannot be read and the files are not read.
    """
    currencies = [] if program.tender is None else [program.tender.currency]
    currencies += [award.currency for award in program.award_programs]
    currencies += [loyalty.currency for loyalty in program.loyalty_programs]
    if not currencies or not is_currency(currencies[0]):
        return []
    precision = program.loyalty_programs[0].points_precision if program.loyalty_programs else 0
    problems: list[Problem] = []
    for index, series in enumerate(program.series):
        if series.import_file is None:
            continue
        path = f"series[{index}]"
        try:
            cards = read_card_import(
                directory / series.import_file,
                program.card,
                currency=currencies[0],
                points_precision=precision,
            )
        except InputFileError as error:
            problems += [
                Problem(f"{path}.import_file", f"{series.import_file} {problem}")
                for problem in error.problems
            ]
            continue
        problems += series.count_problems(len(cards), path)
    return problems


def pydantic_problems(error: ValidationError) -> list[Problem]:
    """One Problem per pydantic error, with a dotted path like ``a.b[2].c``."""
    problems = []
    for item in error.errors(include_url=False):
        path = format_path(item["loc"])
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            reason = "unknown field"
        elif item["type"] == "missing":
            reason = "is required"
        problems.append(Problem(path, reason))
    return problems


def format_path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-"):
            text += f".{part}" if text else part
    return text


def program_problems(program: ProgramFile) -> list[Problem]:
    """Every cross-field problem in a parsed program file."""
    problems: list[Problem] = []
    ids = program.program_ids()
    if not ids:
        problems.append(Problem("", "defines no tender, award or loyalty program"))
    if len(ids) > PROGRAMS_PER_CARD_MAX:
        problems.append(Problem("", f"defines more than {PROGRAMS_PER_CARD_MAX} programs"))
    seen: set[str] = set()
    for program_id in ids:
        if program_id in seen:
            problems.append(Problem("", f"program id {program_id!r} is used more than once"))
        seen.add(program_id)
    problems += card_problems(
        program.card, program.series, definition_path="card", series_path="series"
    )
    if program.tender is not None:
        problems += program.tender.problems("tender")
    award_programs: dict[str, AwardProgram] = {award.id: award for award in program.award_programs}
    for index, award in enumerate(program.award_programs):
        problems += award.problems(f"award_programs[{index}]", program.locations)
    for index, loyalty in enumerate(program.loyalty_programs):
        problems += loyalty_problems(
            loyalty, f"loyalty_programs[{index}]", program.locations, award_programs
        )
    return problems

"""Program files in PostgreSQL: stored as submitted (YAML or JSON text), every version kept,
after the loader validated them; at most one version of a program file is active, and two
active program files never share a card serial prefix (a card is served by the active program
of its five-digit prefix). Every change of the active versions increases one counter in the
same transaction (``registry_token``), which is how every server process notices it. Here
are ``ProgramFiles`` (store, activate, deactivate, read and search them), their values and
the parsing of program text; PostgreSQL failures become ``DatabaseUnavailableError`` (code
1001), as in the ledger.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from processor.errors import (
    DeclinedError,
    InternalError,
    InvalidFieldError,
    NotFoundError,
)
from processor.limits import CARD_SERIAL_PREFIX_DIGITS, SEARCH_PAGE_SIZE_MAX
from processor.program.loader import (
    parse_document,
    parse_program_text_elsewhere,
    validate_program,
)
from processor.program.model import ProgramFile
from processor.store.catalog_base import (
    CatalogBase,
    ConflictError,
    decode_page_token,
    encode_page_token,
    one_row,
)

ProgramType = Literal["tender", "award", "loyalty"]
ProgramStatus = Literal["active", "inactive"]  # of a stored version of a program file


# --------------------------------------------------------------------------- errors


class AlreadyExistsError(DeclinedError):
    """What the request would create exists already (a program file id taken)."""

    reason = "ALREADY_EXISTS"


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class ProgramPart:
    """One tender, award or loyalty program of a program file."""

    id: str
    type: ProgramType
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    """One stored version of a program file."""

    id: str
    version: int
    status: str  # "active" or "inactive"
    name: str
    description: str
    card_type: str
    serial_prefix: str
    source: str
    parts: tuple[ProgramPart, ...]
    versions: tuple[int, ...]  # every stored version of the file, ascending
    account_count: int  # cards of the program file
    member_count: int  # registered customers holding one


@dataclass(frozen=True, slots=True)
class ProgramSummary:
    """One row of a program search: a program of a program file at the version shown."""

    part: ProgramPart
    program_id: str
    version: int  # the active version, else the latest
    status: str
    card_type: str
    serial_prefix: str
    member_count: int
    account_count: int


@dataclass(frozen=True, slots=True)
class SearchPage:
    programs: list[ProgramSummary]
    next_page_token: str  # empty on the last page


# --------------------------------------------------------------------------- helpers


def parse_stored_program(program_id: str, version: int, source: str) -> ProgramFile:
    """A stored program file, read back: JSON when it parses as JSON, else YAML."""
    name = f"{program_id}@{version}"
    stripped = source.lstrip()
    if stripped.startswith("{"):
        with contextlib.suppress(json.JSONDecodeError):
            return validate_program(name, json.loads(source))
    return validate_program(name, parse_document(f"{name}.yaml", source.encode("utf-8")))


def program_parts(program: ProgramFile) -> list[ProgramPart]:
    parts: list[ProgramPart] = []
    if program.tender is not None:
        tender = program.tender
        parts.append(ProgramPart(tender.id, "tender", tender.name, tender.description))
    for award in program.award_programs:
        parts.append(ProgramPart(award.id, "award", award.name, award.description))
    for loyalty in program.loyalty_programs:
        parts.append(ProgramPart(loyalty.id, "loyalty", loyalty.name, loyalty.description))
    return parts


# --------------------------------------------------------------------------- SQL

_PROGRAM_COLUMNS = "id, version, status, name, description, card_type, serial_prefix, source"

_INSERT_PROGRAM = """
INSERT INTO programs (id, version, status, source, name, description, card_type, serial_prefix)
VALUES (%s, %s, 'inactive', %s, %s, %s, %s, %s)
"""
_INSERT_PARTS = """
INSERT INTO program_parts (program_id, version, part_id, type, name, description)
SELECT %s, %s, * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
"""
_BUMP_GENERATION = """
UPDATE program_activations SET generation = generation + 1, updated_at = now()
RETURNING generation
"""
_SEARCH = """
WITH shown AS (
    SELECT DISTINCT ON (id) id, version, status, name, card_type, serial_prefix
    FROM programs
    ORDER BY id, status = 'active' DESC, version DESC
)
SELECT s.id, s.version, s.status, s.card_type, s.serial_prefix,
       p.part_id, p.type, p.name, p.description
FROM shown AS s
JOIN program_parts AS p ON p.program_id = s.id AND p.version = s.version
WHERE {conditions}
ORDER BY s.id DESC, p.part_id DESC
LIMIT %(limit)s
"""
_TEXT_FIELDS = ("s.id", "s.name", "p.part_id", "p.name")
_COUNTS = """
SELECT definition, count(*), count(DISTINCT customer_id) FROM cards
WHERE definition = ANY(%s::text[]) GROUP BY definition
"""

# --------------------------------------------------------------------------- program files


class ProgramFiles(CatalogBase):
    """Program files and their versions, over the Store's connection pool."""

    async def create_program(self, text: str, file_name: str = "program.yaml") -> tuple[str, int]:
        """Store a new program file, inactive; (id, version). PROGRAM_EXISTS if the id is taken."""
        return await self._store_program(text, file_name, new=True)

    async def update_program(self, text: str, file_name: str = "program.yaml") -> tuple[str, int]:
        """Store a new version of a program file, inactive; VERSION_EXISTS unless it is newer
        than every stored version."""
        return await self._store_program(text, file_name, new=False)

    async def _store_program(self, text: str, file_name: str, *, new: bool) -> tuple[str, int]:
        # Checked in a worker process: a large upload never holds the serving event loop.
        program = await parse_program_text_elsewhere(text, file_name or "program.yaml")
        parts = program_parts(program)
        try:
            async with self._transaction("store a program file") as cursor:
                await self._lock(cursor, "program", program.id)
                await cursor.execute(
                    "SELECT max(version) FROM programs WHERE id = %s", (program.id,)
                )
                row = await cursor.fetchone()
                latest = row[0] if row else None
                _check_new_version(program, latest, new=new)
                await cursor.execute(
                    _INSERT_PROGRAM,
                    (
                        program.id,
                        program.version,
                        text,
                        program.name,
                        program.description,
                        program.card.type,
                        program.card.serial_prefix,
                    ),
                )
                await cursor.execute(
                    _INSERT_PARTS,
                    (
                        program.id,
                        program.version,
                        [part.id for part in parts],
                        [part.type for part in parts],
                        [part.name for part in parts],
                        [part.description for part in parts],
                    ),
                )
        except InternalError as error:
            if isinstance(error.__cause__, psycopg.errors.UniqueViolation):
                raise ConflictError(
                    f"program {program.id} version {program.version} is stored already",
                    reason="VERSION_EXISTS",
                ) from error
            raise
        return program.id, program.version

    async def activate(self, program_id: str, version: int) -> int:
        """Make ``version`` the active one; the version active before (0 for none).

        One transaction deactivates the other versions, activates this one and increases the
        registry token. PREFIX_IN_USE when another active program file has its serial prefix.
        """
        try:
            async with self._transaction("activate a program") as cursor:
                await self._lock(cursor, "program", program_id)
                rows = await self._versions_for_update(cursor, program_id)
                if version not in rows:
                    raise _unknown_version(program_id, version)
                previous = next((v for v, status in rows.items() if status == "active"), 0)
                if previous == version:
                    return previous
                await cursor.execute(
                    "SELECT serial_prefix FROM programs WHERE id = %s AND version = %s",
                    (program_id, version),
                )
                prefix = (await one_row(cursor))[0]
                await cursor.execute(
                    "SELECT id FROM programs WHERE status = 'active' AND serial_prefix = %s"
                    " AND id <> %s",
                    (prefix, program_id),
                )
                clash = await cursor.fetchone()
                if clash is not None:
                    raise _prefix_in_use(prefix, clash[0])
                await cursor.execute(
                    "UPDATE programs SET status = 'inactive', updated_at = now()"
                    " WHERE id = %s AND status = 'active'",
                    (program_id,),
                )
                await cursor.execute(
                    "UPDATE programs SET status = 'active', updated_at = now()"
                    " WHERE id = %s AND version = %s",
                    (program_id, version),
                )
                await cursor.execute(_BUMP_GENERATION)
                return previous
        except InternalError as error:
            if isinstance(error.__cause__, psycopg.errors.UniqueViolation):
                # Another program file with this prefix was activated at the same moment.
                raise _prefix_in_use("", "another program") from error
            raise

    async def deactivate(self, program_id: str, version: int) -> bool:
        """Stop ``version``; False when it was not active (nothing changes)."""
        async with self._transaction("deactivate a program") as cursor:
            await self._lock(cursor, "program", program_id)
            rows = await self._versions_for_update(cursor, program_id)
            if version not in rows:
                raise _unknown_version(program_id, version)
            if rows[version] != "active":
                return False
            await cursor.execute(
                "UPDATE programs SET status = 'inactive', updated_at = now()"
                " WHERE id = %s AND version = %s",
                (program_id, version),
            )
            await cursor.execute(_BUMP_GENERATION)
            return True

    async def _versions_for_update(
        self, cursor: psycopg.AsyncCursor[Any], program_id: str
    ) -> dict[int, str]:
        await cursor.execute(
            "SELECT version, status FROM programs WHERE id = %s ORDER BY version FOR UPDATE",
            (program_id,),
        )
        rows = dict(await cursor.fetchall())
        if not rows:
            raise NotFoundError(f"no program file {program_id!r}", reason="UNKNOWN_PROGRAM")
        return rows

    async def get(self, program_id: str, version: int = 0, *, counts: bool = True) -> ProgramRecord:
        """One version of a program file: ``version`` 0 reads the active one, else the latest.

        ``counts`` False leaves ``account_count`` and ``member_count`` at 0: counting scans
        every card of the program, seconds for ten million, which a caller that only needs
        the file should not pay."""
        async with self._reading("read a program") as cursor:
            await cursor.execute(
                f"SELECT {_PROGRAM_COLUMNS} FROM programs WHERE id = %s"
                " ORDER BY status = 'active' DESC, version DESC",
                (program_id,),
            )
            rows = await cursor.fetchall()
            if not rows:
                raise NotFoundError(f"no program file {program_id!r}", reason="UNKNOWN_PROGRAM")
            chosen = rows[0] if version == 0 else next((r for r in rows if r[1] == version), None)
            if chosen is None:
                raise _unknown_version(program_id, version)
            await cursor.execute(
                "SELECT part_id, type, name, description FROM program_parts"
                " WHERE program_id = %s AND version = %s ORDER BY part_id",
                (program_id, chosen[1]),
            )
            parts = tuple(ProgramPart(*row) for row in await cursor.fetchall())
            counted = await _counts(cursor, [program_id]) if counts else {}
        accounts, members = counted.get(program_id, (0, 0))
        program, chosen_version, status, name, description, card_type, prefix, source = chosen
        return ProgramRecord(
            id=program,
            version=chosen_version,
            status="active" if status == "active" else "inactive",
            name=name,
            description=description,
            card_type=card_type,
            serial_prefix=prefix,
            source=source,
            parts=parts,
            versions=tuple(sorted(row[1] for row in rows)),
            account_count=accounts,
            member_count=members,
        )

    async def search(
        self,
        *,
        text: str = "",
        exact: bool = False,
        type: ProgramType | None = None,
        status: ProgramStatus | None = None,
        serial_prefix: str = "",
        page_size: int = SEARCH_PAGE_SIZE_MAX,
        page_token: str = "",
    ) -> SearchPage:
        """The programs (tender, award, loyalty) of every program file at the version shown
        (the active one, else the latest), by program file id descending.

        ``text`` matches the id or name of the program or of its file, ignoring case:
        equal with ``exact``, contained otherwise. ``page_size`` is at most 25.
        """
        if serial_prefix and not (
            len(serial_prefix) == CARD_SERIAL_PREFIX_DIGITS and serial_prefix.isdigit()
        ):
            raise InvalidFieldError("card_serial_prefix", "must be exactly five digits")
        if not 1 <= page_size <= SEARCH_PAGE_SIZE_MAX:
            raise InvalidFieldError("page_size", f"must be 1 to {SEARCH_PAGE_SIZE_MAX}")
        conditions = ["true"]
        params: dict[str, Any] = {"limit": page_size + 1, "text": text.lower()}
        if text:
            compare = "lower({}) = %(text)s" if exact else "strpos(lower({}), %(text)s) > 0"
            conditions.append("(" + " OR ".join(compare.format(f) for f in _TEXT_FIELDS) + ")")
        if type is not None:
            conditions.append("p.type = %(type)s")
            params["type"] = type
        if status == "active":
            conditions.append("s.status = 'active'")
        elif status is not None:
            conditions.append("s.status <> 'active'")
        if serial_prefix:
            conditions.append("s.serial_prefix = %(prefix)s")
            params["prefix"] = serial_prefix
        if page_token:
            after_id, after_part = decode_page_token(page_token, 2)
            conditions.append("(s.id, p.part_id) < (%(after_id)s, %(after_part)s)")
            params.update(after_id=str(after_id), after_part=str(after_part))
        query = _SEARCH.format(conditions=" AND ".join(conditions))
        async with self._reading("search programs") as cursor:
            await cursor.execute(query, params)
            rows = await cursor.fetchall()
            page = rows[:page_size]
            counts = await _counts(cursor, sorted({row[0] for row in page}))
        programs = [
            ProgramSummary(
                part=ProgramPart(part_id, part_type, name, description),
                program_id=program_id,
                version=version,
                status="active" if row_status == "active" else "inactive",
                card_type=card_type,
                serial_prefix=prefix,
                account_count=counts.get(program_id, (0, 0))[0],
                member_count=counts.get(program_id, (0, 0))[1],
            )
            for (
                program_id, version, row_status, card_type, prefix,
                part_id, part_type, name, description,
            ) in page
        ]  # fmt: skip
        token = ""
        if len(rows) > page_size:
            token = encode_page_token([page[-1][0], page[-1][5]])
        return SearchPage(programs, token)

    async def active_programs(self) -> list[tuple[str, int, str]]:
        """(id, version, source) of every active program file."""
        async with self._reading("read the active programs") as cursor:
            await cursor.execute(
                "SELECT id, version, source FROM programs WHERE status = 'active' ORDER BY id"
            )
            return [(row[0], row[1], row[2]) for row in await cursor.fetchall()]

    async def program_source(self, program_id: str, version: int) -> str:
        """The stored text of one version of a program file."""
        async with self._reading("read a program") as cursor:
            await cursor.execute(
                "SELECT source FROM programs WHERE id = %s AND version = %s", (program_id, version)
            )
            row = await cursor.fetchone()
        if row is None:
            raise _unknown_version(program_id, version)
        return str(row[0])

    async def registry_token(self) -> int:
        """A number that changes whenever the active versions change (a cheap read)."""
        async with self._reading("read the registry token") as cursor:
            await cursor.execute("SELECT generation FROM program_activations")
            return int((await one_row(cursor))[0])


# --------------------------------------------------------------------------- internals


async def _counts(
    cursor: psycopg.AsyncCursor[Any], program_ids: list[str]
) -> dict[str, tuple[int, int]]:
    """(cards, registered customers) of each program file."""
    if not program_ids:
        return {}
    await cursor.execute(_COUNTS, (program_ids,))
    return {row[0]: (int(row[1]), int(row[2])) for row in await cursor.fetchall()}


def _check_new_version(program: ProgramFile, latest: int | None, *, new: bool) -> None:
    if new and latest is not None:
        raise AlreadyExistsError(
            f"program file {program.id!r} exists (version {latest}); store a new version with"
            " UpdateProgram",
            reason="PROGRAM_EXISTS",
        )
    if not new and latest is None:
        raise NotFoundError(f"no program file {program.id!r}", reason="UNKNOWN_PROGRAM")
    if not new and latest is not None and program.version <= latest:
        raise ConflictError(
            f"program file {program.id!r} version {program.version} is not newer than the"
            f" stored version {latest}",
            reason="VERSION_EXISTS",
        )


def _unknown_version(program_id: str, version: int) -> NotFoundError:
    return NotFoundError(
        f"program file {program_id!r} has no version {version}", reason="UNKNOWN_PROGRAM"
    )


def _prefix_in_use(prefix: str, holder: str) -> ConflictError:
    return ConflictError(
        f"card serial prefix {prefix or 'of this program file'} is served by the active"
        f" program file {holder}",
        reason="PREFIX_IN_USE",
    )

"""The active programs of this process, compiled, by card serial prefix.

Every server process keeps its own registry. ``refresh`` reads the active program files
from the catalog and compiles the versions it has not compiled yet (compiling is done once
per version, never per transaction); ``refresh_if_changed`` first compares the catalog's
registry token (one integer, changed in the transaction of every activation), so polling it
every second costs one tiny query. ``run_refresher`` is that poll, as a background task: an
activation made through any process takes effect in every process within about
``interval_seconds`` plus a compile, without a restart.

The lookup on the transaction path, ``for_card``, is a dictionary read by the card's
five-digit serial prefix. A refresh builds new dictionaries and swaps them in whole, so a
lookup never sees half an update.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Final, Protocol

from processor.engine import CompiledProgram, compile_program
from processor.errors import InputFileError, LoyaltyError, NotFoundError, mask_card
from processor.limits import CARD_SERIAL_PREFIX_DIGITS
from processor.store import notifications
from processor.store.notifications import Waiter
from processor.store.programs import parse_stored_program

log = logging.getLogger(__name__)

COMPILED_INACTIVE_MAX: Final = 64
"""Compiled versions kept after they stop being active (most recently used first)."""

REFRESH_INTERVAL_SECONDS_MIN: Final = 0.05
REFRESH_INTERVAL_SECONDS_MAX: Final = 600.0
REFRESH_BACKOFF_SECONDS_MAX: Final = 30.0
"""Longest pause between refresh attempts while the catalog cannot be read."""


class ProgramSource(Protocol):
    """What the registry reads from the catalog."""

    async def active_programs(self) -> list[tuple[str, int, str]]: ...

    async def registry_token(self) -> int: ...

    async def program_source(self, program_id: str, version: int) -> str: ...


class ProgramRegistry:
    """Compiled active programs, looked up by card serial prefix or by (id, version)."""

    def __init__(self, catalog: ProgramSource) -> None:
        self._catalog = catalog
        self._active: dict[str, CompiledProgram] = {}  # program file id -> compiled
        self._by_prefix: dict[str, CompiledProgram] = {}
        self._inactive: OrderedDict[tuple[str, int], CompiledProgram] = OrderedDict()
        self._token: int | None = None
        self._lock = asyncio.Lock()
        self.refreshes_total = 0
        self.compiles_total = 0

    # ----------------------------------------------------------------------- lookups

    def for_card(self, card_number: str) -> CompiledProgram:
        """The active program serving the card; NotFoundError (UNKNOWN_PROGRAM) when none."""
        program = self._by_prefix.get(card_number[:CARD_SERIAL_PREFIX_DIGITS])
        if program is None:
            raise NotFoundError(
                f"no active program serves card {mask_card(card_number)}", reason="UNKNOWN_PROGRAM"
            )
        return program

    def program(self, program_id: str, version: int) -> CompiledProgram:
        """A compiled version (active, or recently active); NotFoundError if not compiled here.

        ``load`` compiles any stored version on demand.
        """
        active = self._active.get(program_id)
        if active is not None and active.version == version:
            return active
        compiled = self._inactive.get((program_id, version))
        if compiled is None:
            raise NotFoundError(
                f"program file {program_id} version {version} is not compiled in this process",
                reason="UNKNOWN_PROGRAM",
            )
        self._inactive.move_to_end((program_id, version))
        return compiled

    async def load(self, program_id: str, version: int) -> CompiledProgram:
        """A compiled version, read from the catalog and compiled when not held already."""
        try:
            return self.program(program_id, version)
        except NotFoundError:
            pass
        source = await self._catalog.program_source(program_id, version)
        compiled = _compile(program_id, version, source)
        self._keep_inactive(compiled)
        return compiled

    def programs(self) -> list[CompiledProgram]:
        """The active programs, by program file id."""
        return [self._active[key] for key in sorted(self._active)]

    @property
    def token(self) -> int | None:
        """The registry token of the last refresh; None before the first."""
        return self._token

    # ----------------------------------------------------------------------- refreshing

    async def refresh(self) -> bool:
        """Load the active programs, compiling only versions not compiled yet; whether the
        set of active programs changed."""
        async with self._lock:
            # The token is read first: an activation landing between the two reads is then
            # seen by this refresh or, at the latest, by the next one.
            token = await self._catalog.registry_token()
            rows = await self._catalog.active_programs()
            changed = self._install(rows)
            self._token = token
            self.refreshes_total += 1
            return changed

    async def refresh_if_changed(self) -> bool:
        """Refresh when the catalog's registry token moved since the last refresh."""
        if self._token is not None and await self._catalog.registry_token() == self._token:
            return False
        return await self.refresh()

    async def run_refresher(
        self, interval_seconds: float = 1.0, activated: Waiter | None = None
    ) -> None:
        """``refresh_if_changed`` until cancelled: when ``activated`` is told the active
        versions changed, or every ``interval_seconds`` while it cannot be
        (processor.store.notifications).

        A failure (the database down) is logged and retried with a growing pause, and the
        programs already compiled keep serving meanwhile.
        """
        if not REFRESH_INTERVAL_SECONDS_MIN <= interval_seconds <= REFRESH_INTERVAL_SECONDS_MAX:
            raise ValueError(
                f"interval_seconds {interval_seconds} is not in "
                f"{REFRESH_INTERVAL_SECONDS_MIN}..{REFRESH_INTERVAL_SECONDS_MAX}"
            )
        pause = interval_seconds
        while True:
            await notifications.sleep(activated if pause == interval_seconds else None, pause)
            try:
                if await self.refresh_if_changed():
                    log.info("active programs now %s", self._describe())
                pause = interval_seconds
            except LoyaltyError as error:
                pause = min(pause * 2, max(REFRESH_BACKOFF_SECONDS_MAX, interval_seconds))
                log.warning("cannot refresh the programs (retry in %.1f s): %s", pause, error)
            except Exception:
                # A bug must not stop the refresher: the programs compiled keep serving.
                pause = min(pause * 2, max(REFRESH_BACKOFF_SECONDS_MAX, interval_seconds))
                log.exception("refreshing the programs failed (retry in %.1f s)", pause)

    def start_refresher(self, interval_seconds: float = 1.0) -> asyncio.Task[None]:
        """``run_refresher`` as a task of the running loop; cancel it to stop."""
        return asyncio.get_running_loop().create_task(
            self.run_refresher(interval_seconds), name="program-registry-refresher"
        )

    # ----------------------------------------------------------------------- internals

    def _install(self, rows: list[tuple[str, int, str]]) -> bool:
        active: dict[str, CompiledProgram] = {}
        for program_id, version, source in rows:
            compiled = self._compiled(program_id, version)
            if compiled is None:
                try:
                    compiled = _compile(program_id, version, source)
                except InputFileError as error:
                    # Validated when stored; a release that reads files more strictly must
                    # not stop every other program from serving.
                    log.error("active program %s v%d does not load: %s", program_id, version, error)
                    continue
                self.compiles_total += 1
            active[program_id] = compiled
        by_prefix: dict[str, CompiledProgram] = {}
        for compiled in active.values():
            prefix = compiled.card.serial_prefix
            other = by_prefix.get(prefix)
            if other is not None:  # the catalog's unique index makes this impossible
                log.error("programs %s and %s share prefix %s", other.id, compiled.id, prefix)
                continue
            by_prefix[prefix] = compiled
        before = {(p.id, p.version) for p in self._active.values()}
        for compiled in self._active.values():
            if active.get(compiled.id) is not compiled:
                self._keep_inactive(compiled)
        for compiled in active.values():
            self._inactive.pop((compiled.id, compiled.version), None)
        self._active, self._by_prefix = active, by_prefix
        return before != {(p.id, p.version) for p in active.values()}

    def _compiled(self, program_id: str, version: int) -> CompiledProgram | None:
        current = self._active.get(program_id)
        if current is not None and current.version == version:
            return current
        return self._inactive.get((program_id, version))

    def _keep_inactive(self, compiled: CompiledProgram) -> None:
        self._inactive[compiled.id, compiled.version] = compiled
        self._inactive.move_to_end((compiled.id, compiled.version))
        while len(self._inactive) > COMPILED_INACTIVE_MAX:
            self._inactive.popitem(last=False)

    def _describe(self) -> str:
        return ", ".join(f"{p.id} v{p.version}" for p in self.programs()) or "none"


def _compile(program_id: str, version: int, source: str) -> CompiledProgram:
    return compile_program(parse_stored_program(program_id, version, source))

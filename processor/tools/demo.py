"""The demo a fresh ``make run`` loads: the example program, activated, with cards to use.

``load_demo`` is idempotent: run again, it finds the program file, the active version,
the cards and the customers already there and makes only what is missing. The cards are
the first ones of the program's first generated series, and their batches are activated
so they can be used at once. PINs exist only as hashes once stored; the first cards are
given the published :data:`DEMO_PIN` so the documented examples work as written.

:func:`demo_keys` stores one API key per role with a published secret (:data:`DEMO_KEYS`),
marked as the demo's: only a server started with ``--demo`` accepts them, so a demo
database served later for real does not let them in.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from processor import calendar
from processor.cards import GeneratedCard, card_number, first_sequences
from processor.errors import LoyaltyError, NotFoundError
from processor.flow.registry import ProgramRegistry
from processor.limits import GENERATE_CARDS_MAX
from processor.program.cards import CardSeries
from processor.program.loader import parse_program_text
from processor.program.model import ProgramFile
from processor.service.roles import ROLES
from processor.store.catalog import Catalog
from processor.store.credentials import Credentials

log = logging.getLogger(__name__)

DEMO_PROGRAM_PATH: Final = "examples/programs/demo.yaml"
DEMO_CARDS_MAX: Final = 100_000
"""Most demo cards one load makes (generated 10,000 per call)."""

FIRST_CARDS_SHOWN: Final = 5

DEMO_PIN: Final = "1234"
"""The PIN of the first demo cards (FIRST_CARDS_SHOWN of them), published in the docs."""

DEMO_KEYS: Final = {
    role: f"lk_demo-{role.lower()}_demo-{role.lower()}-key-not-secret" for role in ROLES
}
"""The demo's API key of each role, published in the docs; accepted by demo servers only."""

DEMO_CUSTOMERS: Final = (
    # id, birth date, signup date, audiences
    ("DEMO-1", "1985-03-02", "2026-01-15", ("newsletter", "vip:A")),
    ("DEMO-2", "1992-07-19", "2026-02-01", ("newsletter",)),
    ("DEMO-3", "1978-11-30", "2026-02-20", ()),
)
"""Customers enrolled by the demo; the first cards are registered to them, in order."""

_ROOT: Final = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What the demo holds after loading, for ``make run`` to print."""

    program_id: str
    version: int
    series_id: str
    cards: int  # demo cards in the series
    generated: int  # of which this run generated
    first_card: str
    first_cards: tuple[str, ...]
    first_pin: str | None  # the first cards' PIN (DEMO_PIN), None without cards
    customers: tuple[str, ...]  # registered to the first cards, in order
    created: bool  # this run stored the program file


async def load_demo(
    catalog: Catalog,
    registry: ProgramRegistry,
    *,
    program_path: str | Path = DEMO_PROGRAM_PATH,
    cards: int = 2000,
) -> DemoSummary:
    """Store (or find) the demo program, activate it, make ``cards`` cards of its first
    generated series usable and enroll a few customers; what the demo now holds."""
    if not 0 <= cards <= DEMO_CARDS_MAX:
        raise ValueError(f"demo cards {cards} is not in 0..{DEMO_CARDS_MAX}")
    path = _resolve(Path(program_path))
    text = path.read_text(encoding="utf-8")
    program = parse_program_text(text, path.name)
    created = await _store(catalog, program, text, path.name)
    await catalog.activate(program.id, program.version)
    series, first = _first_generated_series(program)
    wanted = min(cards, series.total_cards or 0)
    remaining = await catalog.remaining_cards(program.id, series.id)
    present = (series.total_cards or 0) - remaining
    generated: list[GeneratedCard] = []
    while present + len(generated) < wanted:
        count = min(wanted - present - len(generated), GENERATE_CARDS_MAX)
        generated += await catalog.generate_cards(program.id, series.id, count)
    numbers = [
        card_number(program.card.serial_prefix, first + index, program.card.number_length)
        for index in range(wanted)
    ]
    await _activate_batches(catalog, program, series, wanted)
    customers = await _customers(catalog, numbers)
    await registry.refresh()
    first_pin = None
    if program.card.has_pins:
        for number in numbers[:FIRST_CARDS_SHOWN]:
            await catalog.set_pin(number, DEMO_PIN)
        first_pin = DEMO_PIN if numbers else None
    summary = DemoSummary(
        program_id=program.id,
        version=program.version,
        series_id=series.id,
        cards=max(present, wanted),
        generated=len(generated),
        first_card=numbers[0] if numbers else "",
        first_cards=tuple(numbers[:FIRST_CARDS_SHOWN]),
        first_pin=first_pin,
        customers=customers,
        created=created,
    )
    log.info(
        "demo program %s v%d active with %d cards (%d new)",
        summary.program_id,
        summary.version,
        summary.cards,
        summary.generated,
    )
    return summary


async def demo_keys(credentials: Credentials) -> dict[str, str]:
    """Store the demo's key of each role unless it is there already; the keys by role."""
    stored = {key.key_id for key in await credentials.keys()}
    for role, key in DEMO_KEYS.items():
        _, key_id, secret = key.split("_", 2)
        if key_id not in stored:
            await credentials.create_key(
                f"demo {role}", [role], key_id=key_id, secret=secret, demo=True
            )
    return dict(DEMO_KEYS)


def _resolve(path: Path) -> Path:
    """The path as given, else relative to the source checkout (``make run`` from anywhere)."""
    if path.is_absolute() or path.exists():
        return path
    return _ROOT / path


async def _store(catalog: Catalog, program: ProgramFile, text: str, file_name: str) -> bool:
    """Store the file unless this version is there already; whether it was stored."""
    try:
        await catalog.get(program.id, program.version, counts=False)
        return False
    except NotFoundError:
        pass
    try:
        await catalog.get(program.id, counts=False)
    except NotFoundError:
        await catalog.create_program(text, file_name)
    else:
        await catalog.update_program(text, file_name)
    return True


def _first_generated_series(program: ProgramFile) -> tuple[CardSeries, int]:
    for series, first in zip(program.series, first_sequences(program.series), strict=True):
        if first is not None and series.total_cards is not None:
            return series, first
    raise ValueError(f"program file {program.id} has no generated card series for the demo")


async def _activate_batches(
    catalog: Catalog, program: ProgramFile, series: CardSeries, count: int
) -> None:
    """Activate every batch holding one of the first ``count`` cards, so all can be used."""
    covered = 0
    for batch in series.batches:
        if covered >= count:
            break
        await catalog.set_batch_status(program.id, series.id, batch.name, "active")
        covered += batch.count


async def _customers(catalog: Catalog, numbers: list[str]) -> tuple[str, ...]:
    registered = []
    for (customer_id, birth, signup, audiences), number in zip(
        DEMO_CUSTOMERS, numbers, strict=False
    ):
        await catalog.enroll(
            customer_id, calendar.parse_day(birth), calendar.parse_day(signup), list(audiences)
        )
        # A card someone re-registered by hand is left as it is.
        with contextlib.suppress(LoyaltyError):
            await catalog.register_card(number, customer_id)
            registered.append(customer_id)
    return tuple(registered)

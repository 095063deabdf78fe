"""The candidate compression dictionary of the account cache: sample states of the programs.

:class:`processor.cache.accounts.AccountCache` compresses each cached state with zstd and a
dictionary shared through Redis (see "Compression" in its module docstring). What makes a
good dictionary is what the states repeat: their msgpack structure and the program, level,
rule and award ids. So the candidate is simply encoded sample states of every active
program, as :func:`processor.engine.samples.account_templates` makes them, concatenated.

The candidate is deterministic (a fixed day and a fixed random seed): every process, and
every server instance started from the same programs, offers the same bytes, hence the same
dictionary id. That is only an economy: the first dictionary stored in Redis is the one all
of them write with, whoever offers what.

The dictionary is at most 32 KB (zstd reads it as raw content; the release before, zlib,
used only its last 32 KB), and nearer matches cost fewer bits: with several programs each
gets an equal share, in program id order.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from processor import calendar
from processor.engine import samples

if TYPE_CHECKING:
    from processor.cache.accounts import AccountCache
    from processor.program.model import ProgramFile

__all__ = ["DICTIONARY_BYTES_MAX", "active_programs_dictionary", "sample_states_dictionary"]

DICTIONARY_BYTES_MAX: Final = 32 * 1024
"""The largest candidate: 32 KB, zlib's window when the release before wrote with it (a
reader of its values still needs the same bytes), and enough for zstd."""

SAMPLE_DAY: Final = calendar.to_day(datetime.date(2026, 1, 1))
"""The "today" of the samples: fixed, so that the candidate does not change with the date.
(Samples of the current day compress current states about 5 bytes better, but every restart
on a new day would then offer a new candidate, and the first one stored stays anyway.)"""

SAMPLE_SEED: Final = 1
_STATE_BYTES_MIN: Final = 40
"""Fewer bytes than any sample state: how many samples make a program's share, at most."""


def sample_states_dictionary(
    programs: Iterable[ProgramFile], size_max: int = DICTIONARY_BYTES_MAX
) -> bytes | None:
    """Encoded sample states of ``programs`` (those with a loyalty program), concatenated,
    at most ``size_max`` bytes; None when no program yields a sample."""
    from processor.store.codec import encode_state

    usable = sorted(
        (program for program in programs if program.loyalty_programs), key=lambda p: p.id
    )
    if not usable or size_max <= 0:
        return None
    share = size_max // len(usable)
    parts = []
    for program in usable:
        rng = random.Random(f"{SAMPLE_SEED}:{program.id}")
        count = max(share // _STATE_BYTES_MIN, 1)
        states = samples.account_templates(program, program.version, SAMPLE_DAY, rng, count)
        # The samples' last bytes, whole states where possible (the cut is in the first one).
        parts.append(b"".join(encode_state(state) for state in states)[-share:])
    dictionary = b"".join(parts)[-size_max:]
    return dictionary or None


async def active_programs_dictionary(database_url: str) -> bytes | None:
    """:func:`sample_states_dictionary` of the programs active in the database (for tools
    that build an :class:`~processor.cache.accounts.AccountCache` without a program registry)."""
    from processor.store.catalog import Catalog
    from processor.store.ledger import Store
    from processor.store.programs import parse_stored_program

    async with Store(database_url) as store:
        rows = await Catalog(store).active_programs()
    return sample_states_dictionary(
        parse_stored_program(program_id, version, source) for program_id, version, source in rows
    )


def open_for_programs(url: str, programs: Iterable[Any], settings: Any) -> AccountCache:
    """The account cache at ``url`` as every process opens it: its keys under the settings'
    ``cache_key_prefix`` and, with ``cache_compression``, the sample states of the active
    ``programs`` (compiled) as its candidate dictionary (the first one stored in Redis is
    the one every process writes with: processor.cache.accounts)."""
    from processor.cache.accounts import AccountCache

    dictionary = (
        sample_states_dictionary(program.source for program in programs)
        if settings.cache_compression
        else None
    )
    return AccountCache.from_url(url, key_prefix=settings.cache_key_prefix, dictionary=dictionary)

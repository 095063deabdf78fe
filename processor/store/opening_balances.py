"""The queue of card-import opening balances (``card_opening_balances``, migrations 0002 and
0010), as the opening-balances job reads and closes it.

ImportCards queues a row per card whose import line gave a balance, and SetBatchStatus one
per card its activation activated (the activation amount, else the tender program's initial
balance); the job posts each
card's balances through the engine and the ledger (processor.engine ``open_balances``) and
then marks its row with what happened, in the transaction that records the chunk. The
queue is read in card order after the run's last card, so a card the job could not take
(no active program serves it) is passed over, not read again by the same run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from processor.engine import OpeningBalances
from processor.store.catalog_base import CatalogBase

QUEUED: Final = "card_opening_balances WHERE posted_at IS NULL"
"""The rows not taken yet (what a run counts as its total, and whether a finished run of the
day is taken up again)."""

_AFTER = """
SELECT queued.card_number, queued.tender, queued.loyalty, queued.award, queued.location,
       coalesce(cards.status, 'inactive')
FROM card_opening_balances AS queued
LEFT JOIN cards USING (card_number)
WHERE queued.posted_at IS NULL AND queued.card_number > %s
ORDER BY queued.card_number LIMIT %s
"""
_MARK = """
UPDATE card_opening_balances SET posted_at = now(), outcome = marked.outcome
FROM unnest(%s::text[], %s::text[]) AS marked (card_number, outcome)
WHERE card_opening_balances.card_number = marked.card_number
  AND card_opening_balances.posted_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class Queued:
    """A queued card: its balances, and its card's status in the catalog now."""

    card: str
    balances: OpeningBalances
    card_status: str


class OpeningQueue(CatalogBase):
    """Reads of the queue, through the Store's pool."""

    async def after(self, after: str, limit: int) -> list[Queued]:
        """Up to ``limit`` queued cards after ``after``, in card order, with their balances."""
        async with self._reading("read queued opening balances") as cursor:
            await cursor.execute(_AFTER, (after, limit))
            return [
                Queued(card, OpeningBalances(tender, loyalty, award, location or ""), status)
                for card, tender, loyalty, award, location, status in await cursor.fetchall()
            ]


async def mark(cursor: psycopg.AsyncCursor[Any], outcomes: Mapping[str, str]) -> None:
    """Close the rows of ``outcomes``' cards with what happened to each."""
    if outcomes:
        await cursor.execute(_MARK, (list(outcomes), list(outcomes.values())))

"""The queue of card-import opening balances (``card_opening_balances``, migrations 0002 and
0010), as the opening-balances job reads and closes it.

ImportCards queues a row per card whose import line gave a balance; the job posts each
card's balances through the engine and the ledger (processor.engine ``open_balances``) and
then marks its row with what happened, in the transaction that records the chunk. The
queue is read in card order after the run's last card, so a card the job could not take
(no active program serves it) is passed over, not read again by the same run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import psycopg

from processor.engine import OpeningBalances
from processor.store.catalog_base import CatalogBase

QUEUED: Final = "card_opening_balances WHERE posted_at IS NULL"
"""The rows not taken yet (what a run counts as its total)."""

_AFTER = """
SELECT card_number, tender, loyalty, award FROM card_opening_balances
WHERE posted_at IS NULL AND card_number > %s
ORDER BY card_number LIMIT %s
"""
_MARK = """
UPDATE card_opening_balances SET posted_at = now(), outcome = marked.outcome
FROM unnest(%s::text[], %s::text[]) AS marked (card_number, outcome)
WHERE card_opening_balances.card_number = marked.card_number
  AND card_opening_balances.posted_at IS NULL
"""


class OpeningQueue(CatalogBase):
    """Reads of the queue, through the Store's pool."""

    async def after(self, after: str, limit: int) -> list[tuple[str, OpeningBalances]]:
        """Up to ``limit`` queued cards after ``after``, in card order, with their balances."""
        async with self._reading("read queued opening balances") as cursor:
            await cursor.execute(_AFTER, (after, limit))
            return [
                (card, OpeningBalances(tender, loyalty, award))
                for card, tender, loyalty, award in await cursor.fetchall()
            ]


async def mark(cursor: psycopg.AsyncCursor[Any], outcomes: Mapping[str, str]) -> None:
    """Close the rows of ``outcomes``' cards with what happened to each."""
    if outcomes:
        await cursor.execute(_MARK, (list(outcomes), list(outcomes.values())))

"""The catalog in PostgreSQL, as one object over one Store: ``Catalog`` joins the program files
(``processor.store.programs``), the cards made under them (``processor.store.cards``) and the
customers holding them (``processor.store.customers``) over one connection pool and one PIN
key, and offers the ledger's page view (``processor.store.ledger.ledger_page``) over the same
pool. It inherits from ``CardCatalog`` (itself a ``ProgramFiles``, since cards are made
under a program file's version) and ``Customers``, all over ``CatalogBase``, rather than
holding one object of each job and delegating to it: the jobs share one pool and plumbing
already, their methods keep their names and signatures, written once and seen by the type
checker, and a call site such as ``catalog.cards(...)`` or ``catalog.get(...)`` reads as
before, where delegation would repeat some twenty signatures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import psycopg

from processor.engine.types import Customer
from processor.errors import InternalError
from processor.limits import LOOKUP_KEYS_MAX
from processor.store import arrays
from processor.store.cards import SELECT_CARD_COLUMNS, CardCatalog, CardRecord, card_record, today
from processor.store.customers import Customers
from processor.store.ledger import LedgerRow, database_error, ledger_page

# The three reads a batch needs before it is evaluated, in one statement (one round trip,
# where three cost a send, a parse and a pooled connection each): its cards with their
# customers, and which of its request ids are already posted. The two kinds of row share
# one column list; ``kind`` tells them apart.
_LOOK_UP_BATCH: Final = f"""
SELECT 'card' AS kind, {SELECT_CARD_COLUMNS},
       u.customer_id AS customer, u.birth_day, u.signup_day, u.audiences, NULL::bytea,
       NULL::bigint
FROM cards AS c LEFT JOIN customers AS u USING (customer_id)
WHERE c.card_number = ANY(%b::text[])
UNION ALL
SELECT 'seen', t.request_id, t.account_id, NULL, NULL, NULL, t.payload_hash, NULL, NULL,
       NULL, NULL, NULL, NULL, t.response, NULL
FROM idempotency AS t
JOIN unnest(%b::text[], %b::text[]) AS k(account_id, request_id)
  ON t.account_id = k.account_id AND t.request_id = k.request_id
UNION ALL
SELECT 'state', a.account_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, a.state, a.version
FROM accounts AS a
WHERE a.account_id = ANY(%b::text[])
"""


@dataclass(frozen=True, slots=True)
class BatchLookup:
    """What a batch reads before it is evaluated (``Catalog.look_up_batch``)."""

    cards: dict[str, CardRecord]  # by card number, the cards that exist
    customers: dict[str, Customer]  # by customer id, of those cards
    # (payload hash, response) of the posted requests, by (account, request id): request
    # ids are unique per card only.
    seen: dict[tuple[str, str], tuple[bytes, bytes]]
    # (version, stored state) of the accounts asked for that exist; None when not asked.
    states: dict[str, tuple[int, bytes]] | None = None


class Catalog(CardCatalog, Customers):
    """Program files, cards and customers over the Store's connection pool and one PIN key:
    ``Catalog(store, pin_key=...)``, the PIN key read from ``LOYALTY_PIN_KEY`` when not given.
    """

    async def look_up_batch(
        self,
        numbers: Sequence[str],
        keys: Sequence[tuple[str, str]],
        *,
        states: Sequence[str] | None = None,
    ) -> BatchLookup:
        """The cards of these numbers with their customers, which (account, request id)
        keys are already posted and, given ``states``, those accounts' stored states, in
        one round trip."""
        asked = states if states is not None else ()
        for count, what in (
            (len(numbers), "cards"), (len(keys), "request ids"), (len(asked), "states")
        ):  # fmt: skip
            if count > LOOKUP_KEYS_MAX:
                raise InternalError(f"a lookup of {count} {what} is over {LOOKUP_KEYS_MAX}")
        accounts = [account for account, _ in keys]
        requests = [request for _, request in keys]
        try:
            async with self._pool.connection() as connection:
                cursor = connection.cursor(binary=True)
                await cursor.execute(
                    _LOOK_UP_BATCH,
                    (
                        arrays.text(numbers),
                        arrays.text(accounts),
                        arrays.text(requests),
                        arrays.text(asked),
                    ),
                )
                rows = await cursor.fetchall()
        except psycopg.Error as error:
            raise database_error(error, "look up a batch", self._pool.timeout) from error
        day = today()
        cards: dict[str, CardRecord] = {}
        customers: dict[str, Customer] = {}
        seen: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        read: dict[str, tuple[int, bytes]] = {}
        for row in rows:
            if row[0] == "seen":
                seen[row[2], row[1]] = (row[6], row[13])
            elif row[0] == "state":
                read[row[1]] = (row[14], row[13])
            else:
                record = card_record(row[1:9], day)
                cards[record.number] = record
                customer, birth, signup, audiences = row[9:13]
                if customer is not None:
                    customers[customer] = Customer(
                        customer, birth, signup, frozenset(audiences or ())
                    )
        return BatchLookup(cards, customers, seen, read if states is not None else None)

    async def ledger_page(
        self,
        account_id: str,
        *,
        program: str = "",
        before_sequence: int | None = None,
        page_size: int = 100,
    ) -> list[LedgerRow]:
        """The ledger's ``ledger_page`` over the catalog's pool."""
        return await ledger_page(
            self._pool,
            account_id,
            program=program,
            before_sequence=before_sequence,
            page_size=page_size,
        )

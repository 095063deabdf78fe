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

from processor.store.cards import CardCatalog
from processor.store.customers import Customers
from processor.store.ledger import LedgerRow, ledger_page


class Catalog(CardCatalog, Customers):
    """Program files, cards and customers over the Store's connection pool and one PIN key:
    ``Catalog(store, pin_key=...)``, the PIN key read from ``LOYALTY_PIN_KEY`` when not given.
    """

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

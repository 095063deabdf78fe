"""The system of record: PostgreSQL tables, their migrations and the stored encodings.

- ``codec``: compact, versioned msgpack encodings of account state, receipts and results
  (the bytes in ``accounts.state``, ``receipts.state`` and the Redis cache);
- ``migrate``: numbered SQL migrations, applied once each under an advisory lock;
- ``ledger``: ``Store``, which loads state and commits a whole batch (ledger, accounts,
  receipts, idempotency, events) in one transaction with optimistic version checks, and the
  ledger's page view;
- ``events``, ``event_log``: what a committed batch tells (level moves, awards issued), and
  the relay that numbers them in commit order for readers to follow;
- ``programs``, ``cards``, ``customers``: the catalog's program files, the cards made under
  them and the customers holding them, each a module of its own over ``catalog_base`` (the
  shared pool, transactions and advisory locks), joined by ``catalog.Catalog``.
"""

from __future__ import annotations

from processor.errors import InvalidBatchError
from processor.store.ledger import (
    AccountWrite,
    CommitBatch,
    CommitOutcome,
    IdempotencyRecord,
    LedgerEntry,
    Mismatch,
    PoolExhaustedError,
    Store,
    ledger_entries,
    ledger_month,
    state_balances,
)
from processor.store.migrate import MigrationError, migrate

__all__ = [
    "AccountWrite",
    "CommitBatch",
    "CommitOutcome",
    "IdempotencyRecord",
    "InvalidBatchError",
    "LedgerEntry",
    "MigrationError",
    "Mismatch",
    "PoolExhaustedError",
    "Store",
    "ledger_entries",
    "ledger_month",
    "migrate",
    "state_balances",
]

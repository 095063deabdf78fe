"""The cards and customers a serving process read lately, held in its memory.

Every batch needs its cards (program, status, PIN hash, expiry) and their customers
before it is evaluated; read from PostgreSQL, that is a statement of its own per batch
(``Catalog.look_up_batch``), the largest part of a small batch's work after the commit.
Cards change rarely, so each process keeps those it found, and a batch whose cards are
all held reads nothing before its evaluation: the commit finds the request ids that were
posted already (``commit_batch`` refuses them, and the pipeline answers them as replays).

What is held is what PostgreSQL said, kept current by PostgreSQL itself: every change to
a card or a customer is told on the channel ``loyalty_catalog`` when it commits (migration
0005), and ``listen`` forgets what it is told changed. Nothing is held while the process is
not listening (before the first connection, and from a lost connection until the next,
which forgets everything), so no change can go untold. Two more guards:

- a lookup that a change overtook is not kept: ``put`` takes the count of changes seen
  when the lookup began and keeps nothing if it moved since (the change may have been
  committed after the lookup read, and told before it was kept);
- a held card is read again after ``CARD_CACHE_SECONDS``, and everything is let go when
  the business day turns (a card's status is "expired" from the day after its last).

A change takes effect for batches that start after the notification arrives, as a change
committed during a batch's lookup always did for that batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from processor.engine.types import Customer
from processor.limits import CARD_CACHE_CARDS_MAX, CARD_CACHE_SECONDS
from processor.store.cards import CardRecord, today
from processor.store.notifications import CATALOG, LISTEN_RETRY_SECONDS, Notifications

log = logging.getLogger(__name__)

CHANNEL: Final = CATALOG
"""The channel migration 0005's triggers notify."""


class CardCache:
    """Cards by number with their customers, held while PostgreSQL tells their changes."""

    def __init__(
        self,
        *,
        cards_max: int = CARD_CACHE_CARDS_MAX,
        seconds: float = CARD_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        day: Callable[[], int] = today,
    ) -> None:
        if cards_max < 1:
            raise ValueError(f"cards_max {cards_max} is not positive")
        self._cards_max = cards_max
        self._seconds = seconds
        self._clock = clock
        self._day = day
        self._entries: dict[str, tuple[CardRecord, Customer | None, float]] = {}
        self._by_customer: dict[str, set[str]] = {}
        self._listening = False
        self._changes = 0
        self._held_day: int | None = None
        self.hits_total = 0  # batches given all their cards
        self.misses_total = 0  # batches that must read theirs

    @property
    def listening(self) -> bool:
        return self._listening

    def __len__(self) -> int:
        return len(self._entries)

    def changes(self) -> int:
        """A token to take before a lookup and give back to ``put``."""
        return self._changes

    def get(
        self, numbers: Sequence[str]
    ) -> tuple[dict[str, CardRecord], dict[str, Customer]] | None:
        """The cards of ``numbers`` and their customers, or None unless every one is held."""
        if not self._listening or not numbers:
            self.misses_total += 1
            return None
        day = self._day()
        if day != self._held_day:
            self._forget_all()
            self._held_day = day
            self.misses_total += 1
            return None
        now = self._clock()
        cards: dict[str, CardRecord] = {}
        customers: dict[str, Customer] = {}
        for number in numbers:
            entry = self._entries.get(number)
            if entry is None or entry[2] <= now:
                self.misses_total += 1
                return None
            cards[number] = entry[0]
            if entry[1] is not None:
                customers[entry[1].id] = entry[1]
        self.hits_total += 1
        return cards, customers

    def put(self, cards: dict[str, CardRecord], customers: dict[str, Customer], since: int) -> None:
        """Hold what a lookup that began at ``since`` (``changes()``) found, unless a change
        was told meanwhile or nothing is being listened to."""
        if not self._listening or since != self._changes or self._held_day != self._day():
            return
        until = self._clock() + self._seconds
        for number, record in cards.items():
            customer = None
            if record.customer_id:
                customer = customers.get(record.customer_id)
                if customer is None:
                    continue  # its customer row's arrival would not be told: not held
            self._forget_card(number)
            while len(self._entries) >= self._cards_max:
                self._forget_card(next(iter(self._entries)))  # the oldest held
            self._entries[number] = (record, customer, until)
            if customer is not None:
                self._by_customer.setdefault(customer.id, set()).add(number)

    def told(self, payload: str) -> None:
        """Forget what a notification on ``CHANNEL`` says changed."""
        self._changes += 1
        kind, _, key = payload.partition(":")
        if kind == "card":
            self._forget_card(key)
        elif kind == "customer":
            for number in self._by_customer.pop(key, ()):
                self._entries.pop(number, None)
        else:  # "*", or anything this release does not know: forget everything
            self._forget_all()

    def listening_started(self) -> None:
        self._forget_all()
        self._held_day = self._day()
        self._listening = True

    def listening_stopped(self) -> None:
        self._listening = False
        self._forget_all()

    def _forget_card(self, number: str) -> None:
        entry = self._entries.pop(number, None)
        if entry is not None and entry[1] is not None:
            numbers = self._by_customer.get(entry[1].id)
            if numbers is not None:
                numbers.discard(number)
                if not numbers:
                    del self._by_customer[entry[1].id]

    def _forget_all(self) -> None:
        self._changes += 1
        self._entries.clear()
        self._by_customer.clear()


async def listen(
    conninfo: str,
    cache: CardCache,
    *,
    retry_seconds: float = LISTEN_RETRY_SECONDS,
) -> None:
    """Keep ``cache`` told of every change to cards and customers, over a listening
    connection of its own, until cancelled (a server subscribes it to the process's one
    listener instead: ``subscribe``). ``cache`` holds nothing while no connection listens."""
    hub = Notifications()
    subscribe(hub, cache)
    await hub.run(conninfo, retry_seconds=retry_seconds)


def subscribe(hub: Notifications, cache: CardCache) -> None:
    """Have ``hub`` tell ``cache`` of every change to cards and customers."""
    hub.subscribe(
        CHANNEL, cache.told, started=cache.listening_started, stopped=cache.listening_stopped
    )

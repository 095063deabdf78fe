"""Engine calls in which no request id is used by two cards.

A request id is unique per card, not across cards: two tills may send the same id for two
cards. The engines key a call's receipts by request id (a return finds its sale by the
sale's id), so one call must never hold an id on two cards. ``engine_calls`` cuts a list of
requests into calls evaluated one after the other, each request in the first call after
its card's previous request (every card's requests keep their order) where its ids are
free; the common list, with no id on two cards, is one call. Receipts kept between calls
are keyed by (card, request id) (``Receipts``), and ``receipts_of`` gives a call the ones
it needs, by id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from processor.engine.types import Receipt, Request, Return, Void

Receipts = dict[tuple[str, str], Receipt]
"""Receipts by (card, request id)."""

T = TypeVar("T")


def ids_in_play(request: Request, receipts: Receipts) -> set[str]:
    """The request ids an engine call looks the request's receipts up by: its own, its
    original's, and (a void of a return) the sale the return came from."""
    ids = {request.id}
    if isinstance(request, Return | Void):
        ids.add(request.original_id)
        original = receipts.get((request.account, request.original_id))
        if original is not None and original.original_id:
            ids.add(original.original_id)
    return ids


def receipts_of(requests: Iterable[Request], receipts: Receipts) -> dict[str, Receipt]:
    """The receipts an engine call of ``requests`` needs, by request id as the engines take
    them (the call must come from ``engine_calls``)."""
    given: dict[str, Receipt] = {}
    for request in requests:
        for request_id in ids_in_play(request, receipts):
            receipt = receipts.get((request.account, request_id))
            if receipt is not None:
                given[request_id] = receipt
    return given


def engine_calls(
    items: Sequence[T], request_of: Callable[[T], Request], receipts: Receipts
) -> list[list[T]]:
    """``items`` (each holding a request: ``request_of``) as engine calls in which no
    request id is used by two cards, in the order they must be evaluated."""
    owners: dict[str, str] = {}
    shared = False
    for item in items:
        request = request_of(item)
        for request_id in ids_in_play(request, receipts):
            if owners.setdefault(request_id, request.account) != request.account:
                shared = True
    if not shared:
        return [list(items)]
    calls: list[list[T]] = []
    used: list[dict[str, str]] = []  # per call: request id -> the card using it
    last: dict[str, int] = {}  # card -> the call of its latest request
    for item in items:
        request = request_of(item)
        cards = [request.account]
        target = getattr(request, "target_account", "")
        if target:
            cards.append(target)
        ids = ids_in_play(request, receipts)
        index = max(last.get(card, 0) for card in cards)
        while index < len(calls) and any(
            used[index].get(request_id, request.account) != request.account for request_id in ids
        ):
            index += 1
        if index == len(calls):
            calls.append([])
            used.append({})
        calls[index].append(item)
        used[index].update((request_id, request.account) for request_id in ids)
        for card in cards:
            last[card] = index
    return calls


def keyed(receipts: Iterable[Receipt]) -> Receipts:
    """Receipts by (card, request id)."""
    return {(receipt.account, receipt.id): receipt for receipt in receipts}

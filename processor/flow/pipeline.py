"""The path of one batch: admission, evaluation, commit, cache refresh, answers.

Every request reaches this module through the batcher (processor.flow.batcher). A batch
reads what it needs from PostgreSQL before evaluation in one statement (its cards, their
customers, its request ids already posted and its accounts' stored states:
``Catalog.look_up_batch``), unless all its cards are held in memory (processor.store.
card_cache): then it reads only the cache, and its posted ids are found by the commit
instead. Then:

1. **Replays.** Request ids already posted on their card are answered with the stored
   answer (``replayed``), and nothing is evaluated for them; the same id with another
   payload is refused (IDEMPOTENCY_MISMATCH). Everything is keyed by (card, request id).
   Found by the commit (the batch was not looked up, or another batch posted the id
   meanwhile), they are answered so then, and the rest of the batch is committed without
   them.
2. **Admission.** The card must exist and belong to an active program; a PIN, when given,
   must verify (PIN_INVALID, code 2001), and then counts as verified for the engine. Every
   PIN tried is counted in PostgreSQL, one statement for the batch: wrong ones in a row
   lock the card's PIN at ``pin_attempts_max`` (PIN_LOCKED, code 2004), a right one
   clears the count.
3. **State.** A batch that was looked up has its states from the lookup's statement (one
   round trip for all its reads); a batch of held cards from Redis when it has them, from
   PostgreSQL otherwise; receipts of the originals of returns and voids from PostgreSQL.
4. **Evaluation.** One engine call per program for the whole batch; same-account
   requests are applied in arrival order. Request ids are unique per card only, and the
   engines key a call's receipts by request id: when two cards of a batch use one id, the
   batch is cut into calls evaluated one after the other (processor.engine.calls).
5. **Commit.** One PostgreSQL transaction: ledger rows, new account versions (optimistic
   concurrency against the versions read), receipts and idempotency rows. A version
   conflict (another process got there first) commits nothing: the batch is evaluated
   again on fresh state, up to ``conflict_retries_max`` times, after a random pause that
   doubles with each conflict (full jitter), so that two processes racing for one card
   stop colliding in lockstep.
6. **Cache, then answers.** Redis is refreshed with the committed states, and only then
   is any client answered.

Dry runs are evaluated on the same state but each on its own, and nothing of them is
written or remembered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from processor.engine import (
    CompiledProgram,
    Engine,
    Receipts,
    engine_calls,
    keyed,
    receipts_of,
)
from processor.engine.types import (
    AccountState,
    Request,
    Result,
    Return,
    Void,
)
from processor.errors import (
    AuthenticationError,
    InvalidFieldError,
    LoyaltyError,
    NotFoundError,
    UnavailableError,
    mask_card,
    present,
)
from processor.flow.batcher import Batcher, Item
from processor.runtime import metrics
from processor.store import codec
from processor.store.card_cache import CardCache
from processor.store.catalog import BatchLookup
from processor.store.events import events_of
from processor.store.ledger import (
    AccountWrite,
    CommitBatch,
    IdempotencyRecord,
    Store,
    ledger_entries,
)
from processor.wire import admission
from processor.wire.answers import written_by_engine

log = logging.getLogger(__name__)

CONFLICT_RETRIES_MAX = 8
"""Re-evaluations of a batch whose accounts another process changed meanwhile."""

CONFLICT_BACKOFF_SECONDS = 0.002
"""Longest pause before the first re-evaluation; it doubles with each further conflict."""

CONFLICT_BACKOFF_SECONDS_MAX = 0.1
"""Longest pause before any re-evaluation: eight conflicts wait under half a second."""


def conflict_pause(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th conflict (from 0): full jitter, capped."""
    ceiling = min(CONFLICT_BACKOFF_SECONDS_MAX, CONFLICT_BACKOFF_SECONDS * 2**attempt)
    return random.uniform(0, ceiling)


# Submission and Answer are made for every transaction and never changed after: plain
# slotted dataclasses, since a frozen one's __init__ sets each field through
# object.__setattr__, about six times the cost (BENCHMARKS.md, "Frozen records").
@dataclass(slots=True)
class Submission:
    """One request as the services hand it over."""

    request: Request
    payload_hash: bytes  # identifies the request's content, for replay checks
    pin: str | None = None
    dry_run: bool = False
    # The call a request came in with, when it brought several (PostTransactions) and its
    # place there: a call is posted whole or not at all.
    call: object | None = None
    index: int = 0


@dataclass(slots=True)
class Answer:
    """What a service sends back: the result and the program that produced it."""

    result: Result | None
    program: CompiledProgram | None
    replayed: bool = False
    # The contract's Result as bytes, built once for the answer and for replays; a replay
    # has only these (and result None). When the engine wrote them itself, ``result`` has
    # no trace: the trace is in these bytes only (answers.written_by_engine).
    response: bytes = b""


Work = Item[Submission, Answer]
"""A request in a batch: its submission, and the future its answer goes to."""
SubmissionBatcher = Batcher[Submission, Answer]
"""The batcher in front of the pipeline."""


class Encoder(Protocol):
    """Turns a result into the contract's Result as bytes: the answer, and what is stored
    for replays."""

    def __call__(self, result: Result, program: CompiledProgram) -> bytes: ...


class Cards(Protocol):
    async def look_up_batch(
        self,
        numbers: Sequence[str],
        keys: Sequence[tuple[str, str]],
        *,
        states: Sequence[str] | None = None,
    ) -> BatchLookup: ...

    async def cards(self, numbers: Sequence[str]) -> dict[str, Any]: ...

    def verify_pin(self, record: Any, pin: str) -> bool: ...

    async def pin_attempts(self, attempts: Sequence[tuple[Any, str]]) -> list[str]: ...

    async def customers(self, ids: Sequence[str]) -> dict[str, Any]: ...


class Programs(Protocol):
    def for_card(self, card_number: str) -> CompiledProgram: ...


class Cache(Protocol):
    async def get_many(self, account_ids: Iterable[str]) -> dict[str, tuple[int, bytes]]: ...

    async def put_many(self, entries: dict[str, tuple[int, bytes]]) -> int: ...

    async def invalidate(self, account_ids: Iterable[str]) -> int: ...


def submission_keys(submission: Submission) -> tuple[str, ...]:
    """The accounts a submission touches: the batcher never runs two batches at once that
    share one, which keeps each account's requests in order and the commits conflict-free."""
    request = submission.request
    target = getattr(request, "target_account", "")
    return (request.account, target) if target else (request.account,)


def payload_hash(message: Any) -> bytes:
    """A stable hash of a request message's content (dry_run and pin left out)."""
    return payload_digest(message.SerializeToString(deterministic=True))


def payload_digest(data: bytes) -> bytes:
    """The payload hash of a request message's deterministic bytes."""
    return hashlib.blake2b(data, digest_size=16).digest()


class Pipeline:
    """Processes batches; ``process`` is the batcher's callback."""

    def __init__(
        self,
        *,
        store: Store,
        cache: Cache | None,
        programs: Programs,
        cards: Cards,
        engine: Engine,
        encode: Encoder,
        conflict_retries_max: int = CONFLICT_RETRIES_MAX,
        card_cache: CardCache | None = None,
        events_points_issued: bool = False,
    ) -> None:
        self.store = store
        # Whether each transaction's earned points are an event too (one row per earning
        # transaction in its commit), not only its level moves and awards.
        self.events_points_issued = events_points_issued
        self.card_cache = card_cache
        self.cache = cache
        self.programs = programs
        self.cards = cards
        self.engine = engine
        self.encode = encode
        self.conflict_retries_max = conflict_retries_max
        self.conflicts_total = 0
        self.cache_hits_total = 0
        self.cache_misses_total = 0

    async def process(self, items: list[Work]) -> None:
        """Answer every item of a batch, with a result or an error."""
        try:
            lookup, cached = await self._look_up(items)
            live = self._answer_replays(items, lookup.seen)
            known = self._admit_cards(live, lookup.cards)
            # Only PINs given to a request that could be served count against its card.
            pins = await self._pin_attempts([item for item, _ in known], lookup.cards)
            admitted = _whole_calls(items, self._admit(known, pins))
            await self._evaluate_and_commit(admitted, lookup.cards, lookup.customers, cached)
        except LoyaltyError as error:
            _fail(items, error)
        except Exception as error:
            log.exception("unexpected failure processing a batch of %d", len(items))
            _fail(items, error)

    async def _look_up(self, items: list[Work]) -> tuple[BatchLookup, CacheRead]:
        """The batch's cards, their customers and its posted request ids, with what the
        account cache holds of its accounts. Cards all held in memory (processor.store.
        card_cache) are not read again, nor are most posted ids: the commit refuses those,
        and they are answered as replays then (``_evaluate_and_commit``). Only requests
        carrying a PIN are looked up still (beside the cache read): a replay is answered
        as stored before its PIN is checked, and the commit comes after the check."""
        accounts = _accounts_of(item.payload.request for item in items)
        numbers = sorted(accounts)
        held = self.card_cache.get(numbers) if self.card_cache is not None else None
        if held is not None:
            pinned = [item for item in items if item.payload.pin is not None]
            if not pinned:  # the common case: one read, and no task to run it beside nothing
                return BatchLookup(held[0], held[1], {}), await self._cached(accounts)
            seen, cached = await asyncio.gather(self._seen(pinned), self._cached(accounts))
            return BatchLookup(held[0], held[1], seen), cached
        since = self.card_cache.changes() if self.card_cache is not None else 0
        # PostgreSQL is read anyway: the accounts' stored states come in the same
        # statement, and the cache is not asked (one round trip for the batch's reads, not
        # two beside each other; BENCHMARKS.md). Replays and refusals just go unused.
        lookup = await self.cards.look_up_batch(numbers, _replay_keys(items), states=numbers)
        if self.card_cache is not None:
            self.card_cache.put(lookup.cards, lookup.customers, since)
        return lookup, CacheRead(frozenset(numbers), lookup.states or {}, stored=True)

    # ----------------------------------------------------------------- replays

    async def _seen(self, items: list[Work]) -> dict[tuple[str, str], tuple[bytes, bytes]]:
        keys = _replay_keys(items)
        return await self.store.seen(keys) if keys else {}

    def _answer_replays(
        self, items: list[Work], seen: dict[tuple[str, str], tuple[bytes, bytes]]
    ) -> list[Work]:
        live: list[Work] = []
        first: dict[tuple[str, str], Work] = {}
        for item in items:
            submission: Submission = item.payload
            request = submission.request
            key = (request.account, request.id)
            stored = None if submission.dry_run else seen.get(key)
            if stored is not None:
                stored_hash, response = stored
                if stored_hash != submission.payload_hash:
                    _settle(item, error=_mismatch(request))
                else:
                    _settle(item, Answer(None, None, replayed=True, response=response))
                continue
            if not submission.dry_run and key in first:
                # The same id twice in one batch: the second waits for the first's answer.
                first[key].future.add_done_callback(_echo(item, submission, first[key]))
                continue
            if not submission.dry_run:
                first[key] = item
            live.append(item)
        return live

    # ----------------------------------------------------------------- admission

    async def _pin_attempts(self, items: list[Work], records: dict[str, Any]) -> dict[int, str]:
        """The outcome of each PIN ``items`` (admitted to their cards) carry ("ok",
        "invalid", "locked"), by ``id(item)``, counted in one statement."""
        tried: list[tuple[Work, Any, str]] = [
            (item, records[item.payload.request.account], item.payload.pin)
            for item in items
            if item.payload.pin is not None and item.payload.request.account in records
        ]
        if not tried:
            return {}
        outcomes = await self.cards.pin_attempts([(record, pin) for _, record, pin in tried])
        return {id(item): outcome for (item, _, _), outcome in zip(tried, outcomes, strict=True)}

    def _admit_cards(
        self, items: list[Work], records: dict[str, Any]
    ) -> list[tuple[Work, CompiledProgram]]:
        """The items whose cards (and target cards) exist under one active program, each
        with that program; the others are answered with why not."""
        known = []
        for item in items:
            try:
                known.append((item, self._admit_one(item.payload, records)))
            except LoyaltyError as error:
                _settle(item, error=error)
        return known

    def _admit(
        self, known: list[tuple[Work, CompiledProgram]], pins: dict[int, str]
    ) -> list[tuple[Work, CompiledProgram]]:
        """``known`` (``_admit_cards``) with their currency resolved and their PINs'
        outcomes applied (``pins``: ``_pin_attempts``)."""
        admitted = []
        for item, program in known:
            submission: Submission = item.payload
            resolved = admission.resolve_currency(submission.request, program)
            if resolved is not submission.request:
                submission = dataclasses.replace(submission, request=resolved)
                item.payload = submission
            if submission.pin is not None:
                outcome = pins.get(id(item))
                if outcome != "ok":
                    _settle(item, error=_pin_refused(outcome))
                    continue
                item.payload = dataclasses.replace(
                    submission,
                    request=dataclasses.replace(submission.request, pin_verified=True),
                )
            admitted.append((item, program))
        return admitted

    def _admit_one(self, submission: Submission, records: dict[str, Any]) -> CompiledProgram:
        request = submission.request
        if request.account not in records:
            raise NotFoundError(f"no card {mask_card(request.account)}", reason="UNKNOWN_CARD")
        target = getattr(request, "target_account", "")
        if target and target not in records:
            raise NotFoundError(f"no card {mask_card(target)}", reason="UNKNOWN_CARD")
        program = self.programs.for_card(request.account)
        if target and self.programs.for_card(target) is not program:
            raise InvalidFieldError("target_account", "the cards belong to different programs")
        return program

    # ----------------------------------------------------------------- evaluation and commit

    async def _evaluate_and_commit(
        self,
        admitted: list[tuple[Work, CompiledProgram]],
        records: dict[str, Any],
        customers: dict[str, Any],
        cached: CacheRead,
    ) -> None:
        pending = [pair for pair in admitted if not pair[0].payload.dry_run]
        dry = [pair for pair in admitted if pair[0].payload.dry_run]
        fresh = False  # read PostgreSQL, not the cache: after a conflict or damage
        for attempt in range(self.conflict_retries_max + 1):
            if not pending and not dry:
                return
            requests = [item.payload.request for item, _ in pending + dry]
            accounts = _accounts_of(requests)
            customer_ids = sorted({r.customer_id for r in records.values() if r.customer_id})
            # The batch's lookup gave the customers; a conflict may have been a change of
            # theirs, so an attempt after one reads them again.
            reading_customers = bool(customer_ids and fresh)
            if not reading_customers and not any(isinstance(r, Return | Void) for r in requests):
                # Purchases and engagements on known customers: the states are the only
                # read, so no tasks are made to run it beside reads that do nothing.
                states, receipts = await self.load_states(accounts, fresh=fresh, read=cached), {}
            else:
                states, receipts, customers = await asyncio.gather(
                    self.load_states(accounts, fresh=fresh, read=cached),
                    self._load_receipts(requests),
                    self.cards.customers(customer_ids) if reading_customers else _given(customers),
                )
            _apply_card_records(states, records, customers)
            try:
                self._answer_dry_runs(dry, states, receipts)
                dry = []
                if not pending:
                    return
                evaluated = self._evaluate(pending, states, receipts)
            except codec.CodecError:
                if fresh or self.cache is None or cached.stored:
                    raise  # read from PostgreSQL already: reading it again would not help
                # A cached state damaged inside a loyalty account, found only now that the
                # engine reads it (codec.DeferredState): read PostgreSQL instead, as for a
                # cached state that does not decode at all.
                log.warning("a cached account state could not be decoded; reading PostgreSQL")
                await self.cache.invalidate(accounts)
                fresh = True
                continue
            committing = time.perf_counter()
            try:
                outcome = await self.store.commit(evaluated.batch)
            finally:
                metrics.COMMIT.observe(time.perf_counter() - committing)
            if outcome.committed:
                # The cache holds the new states before anyone hears of them.
                await self._refresh_cache(outcome.versions, outcome.encoded)
                for item, answer in evaluated.answers:
                    _settle(item, answer)
                _record(evaluated)
                return
            if outcome.replayed:
                # These ids were posted already (by an earlier call, when the batch's cards
                # were held in memory and not looked up, or by another batch meanwhile):
                # answer those as replays, and commit the rest.
                pending = await self._settle_replayed(pending)
                if not outcome.conflicts:
                    continue  # nothing raced these accounts: no pause, no conflict, same states
            fresh = True
            self.conflicts_total += 1
            metrics.CONCURRENCY_RETRIES.inc()
            if self.cache is not None:
                await self.cache.invalidate(outcome.conflicts)
            if attempt < self.conflict_retries_max:
                await asyncio.sleep(conflict_pause(attempt))
        _fail(
            [item for item, _ in pending],
            UnavailableError(
                "the accounts kept changing under this batch; retry", reason="CONCURRENT_UPDATE"
            ),
        )

    async def _settle_replayed(
        self, pending: list[tuple[Work, CompiledProgram]]
    ) -> list[tuple[Work, CompiledProgram]]:
        items = [item for item, _ in pending]
        live = self._answer_replays(items, await self._seen(items))
        keep = {id(item) for item in live}
        # A call one of whose requests was refused now (another payload under a posted
        # id) posts nothing.
        return _whole_calls(items, [pair for pair in pending if id(pair[0]) in keep])

    async def _cached(self, accounts: list[str]) -> CacheRead:
        """What the cache holds of ``accounts`` (nothing without a cache)."""
        if self.cache is None:
            return CacheRead(frozenset(), {})
        return CacheRead(frozenset(accounts), await self.cache.get_many(accounts))

    async def load_states(
        self, accounts: list[str], *, fresh: bool, read: CacheRead | None = None
    ) -> dict[str, tuple[int, AccountState]]:
        """The states of ``accounts``: from the cache (from ``read`` when it asked for all of
        them already), else from PostgreSQL; ``fresh`` reads PostgreSQL only (after a
        conflict). Their loyalty accounts are decoded only when read (codec.
        DeferredState): the compiled engine packs them from their stored fields."""
        if read is not None and read.stored and not fresh and read.asked.issuperset(accounts):
            # Read from PostgreSQL with the batch's lookup: what it did not find is new.
            stored: dict[str, tuple[int, AccountState]] = {}
            for account in accounts:
                entry = read.entries.get(account)
                if entry is None:
                    stored[account] = (0, AccountState(account))
                else:
                    stored[account] = (entry[0], codec.decode_state_deferred(entry[1], account))
            return stored
        states: dict[str, tuple[int, AccountState]] = {}
        if self.cache is not None and not fresh:
            if read is not None and read.asked.issuperset(accounts):
                cached = {one: read.entries[one] for one in accounts if one in read.entries}
            else:
                cached = await self.cache.get_many(accounts)
            undecodable = []
            for account, (version, blob) in cached.items():
                try:
                    states[account] = (version, codec.decode_state_deferred(blob, account))
                except codec.CodecError:
                    undecodable.append(account)
            if undecodable:
                # The cache is an accelerator: a state it cannot give back (written by a
                # newer release, or damaged) is read from PostgreSQL and written over.
                log.warning("%d cached account states could not be decoded", len(undecodable))
                await self.cache.invalidate(undecodable)
        self.cache_hits_total += len(states)
        missing = [account for account in accounts if account not in states]
        self.cache_misses_total += len(missing)
        found = await self.store.load_encoded(missing) if missing else {}
        for account in missing:
            if account in found:
                version, blob = found[account]
                states[account] = (version, codec.decode_state_deferred(blob, account))
            else:
                states[account] = (0, AccountState(account))
        return {account: states[account] for account in accounts}

    async def _load_receipts(self, requests: list[Request]) -> Receipts:
        keys = [
            (request.account, request.original_id)
            for request in requests
            if isinstance(request, Return | Void)
        ]
        receipts = await self.store.load_receipts(keys) if keys else {}
        # A void of a return also needs the purchase the return came from.
        second = [
            (receipt.account, receipt.original_id)
            for receipt in receipts.values()
            if receipt.original_id and (receipt.account, receipt.original_id) not in receipts
        ]
        if second:
            receipts.update(await self.store.load_receipts(second))
        return receipts

    def _answer_dry_runs(
        self,
        dry: list[tuple[Work, CompiledProgram]],
        states: dict[str, tuple[int, AccountState]],
        receipts: Receipts,
    ) -> None:
        plain = {account: state for account, (_, state) in states.items()}
        for item, program in dry:
            request = item.payload.request
            given = receipts_of([request], receipts)
            outcome = self.engine.evaluate(program, plain, [request], given)
            _settle(item, Answer(outcome.results[0], program))

    def _evaluate(
        self,
        pending: list[tuple[Work, CompiledProgram]],
        states: dict[str, tuple[int, AccountState]],
        receipts: Receipts,
    ) -> _Evaluated:
        by_program: dict[int, list[tuple[Work, CompiledProgram]]] = defaultdict(list)
        for pair in pending:
            by_program[id(pair[1])].append(pair)
        plain = {account: state for account, (_, state) in states.items()}
        batch = CommitBatch()
        answers: list[tuple[Work, Answer]] = []
        changed = _Changed()
        engine_seconds = 0.0
        points_events = self.events_points_issued
        known = dict(receipts)  # grows with the receipts each engine call writes
        calls = [
            call
            for group in by_program.values()
            for call in engine_calls(group, _request_of, known)
        ]
        for group in calls:
            program = group[0][1]
            requests = [item.payload.request for item, _ in group]
            given = receipts_of(requests, known)
            started = time.perf_counter()
            outcome = self.engine.evaluate(program, plain, requests, given)
            engine_seconds += time.perf_counter() - started
            results = outcome.results
            # Most answers the compiled engine writes itself, from its rows; the rest are
            # written here from their results.
            written = written_by_engine(results, program)
            for index, ((item, _), ready) in enumerate(zip(group, written, strict=True)):
                if ready is None:
                    result = results[index]
                    response = self.encode(result, program)
                else:
                    result, response = ready
                answers.append((item, Answer(result, program, response=response)))
                batch.postings.extend(ledger_entries(result))
                if result.moves or result.awards or points_events:
                    batch.events.extend(
                        events_of(result, item.payload.request.day, points=points_events)
                    )
                batch.idempotency.append(
                    IdempotencyRecord(
                        result.account, result.id, item.payload.payload_hash, response
                    )
                )
            changed.add(outcome.accounts)
            if len(calls) > 1:
                # The next call starts from these states (a rare batch: see engine_calls).
                plain.update((account, outcome.accounts[account]) for account in outcome.accounts)
            stored = codec.stored_receipts(outcome.receipts)
            batch.stored_receipts.extend(stored)
            if len(calls) > 1:
                known.update(keyed(outcome.receipts[key] for key in outcome.receipts))
        batch.accounts.extend(changed.write(account, states[account][0]) for account in changed)
        metrics.ENGINE.observe(engine_seconds)
        return _Evaluated(batch, answers, changed)

    async def _refresh_cache(self, versions: Any, encoded: Any) -> None:
        if self.cache is None or not versions:
            return
        await self.cache.put_many(
            {account: (versions[account], encoded[account]) for account in versions}
        )


@dataclass(frozen=True, slots=True)
class CacheRead:
    """The cache's entries (version, state bytes) of the accounts ``asked`` for; those it
    did not hold are absent from ``entries``. ``stored``: read from PostgreSQL instead (with
    the batch's lookup), where an account absent does not exist yet."""

    asked: frozenset[str]
    entries: dict[str, tuple[int, bytes]]
    stored: bool = False


class _Changed:
    """The accounts a batch changed, each with the engine outcome's ``accounts`` that holds
    its newest state. The compiled engine's (processor._engine.LazyAccounts) writes a
    card's stored fields and reads its levels from its arrays, so a card it evaluated is
    never made into objects on the way to the commit; the reference engine's is a dict."""

    def __init__(self) -> None:
        self._holder: dict[str, Mapping[str, AccountState]] = {}

    def add(self, accounts: Mapping[str, AccountState]) -> None:
        for account in accounts:
            self._holder[account] = accounts

    def __iter__(self) -> Iterator[str]:
        return iter(self._holder)

    def write(self, account: str, expected_version: int) -> AccountWrite:
        accounts = self._holder[account]
        if not hasattr(accounts, "stored_bytes"):
            return AccountWrite(accounts[account], expected_version)
        encode = functools.partial(codec.encode_evaluated, accounts, account)
        return AccountWrite.of_encoder(account, encode, expected_version)

    # metrics.Holdings, for the business metrics of the committed batch

    def level(self, account: str, program: str) -> str:
        accounts = self._holder.get(account)
        if accounts is None:
            return ""
        level = getattr(accounts, "level", None)  # the compiled engine's, from its arrays
        if level is None:
            held = accounts[account].loyalty.get(program)
            return "" if held is None else str(held.level)
        return str(level(account, program))

    def state(self, account: str) -> AccountState | None:
        accounts = self._holder.get(account)
        return None if accounts is None else accounts[account]


@dataclass(slots=True)
class _Evaluated:
    batch: CommitBatch
    answers: list[tuple[Work, Answer]]
    changed: _Changed


def _pin_refused(outcome: str | None) -> LoyaltyError:
    if outcome == "locked":
        return AuthenticationError(
            "the card's PIN is locked after too many wrong PINs; ask Support to unlock it",
            reason="PIN_LOCKED",
        )
    return AuthenticationError("the PIN does not match", reason="PIN_INVALID")


def _record(evaluated: _Evaluated) -> None:
    """Count a committed batch's results (never a replay's, never a rolled-back attempt's)."""
    try:
        metrics.record_results(
            [(answer.result, answer.program) for _, answer in evaluated.answers],
            evaluated.changed,
        )
    except Exception:  # metrics must never fail a committed batch
        log.exception("recording the metrics of a committed batch failed")


def _apply_card_records(
    states: dict[str, tuple[int, AccountState]],
    records: dict[str, Any],
    customers: dict[str, Any],
) -> None:
    """The card's status and customer are the catalog's, whatever the state last held."""
    for account, (_, state) in states.items():
        record = records.get(account)
        if record is None:
            continue
        state.status = record.status if record.status in ("active", "expired") else "inactive"
        state.customer = customers.get(record.customer_id) if record.customer_id else None


async def _given(value: dict[str, Any]) -> dict[str, Any]:
    return value


def _request_of(pair: tuple[Work, CompiledProgram]) -> Request:
    return pair[0].payload.request


def _replay_keys(items: Iterable[Work]) -> list[tuple[str, str]]:
    """(account, request id) of every request a replay check looks up (not dry runs)."""
    return [
        (item.payload.request.account, item.payload.request.id)
        for item in items
        if not item.payload.dry_run
    ]


def _accounts_of(requests: Iterable[Request]) -> list[str]:
    accounts: dict[str, None] = {}
    for request in requests:
        accounts[request.account] = None
        target = getattr(request, "target_account", "")
        if target:
            accounts[target] = None
    return list(accounts)


def _mismatch(request: Request) -> InvalidFieldError:
    return InvalidFieldError(
        "context.request_id",
        f"{request.id!r} was already posted on this card with a different payload",
        reason="IDEMPOTENCY_MISMATCH",
    )


def _echo(item: Work, submission: Submission, first: Work) -> Any:
    def copy_answer(done: Any) -> None:
        if item.future.done():
            return
        if done.cancelled():
            item.future.cancel()
        elif done.exception() is not None:
            item.future.set_exception(done.exception())
        else:
            first_submission: Submission = first.payload
            if first_submission.payload_hash != submission.payload_hash:
                item.future.set_exception(_mismatch(submission.request))
            else:
                answer: Answer = done.result()
                item.future.set_result(dataclasses.replace(answer, replayed=True))

    return copy_answer


def _settle(item: Work, answer: Answer | None = None, error: BaseException | None = None) -> None:
    if item.future.done():
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(present(answer, "the answer of a settled request"))


def _fail(items: Iterable[Work], error: BaseException) -> None:
    for item in items:
        _settle(item, error=error)


def _whole_calls(
    items: list[Work], admitted: list[tuple[Work, CompiledProgram]]
) -> list[tuple[Work, CompiledProgram]]:
    """``admitted`` less the requests of calls one of whose requests failed already (a
    replay under another payload, an unknown card, a wrong PIN): those are answered with
    that failure, carrying the failing request's index, and nothing of their call is
    posted. The batcher puts a call's requests into one batch, so its commit is one."""
    failed: dict[object, BaseException] = {}
    for item in items:
        call = item.payload.call
        if call is None or call in failed or not item.future.done():
            continue
        if item.future.cancelled() or item.future.exception() is None:
            continue
        error = item.future.exception()
        if error is not None:
            if getattr(error, "metadata", None) is None:
                error.metadata = {"index": str(item.payload.index)}  # type: ignore[attr-defined]
            failed[call] = error
    if not failed:
        return admitted
    kept = []
    for item, program in admitted:
        error = failed.get(item.payload.call)
        if error is None:
            kept.append((item, program))
        else:
            _settle(item, error=error)
    return kept

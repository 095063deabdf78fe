"""TransactionService end to end, in-process: a real grpc.aio server over PostgreSQL and Redis.

The demo program (examples/programs/demo.yaml) is loaded into the test's own schema with
50 cards and served by :func:`processor.service.server.start` (fixture ``served``). Every test reads
what a client sees (answers, statuses, ErrorInfo reasons) and what the system of record
holds (``Store.ledger_sums``): exact points for the demo rules, exactly-once posting
(replays, mismatched replays, dry runs), ordering across the three posting RPCs, returns,
admission errors that change nothing, PIN checks, a hot account under 50 concurrent
streams, and RESOURCE_EXHAUSTED from a full queue.

Purchases default to a Tuesday morning at store S002 (an outlet, not a "visit" store), on
cards the demo registered to no customer, so only the rules named in each test fire.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc  # type: ignore[import-untyped]
import psycopg
import pytest
from plugins.server import Served, StartServed, context, line, purchase, transaction

from processor import proto
from processor.cli import main
from processor.errors import NotFoundError
from processor.flow.pipeline import Pipeline
from processor.service import errors

pytestmark = pytest.mark.integration

common = proto.common
transactions = proto.transactions
admin = proto.admin

APPROVED = common.RESULT_STATUS_APPROVED
POINTS = "points:points"
ESCROW = "escrow:points"  # gold escrows its stars for 14 days


def points_of(result: Any) -> int:
    """The points a result posted (every posting on the demo's points balance)."""
    return sum(p.amount for p in result.postings if p.balance_name == POINTS)


def by_rule(result: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for posting in result.postings:
        totals[posting.rule] = totals.get(posting.rule, 0) + posting.amount
    return totals


async def fails(call: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert (failure.value.code(), errors.reason_of(failure.value)) == (code, reason), (
        failure.value.details()
    )
    return failure.value


async def ledger_points(served: Served, card: str) -> int:
    return (await served.store.ledger_sums(card)).get((card, "points", "points"), 0)


# --------------------------------------------------------------------------- one purchase


async def test_a_purchase_earns_the_demo_rules_exact_points_and_posts_them(
    served: Served, cards: list[str]
) -> None:
    card = cards[10]
    # At S001 (a mall in the "visit" list) on Tuesday 2026-03-03, a silver card:
    #   base   "one star per dollar"      $80.00 shoes + $45.00 jacket = 125 stars
    #   shoes  3 stars per pair (northwind brand, SHOES hierarchy) x 2 = 6 stars
    #   visit  daily visit at S001/S003                                = 5 stars
    # gold/platinum bonuses: not silver; weekend: a Tuesday; cobrand: a visa tender;
    # birthday/vip: no customer registered; coupon-5 needs 500.         total 136
    request = purchase(
        card,
        "buy-1",
        "2026-03-03T10:00:00",
        [
            line(
                1,
                8000,
                item="SHOE-TR-42",
                quantity=2,
                hierarchy=["SHOES"],
                attributes={"brand": "northwind"},
            ),
            line(2, 4500, item="JACKET-1", hierarchy=["OUTERWEAR"]),
        ],
        location="S001",
        tenders=[common.TenderLine(type="visa", amount=12500)],
    )
    result = (await served.transactions.PostTransaction(request, timeout=10)).result

    assert (result.status, result.request_id, result.account, result.replayed) == (
        APPROVED,
        "buy-1",
        card,
        False,
    )
    assert by_rule(result) == {"base": 125, "shoes": 6, "visit": 5}
    assert {p.program_version for p in result.postings} == {1}
    assert (result.balances[POINTS], result.balance_exponents[POINTS]) == (136, 0)
    assert await served.store.ledger_sums(card) == {(card, "points", "points"): 136}
    # ListLedger shows the same rows, with the request id that wrote them.
    page = await served.admin.ListLedger(admin.ListLedgerRequest(account=card), timeout=10)
    assert sorted((e.request_id, e.posting.rule, e.posting.amount) for e in page.entries) == [
        ("buy-1", "base", 125),
        ("buy-1", "shoes", 6),
        ("buy-1", "visit", 5),
    ]


async def test_a_replayed_id_returns_the_original_answer_and_posts_nothing(
    served: Served, cards: list[str]
) -> None:
    card = cards[11]
    request = purchase(card, "once-1", lines=[line(1, 12000)])  # $120.00 at S002: 120 stars
    first = (await served.transactions.PostTransaction(request, timeout=10)).result
    second = (await served.transactions.PostTransaction(request, timeout=10)).result

    assert (first.replayed, second.replayed) == (False, True)
    second.replayed = False
    assert second == first
    assert points_of(first) == 120
    assert await ledger_points(served, card) == 120
    page = await served.admin.ListLedger(admin.ListLedgerRequest(account=card), timeout=10)
    assert [e.request_id for e in page.entries] == ["once-1"]


async def test_the_same_id_with_another_payload_is_refused(
    served: Served, cards: list[str]
) -> None:
    card = cards[12]
    await served.transactions.PostTransaction(purchase(card, "dup-1", lines=[line(1, 1000)]))
    failure = await fails(
        served.transactions.PostTransaction(purchase(card, "dup-1", lines=[line(1, 2000)])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "IDEMPOTENCY_MISMATCH",
    )
    info = errors.error_info_of(failure)
    assert info is not None and info.metadata["field"] == "context.request_id"
    assert await ledger_points(served, card) == 10


async def test_a_dry_run_answers_and_writes_nothing(served: Served, cards: list[str]) -> None:
    card = cards[13]
    dry = purchase(card, "dry-1", lines=[line(1, 5000)], context_fields={"dry_run": True})
    answer = (await served.transactions.PostTransaction(dry, timeout=10)).result
    assert (answer.status, points_of(answer), answer.replayed) == (APPROVED, 50, False)
    assert await served.store.ledger_sums(card) == {}
    assert await served.store.load([card]) == {}

    # The same id posted for real afterwards is fresh, not a replay of the dry run.
    real = (
        await served.transactions.PostTransaction(
            purchase(card, "dry-1", lines=[line(1, 5000)]), timeout=10
        )
    ).result
    assert (real.replayed, points_of(real)) == (False, 50)
    assert await ledger_points(served, card) == 50
    # A dry run after it sees the committed state and still writes nothing.
    later = purchase(card, "dry-2", lines=[line(1, 5000)], context_fields={"dry_run": True})
    answer = (await served.transactions.PostTransaction(later, timeout=10)).result
    assert answer.balances[POINTS] == 100
    assert await ledger_points(served, card) == 50


# --------------------------------------------------------------------------- many at once


async def test_post_transactions_answers_in_order(served: Served, cards: list[str]) -> None:
    card, other = cards[14], cards[15]
    message = transactions.PostTransactionsRequest(
        transactions=[
            transaction(card, "many-1", lines=[line(1, 1000)]),
            transaction(other, "many-2", lines=[line(1, 3000)]),
            transaction(card, "many-3", lines=[line(1, 2000)]),
        ]
    )
    results = (await served.transactions.PostTransactions(message, timeout=10)).results
    assert [(r.request_id, r.account, r.status) for r in results] == [
        ("many-1", card, APPROVED),
        ("many-2", other, APPROVED),
        ("many-3", card, APPROVED),
    ]
    # Same-card transactions applied in message order: 10, then 10 + 20.
    assert [r.balances[POINTS] for r in results] == [10, 30, 30]
    assert await ledger_points(served, card) == 30
    assert await ledger_points(served, other) == 30


async def test_stream_answers_200_requests_in_order(served: Served, cards: list[str]) -> None:
    card = cards[16]
    count = 200

    async def requests() -> Any:
        for number in range(count):
            yield transactions.StreamTransactionsRequest(
                transaction=transaction(card, f"s-{number}", lines=[line(1, 100)])
            )

    call = served.transactions.StreamTransactions(requests(), timeout=60)
    answers = [response.result async for response in call]
    assert [r.request_id for r in answers] == [f"s-{n}" for n in range(count)]
    assert all(r.status == APPROVED for r in answers)
    # $1.00 each: the running balance counts the purchases, so they applied in order.
    assert [r.balances[POINTS] for r in answers] == list(range(1, count + 1))
    assert await ledger_points(served, card) == count


async def test_a_malformed_transaction_ends_its_stream_after_the_earlier_answers(
    served: Served, cards: list[str]
) -> None:
    card = cards[16]
    sent = [transaction(card, f"sb-{n}", lines=[line(1, 100)]) for n in range(3)]
    sent.append(transaction(card, "sb-bad", "2026-13-01T10:00:00"))

    async def requests() -> Any:
        for message in sent:
            yield transactions.StreamTransactionsRequest(transaction=message)

    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async for response in served.transactions.StreamTransactions(requests(), timeout=30):
            answers.append(response.result.request_id)
    assert answers == ["sb-0", "sb-1", "sb-2"]
    assert (failure.value.code(), errors.reason_of(failure.value)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    info = errors.error_info_of(failure.value)
    assert info is not None and info.metadata["field"] == "transaction.context.local_time"
    assert await ledger_points(served, card) == 3


async def test_a_return_takes_the_points_back(served: Served, cards: list[str]) -> None:
    card = cards[17]
    bought = (
        await served.transactions.PostTransaction(
            purchase(card, "r-buy", lines=[line(1, 6000, quantity=2), line(2, 2500)]), timeout=10
        )
    ).result
    assert points_of(bought) == 85  # $60.00 + $25.00 at one star per dollar

    returned = (
        await served.transactions.PostTransaction(
            transactions.PostTransactionRequest(
                transaction=transactions.Transaction(
                    context=context(card, "r-back", "2026-03-04T10:00:00"),
                    sale_return=transactions.Return(
                        original_id="r-buy", lines=[transactions.ReturnLine(number=1, quantity=1)]
                    ),
                )
            ),
            timeout=10,
        )
    ).result
    # One of the two $60.00 pairs: half of line 1's 60 stars.
    assert (returned.status, points_of(returned), returned.balances[POINTS]) == (APPROVED, -30, 55)
    whole = (
        await served.transactions.PostTransaction(
            transactions.PostTransactionRequest(
                transaction=transactions.Transaction(
                    context=context(card, "r-rest", "2026-03-04T11:00:00"),
                    sale_return=transactions.Return(
                        original_id="r-buy",
                        lines=[
                            transactions.ReturnLine(number=1, quantity=1),
                            transactions.ReturnLine(number=2, quantity=1),
                        ],
                    ),
                )
            ),
            timeout=10,
        )
    ).result
    assert (points_of(whole), whole.balances[POINTS]) == (-55, 0)
    assert await ledger_points(served, card) == 0
    assert await served.store.reconcile() == []


# --------------------------------------------------------------------------- refusals


async def test_an_unknown_card_is_not_found(served: Served) -> None:
    await fails(
        served.transactions.PostTransaction(purchase("6001299999999999", "u-1"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_CARD",
    )
    assert await served.store.ledger_sums() == {}


@pytest.mark.parametrize(
    ("build", "field", "reason"),
    [
        pytest.param(
            lambda card: purchase(card, "bad-1", lines=[line(1, -100)]),
            "transaction.purchase.lines[0].amount",
            "INVALID_AMOUNT",
            id="negative-amount",
        ),
        pytest.param(
            lambda card: purchase(card, "bad-1", "2026-02-30T10:00:00"),
            "transaction.context.local_time",
            "INVALID_ARGUMENT",
            id="impossible-date",
        ),
        pytest.param(
            lambda card: purchase(card, "bad-1", "03/02/2026 10:00"),
            "transaction.context.local_time",
            "INVALID_ARGUMENT",
            id="bad-local-time",
        ),
        pytest.param(
            lambda card: purchase(card, "bad-1", lines=[line(n + 1, 100) for n in range(1001)]),
            "transaction.purchase.lines",
            "TOO_MANY_LINES",
            id="1001-lines",
        ),
    ],
)
async def test_malformed_input_names_the_field_and_writes_nothing(
    served: Served, cards: list[str], build: Any, field: str, reason: str
) -> None:
    card = cards[18]
    failure = await fails(
        served.transactions.PostTransaction(build(card), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )
    info = errors.error_info_of(failure)
    assert info is not None and info.metadata["field"] == field
    bad_request = errors.bad_request_of(failure)
    assert bad_request is not None and [v.field for v in bad_request.field_violations] == [field]
    assert await served.store.ledger_sums() == {}
    assert await served.store.load([card]) == {}
    # The id was not remembered: a good request with it is fresh.
    good = await served.transactions.PostTransaction(purchase(card, "bad-1"), timeout=10)
    assert (good.result.status, good.result.replayed) == (APPROVED, False)


def half_malformed(card: str) -> Any:
    """A PostTransactions message whose second transaction has a negative amount."""
    return transactions.PostTransactionsRequest(
        transactions=[
            transaction(card, "m-1"),
            transaction(card, "m-2", lines=[line(1, -5)]),
        ]
    )


async def test_a_malformed_transaction_fails_the_whole_message(
    served: Served, cards: list[str]
) -> None:
    failure = await fails(
        served.transactions.PostTransactions(half_malformed(cards[18]), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_AMOUNT",
    )
    info = errors.error_info_of(failure)
    assert info is not None and info.metadata["field"] == "transactions[1].purchase.lines[0].amount"


async def test_a_message_with_a_malformed_transaction_posts_nothing(
    served: Served, cards: list[str]
) -> None:
    # docs/api.md: "The message is admitted whole: a malformed transaction fails the call
    # with INVALID_ARGUMENT ... and nothing is posted."
    card = cards[18]
    with pytest.raises(grpc.aio.AioRpcError):
        await served.transactions.PostTransactions(half_malformed(card), timeout=10)
    await served.running.batcher.drain()  # whatever was queued is committed by now
    assert await served.store.ledger_sums() == {}
    assert await served.store.load([card]) == {}


async def test_a_malformed_transaction_is_named_by_its_index(
    served: Served, cards: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await served.transactions.PostTransactions(half_malformed(cards[19]), timeout=10)
    info = errors.error_info_of(failure.value)
    assert info is not None and info.metadata.get("index") == "1"


def several(cards: list[str], tag: str, *, account_of: Any = None) -> Any:
    """A PostTransactions message of one $10.00 purchase on each card."""
    return transactions.PostTransactionsRequest(
        transactions=[
            transaction((account_of or {}).get(index, card), f"{tag}-{index}")
            for index, card in enumerate(cards)
        ]
    )


async def test_a_call_with_an_unknown_card_posts_nothing_and_names_its_index(
    served: Served, cards: list[str]
) -> None:
    mine = cards[30:34]
    message = several(mine, "uk", account_of={2: "6001209999999999"})
    failure = await fails(
        served.transactions.PostTransactions(message, timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_CARD",
    )
    info = errors.error_info_of(failure)
    assert info is not None and info.metadata.get("index") == "2"
    for card in mine:
        assert await served.store.ledger_sums(card) == {}
    # Sent again without the unknown card, the same ids are fresh: nothing was stored.
    again = await served.transactions.PostTransactions(several(mine, "uk"), timeout=10)
    assert [(r.status, r.replayed) for r in again.results] == [(APPROVED, False)] * 4


async def test_a_call_reusing_an_id_with_another_payload_posts_nothing(
    served: Served, cards: list[str]
) -> None:
    first, second = cards[34], cards[35]
    await served.transactions.PostTransaction(purchase(first, "re-1"), timeout=10)
    message = transactions.PostTransactionsRequest(
        transactions=[
            transaction(second, "re-0"),
            transaction(first, "re-1", lines=[line(1, 99_900)]),  # re-1 had $10.00
        ]
    )
    failure = await fails(
        served.transactions.PostTransactions(message, timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "IDEMPOTENCY_MISMATCH",
    )
    info = errors.error_info_of(failure)
    assert info is not None and info.metadata.get("index") == "1"
    assert await served.store.ledger_sums(second) == {}


async def test_a_call_larger_than_the_room_left_in_the_queue_is_refused_whole(
    start_served: StartServed, cards: list[str]
) -> None:
    served = await start_served(queue_depth_max=5)
    mine = cards[36:44]
    await fails(
        served.transactions.PostTransactions(several(mine, "big"), timeout=10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "OVERLOADED",
    )
    # A call that fits, with the refused call's first ids: batches run in arrival order, so
    # once it is answered anything queued before it would have been committed. Nothing
    # was: its ids are fresh, and the refused call's other cards hold nothing.
    answered = await served.transactions.PostTransactions(several(mine[:5], "big"), timeout=10)
    assert [(r.status, r.replayed) for r in answered.results] == [(APPROVED, False)] * 5
    for card in mine[5:]:
        assert await served.store.ledger_sums(card) == {}


async def test_a_wrong_pin_is_permission_denied_with_code_2001(
    served: Served, cards: list[str]
) -> None:
    # The demo card definition generates 4-digit PINs; the first card's is in the summary
    # of the run that generated it.
    card, pin = served.demo.first_card, served.demo.first_pin
    assert pin is not None and len(pin) == 4
    wrong = str((int(pin) + 1) % 10_000).zfill(4)
    failure = await fails(
        served.transactions.PostTransaction(
            purchase(card, "pin-1", context_fields={"pin": wrong}), timeout=10
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "PIN_INVALID",
    )
    info = errors.error_info_of(failure)
    assert info is not None and info.metadata["code"] == "2001"
    assert wrong not in (failure.details() or "")
    assert await served.store.ledger_sums(card) == {}

    # The right PIN posts; a card generated later through the API verifies its own PIN.
    right = await served.transactions.PostTransaction(
        purchase(card, "pin-1", context_fields={"pin": pin}), timeout=10
    )
    assert right.result.status == APPROVED
    generated = await served.admin.GenerateCards(
        admin.GenerateCardsRequest(program_id="northwind", series_id="launch", count=1),
        timeout=10,
    )
    new = generated.cards[0]
    assert new.pin and new.number not in cards
    if new.active:
        other_pin = str((int(new.pin) + 1) % 10_000).zfill(4)
        await fails(
            served.transactions.PostTransaction(
                purchase(new.number, "pin-2", context_fields={"pin": other_pin}), timeout=10
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "PIN_INVALID",
        )


async def pin_card(start_served: StartServed, attempts_max: int) -> tuple[Served, str, str, str]:
    """A server locking PINs after ``attempts_max`` wrong ones; its first demo card, that
    card's PIN and a wrong one."""
    served = await start_served(pin_attempts_max=attempts_max)
    card, pin = served.demo.first_card, served.demo.first_pin
    assert pin is not None
    return served, card, pin, str((int(pin) + 1) % 10_000).zfill(4)


async def test_wrong_pins_in_a_row_lock_the_card_until_support_unlocks_it(
    start_served: StartServed,
) -> None:
    served, card, pin, wrong = await pin_card(start_served, 3)

    async def post(request_id: str, given: str) -> Any:
        return await served.transactions.PostTransaction(
            purchase(card, request_id, context_fields={"pin": given}), timeout=10
        )

    # A right PIN clears the count: two wrong, one right, two wrong again is not three.
    for attempt in range(2):
        await fails(
            post(f"lock-a{attempt}", wrong), grpc.StatusCode.PERMISSION_DENIED, "PIN_INVALID"
        )
    assert (await post("lock-ok", pin)).result.status == APPROVED
    for attempt in range(2):
        await fails(
            post(f"lock-b{attempt}", wrong), grpc.StatusCode.PERMISSION_DENIED, "PIN_INVALID"
        )
    # The third wrong in a row locks it; then even the right PIN is refused, and a dry run
    # (which could otherwise try PINs unseen) is counted and refused the same way.
    locked = await fails(post("lock-b2", wrong), grpc.StatusCode.PERMISSION_DENIED, "PIN_LOCKED")
    info = errors.error_info_of(locked)
    assert info is not None and info.metadata["code"] == "2004"
    await fails(post("lock-c", pin), grpc.StatusCode.PERMISSION_DENIED, "PIN_LOCKED")
    dry = purchase(card, "lock-d", context_fields={"pin": pin, "dry_run": True})
    await fails(
        served.transactions.PostTransaction(dry, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "PIN_LOCKED",
    )
    before = await served.store.ledger_sums(card)
    # Support unlocks it (loyalty cards unlock-pin): the right PIN works again.
    await served.running.pipeline.cards.unlock_pin(card)
    assert (await post("lock-e", pin)).result.status == APPROVED
    assert await served.store.ledger_sums(card) != before
    with pytest.raises(NotFoundError, match="no card"):
        await served.running.pipeline.cards.unlock_pin("9999999999999999")


async def test_support_unlocks_a_pin_from_the_command_line(
    start_served: StartServed, capsys: pytest.CaptureFixture[str]
) -> None:
    served, card, pin, wrong = await pin_card(start_served, 1)
    request = purchase(card, "cli-1", context_fields={"pin": wrong})
    await fails(
        served.transactions.PostTransaction(request, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "PIN_LOCKED",
    )
    unlock = ["cards", "unlock-pin", card, "--database-url", served.database_url]
    assert await asyncio.to_thread(main, unlock) == 0
    said = capsys.readouterr().out
    assert "PIN unlocked" in said and card not in said  # the number masked
    right = purchase(card, "cli-2", context_fields={"pin": pin})
    assert (await served.transactions.PostTransaction(right, timeout=10)).result.status == APPROVED
    # An unknown card is named (masked) and refused.
    unknown = ["cards", "unlock-pin", "9999999999999999", "--database-url", served.database_url]
    assert await asyncio.to_thread(main, unknown) == 2
    assert "no card 999999******9999" in capsys.readouterr().err


def test_unlocking_a_pin_needs_the_deployments_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    monkeypatch.delenv("LOYALTY_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing embedded is started here either
    assert main(["cards", "unlock-pin", "6001200000000010"]) == 2
    assert "database_url (LOYALTY_DATABASE_URL)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


async def test_a_dry_run_counts_its_pin_and_a_replay_does_not(
    start_served: StartServed,
) -> None:
    served, card, pin, wrong = await pin_card(start_served, 2)

    def post(request_id: str, given: str, **fields: Any) -> Any:
        request = purchase(card, request_id, context_fields={"pin": given, **fields})
        return served.transactions.PostTransaction(request, timeout=10)

    assert (await post("count-1", pin)).result.status == APPROVED
    # A replay is answered as stored before its PIN is looked at: nothing counted.
    for _ in range(3):
        assert (await post("count-1", wrong)).result.replayed
    await fails(
        post("count-2", wrong, dry_run=True), grpc.StatusCode.PERMISSION_DENIED, "PIN_INVALID"
    )
    await fails(post("count-3", wrong), grpc.StatusCode.PERMISSION_DENIED, "PIN_LOCKED")


async def test_batches_trying_pins_on_the_same_cards_in_other_orders_never_deadlock(
    served: Served, cards: list[str]
) -> None:
    catalog = served.running.pipeline.cards
    first, second = cards[40], cards[41]
    records = await catalog.cards([first, second])
    forward = [(records[first], "0000"), (records[second], "0000")]
    backward = list(reversed(forward))
    for _ in range(3):  # the two orders at once, on two connections of the pool
        outcomes = await asyncio.gather(
            catalog.pin_attempts(forward), catalog.pin_attempts(backward)
        )
        assert all(outcome in ("invalid", "locked") for one in outcomes for outcome in one)
    # Six wrong PINs each, every one counted: with the default limit of five, locked.
    assert await catalog.pin_attempts([(records[first], "0000")]) == ["locked"]
    async with await psycopg.AsyncConnection.connect(served.database_url) as connection:
        cursor = await connection.execute(
            "SELECT card_number, failures FROM card_pin_failures WHERE card_number = ANY(%s)",
            ([first, second],),
        )
        assert dict(await cursor.fetchall()) == {first: 5, second: 5}


async def test_concurrent_wrong_pins_on_one_card_count_every_one(
    start_served: StartServed,
) -> None:
    served, card, _, wrong = await pin_card(start_served, 4)
    calls = [
        served.transactions.PostTransaction(
            purchase(card, f"race-{index}", context_fields={"pin": wrong}), timeout=10
        )
        for index in range(10)
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    reasons = sorted(errors.reason_of(outcome) for outcome in outcomes)
    # Four wrong in a row lock it (the fourth says so); none of the ten gets past.
    assert reasons == ["PIN_INVALID"] * 3 + ["PIN_LOCKED"] * 7


# --------------------------------------------------------------------------- load


async def test_a_hot_account_takes_5000_purchases_from_50_streams_without_a_lost_update(
    served: Served, cards: list[str]
) -> None:
    card = cards[20]
    # The reference engine re-reads every lot of the account per purchase: 1,000 purchases
    # keep it within the suite's time (the compiled engine takes the 5,000 in seconds).
    streams = 50
    per_stream = 100 if served.running.pipeline.engine.name == "cython" else 20
    total = streams * per_stream

    async def one_stream(number: int) -> list[Any]:
        async def requests() -> Any:
            for index in range(per_stream):
                yield transactions.StreamTransactionsRequest(
                    transaction=transaction(card, f"hot-{number}-{index}", lines=[line(1, 100)])
                )

        call = served.transactions.StreamTransactions(requests(), timeout=120)
        return [response.result async for response in call]

    answered = await asyncio.gather(*(one_stream(n) for n in range(streams)))
    results = [result for stream in answered for result in stream]
    assert len(results) == total
    assert all(r.status == APPROVED and not r.replayed for r in results)
    assert len({r.request_id for r in results}) == total

    # Each purchase is $1.00 at S002 on a Tuesday: exactly one base star, 5,000 in all.
    # On the way, whatever the order (the purchases are identical), the demo rules do:
    #   at 500 available stars (silver) coupon-5 is issued for 500 stars;
    #   at 1,000 (500 available again) a second coupon-5, and 1,000 ytd moves silver -> gold;
    #   gold escrows its stars for 14 days, so nothing is available for another award;
    #   at 5,000 lifetime stars gold moves to platinum.
    # Balance: 5,000 earned - 2 x 500 spent = 4,000.
    assert sum(by_rule(r).get("base", 0) for r in results) == total
    coupons = [a.code for r in results for a in r.awards]
    assert len(coupons) == len(set(coupons)) == 2
    moves = sorted((m.from_level, m.to_level) for r in results for m in r.moves)
    expected_moves = [("silver", "gold")] + ([("gold", "platinum")] if total >= 5000 else [])
    assert moves == sorted(expected_moves)
    balance = total - 2 * 500
    assert await ledger_points(served, card) == balance
    account = await served.admin.GetAccount(admin.GetAccountRequest(account=card), timeout=10)
    assert account.balances[POINTS] == balance
    (loyalty,) = account.loyalty
    level = "platinum" if total >= 5000 else "gold"
    assert (loyalty.level, loyalty.earned_ltd.units) == (level, total)
    # The answers' balances (spendable + escrowed) are the points of one serial history,
    # each exactly once: 1..499, 0 (first coupon), 1..499, 0 (second coupon), 1..4,000.
    history = [*range(1, 500), 0, *range(1, 500), 0, *range(1, balance + 1)]
    assert sorted(r.balances[POINTS] + r.balances[ESCROW] for r in results) == sorted(history)
    assert await served.store.reconcile() == []


async def test_a_full_queue_answers_resource_exhausted(
    start_served: StartServed, cards: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Pipeline.process

    async def slow(self: Pipeline, items: list[Any]) -> None:
        await asyncio.sleep(0.3)
        await original(self, items)

    monkeypatch.setattr(Pipeline, "process", slow)
    served = await start_served(queue_depth_max=1, batch_requests_max=1)
    card = cards[21]
    calls = [
        served.transactions.PostTransaction(purchase(card, f"q-{n}"), timeout=30) for n in range(8)
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    ok = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert ok and refused
    for error in refused:
        assert isinstance(error, grpc.aio.AioRpcError)
        assert (error.code(), errors.reason_of(error)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "OVERLOADED",
        )
    # Exactly the answered purchases were posted; the refused ones changed nothing.
    assert await ledger_points(served, card) == 10 * len(ok)
    assert served.running.batcher.rejected_total == len(refused)


async def test_a_request_whose_deadline_passes_in_the_queue_is_not_posted(
    start_served: StartServed, cards: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Pipeline.process
    processing, release = asyncio.Event(), asyncio.Event()

    async def held(self: Pipeline, items: list[Any]) -> None:
        processing.set()
        await release.wait()
        await original(self, items)

    monkeypatch.setattr(Pipeline, "process", held)
    served = await start_served(batch_requests_max=1)
    card = cards[22]
    post = served.transactions.PostTransaction
    ahead = asyncio.ensure_future(post(purchase(card, "dl-1"), timeout=30))
    await processing.wait()  # the first batch is held until released
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await post(purchase(card, "dl-2", lines=[line(1, 5_000)]), timeout=0.2)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not ahead.done()  # answered while the batch ahead was still held: not held to it
    release.set()
    assert (await ahead).result.status == APPROVED
    await served.running.batcher.drain()
    # The expired request was dropped before evaluation: only the first one is posted.
    assert await ledger_points(served, card) == 10
    assert served.running.batcher.expired_total == 1


async def test_the_same_request_id_on_two_cards_in_one_call_posts_both_and_keeps_both_receipts(
    served: Served, cards: list[str]
) -> None:
    # Request ids are unique per card, not across cards: two tills may both send "t-1".
    first, second = cards[20], cards[21]
    posted = await served.transactions.PostTransactions(
        transactions.PostTransactionsRequest(
            transactions=[transaction(first, "t-1"), transaction(second, "t-1")]
        ),
        timeout=10,
    )
    assert [result.status for result in posted.results] == [APPROVED, APPROVED]
    for card in (first, second):
        returned = (
            await served.transactions.PostTransaction(
                transactions.PostTransactionRequest(
                    transaction=transactions.Transaction(
                        context=context(card, "t-2", "2026-03-04T10:00:00"),
                        sale_return=transactions.Return(original_id="t-1"),
                    )
                ),
                timeout=10,
            )
        ).result
        assert (returned.status, returned.reason) == (APPROVED, "")


async def test_a_replay_on_one_card_and_the_same_id_new_on_another_in_one_call(
    served: Served, cards: list[str]
) -> None:
    first, second = cards[22], cards[23]
    original = (
        await served.transactions.PostTransaction(purchase(first, "t-9"), timeout=10)
    ).result
    posted = await served.transactions.PostTransactions(
        transactions.PostTransactionsRequest(
            transactions=[transaction(first, "t-9"), transaction(second, "t-9")]
        ),
        timeout=10,
    )
    replayed, fresh = posted.results
    # The first card's request is the one posted before; the second card's is new.
    assert replayed.replayed and replayed.balances[POINTS] == original.balances[POINTS]
    assert not fresh.replayed and fresh.account == second and points_of(fresh) > 0
    sums = await served.store.ledger_sums()
    assert sums[first, "points", "points"] == original.balances[POINTS]
    assert sums[second, "points", "points"] == fresh.balances[POINTS]
    assert await served.store.reconcile() == []

"""The compiled engine serves exactly what the reference serves, through the whole service.

Two servers, each on a schema of its own loaded with the same demo program and cards: one
evaluates with the reference (``engine="python"``, processor.engine.reference), the other
with the compiled engine. Hypothesis generates sessions of calls of every kind a client
makes: purchases (lines of every hierarchy, places, times, foreign currency, stored
value), returns and voids of earlier purchases, engagements, batches of several in one
PostTransactions call, gift card operations, replays of a request, the same request id
with another payload, unknown cards and bad fields. Every call goes to both servers, and
the two must answer the same bytes (or the same status, message and ErrorInfo); after
every session the ledgers, the stored account states, the receipts and the idempotency
rows of the two schemas must be equal, row for row.

The servers' state carries from one session to the next (each call goes to both, so they
stay in step), which lets later sessions meet accounts with history: lots, levels, awards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from plugins.postgres import temporary_schema
from plugins.server import ThreadedServer, demo_cards, keyed_sync_channel

from processor.proto import awards, common, tender, transactions
from processor.service import errors
from processor.store import codec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SESSIONS = settings(
    max_examples=60,
    deadline=None,
    # No shrinking: the servers keep their state from one session to the next, so a
    # shrunk session would replay on accounts the failing one had changed. The first
    # failing session is the one reported, with the call that made the difference.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
UNKNOWN_CARD = "6001299999999999"
HIERARCHIES = [["APPAREL"], ["SHOES"], ["GIFTCARDS"], ["HOME", "KITCHEN"], []]
LOCATIONS = ["S001", "S002", "S003", "WEB", "NOWHERE"]
TIMES = [
    "2026-03-03T10:00:00",  # a Tuesday morning
    "2026-03-07T16:30:00",  # a Saturday afternoon
    "2026-03-08T09:15:00",  # a Sunday
    "2026-04-01T12:00:00",
    "2026-12-31T23:59:59",
]
BAD_TIME = "2026-02-30T10:00:00"  # no such day: refused by both
RAW = {"request_serializer": lambda raw: raw, "response_deserializer": lambda raw: raw}
_ids = itertools.count()


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nineteen times in twenty, else ``bad``: a call with a bad field fails
    whole, so bad fields must be rare for most calls to reach the engines."""
    # Not 0 or 19: hypothesis draws the ends of a range far more often than the middle.
    return st.integers(0, 19).flatmap(lambda pick: bad if pick == 13 else good)


class Twins:
    """The two servers and a synchronous channel to each."""

    def __init__(self, reference: ThreadedServer, compiled: ThreadedServer) -> None:
        self.servers = (reference, compiled)
        self.plain = [grpc.insecure_channel(server.start()) for server in self.servers]
        self.channels = [
            keyed_sync_channel(channel, server.key)
            for channel, server in zip(self.plain, self.servers, strict=True)
        ]
        assert reference.demo is not None
        self.cards = demo_cards(reference.demo)[:12]

    def call(self, method: str, request: Any) -> list[tuple[Any, ...]]:
        """``request`` (a message) to ``method`` of both servers: what each answered."""
        body = request.SerializeToString()
        return [_outcome(channel.unary_unary(method, **RAW), body) for channel in self.channels]

    def close(self) -> None:
        for channel in self.plain:
            channel.close()
        for server in self.servers:
            server.stop()


def _outcome(call: Any, body: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", call(body, timeout=30))
    except grpc.RpcError as error:
        info = errors.error_info_of(error)
        return (
            error.code(),
            error.details(),
            info.reason if info else None,
            dict(info.metadata) if info else None,
        )


@pytest.fixture
def twins(schema_url: str, database_url: str, redis_url: str) -> Iterator[Twins]:
    with temporary_schema(database_url, migrated=True) as second_url:
        pair = Twins(
            ThreadedServer(schema_url, redis_url, engine="python"),
            ThreadedServer(second_url, redis_url, engine="cython"),
        )
        try:
            yield pair
        finally:
            pair.close()


# ----------------------------------------------------------------------------- requests

lines = st.lists(
    st.builds(
        lambda amount, quantity, hierarchy, non_merchandise: (
            amount,
            quantity,
            hierarchy,
            non_merchandise,
        ),
        mostly(st.integers(1, 50_000), st.sampled_from([0, -500, 999_999_999])),
        mostly(st.integers(1, 4), st.just(0)),
        st.sampled_from(HIERARCHIES),
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def purchase_kind(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "lines": [
            common.Line(
                number=number, item=f"ITEM-{number}", amount=amount, quantity=quantity,
                hierarchy=hierarchy, non_merchandise=non_merchandise,
            )
            for number, (amount, quantity, hierarchy, non_merchandise) in enumerate(
                draw(lines), start=1
            )
        ],
        "currency": draw(mostly(st.just("USD"), st.sampled_from(["EUR", "EUR", "XXX", ""]))),
    }  # fmt: skip
    if fields["currency"] == "EUR":
        fields["exchange_rate"] = draw(mostly(st.sampled_from(["1.0850", "0.92"]), st.just("abc")))
    if draw(st.integers(0, 5)) == 0:
        fields["stored_value"] = common.Money(units=draw(st.integers(1, 20_000)), currency="USD")
    return {"purchase": transactions.Purchase(**fields)}


@st.composite
def session(draw: st.DrawFn, cards: list[str]) -> list[tuple[str, Any]]:
    """A list of (method, request message)."""
    card_choice = mostly(st.sampled_from(cards), st.just(UNKNOWN_CARD))
    posted: list[tuple[str, str]] = []  # (card, request id) of purchases sent
    sent: list[Any] = []  # transactions sent, for replays
    calls: list[tuple[str, Any]] = []

    def context(card: str) -> Any:
        return common.RequestContext(
            request_id=f"d{next(_ids)}",
            account=card,
            local_time=draw(mostly(st.sampled_from(TIMES), st.just(BAD_TIME))),
            location=draw(st.sampled_from(LOCATIONS)),
        )

    def transaction() -> Any:
        card = draw(card_choice)
        choice = draw(st.integers(0, 9))
        if choice <= 4 or not posted:
            message = transactions.Transaction(context=context(card), **draw(purchase_kind()))
            posted.append((card, message.context.request_id))
        elif choice <= 6:
            card, original = draw(st.sampled_from(posted))
            returned = [
                transactions.ReturnLine(number=number, quantity=quantity)
                for number, quantity in draw(
                    st.lists(
                        st.tuples(st.integers(1, 4), mostly(st.integers(1, 3), st.just(0))),
                        max_size=3,
                        unique_by=lambda returned: returned[0],
                    )
                )
            ]
            message = transactions.Transaction(
                context=context(card),
                sale_return=transactions.Return(original_id=original, lines=returned),
            )
        elif choice == 7:
            card, original = draw(st.sampled_from(posted))
            message = transactions.Transaction(
                context=context(card), void=transactions.Void(original_id=original)
            )
        elif choice == 8:
            message = transactions.Transaction(
                context=context(card),
                engagement=transactions.Engagement(
                    kind=draw(mostly(st.sampled_from(["video", "review"]), st.just(""))),
                    count=draw(st.integers(0, 3)),
                ),
            )
        else:
            message = transactions.Transaction()
            message.CopyFrom(draw(st.sampled_from(sent)) if sent else transactions.Transaction())
            change = draw(st.integers(0, 2))
            if change == 1 and message.HasField("purchase"):
                # The same request id with another payload.
                message.purchase.lines.add(number=9, item="EXTRA", amount=100, quantity=1)
            elif change == 2:
                # The same request id on another card: ids are unique per card only.
                message.context.account = draw(st.sampled_from(cards))
        sent.append(message)
        return message

    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 5))
        if kind <= 2:
            calls.append(
                (
                    "/loyalty.v1.TransactionService/PostTransaction",
                    transactions.PostTransactionRequest(transaction=transaction()),
                )
            )
        elif kind <= 4:
            calls.append(
                (
                    "/loyalty.v1.TransactionService/PostTransactions",
                    transactions.PostTransactionsRequest(
                        transactions=[transaction() for _ in range(draw(st.integers(1, 6)))]
                    ),
                )
            )
        else:
            calls.append(tender_call(draw, draw(card_choice), context))
    return calls


def tender_call(draw: st.DrawFn, card: str, context: Any) -> tuple[str, Any]:
    method = draw(st.sampled_from(["Activate", "Reload", "Redeem", "GetBalance", "CashOut"]))
    request_type = getattr(tender, f"{method}Request")
    fields: dict[str, Any] = {"context": context(card)}
    if method != "GetBalance":
        fields["amount"] = common.Money(
            units=draw(st.integers(1, 60_000)),
            currency=draw(mostly(st.just("USD"), st.just("EUR"))),
        )
    return (f"/loyalty.v1.TenderService/{method}", request_type(**fields))


# ----------------------------------------------------------------------------- stored rows

TABLES = {
    "ledger": "SELECT account_id, month, request_id, seq, program, program_version, balance,"
    " kind, amount, rule, day FROM ledger ORDER BY account_id, request_id, seq",
    "accounts": "SELECT account_id, version, state FROM accounts ORDER BY account_id",
    "receipts": "SELECT account_id, request_id, state FROM receipts"
    " ORDER BY account_id, request_id",
    "idempotency": "SELECT account_id, request_id, payload_hash, response FROM idempotency"
    " ORDER BY account_id, request_id",
}


def stored(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of ``TABLES``, account states and receipts decoded: their encoding writes a
    map in the order its keys were added, which the two engines need not share (the
    reference records the rules a purchase used in the order it evaluates them, the
    compiled engine in its own); equal states are what must hold."""
    with psycopg.connect(database_url) as connection:
        rows = {name: connection.execute(query).fetchall() for name, query in TABLES.items()}
    rows["accounts"] = [
        (account, version, codec.decode_state(state, account))
        for account, version, state in rows["accounts"]
    ]
    rows["receipts"] = [
        (account, request, codec.decode_receipt(state))
        for account, request, state in rows["receipts"]
    ]
    return rows


def difference(reference: list[tuple[Any, ...]], compiled: list[tuple[Any, ...]]) -> str:
    """The first rows that differ, one under the other."""
    lines = [
        f"reference: {one}\ncompiled:  {other}"
        for one, other in itertools.zip_longest(reference, compiled)
        if one != other
    ]
    return "\n".join(lines[:3])


def same_everywhere(twins: Twins, method: str, request: Any) -> tuple[Any, ...]:
    """Make the call to both servers; their answers and stored rows must be equal. The
    reference's answer."""
    reference, compiled = twins.call(method, request)
    assert compiled == reference, f"{method} answered differently: {request}"
    # Compared after every call, so that a difference names the call that made it.
    reference_rows, compiled_rows = (stored(server.database_url) for server in twins.servers)
    for table in TABLES:
        assert compiled_rows[table] == reference_rows[table], (
            f"{table} differs after {method} answered {reference[0]}: {request}\n"
            + difference(reference_rows[table], compiled_rows[table])
        )
    return reference


def awards_issued(method: str, answer: tuple[Any, ...]) -> list[tuple[str, str]]:
    """(card, code) of every award an answer issued."""
    if answer[0] != "ok" or not method.startswith("/loyalty.v1.TransactionService/"):
        return []
    if method.endswith("/PostTransactions"):
        results = list(transactions.PostTransactionsResponse.FromString(answer[1]).results)
    else:
        results = [transactions.PostTransactionResponse.FromString(answer[1]).result]
    return [(result.account, award.code) for result in results for award in result.awards]


@SESSIONS
@given(data=st.data())
def test_both_engines_answer_and_store_the_same_bytes(twins: Twins, data: st.DataObject) -> None:
    issued: list[tuple[str, str]] = []
    for method, request in data.draw(session(twins.cards), label="calls"):
        issued += awards_issued(method, same_everywhere(twins, method, request))
    # Awards the session issued, redeemed (some twice, some on another card).
    if issued:
        chosen = data.draw(st.lists(st.sampled_from(issued), max_size=3), label="redeemed")
        for card, code in chosen:
            if data.draw(st.integers(0, 9), label="other card") == 0:
                card = twins.cards[-1]
            request = awards.RedeemAwardRequest(
                context=common.RequestContext(
                    request_id=f"d{next(_ids)}", account=card, local_time=TIMES[0], location="S002"
                ),
                code=code,
            )
            same_everywhere(twins, "/loyalty.v1.AwardService/RedeemAward", request)

"""Locust users for the loyalty.v1 gRPC service: till traffic (unary) and processor streams.

    .venv/bin/locust -f bench/locustfile.py --headless -u 20 -r 20 -t 60s \\
        --host 127.0.0.1:50051 --csv bench/results/unary --html bench/results/unary.html \\
        LoyaltyUser

Every RPC is one locust request event named by its method (``PostTransaction``,
``GetBalance``, ``Redeem``, ``RedeemAwardValue``, ``StreamTransactions``), so the stats and
the SLA gate (``bench/sla.py``) are per method. Locust runs on gevent: gRPC is switched to
its gevent mode (``grpc.experimental.gevent.init_gevent``) before any channel exists.
Locust rounds response times under 100 ms to whole milliseconds; the server's own
histograms (``/metrics``) give the sub-millisecond view.

Settings, from the environment:

- ``BENCH_FIRST_CARD``: the first seeded card (``loyalty seed`` prints it) and
  ``BENCH_ACCOUNTS`` how many follow it (default the demo's first card, 2,000 cards);
  ``BENCH_CARD_PREFIX`` the serial prefix (60012).
- ``BENCH_HOT_CARDS`` / ``BENCH_HOT_TRAFFIC``: the share of cards that are hot and the share
  of requests they get (0.2 and 0.8: a fifth of the cards take four fifths of the traffic).
- ``BENCH_MIX``: the task weights, ``purchase=70,balance=15,redeem=10,award=3,return=2``.
- ``BENCH_RATE``: requests per second per user (unset: as fast as answers come).
- ``BENCH_TIMEOUT_S``: each call's deadline (5).
- ``BENCH_STREAM_MESSAGES`` / ``BENCH_STREAM_WINDOW``: transactions per stream before it
  is closed and another opened (1,000), and transactions a stream may have unanswered (64).
"""

from __future__ import annotations

import collections
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent

# Before any channel: gRPC's completion queue must cooperate with gevent's loop.
grpc_gevent.init_gevent()

import gevent  # noqa: E402
from gevent.lock import Semaphore  # noqa: E402
from locust import User, constant_throughput, events, task  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ceiling  # noqa: E402
from credentials import metadata  # noqa: E402

from processor import proto  # noqa: E402
from processor.cards import card_number  # noqa: E402

transactions = proto.transactions
tender = proto.tender
awards = proto.awards
common = proto.common

DEFAULT_MIX = "purchase=70,balance=15,redeem=10,award=3,return=2"


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value else default


def parse_mix(text: str) -> dict[str, float]:
    """``purchase=70,balance=15`` -> weights by task name; unknown names are an error."""
    known = {"purchase", "balance", "redeem", "award", "return"}
    weights: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in known:
            raise ValueError(f"BENCH_MIX: unknown task {name!r}; known: {sorted(known)}")
        weights[name] = float(weight)
    if not weights or sum(weights.values()) <= 0:
        raise ValueError(f"BENCH_MIX {text!r} gives no task a weight")
    return weights


class Cards:
    """Seeded card numbers, drawn with a hot/cold skew."""

    def __init__(
        self, prefix: str, first: str, count: int, hot_cards: float, hot_traffic: float
    ) -> None:
        self.prefix = prefix
        self.length = len(first)
        self.first_sequence = int(first[len(prefix) : -1])
        self.count = max(count, 1)
        self.hot = max(1, int(self.count * hot_cards))
        self.hot_traffic = hot_traffic

    def draw(self, rng: random.Random) -> str:
        if rng.random() < self.hot_traffic:
            index = rng.randrange(self.hot)
        else:
            index = rng.randrange(self.count)
        return card_number(self.prefix, self.first_sequence + index, self.length)

    @classmethod
    def from_environment(cls) -> Cards:
        return cls(
            os.environ.get("BENCH_CARD_PREFIX", "60012"),
            os.environ.get("BENCH_FIRST_CARD", "6001200000000010"),
            int(os.environ.get("BENCH_ACCOUNTS", "2000")),
            _env_float("BENCH_HOT_CARDS", 0.2),
            _env_float("BENCH_HOT_TRAFFIC", 0.8),
        )


CARDS = Cards.from_environment()
MIX = parse_mix(os.environ.get("BENCH_MIX", DEFAULT_MIX))
TIMEOUT_S = _env_float("BENCH_TIMEOUT_S", 5.0)
STREAM_MESSAGES = int(os.environ.get("BENCH_STREAM_MESSAGES", "1000"))
STREAM_WINDOW = int(os.environ.get("BENCH_STREAM_WINDOW", "64"))
_RATE = os.environ.get("BENCH_RATE", "")


def _address(host: str | None) -> str:
    host = host or "127.0.0.1:50051"
    for scheme in ("grpc://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    return host.rstrip("/")


class GrpcUser(User):
    """A client with its own channel (its own connection, as a till or a shop would have)."""

    abstract = True
    host = "127.0.0.1:50051"
    if _RATE:
        wait_time = constant_throughput(float(_RATE))

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(_address(self.host))
        self.rng = random.Random()
        self.ids = f"lb-{uuid.uuid4().hex[:12]}"
        self.sent = 0

    def on_stop(self) -> None:
        self.channel.close()

    def request_id(self) -> str:
        self.sent += 1
        return f"{self.ids}-{self.sent}"

    def call(self, name: str, method: Callable[..., Any], request: Any) -> Any:
        """One unary RPC, reported to locust as one request named ``name``."""
        started = time.perf_counter()
        response, error = None, None
        try:
            response = method(request, timeout=TIMEOUT_S, metadata=metadata())
        except grpc.RpcError as failure:
            error = failure
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ms,
            response_length=0 if response is None else response.ByteSize(),
            exception=_described(error),
            context={},
        )
        return response


def _described(error: grpc.RpcError | None) -> Exception | None:
    if error is None:
        return None
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else ""
    return RuntimeError(f"{getattr(code, 'name', code)}: {details}")


class LoyaltyUser(GrpcUser):
    """Till traffic: purchases, balance inquiries, tender and award redemptions, returns."""

    def on_start(self) -> None:
        super().on_start()
        self.transactions = proto.transactions_grpc.TransactionServiceStub(self.channel)
        self.tender = proto.tender_grpc.TenderServiceStub(self.channel)
        self.awards = proto.awards_grpc.AwardServiceStub(self.channel)
        self.purchases: collections.deque[tuple[str, str]] = collections.deque(maxlen=64)

    @task(int(MIX.get("purchase", 0) * 100))
    def purchase(self) -> None:
        card = CARDS.draw(self.rng)
        request_id = self.request_id()
        transaction = ceiling.purchase(self.rng, card, request_id, ceiling.local_time())
        response = self.call(
            "PostTransaction",
            self.transactions.PostTransaction,
            transactions.PostTransactionRequest(transaction=transaction),
        )
        if response is not None:
            self.purchases.append((card, request_id))

    @task(int(MIX.get("balance", 0) * 100))
    def balance(self) -> None:
        card = CARDS.draw(self.rng)
        self.call(
            "GetBalance",
            self.tender.GetBalance,
            tender.GetBalanceRequest(context=self._context(card)),
        )

    @task(int(MIX.get("redeem", 0) * 100))
    def redeem(self) -> None:
        card = CARDS.draw(self.rng)
        amount = self.rng.choice((500, 1000, 1500, 2500))
        self.call(
            "Redeem",
            self.tender.Redeem,
            tender.RedeemRequest(
                context=self._context(card), amount=common.Money(units=amount, currency="USD")
            ),
        )

    @task(int(MIX.get("award", 0) * 100))
    def award(self) -> None:
        card = CARDS.draw(self.rng)
        self.call(
            "RedeemAwardValue",
            self.awards.RedeemAwardValue,
            awards.RedeemAwardValueRequest(
                context=self._context(card),
                program="rewards",
                amount=common.Money(units=500, currency="USD"),
            ),
        )

    @task(int(MIX.get("return", 0) * 100))
    def sale_return(self) -> None:
        if not self.purchases:
            self.purchase()
            return
        card, original = self.purchases.popleft()
        transaction = transactions.Transaction(
            context=self._context(card),
            sale_return=transactions.Return(original_id=original),
        )
        self.call(
            "PostTransaction",
            self.transactions.PostTransaction,
            transactions.PostTransactionRequest(transaction=transaction),
        )

    def _context(self, card: str) -> Any:
        return ceiling.context(
            self.request_id(), card, ceiling.local_time(), self.rng.choice(ceiling.LOCATIONS)
        )


class StreamingUser(GrpcUser):
    """A payment processor: purchases over one StreamTransactions call at a time, up to
    ``BENCH_STREAM_WINDOW`` unanswered; each answer is one request event, timed from the
    moment its transaction was handed to the stream."""

    def on_start(self) -> None:
        super().on_start()
        self.transactions = proto.transactions_grpc.TransactionServiceStub(self.channel)

    @task
    def stream(self) -> None:
        window = Semaphore(STREAM_WINDOW)
        sent: collections.deque[float] = collections.deque()

        def requests() -> Iterator[Any]:
            for _ in range(STREAM_MESSAGES):
                window.acquire()
                card = CARDS.draw(self.rng)
                transaction = ceiling.purchase(
                    self.rng, card, self.request_id(), ceiling.local_time()
                )
                sent.append(time.perf_counter())
                yield transactions.StreamTransactionsRequest(transaction=transaction)

        fire = self.environment.events.request.fire
        try:
            for response in self.transactions.StreamTransactions(
                requests(), timeout=TIMEOUT_S + STREAM_MESSAGES / 100, metadata=metadata()
            ):
                elapsed_ms = (time.perf_counter() - sent.popleft()) * 1000.0
                window.release()
                fire(
                    request_type="grpc",
                    name="StreamTransactions",
                    response_time=elapsed_ms,
                    response_length=response.ByteSize(),
                    exception=None,
                    context={},
                )
        except grpc.RpcError as error:
            elapsed_ms = (time.perf_counter() - sent.popleft()) * 1000.0 if sent else 0.0
            fire(
                request_type="grpc",
                name="StreamTransactions",
                response_time=elapsed_ms,
                response_length=0,
                exception=_described(error),
                context={},
            )
            gevent.sleep(0.1)


@events.init_command_line_parser.add_listener
def _document(parser: Any) -> None:
    parser.description = (parser.description or "") + " (loyalty.v1 gRPC users: see the file)"

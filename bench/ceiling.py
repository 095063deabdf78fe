"""The transport ceiling: a no-op ``loyalty.v1`` server, and the workload the benchmarks send.

The server offers the processor's posting services (TransactionService, TenderService,
AwardService) and gRPC health over the same generated messages, on the same ``grpc.aio``
server with the same options and event loop, but evaluates and writes nothing: every call
is answered with one fixed, realistic ``Result`` (the demo program's answer to a typical
basket on a gold card: postings, a rule trace of every rule, balances), prepared once at
start. What a client measures against it is what gRPC, protobuf and the client itself
cost; ``bench/run_bench.py`` reports the real service as a ratio of it, measured in the
same run, on the same machine, with the same client.

``--delay-ms`` holds every answer that long (an injected sleep): a deliberately slow
server for checking that the SLA gate fails when it should.

    .venv/bin/python bench/ceiling.py --listen 127.0.0.1:50061 [--delay-ms 80]

The workload helpers (``purchase``, ``BASKET``) build the requests the load generators
send, so that the ceiling's answer and the clients' requests describe the same traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

if __package__ in (None, ""):  # run as a script: the repository root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from processor import proto
from processor.limits import MESSAGE_BYTES_MAX
from processor.wire import admission, answers

common = proto.common
transactions = proto.transactions
tender = proto.tender
awards = proto.awards

DEMO_PROGRAM: Final = Path(__file__).resolve().parent.parent / "examples/programs/demo.yaml"

# Items of a store's catalog: (item, hierarchy, lowest and highest unit price in cents).
BASKET: Final = (
    ("JACKET-1", "OUTERWEAR", 4900, 19900),
    ("SHOE-TR-42", "SHOES", 5900, 14900),
    ("SOCKS-3PK", "ACCESSORIES", 799, 1499),
    ("TEE-BASIC", "TOPS", 999, 2999),
    ("JEANS-SLIM", "BOTTOMS", 3900, 8900),
    ("CAP-LOGO", "ACCESSORIES", 1499, 2999),
    ("BAG-TOTE", "ACCESSORIES", 1999, 4999),
    ("COFFEE-BEANS", "GROCERY", 899, 1899),
)
LOCATIONS: Final = ("S001", "S002", "S003", "WEB")
TENDER_TYPES: Final = ("visa", "mastercard", "cash", "northwind-visa")


def local_time(now: datetime.datetime | None = None) -> str:
    """The store-local time of a request, as the contract writes it."""
    return (now or datetime.datetime.now()).strftime("%Y-%m-%dT%H:%M:%S")


def context(request_id: str, card: str, when: str, location: str = "S001") -> Any:
    return common.RequestContext(
        request_id=request_id, account=card, local_time=when, location=location
    )


def purchase(rng: random.Random, card: str, request_id: str, when: str) -> Any:
    """A typical basket: 1 to 5 lines (most often 2), paid by card or cash."""
    count = rng.choice((1, 1, 2, 2, 2, 3, 3, 4, 5))
    lines = []
    total = 0
    for number in range(1, count + 1):
        item, hierarchy, low, high = rng.choice(BASKET)
        quantity = 1 if rng.random() < 0.85 else 2
        amount = rng.randint(low, high) * quantity
        total += amount
        lines.append(
            common.Line(
                number=number, item=item, amount=amount, quantity=quantity, hierarchy=[hierarchy]
            )
        )
    return transactions.Transaction(
        context=context(request_id, card, when, rng.choice(LOCATIONS)),
        purchase=transactions.Purchase(
            currency="USD",
            lines=lines,
            tenders=[common.TenderLine(type=rng.choice(TENDER_TYPES), amount=total)],
        ),
    )


def fixed_result() -> Any:
    """The demo program's Result for a typical basket on a gold card, as the service sends
    it: what the ceiling answers to every call."""
    from processor import calendar
    from processor.engine import compile_program, get_engine, issue_card
    from processor.engine.types import Lot, LoyaltyAccount
    from processor.program.loader import load_program

    program = compile_program(load_program(DEMO_PROGRAM))
    when = "2026-03-03T10:15:00"
    card = "6001200000100014"
    message = purchase(random.Random(3), card, "pos-0001-000123", when)
    message.context.location = "S001"
    _, request = admission.transaction_from_proto(message)
    day = calendar.parse_day("2026-03-03")
    state = issue_card(program, card, day - 200)
    state.loyalty["points"] = LoyaltyAccount(
        "points", "gold", day - 200, day - 90, day - 3,
        [Lot(day - 40, "base", "regular", 640, day - 26, None, 1)],
        earned_ltd=2400, earned_ytd=1300, ytd_year=2026,
    )  # fmt: skip
    outcome = get_engine().evaluate(program, {card: state}, [request])
    return answers.result_to_proto(outcome.results[0], program)


# --------------------------------------------------------------------------- the server


class _Answers:
    """Prebuilt responses, one per method, sharing the fixed Result."""

    def __init__(self, result: Any, delay_seconds: float) -> None:
        self.result = result
        self.delay = delay_seconds
        self.post = transactions.PostTransactionResponse(result=result)
        self.stream = transactions.StreamTransactionsResponse(result=result)

    async def wait(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)


class CeilingTransactions(proto.transactions_grpc.TransactionServiceServicer):
    def __init__(self, answers: _Answers) -> None:
        self.answers = answers

    async def PostTransaction(self, request: Any, context: Any) -> Any:
        await self.answers.wait()
        return self.answers.post

    async def PostTransactions(self, request: Any, context: Any) -> Any:
        await self.answers.wait()
        return transactions.PostTransactionsResponse(
            results=[self.answers.result] * len(request.transactions)
        )

    async def StreamTransactions(self, requests: AsyncIterator[Any], context: Any) -> Any:
        async for _ in requests:
            await self.answers.wait()
            yield self.answers.stream


def _result_method(response_type: Any) -> Any:
    async def method(self: Any, request: Any, context: Any) -> Any:
        await self.answers.wait()
        return self.responses[response_type]

    return method


class CeilingTender(proto.tender_grpc.TenderServiceServicer):
    def __init__(self, answers: _Answers) -> None:
        self.answers = answers
        self.responses = {
            kind: kind(result=answers.result)
            for kind in (
                tender.ActivateResponse, tender.ReloadResponse, tender.GetBalanceResponse,
                tender.RedeemResponse, tender.PreAuthorizeResponse, tender.CaptureResponse,
                tender.ReleaseResponse, tender.CashOutResponse, tender.MergeResponse,
            )
        }  # fmt: skip

    Activate = _result_method(tender.ActivateResponse)
    Reload = _result_method(tender.ReloadResponse)
    GetBalance = _result_method(tender.GetBalanceResponse)
    Redeem = _result_method(tender.RedeemResponse)
    PreAuthorize = _result_method(tender.PreAuthorizeResponse)
    Capture = _result_method(tender.CaptureResponse)
    Release = _result_method(tender.ReleaseResponse)
    CashOut = _result_method(tender.CashOutResponse)
    Merge = _result_method(tender.MergeResponse)


class CeilingAwards(proto.awards_grpc.AwardServiceServicer):
    def __init__(self, answers: _Answers) -> None:
        self.answers = answers
        self.responses = {
            kind: kind(result=answers.result)
            for kind in (awards.RedeemAwardResponse, awards.RedeemAwardValueResponse)
        }
        self.responses[awards.ListAwardsResponse] = awards.ListAwardsResponse()

    ListAwards = _result_method(awards.ListAwardsResponse)
    RedeemAward = _result_method(awards.RedeemAwardResponse)
    RedeemAwardValue = _result_method(awards.RedeemAwardValueResponse)


async def start(listen: str = "127.0.0.1:0", delay_ms: float = 0.0) -> tuple[Any, int]:
    """Start the no-op server; (server, port)."""
    answers = _Answers(fixed_result(), delay_ms / 1000.0)
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.http2.bdp_probe", 0),  # as the server's default (its server_options)
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ]
    )
    proto.transactions_grpc.add_TransactionServiceServicer_to_server(
        CeilingTransactions(answers), server
    )
    proto.tender_grpc.add_TenderServiceServicer_to_server(CeilingTender(answers), server)
    proto.awards_grpc.add_AwardServiceServicer_to_server(CeilingAwards(answers), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def serve(listen: str, delay_ms: float) -> None:
    server, port = await start(listen, delay_ms)
    print(f"ceiling server listening on 127.0.0.1:{port} (delay {delay_ms} ms)", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:50061", help="address (127.0.0.1:50061)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="hold every answer (0)")
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.listen, args.delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Errors become gRPC statuses in one place, for every RPC, through the guard around each method.

A real grpc.aio server runs in-process on port 0 guarded as the processor's own, and two
tiny servicers: TenderService.GetBalance raises the error named by the request id, and
TransactionService.StreamTransactions answers until a transaction asks it to fail. The
tests assert what a client sees: the status code, the ErrorInfo reason and metadata, the
BadRequest violations, and the request id echoed in the trailing metadata (and a
stream's first, in its initial metadata).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from processor.errors import (
    AuthenticationError,
    BadRequestError,
    DatabaseUnavailableError,
    DeclinedError,
    InputFileError,
    InternalError,
    InvalidFieldError,
    NotFoundError,
    OverloadedError,
    Problem,
    RedemptionError,
    UnavailableError,
)
from processor.limits import (
    STATUS_DETAILS_BYTES_MAX,
    STATUS_MESSAGE_CHARS_MAX,
    VIOLATION_CHARS_MAX,
)
from processor.proto import (
    ERROR_DOMAIN,
    common,
    tender,
    tender_grpc,
    transactions,
    transactions_grpc,
)
from processor.service import errors, guard
from processor.service.guard import (
    REQUEST_ID_KEY,
    Guarded,
    RequestIdLogFilter,
    current_request_id,
)

SECRET = "host=10.9.8.7 password=hunter2"

ERRORS: dict[str, Callable[[], BaseException]] = {
    "field": lambda: InvalidFieldError(
        "amount.units", "must not be negative", reason="INVALID_AMOUNT"
    ),
    "bad": lambda: BadRequestError("the request cannot succeed"),
    "file": lambda: InputFileError(
        "demo.yaml",
        [Problem("tender.currency", "unknown currency 'ZZZ'"), Problem("id", "is required")],
    ),
    "huge-file": lambda: InputFileError(
        "big.csv", [Problem(f"line {n}.CARD_NUMBER", "x" * 300) for n in range(1, 5001)]
    ),
    "unknown-card": lambda: NotFoundError("no such card", reason="UNKNOWN_CARD"),
    "auth": lambda: AuthenticationError("the cardholder could not be authenticated"),
    "pin": lambda: AuthenticationError("wrong PIN", reason="PIN_INVALID"),
    "api-key": lambda: AuthenticationError("bad key", reason="API_AUTHENTICATION_FAILED"),
    "database": lambda: DatabaseUnavailableError(f"cannot connect: {SECRET}"),
    "shutdown": lambda: UnavailableError("the server is shutting down", reason="SHUTTING_DOWN"),
    "overloaded": lambda: OverloadedError("the queue is full"),
    "declined": lambda: DeclinedError("version 2 exists", reason="VERSION_EXISTS"),
    "redemption": lambda: RedemptionError("not enough points"),
    "invariant": lambda: InternalError(f"balance went negative: {SECRET}"),
    "bug": lambda: KeyError(SECRET),
    "timeout": lambda: TimeoutError(SECRET),
}


class Tender(tender_grpc.TenderServiceServicer):
    async def GetBalance(self, request: Any, context: Any) -> Any:
        request_id = request.context.request_id
        if request_id in ERRORS:
            raise ERRORS[request_id]()
        if request_id == "abort":
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "taken")
        if request_id == "indexed":
            error = InvalidFieldError("transactions[3].context.account", "must be digits")
            await errors.abort(context, error, metadata={"index": "3"})
        if request_id == "carried":
            missing = NotFoundError("no such original", reason="UNKNOWN_ORIGINAL")
            missing.metadata = {"index": "7"}  # type: ignore[attr-defined]
            raise missing
        # The request id the guard put in the context, for the test to read back.
        result = common.Result(request_id=request_id, reason=current_request_id())
        return tender.GetBalanceResponse(result=result)


class Transactions(transactions_grpc.TransactionServiceServicer):
    async def StreamTransactions(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        async for message in requests:
            request_id = message.transaction.context.request_id
            if request_id == "fail":
                raise DatabaseUnavailableError(f"lost the connection: {SECRET}")
            if request_id == "crash":
                raise RuntimeError(SECRET)
            yield transactions.StreamTransactionsResponse(
                result=common.Result(request_id=request_id)
            )


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    tender_grpc.add_TenderServiceServicer_to_server(Tender(), Guarded(server))
    transactions_grpc.add_TransactionServiceServicer_to_server(Transactions(), Guarded(server))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    await server.stop(None)


def balance(request_id: str) -> Any:
    return tender.GetBalanceRequest(context=common.RequestContext(request_id=request_id))


async def failure(channel: grpc.aio.Channel, request_id: str) -> grpc.aio.AioRpcError:
    stub = tender_grpc.TenderServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetBalance(balance(request_id), timeout=5)
    return caught.value


def info_of(error: grpc.aio.AioRpcError) -> Any:
    info = errors.error_info_of(error)
    assert info is not None, f"no ErrorInfo in {error}"
    assert info.domain == ERROR_DOMAIN
    return info


@pytest.mark.parametrize(
    ("request_id", "status", "reason", "code"),
    [
        ("field", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT", None),
        ("bad", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", None),
        ("file", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILE", None),
        ("unknown-card", grpc.StatusCode.NOT_FOUND, "UNKNOWN_CARD", None),
        ("auth", grpc.StatusCode.UNAUTHENTICATED, "AUTHENTICATION_FAILED", "2001"),
        ("pin", grpc.StatusCode.PERMISSION_DENIED, "PIN_INVALID", "2001"),
        ("api-key", grpc.StatusCode.UNAUTHENTICATED, "API_AUTHENTICATION_FAILED", "1042"),
        ("database", grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", "1001"),
        ("shutdown", grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", None),
        ("overloaded", grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", None),
        ("declined", grpc.StatusCode.FAILED_PRECONDITION, "VERSION_EXISTS", None),
        ("redemption", grpc.StatusCode.FAILED_PRECONDITION, "REDEMPTION_FAILED", "2003"),
        ("invariant", grpc.StatusCode.INTERNAL, "INTERNAL", None),
        ("bug", grpc.StatusCode.INTERNAL, "INTERNAL", None),
        ("timeout", grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", None),
    ],
)
async def test_each_error_is_answered_with_its_status_reason_and_code(
    channel: grpc.aio.Channel, request_id: str, status: grpc.StatusCode, reason: str, code: Any
) -> None:
    error = await failure(channel, request_id)
    assert error.code() == status
    assert errors.reason_of(error) == reason
    assert info_of(error).metadata.get("code") == code


@pytest.mark.parametrize("request_id", ["database", "invariant", "bug", "timeout"])
async def test_server_side_failures_tell_the_client_nothing_of_the_server(
    channel: grpc.aio.Channel, request_id: str
) -> None:
    error = await failure(channel, request_id)
    assert "hunter2" not in (error.details() or "")
    assert "10.9.8.7" not in str(errors.status_of(error))


async def test_a_bug_is_logged_with_its_traceback(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="processor.service.guard"):
        error = await failure(channel, "bug")
    assert error.details() == errors.INTERNAL_MESSAGE
    [record] = [r for r in caplog.records if r.name == "processor.service.guard"]
    assert "/loyalty.v1.TenderService/GetBalance" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError


async def test_a_malformed_field_names_its_path(channel: grpc.aio.Channel) -> None:
    error = await failure(channel, "field")
    assert error.details() == "amount.units: must not be negative"
    assert info_of(error).metadata["field"] == "amount.units"
    bad_request = errors.bad_request_of(error)
    assert bad_request is not None
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("amount.units", "must not be negative")
    ]


async def test_an_invalid_file_lists_every_problem(channel: grpc.aio.Channel) -> None:
    error = await failure(channel, "file")
    bad_request = errors.bad_request_of(error)
    assert bad_request is not None
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("tender.currency", "unknown currency 'ZZZ'"),
        ("id", "is required"),
    ]


async def test_a_huge_file_error_still_reaches_the_client_bounded(
    channel: grpc.aio.Channel,
) -> None:
    error = await failure(channel, "huge-file")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.reason_of(error) == "INVALID_FILE"
    assert len(error.details() or "") <= STATUS_MESSAGE_CHARS_MAX
    status = errors.status_of(error)
    assert status is not None and status.ByteSize() <= STATUS_DETAILS_BYTES_MAX
    bad_request = errors.bad_request_of(error)
    assert bad_request is not None
    violations = list(bad_request.field_violations)
    assert violations[0].field == "line 1.CARD_NUMBER"
    assert len(violations[0].description) == VIOLATION_CHARS_MAX
    shown = len(violations) - 1
    assert violations[-1].description == f"… and {5000 - shown} more problems"


async def test_grpc_aborts_pass_through_untouched(channel: grpc.aio.Channel) -> None:
    error = await failure(channel, "abort")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == "taken"
    assert errors.status_of(error) is None
    assert errors.reason_of(error) == ""


async def test_the_caller_adds_metadata_such_as_the_failing_index(
    channel: grpc.aio.Channel,
) -> None:
    error = await failure(channel, "indexed")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info_of(error).metadata) == {
        "index": "3",
        "field": "transactions[3].context.account",
    }
    carried = await failure(channel, "carried")
    assert carried.code() == grpc.StatusCode.NOT_FOUND
    assert info_of(carried).metadata["index"] == "7"


async def test_a_stream_answers_every_earlier_message_then_the_error(
    channel: grpc.aio.Channel,
) -> None:
    def message(request_id: str) -> Any:
        return transactions.StreamTransactionsRequest(
            transaction=transactions.Transaction(
                context=common.RequestContext(request_id=request_id)
            )
        )

    stub = transactions_grpc.TransactionServiceStub(channel)
    for failing, status, code in [
        ("fail", grpc.StatusCode.UNAVAILABLE, "1001"),
        ("crash", grpc.StatusCode.INTERNAL, None),
    ]:
        call = stub.StreamTransactions(
            iter([message("t1"), message("t2"), message(failing), message("t4")]), timeout=5
        )
        answered = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for response in call:
                answered.append(response.result.request_id)
        assert answered == ["t1", "t2"]
        assert caught.value.code() == status
        assert info_of(caught.value).metadata.get("code") == code
        assert "hunter2" not in (caught.value.details() or "")
        metadata = caught.value.trailing_metadata()
        assert re.fullmatch(r"[0-9a-f]{32}", dict(metadata)[REQUEST_ID_KEY])
        # A stream tells its id first too, before its answers.
        initial = await call.initial_metadata()
        assert dict(initial)[REQUEST_ID_KEY] == dict(metadata)[REQUEST_ID_KEY]


async def test_the_request_id_is_echoed_and_seen_by_the_servicer(
    channel: grpc.aio.Channel,
) -> None:
    stub = tender_grpc.TenderServiceStub(channel)
    call = stub.GetBalance(balance("ok"), metadata=((REQUEST_ID_KEY, "pos-17/42"),), timeout=5)
    response = await call
    assert dict(await call.trailing_metadata())[REQUEST_ID_KEY] == "pos-17/42"
    # Nothing is sent ahead of a unary answer: that would cost the call a write of its own.
    assert REQUEST_ID_KEY not in dict(await call.initial_metadata())
    assert response.result.reason == "pos-17/42"


async def test_each_call_of_a_method_gets_its_own_request_id(
    channel: grpc.aio.Channel,
) -> None:
    # The guard wraps a method once; the id must still be the call's own.
    stub = tender_grpc.TenderServiceStub(channel)
    for request_id in ("till-1/1", "till-1/2", "till-2/1"):
        call = stub.GetBalance(balance("ok"), metadata=((REQUEST_ID_KEY, request_id),), timeout=5)
        response = await call
        assert dict(await call.trailing_metadata())[REQUEST_ID_KEY] == request_id
        assert response.result.reason == request_id


@pytest.mark.parametrize("sent", [None, "has spaces", "x" * 129])
async def test_a_missing_or_odd_request_id_is_replaced(
    channel: grpc.aio.Channel, sent: str | None
) -> None:
    stub = tender_grpc.TenderServiceStub(channel)
    metadata = () if sent is None else ((REQUEST_ID_KEY, sent),)
    call = stub.GetBalance(balance("ok"), metadata=metadata, timeout=5)
    response = await call
    echoed = dict(await call.trailing_metadata())[REQUEST_ID_KEY]
    assert re.fullmatch(r"[0-9a-f]{32}", echoed)
    assert response.result.reason == echoed


async def test_the_request_id_is_echoed_on_errors_too(channel: grpc.aio.Channel) -> None:
    stub = tender_grpc.TenderServiceStub(channel)
    call = stub.GetBalance(balance("overloaded"), metadata=((REQUEST_ID_KEY, "r-9"),), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert dict(caught.value.trailing_metadata())[REQUEST_ID_KEY] == "r-9"
    assert errors.error_info_of(caught.value) is not None  # the status details kept beside it


def test_log_records_carry_the_request_id_outside_calls_too() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "message", None, None)
    assert RequestIdLogFilter().filter(record)
    assert getattr(record, "request_id", None) == "-"


def test_the_table_answers_without_a_server() -> None:
    status = errors.status_for(OverloadedError("full"), metadata={"queue": "batcher"})
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "full"
    assert errors.status_code_of(ValueError("x")) == grpc.StatusCode.INTERNAL
    grpc_status = errors.to_grpc_status(status)
    assert grpc_status.code == grpc.StatusCode.RESOURCE_EXHAUSTED


# --------------------------------------------------------------------------- undecodable bytes

# A field-1 length-delimited value whose length runs past the end: no protobuf parser takes it.
UNDECODABLE = b"\x0a\xff\xff\xff\x0f\x01"


async def test_an_undecodable_unary_request_is_invalid_argument_with_a_reason(
    channel: grpc.aio.Channel,
) -> None:
    call = channel.unary_unary(
        "/loyalty.v1.TenderService/GetBalance",
        request_serializer=lambda raw: raw,
        response_deserializer=tender.GetBalanceResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(UNDECODABLE, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info_of(caught.value).reason == "MALFORMED_MESSAGE"


async def test_an_undecodable_stream_message_ends_the_stream_after_the_earlier_answers(
    channel: grpc.aio.Channel,
) -> None:
    good = transactions.StreamTransactionsRequest(
        transaction=transactions.Transaction(context=common.RequestContext(request_id="ok-1"))
    ).SerializeToString()
    call = channel.stream_stream(
        "/loyalty.v1.TransactionService/StreamTransactions",
        request_serializer=lambda raw: raw,
        response_deserializer=transactions.StreamTransactionsResponse.FromString,
    )

    async def messages() -> AsyncIterator[bytes]:
        yield good
        yield UNDECODABLE

    answered = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for answer in call(messages(), timeout=5):
            answered.append(answer.result.request_id)
    assert answered == ["ok-1"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info_of(caught.value).reason == "MALFORMED_MESSAGE"


def test_a_forked_worker_makes_request_ids_of_its_own() -> None:
    mine = guard._request_id(())
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: its first id, then out at once
        os.write(writing, guard._request_id(()).encode())
        os._exit(0)
    os.close(writing)
    theirs = os.read(reading, 64).decode()
    os.close(reading)
    os.waitpid(child, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", theirs)
    assert theirs[:16] != mine[:16]  # another random half: no id made twice


async def test_a_method_that_streams_by_writing_tells_its_request_id_first() -> None:
    # Health Watch is a coroutine that streams with context.write, not an async generator.
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), Guarded(server))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), metadata=((REQUEST_ID_KEY, "watch-1"),)
            )
            assert dict(await call.initial_metadata())[REQUEST_ID_KEY] == "watch-1"
            call.cancel()
    finally:
        await server.stop(None)

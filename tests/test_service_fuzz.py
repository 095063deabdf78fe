"""Fuzzed input against a served processor: never INTERNAL or UNKNOWN, nothing written.

Hypothesis drives a synchronous gRPC client against the real server (processor.service
.server.start, the demo program, PostgreSQL and Redis), which runs on an event loop of its
own in a thread, so that one server serves every example. Two kinds of input:

- arbitrary bytes sent as the request message of every unary method of the transaction,
  tender and award services (a client with a broken serializer, or a hostile one);
- PostTransaction messages built from arbitrary field values (texts with control
  characters, huge or negative amounts, odd dates and currencies);
- program files of arbitrary text, YAML and JSON, uploaded with CreateProgram;
- ListEvents, ListTasks, ClaimTask and CompleteTask with arbitrary numbers, open enum
  values and texts (a refused claim or completion changes no task).

Every answer is OK or a status with an ErrorInfo reason from the processor's domain;
never INTERNAL or UNKNOWN. A refused request writes nothing: the ledger's row count is the
same after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugins.server import ThreadedServer, keyed_sync_channel

from processor import proto
from processor.proto import common, transactions
from processor.service import errors

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Every unary method a payment client calls, as (service, method).
UNARY_METHODS = [
    (service.full_name, method.name)
    for module in (proto.transactions, proto.tender, proto.awards)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if not method.client_streaming and not method.server_streaming
]
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def fuzzed(schema_url: str, redis_url: str) -> Iterator[tuple[grpc.Channel, str]]:
    """A served processor and a synchronous channel to it; and the schema's URL."""
    server = ThreadedServer(schema_url, redis_url)
    address = server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            yield keyed_sync_channel(channel, server.key), schema_url
    finally:
        server.stop()


def ledger_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SELECT count(*) FROM ledger").fetchone()
    return int(row[0]) if row else 0


def outcome(call: Any, request: Any) -> grpc.StatusCode:
    """The status of one call; a refusal must carry a reason of the processor's domain."""
    try:
        call(request, timeout=30)
    except grpc.RpcError as error:
        code = error.code()
        assert code not in NEVER, f"{code}: {error.details()}"
        if code not in {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}:
            info = errors.error_info_of(error)
            assert info is not None and info.domain == proto.ERROR_DOMAIN, error.details()
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@FUZZ
@given(method=st.sampled_from(UNARY_METHODS), body=st.binary(max_size=512))
def test_arbitrary_bytes_to_any_method_are_refused_with_a_reason(
    fuzzed: tuple[grpc.Channel, str], method: tuple[str, str], body: bytes
) -> None:
    channel, database_url = fuzzed
    service, name = method
    call = channel.unary_unary(
        f"/{service}/{name}",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    before = ledger_rows(database_url)
    if outcome(call, body) != grpc.StatusCode.OK:
        assert ledger_rows(database_url) == before


texts = st.text(max_size=80)  # any code point, control characters and NUL included
amounts = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 100_000))


@FUZZ
@given(
    request_id=texts,
    account=st.one_of(texts, st.just("6001200000000010")),
    local_time=st.one_of(texts, st.just("2026-03-03T10:00:00")),
    location=st.one_of(texts, st.just("S002")),
    currency=st.one_of(texts, st.sampled_from(["USD", "XXX", "usd", "EUR", ""])),
    lines=st.lists(
        st.tuples(st.integers(0, 2_000), texts, amounts, st.integers(0, 2**32 - 1), texts),
        max_size=4,
    ),
)
def test_arbitrary_purchase_fields_are_answered_or_refused_with_a_reason(
    fuzzed: tuple[grpc.Channel, str],
    request_id: str,
    account: str,
    local_time: str,
    location: str,
    currency: str,
    lines: list[tuple[int, str, int, int, str]],
) -> None:
    channel, database_url = fuzzed
    stub = proto.transactions_grpc.TransactionServiceStub(channel)
    message = transactions.PostTransactionRequest(
        transaction=transactions.Transaction(
            context=common.RequestContext(
                request_id=request_id, account=account, local_time=local_time, location=location
            ),
            purchase=transactions.Purchase(
                currency=currency,
                lines=[
                    common.Line(
                        number=number, item=item, amount=amount, quantity=quantity,
                        hierarchy=[node],
                    )
                    for number, item, amount, quantity, node in lines
                ],
            ),
        )
    )  # fmt: skip
    before = ledger_rows(database_url)
    if outcome(stub.PostTransaction, message) != grpc.StatusCode.OK:
        assert ledger_rows(database_url) == before


documents = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(texts, children, max_size=5)
    ),
    max_leaves=40,
)


@settings(FUZZ, max_examples=60)
@given(
    content=st.one_of(
        st.text(max_size=2_000),
        documents.map(lambda document: yaml.safe_dump(document, allow_unicode=True)),
        documents.map(lambda document: json.dumps({"id": "fuzz", "fields": document})),
    ),
    file_name=st.sampled_from(["program.yaml", "program.json", ""]),
)
def test_arbitrary_program_files_are_refused_with_a_reason_and_store_nothing(
    fuzzed: tuple[grpc.Channel, str], content: str, file_name: str
) -> None:
    channel, database_url = fuzzed
    stub = proto.admin_grpc.AdminServiceStub(channel)
    request = proto.admin.CreateProgramRequest(content=content, file_name=file_name)
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SELECT count(*) FROM programs").fetchone()
    programs_before = row[0] if row else 0
    assert outcome(stub.CreateProgram, request) != grpc.StatusCode.OK
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SELECT count(*) FROM programs").fetchone()
    assert (row[0] if row else 0) == programs_before


def tasks_written(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as connection:
        return connection.execute("SELECT id, status, outcome FROM tasks ORDER BY id").fetchall()


int64s = st.integers(-(2**63), 2**63 - 1)
uint32s = st.integers(0, 2**32 - 1)
enums = st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4)  # proto3 enums are open


@FUZZ
@given(
    rpc=st.sampled_from(["ListEvents", "ListTasks", "ClaimTask", "CompleteTask"]),
    number=int64s,
    size=uint32s,
    kinds=enums,
    text=st.one_of(texts, st.just("6001200000000010"), st.just("")),
)
def test_arbitrary_event_and_task_requests_are_answered_or_refused_with_a_reason(
    fuzzed: tuple[grpc.Channel, str], rpc: str, number: int, size: int, kinds: list[int], text: str
) -> None:
    channel, database_url = fuzzed
    stub = proto.admin_grpc.AdminServiceStub(channel)
    admin = proto.admin
    request = {
        "ListEvents": admin.ListEventsRequest(
            after_position=number, page_size=size, kinds=kinds, account=text
        ),
        "ListTasks": admin.ListTasksRequest(
            statuses=kinds, team=text, page_size=size, page_token=text
        ),
        "ClaimTask": admin.ClaimTaskRequest(task_id=number),
        "CompleteTask": admin.CompleteTaskRequest(task_id=number, outcome=text),
    }[rpc]
    before = tasks_written(database_url)
    if outcome(getattr(stub, rpc), request) != grpc.StatusCode.OK:
        assert tasks_written(database_url) == before

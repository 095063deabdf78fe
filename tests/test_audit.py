"""The audit log: every AdminService call written with who, roles, RPC, target, outcome and
request id, a change's row in the change's own transaction, nothing ever changed or removed;
read through ListAudit and ``loyalty audit``. And Support's UnlockPin."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
import pytest
from plugins.server import Served, StartServed, purchase

from processor import proto
from processor.cli import main
from processor.service import roles
from processor.service.errors import error_info_of
from processor.store.credentials import Credentials

admin = proto.admin
common = proto.common


async def make_key(served: Served, *held: str) -> tuple[str, str]:
    """A key holding ``held``: (its principal, the key)."""
    record, key = await Credentials(served.store).create_key("audit test", list(held))
    return f"key:{record.key_id}", key


def sent(key: str, request_id: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key), ("x-request-id", request_id))


async def rows(served: Served, **where: str) -> list[Any]:
    return await Credentials(served.store).audit(page_size=1000, **where)


async def outcome_of(call: Any) -> str:
    try:
        if hasattr(call, "read"):  # a server stream: read to its end
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        info = error_info_of(error)
        return f"{error.code().name} {info.reason if info else ''}"
    return "OK"


ADMIN_REQUESTS: dict[str, Any] = {
    "CreateProgram": admin.CreateProgramRequest(content="not: [a program", file_name="x.yaml"),
    "UpdateProgram": admin.UpdateProgramRequest(content="", file_name="x.yaml"),
    "ActivateProgram": admin.ActivateProgramRequest(program_id="northwind", version=1),
    "DeactivateProgram": admin.DeactivateProgramRequest(program_id="nowhere", version=1),
    "GetProgram": admin.GetProgramRequest(program_id="northwind"),
    "SearchPrograms": admin.SearchProgramsRequest(),
    "GenerateCards": admin.GenerateCardsRequest(program_id="nowhere", series_id="S1", count=1),
    "ImportCards": admin.ImportCardsRequest(),
    "SetBatchStatus": admin.SetBatchStatusRequest(program_id="nowhere"),
    "SetBatchExpiry": admin.SetBatchExpiryRequest(program_id="nowhere"),
    "EnrollCustomer": admin.EnrollCustomerRequest(
        customer=common.Customer(id="AUDIT-1", birth_date="1990-01-01", signup_date="2026-01-01")
    ),
    "RegisterCard": admin.RegisterCardRequest(account="1", customer_id="nobody"),
    "SetAudiences": admin.SetAudiencesRequest(customer_id="AUDIT-1", audiences=["news"]),
    "UnlockPin": admin.UnlockPinRequest(account="0"),
    "GetAccount": admin.GetAccountRequest(account="0"),
    "ListLedger": admin.ListLedgerRequest(account="0"),
    "ListAudit": admin.ListAuditRequest(page_size=1),
    "GetScorecard": admin.GetScorecardRequest(program_id="northwind", months=1),
    "ListEvents": admin.ListEventsRequest(after_position=3),
    "WatchEvents": admin.WatchEventsRequest(kinds=[admin.EVENT_KIND_UNSPECIFIED]),
    "ListTasks": admin.ListTasksRequest(team="warehouse"),
    "ClaimTask": admin.ClaimTaskRequest(task_id=7),
    "CompleteTask": admin.CompleteTaskRequest(task_id=7, outcome="mailed"),
}


async def test_every_admin_rpc_writes_one_row_with_who_what_and_how_it_ended(
    served: Served,
) -> None:
    methods = set(admin.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)
    assert set(ADMIN_REQUESTS) == methods  # a new RPC must be added here
    principal, key = await make_key(served, *roles.ROLES)
    expected = {}
    for rpc, request in ADMIN_REQUESTS.items():
        call = getattr(proto.admin_grpc.AdminServiceStub(served.channel), rpc)
        expected[rpc] = await outcome_of(call(request, metadata=sent(key, f"audit-{rpc}")))
    written = await rows(served, principal=principal)
    assert len(written) == len(ADMIN_REQUESTS)  # one each, none twice
    by_rpc = {row.rpc: row for row in written}
    for rpc, outcome in expected.items():
        row = by_rpc[rpc]
        assert (rpc, row.outcome, row.request_id) == (rpc, outcome.strip(), f"audit-{rpc}")
        assert row.method == "api_key"
        assert set(row.roles) == set(roles.ROLES)
    assert by_rpc["SetAudiences"].outcome == "OK"
    assert by_rpc["SetAudiences"].target == "customer_id=AUDIT-1"
    assert by_rpc["RegisterCard"].outcome == "NOT_FOUND UNKNOWN_CUSTOMER"
    assert by_rpc["ActivateProgram"].target == "program_id=northwind version=1"


async def test_a_changes_row_is_written_in_the_changes_own_transaction(served: Served) -> None:
    _, key = await make_key(served, roles.SUPPORT)
    stub = proto.admin_grpc.AdminServiceStub(served.channel)
    customer = common.Customer(id="AUDIT-TX", birth_date="1990-01-01", signup_date="2026-01-01")
    await stub.EnrollCustomer(
        admin.EnrollCustomerRequest(customer=customer), metadata=sent(key, "tx-1")
    )
    async with await psycopg.AsyncConnection.connect(served.database_url) as connection:
        cursor = await connection.execute(
            "SELECT (SELECT xmin::text FROM customers WHERE customer_id = 'AUDIT-TX'),"
            " (SELECT xmin::text FROM audit_log WHERE request_id = 'tx-1')"
        )
        change, audit_row = await cursor.fetchone()  # type: ignore[misc]
    assert change is not None and change == audit_row


async def test_a_call_failing_after_its_change_committed_has_a_second_row_saying_so(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    principal, key = await make_key(served, roles.MANAGER)

    async def refresh_fails() -> None:
        raise RuntimeError("the registry could not be read")

    monkeypatch.setattr(served.running.registry, "refresh", refresh_fails)
    stub = proto.admin_grpc.AdminServiceStub(served.channel)
    request = admin.ActivateProgramRequest(program_id="northwind", version=1)
    outcome = await outcome_of(stub.ActivateProgram(request, metadata=sent(key, "after-1")))
    assert outcome == "INTERNAL INTERNAL"
    outcomes = [row.outcome for row in await rows(served, principal=principal)]
    assert outcomes == ["INTERNAL INTERNAL after its change committed", "OK"]


async def test_a_call_refused_by_role_is_audited_and_one_without_credentials_is_not(
    served: Served,
) -> None:
    principal, viewer = await make_key(served, roles.VIEWER)
    stub = proto.admin_grpc.AdminServiceStub(served.channel)
    request = admin.ActivateProgramRequest(program_id="northwind", version=1)
    denied = await outcome_of(stub.ActivateProgram(request, metadata=sent(viewer, "deny-1")))
    assert denied == "PERMISSION_DENIED ROLE_NOT_PERMITTED"
    before = len(await rows(served))
    anonymous = await outcome_of(
        stub.ActivateProgram(request, metadata=(("x-request-id", "anon"),))
    )
    assert anonymous == "UNAUTHENTICATED API_AUTHENTICATION_FAILED"
    (row,) = await rows(served, principal=principal)
    assert (row.rpc, row.outcome, row.request_id) == (
        "ActivateProgram",
        "PERMISSION_DENIED ROLE_NOT_PERMITTED",
        "deny-1",
    )
    assert len(await rows(served)) == before


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET outcome = 'OK'", "DELETE FROM audit_log", "TRUNCATE audit_log"],
)
async def test_the_audit_log_cannot_be_changed_or_emptied(served: Served, statement: str) -> None:
    await served.admin.SearchPrograms(admin.SearchProgramsRequest())  # one row at least
    async with await psycopg.AsyncConnection.connect(served.database_url) as connection:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await connection.execute(statement)


async def test_list_audit_pages_newest_first_and_filters(served: Served) -> None:
    principal, key = await make_key(served, roles.ADMIN)
    stub = proto.admin_grpc.AdminServiceStub(served.channel)
    for index in range(5):
        await stub.SearchPrograms(admin.SearchProgramsRequest(), metadata=sent(key, f"p-{index}"))
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListAudit(
            admin.ListAuditRequest(principal=principal, page_size=2, page_token=token),
            metadata=sent(key, f"list-{len(seen)}"),
        )
        seen += [entry.request_id for entry in page.entries]
        assert all(entry.time.seconds > 0 for entry in page.entries)
        token = page.next_page_token
        if not token:
            break
    # Newest first; each ListAudit call is written too, after the page it read.
    searches = [one for one in seen if one.startswith("p-")]
    assert searches == [f"p-{index}" for index in reversed(range(5))]
    only = await stub.ListAudit(
        admin.ListAuditRequest(principal=principal, rpc="SearchPrograms"),
        metadata=sent(key, "filtered"),
    )
    assert {entry.rpc for entry in only.entries} == {"SearchPrograms"}
    # More than the most a page holds is served as the most, as ListLedger does.
    largest = await stub.ListAudit(admin.ListAuditRequest(page_size=5000), metadata=sent(key, "l"))
    assert 0 < len(largest.entries) <= 1000
    for bad in (
        admin.ListAuditRequest(page_token="not a token"),
        admin.ListAuditRequest(principal="nul\x00"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListAudit(bad, metadata=sent(key, "bad"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- UnlockPin


async def test_support_unlocks_a_locked_pin_and_the_right_pin_works_again(
    start_served: StartServed,
) -> None:
    served = await start_served(pin_attempts_max=2)
    card, pin = served.demo.first_card, served.demo.first_pin
    assert pin is not None
    wrong = str((int(pin) + 1) % 10_000).zfill(4)

    async def post(request_id: str, given: str) -> str:
        request = purchase(card, request_id, context_fields={"pin": given})
        return await outcome_of(served.transactions.PostTransaction(request, timeout=10))

    assert await post("u-1", wrong) == "PERMISSION_DENIED PIN_INVALID"
    assert await post("u-2", wrong) == "PERMISSION_DENIED PIN_LOCKED"
    assert await post("u-3", pin) == "PERMISSION_DENIED PIN_LOCKED"
    _, processor_key = await make_key(served, roles.PROCESSOR)
    _, support_key = await make_key(served, roles.SUPPORT)
    stub = proto.admin_grpc.AdminServiceStub(served.channel)
    unlock = admin.UnlockPinRequest(account=card)
    refused = await outcome_of(stub.UnlockPin(unlock, metadata=sent(processor_key, "u-p")))
    assert refused == "PERMISSION_DENIED ROLE_NOT_PERMITTED"
    answer = await stub.UnlockPin(unlock, metadata=sent(support_key, "u-s"))
    assert answer.account == card
    assert await post("u-4", pin) == "OK"
    unknown = admin.UnlockPinRequest(account="4" * 16)
    assert await outcome_of(stub.UnlockPin(unknown, metadata=sent(support_key, "u-x"))) == (
        "NOT_FOUND UNKNOWN_CARD"
    )
    bad = admin.UnlockPinRequest(account="12ab")
    outcome = await outcome_of(stub.UnlockPin(bad, metadata=sent(support_key, "u-b")))
    assert outcome.startswith("INVALID_ARGUMENT")


# --------------------------------------------------------------------------- the command line


def test_keys_and_audit_commands_need_the_deployments_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOYALTY_DATABASE_URL", raising=False)
    for argv in (
        ["keys", "create", "--name", "x", "--role", "Viewer"],
        ["keys", "list"],
        ["keys", "revoke", "abc"],
        ["audit"],
    ):
        assert main(argv) == 2, argv
        assert "database_url (LOYALTY_DATABASE_URL)" in capsys.readouterr().err


def test_keys_made_listed_and_revoked_from_the_command_line_are_audited(
    schema_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--database-url", schema_url]
    assert main(["keys", "create", "--name", "pos-eu", "--role", "Processor", *flags]) == 0
    key = capsys.readouterr().out.strip()
    key_id = key.split("_")[1]
    assert main(["keys", "list", *flags]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "pos-eu" in listed and key not in listed  # no secret
    assert main(["keys", "revoke", key_id, *flags]) == 0
    assert main(["keys", "revoke", key_id, *flags]) == 0
    assert "was revoked already" in capsys.readouterr().out
    assert main(["keys", "revoke", "nosuchkey", *flags]) != 0
    assert main(["audit", *flags]) == 0
    audit = capsys.readouterr().out.splitlines()
    # Each change by hand is audited, the second revoke too (it changed nothing, said so).
    assert [line.split("\t")[4] for line in audit] == ["keys revoke", "keys revoke", "keys create"]
    assert audit[-1].split("\t")[2].startswith("local:")
    with pytest.raises(SystemExit):
        main(["keys", "create", "--name", "x", "--role", "Root", *flags])
    with pytest.raises(SystemExit):
        main(["audit", "--limit", "0", *flags])
    assert main(["keys", "create", "--name", "", "--role", "Viewer", *flags]) == 2
    assert "name" in capsys.readouterr().err

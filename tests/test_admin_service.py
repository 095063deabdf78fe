"""AdminService through a real grpc.aio server on port 0, over a real PostgreSQL.

The server guards its methods as the processor does, so the tests see what a client sees: answers,
status codes and ErrorInfo reasons (ALREADY_EXISTS / PROGRAM_EXISTS, FAILED_PRECONDITION /
VERSION_EXISTS, PREFIX_IN_USE, CARD_REGISTERED, NOT_FOUND, INVALID_ARGUMENT with a
BadRequest per problem). Account and ledger inquiries read rows committed by the Store.
The demo loader is idempotent and its cards are served at once.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest
from plugins.admin_api import Harness, fails

from processor import calendar, proto
from processor.engine.types import (
    AccountState,
    Award,
    AwardAccount,
    Lot,
    LoyaltyAccount,
    Posting,
    TenderAccount,
    ValueLot,
)
from processor.service import errors
from processor.store import AccountWrite, CommitBatch, LedgerEntry, Store
from processor.tools.demo import DEMO_PIN, load_demo

pytestmark = pytest.mark.integration

admin = proto.admin
common = proto.common

ROOT = Path(__file__).resolve().parent.parent
DEMO = (ROOT / "examples" / "programs" / "demo.yaml").read_text(encoding="utf-8")
CARD = "6001200000000010"
TODAY = calendar.to_day(datetime.date.today())


async def northwind(api: Harness, *, activate: bool = True) -> None:
    await api.stub.CreateProgram(admin.CreateProgramRequest(content=DEMO, file_name="demo.yaml"))
    if activate:
        await api.stub.ActivateProgram(
            admin.ActivateProgramRequest(program_id="northwind", version=1)
        )


# --------------------------------------------------------------------------- program files


async def test_program_files_are_created_activated_found_and_read(api: Harness) -> None:
    created = await api.stub.CreateProgram(
        admin.CreateProgramRequest(content=DEMO, file_name="demo.yaml")
    )
    assert (created.program_id, created.version) == ("northwind", 1)
    read = await api.stub.GetProgram(admin.GetProgramRequest(program_id="northwind"))
    assert (read.status, read.name, read.content, list(read.versions)) == (
        admin.PROGRAM_STATUS_INACTIVE,
        "Northwind Rewards",
        DEMO,
        [1],
    )
    assert {(p.id, p.type) for p in read.programs} == {
        ("giftcard", admin.PROGRAM_TYPE_TENDER),
        ("rewards", admin.PROGRAM_TYPE_AWARD),
        ("points", admin.PROGRAM_TYPE_LOYALTY),
    }

    activated = await api.stub.ActivateProgram(
        admin.ActivateProgramRequest(program_id="northwind", version=1)
    )
    assert activated.previous_version == 0
    assert api.registry.for_card(CARD).version == 1, "this process serves it at once"

    updated = await api.stub.UpdateProgram(
        admin.UpdateProgramRequest(content=DEMO.replace("version: 1\n", "version: 2\n", 1))
    )
    assert updated.version == 2
    activated = await api.stub.ActivateProgram(
        admin.ActivateProgramRequest(program_id="northwind", version=2)
    )
    assert activated.previous_version == 1
    assert api.registry.for_card(CARD).version == 2

    page = await api.stub.SearchPrograms(
        admin.SearchProgramsRequest(
            text="north", match=admin.TEXT_MATCH_PARTIAL, type=admin.PROGRAM_TYPE_LOYALTY
        )
    )
    (found,) = page.programs
    assert (found.id, found.program_id, found.version, found.status, found.card_serial_prefix) == (
        "points",
        "northwind",
        2,
        admin.PROGRAM_STATUS_ACTIVE,
        "60012",
    )
    assert page.next_page_token == ""
    first = await api.stub.SearchPrograms(admin.SearchProgramsRequest(page_size=2))
    rest = await api.stub.SearchPrograms(
        admin.SearchProgramsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert [p.id for p in [*first.programs, *rest.programs]] == ["rewards", "points", "giftcard"]

    await api.stub.DeactivateProgram(
        admin.DeactivateProgramRequest(program_id="northwind", version=2)
    )
    assert api.registry.programs() == []
    read = await api.stub.GetProgram(admin.GetProgramRequest(program_id="northwind", version=1))
    assert (read.version, read.status, list(read.versions)) == (
        1,
        admin.PROGRAM_STATUS_INACTIVE,
        [1, 2],
    )


async def test_program_file_errors_carry_their_reasons(api: Harness) -> None:
    await northwind(api, activate=False)
    bad = DEMO.replace('serial_prefix: "60012"', 'serial_prefix: "600"').replace(
        "pin_length: 4", "pin_length: 40"
    )
    failure = await fails(
        api.stub.CreateProgram(admin.CreateProgramRequest(content=bad, file_name="bad.yaml")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FILE",
    )
    violations = errors.bad_request_of(failure)
    assert violations is not None
    assert {v.field for v in violations.field_violations} == {
        "card.serial_prefix",
        "card.pin_length",
    }
    await fails(
        api.stub.CreateProgram(admin.CreateProgramRequest(content=DEMO)),
        grpc.StatusCode.ALREADY_EXISTS,
        "PROGRAM_EXISTS",
    )
    await fails(
        api.stub.UpdateProgram(admin.UpdateProgramRequest(content=DEMO)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "VERSION_EXISTS",
    )
    await fails(
        api.stub.GetProgram(admin.GetProgramRequest(program_id="nobody")),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_PROGRAM",
    )
    await fails(
        api.stub.ActivateProgram(admin.ActivateProgramRequest(program_id="northwind")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await fails(
        api.stub.CreateProgram(admin.CreateProgramRequest(content="x" * (4 * 1024 * 1024 + 1))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FILE_TOO_LARGE",
    )
    await fails(
        api.stub.SearchPrograms(admin.SearchProgramsRequest(card_serial_prefix="6001")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )

    copy = DEMO.replace("id: northwind", "id: copycat", 1)
    await api.stub.CreateProgram(admin.CreateProgramRequest(content=copy))
    await api.stub.ActivateProgram(admin.ActivateProgramRequest(program_id="northwind", version=1))
    await fails(
        api.stub.ActivateProgram(admin.ActivateProgramRequest(program_id="copycat", version=1)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PREFIX_IN_USE",
    )


# --------------------------------------------------------------------------- cards, customers


async def test_cards_and_customers(api: Harness) -> None:
    await northwind(api)
    generated = await api.stub.GenerateCards(
        admin.GenerateCardsRequest(program_id="northwind", series_id="launch", count=3)
    )
    assert [card.number for card in generated.cards] == [
        CARD,
        "6001200000000028",
        "6001200000000036",
    ]
    assert all(len(card.pin) == 4 and card.batch == "stores" for card in generated.cards)
    assert not any(card.active for card in generated.cards)
    assert generated.remaining_count == 4997
    await fails(
        api.stub.GenerateCards(
            admin.GenerateCardsRequest(program_id="northwind", series_id="launch", count=10_001)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    record = (await api.catalog.cards([CARD]))[CARD]
    assert api.catalog.verify_pin(record, generated.cards[0].pin)

    changed = await api.stub.SetBatchStatus(
        admin.SetBatchStatusRequest(
            program_id="northwind",
            series_id="launch",
            batch="stores",
            status=admin.CARD_STATUS_ACTIVE,
            range=admin.CardRange(first_number=CARD, last_number="6001200000000028"),
            location="S001",
        )
    )
    assert changed.changed_count == 2
    expiry = await api.stub.SetBatchExpiry(
        admin.SetBatchExpiryRequest(
            program_id="northwind", series_id="launch", batch="stores", expires_date="2031-12-31"
        )
    )
    assert expiry.changed_count == 3
    await fails(
        api.stub.SetBatchExpiry(
            admin.SetBatchExpiryRequest(
                program_id="northwind", series_id="launch", batch="stores", expires_date="soon"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await fails(
        api.stub.SetBatchStatus(
            admin.SetBatchStatusRequest(
                program_id="northwind", series_id="launch", batch="nope", status=1
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_BATCH",
    )

    enrolled = await api.stub.EnrollCustomer(
        admin.EnrollCustomerRequest(
            customer=common.Customer(
                id="C-1", birth_date="1990-03-04", signup_date="2026-01-15", audiences=["b", "a"]
            )
        )
    )
    assert enrolled.created and list(enrolled.customer.audiences) == ["a", "b"]
    assert enrolled.customer.birth_date == "1990-03-04"
    again = await api.stub.EnrollCustomer(
        admin.EnrollCustomerRequest(customer=common.Customer(id="C-1", birth_date="1990-03-05"))
    )
    assert not again.created and list(again.customer.audiences) == ["a", "b"]
    await api.stub.EnrollCustomer(admin.EnrollCustomerRequest(customer=common.Customer(id="C-2")))
    stored = await api.stub.SetAudiences(
        admin.SetAudiencesRequest(customer_id="C-1", audiences=["vip:A", "newsletter"])
    )
    assert list(stored.audiences) == ["newsletter", "vip:A"]

    await api.stub.RegisterCard(admin.RegisterCardRequest(account=CARD, customer_id="C-1"))
    await fails(
        api.stub.RegisterCard(admin.RegisterCardRequest(account=CARD, customer_id="C-2")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CARD_REGISTERED",
    )
    await fails(
        api.stub.RegisterCard(admin.RegisterCardRequest(account=CARD, customer_id="C-9")),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_CUSTOMER",
    )
    account = await api.stub.GetAccount(admin.GetAccountRequest(account=CARD))
    # Registering the card issued the demo's certificate given on registration, once: the
    # same call again (a retry) issues nothing more.
    assert (account.status, account.customer_id, account.version) == (
        admin.ACCOUNT_STATUS_ACTIVE,
        "C-1",
        1,
    )
    assert [(held.rule, held.program) for held in account.awards] == [("vip-lounge", "rewards")]
    await api.stub.RegisterCard(admin.RegisterCardRequest(account=CARD, customer_id="C-1"))
    again = await api.stub.GetAccount(admin.GetAccountRequest(account=CARD))
    assert (again.version, len(again.awards)) == (1, 1)
    unknown = await fails(
        api.stub.GetAccount(admin.GetAccountRequest(account="6001299999999999")),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_CARD",
    )
    assert "6001299999999999" not in (unknown.details() or "")  # masked, as transactions do
    taken = await fails(
        api.stub.RegisterCard(admin.RegisterCardRequest(account=CARD, customer_id="C-2")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CARD_REGISTERED",
    )
    assert CARD not in (taken.details() or "")


async def test_an_import_with_a_bad_line_is_refused_whole(api: Harness) -> None:
    partners = DEMO.replace(
        "locations:",
        "  - id: partners\n    name: Partners\n    import_file: partners.csv\n"
        "    batches:\n      - {name: all, count: 10}\n\nlocations:",
        1,
    )
    await api.stub.CreateProgram(admin.CreateProgramRequest(content=partners))
    lines = ["6001290000001,,25.00,,", "6001390000002,,,,", "6001290000003,,,,"]
    content = "\n".join(line + "," * 10 for line in lines)
    failure = await fails(
        api.stub.ImportCards(
            admin.ImportCardsRequest(
                program_id="northwind", series_id="partners", content=content, file_name="p.csv"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FILE",
    )
    violations = errors.bad_request_of(failure)
    assert violations is not None
    assert [v.field for v in violations.field_violations] == ["line 2, CARD_NUMBER"]
    assert await api.catalog.cards(["6001290000001", "6001290000003"]) == {}

    content = "\n".join(line + "," * 10 for line in (lines[0], lines[2]))
    imported = await api.stub.ImportCards(
        admin.ImportCardsRequest(program_id="northwind", series_id="partners", content=content)
    )
    assert (imported.imported_count, imported.activated_count) == (2, 1)


# --------------------------------------------------------------------------- accounts


def card_state() -> AccountState:
    day = TODAY - 10
    points = LoyaltyAccount(
        program="points",
        level="gold",
        created_day=day,
        level_since_day=day,
        last_activity_day=day,
        lots=[
            Lot(day, "base", "regular", 100, day, day + 700, 1),
            Lot(day, "bonus", "bonus", 50, day, day + 700, 1),
            Lot(day, "later", "regular", 30, TODAY + 5, None, 1),
        ],
        earned_ltd=180,
        earned_ytd=180,
        ytd_year=calendar.year_of(TODAY),
        awards=[Award("NW-1", "coupon", "coupon-rule", "points", day, None, 1)],
    )
    rewards = AwardAccount(
        program="rewards",
        value=[ValueLot(day, 500, None, "cashback")],
        awards=[
            Award("W-1", "certificate", "welcome", "rewards", day, TODAY + 30, 1),
            Award("W-0", "certificate", "welcome", "rewards", day, TODAY - 1, 1),
        ],
    )
    return AccountState(
        CARD,
        customer=None,
        tender=TenderAccount(status="active", balance=5000, activated_day=day),
        awards={"rewards": rewards},
        loyalty={"points": points},
    )


async def commit_card(store: Store, postings: list[Posting]) -> None:
    entries = [LedgerEntry(CARD, f"r{index}", 0, p) for index, p in enumerate(postings, 1)]
    outcome = await store.commit(
        CommitBatch(accounts=[AccountWrite(card_state(), 0)], postings=entries)
    )
    assert outcome.committed


async def test_an_account_and_its_ledger_are_read(api: Harness) -> None:
    await northwind(api)
    await api.catalog.generate_cards("northwind", "launch", 1)
    postings = [
        Posting("points", 1, "points", "regular", 100, "base", TODAY - 10),
        Posting("giftcard", 1, "tender", "activate", 5000, "", TODAY - 10),
        Posting("points", 1, "points", "bonus", 50, "bonus", TODAY - 10),
    ]
    await commit_card(api.store, postings)

    account = await api.stub.GetAccount(admin.GetAccountRequest(account=CARD))
    assert account.version == 1
    assert account.status == admin.ACCOUNT_STATUS_INACTIVE, "the card's batch is not active"
    assert dict(account.balances) == {
        "points:points": 150,
        "escrow:points": 30,
        "tender": 5000,
        "award:rewards": 500,
    }
    assert dict(account.balance_exponents) == {
        "points:points": 0,
        "escrow:points": 0,
        "tender": 2,
        "award:rewards": 2,
    }
    (loyalty,) = account.loyalty
    assert (loyalty.level, loyalty.available.units, loyalty.escrowed.units) == ("gold", 150, 30)
    assert (loyalty.earned_ytd.units, loyalty.earned_ltd.units) == (180, 180)
    assert [(lot.points.units, lot.lot_count, lot.expires_date) for lot in loyalty.lots] == [
        (150, 2, calendar.format_day(TODAY - 10 + 700)),
        (30, 1, ""),
    ]
    assert (account.tender.program, account.tender.balance.units) == ("giftcard", 5000)
    assert account.tender.balance.currency == "USD"
    assert account.tender.status == admin.TENDER_ACCOUNT_STATUS_ACTIVE
    (value,) = account.award_values
    assert (value.program, value.balance.units, value.balance.currency) == ("rewards", 500, "USD")
    assert sorted(award.code for award in account.awards) == ["NW-1", "W-1"]

    first = await api.stub.ListLedger(admin.ListLedgerRequest(account=CARD, page_size=2))
    assert [entry.sequence for entry in first.entries] == [3, 2]
    assert [entry.posting.kind for entry in first.entries] == ["bonus", "activate"]
    assert first.entries[1].posting.balance_name == "tender"
    assert first.entries[1].posting.balance == common.POSTING_BALANCE_TENDER
    assert first.entries[0].committed_time.seconds > 0
    assert dict(first.balance_exponents) == {"points:points": 0, "tender": 2}
    rest = await api.stub.ListLedger(
        admin.ListLedgerRequest(account=CARD, page_size=2, page_token=first.next_page_token)
    )
    assert [entry.request_id for entry in rest.entries] == ["r1"]
    assert rest.next_page_token == ""
    only = await api.stub.ListLedger(admin.ListLedgerRequest(account=CARD, program="points"))
    assert [entry.sequence for entry in only.entries] == [3, 1]
    await fails(
        api.stub.ListLedger(admin.ListLedgerRequest(account=CARD, page_token="garbage")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


# --------------------------------------------------------------------------- the demo


async def test_the_demo_loads_once_and_is_served(api: Harness) -> None:
    summary = await load_demo(api.catalog, api.registry, cards=25)
    assert (summary.program_id, summary.version, summary.cards, summary.generated) == (
        "northwind",
        1,
        25,
        25,
    )
    assert summary.first_card == CARD and summary.created
    assert summary.first_pin == DEMO_PIN
    assert summary.customers == ("DEMO-1", "DEMO-2", "DEMO-3")
    again = await load_demo(api.catalog, api.registry, cards=30)
    assert (again.cards, again.generated, again.created, again.first_pin) == (
        30,
        5,
        False,
        DEMO_PIN,
    )
    assert again.first_cards == summary.first_cards
    assert api.registry.for_card(CARD).id == "northwind"

    account = await api.stub.GetAccount(admin.GetAccountRequest(account=CARD))
    assert (account.status, account.customer_id) == (admin.ACCOUNT_STATUS_ACTIVE, "DEMO-1")
    records = await api.catalog.cards(list(again.first_cards))
    assert all(record.status == "active" for record in records.values())


async def test_text_postgresql_cannot_store_is_refused_naming_the_field(api: Harness) -> None:
    await northwind(api)
    customer = common.Customer(id="C-NUL", birth_date="1990-01-01", signup_date="2026-01-01")
    await api.stub.EnrollCustomer(admin.EnrollCustomerRequest(customer=customer))
    calls = {
        "program_id": api.stub.GetProgram(admin.GetProgramRequest(program_id="north\x00wind")),
        "customer.id": api.stub.EnrollCustomer(
            admin.EnrollCustomerRequest(customer=common.Customer(id="C\x00-2"))
        ),
        "audiences": api.stub.SetAudiences(
            admin.SetAudiencesRequest(customer_id="C-NUL", audiences=["news\x00letter"])
        ),
        "customer_id": api.stub.SetAudiences(
            admin.SetAudiencesRequest(customer_id="C\x00NUL", audiences=["newsletter"])
        ),
    }
    for field, call in calls.items():
        failure = await fails(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert field in (failure.details() or ""), failure.details()
    # Nothing was written: the customer's lists are as enrolled.
    read = await api.catalog.customers(["C-NUL"])
    assert read["C-NUL"].audiences == frozenset()

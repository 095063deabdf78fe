"""The catalog against a real PostgreSQL: program files, cards and customers.

- a program file is validated when stored (every problem named with its field), stored
  inactive, and one version at a time is active; ids and versions cannot be reused;
- two active program files never share a card serial prefix;
- searches filter by text (exact or partial), type, status and prefix, 25 at most a page;
- generated cards continue their series' numbering and never repeat; PINs are kept as
  keyed hashes only;
- an import file is checked whole: a bad line is named and nothing is written;
- a card is registered to one customer at most.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from stdnum import luhn

from processor import calendar
from processor.errors import InputFileError, InvalidFieldError, NotFoundError
from processor.store import CommitBatch, IdempotencyRecord, Store
from processor.store.cards import DEVELOPMENT_PIN_KEY, pin_hash
from processor.store.catalog import Catalog
from processor.store.catalog_base import ConflictError
from processor.store.programs import AlreadyExistsError, SearchPage

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DEMO = (ROOT / "examples" / "programs" / "demo.yaml").read_text(encoding="utf-8")
IMPORT_HEADER = (ROOT / "examples" / "cards" / "demo_import.csv").read_text().splitlines()[0]
PIN_KEY = b"test pin key"

PROGRAM = """
id: {id}
version: {version}
name: {name}
card:
  type: {id} card
  serial_prefix: "{prefix}"
  generate_pin: true
  pin_length: 4
series:
  - id: main
    name: Main
    total_cards: 30
    expiry_type: fixed
    expiry_start: 2026-01-01
    expiry_end: 2030-12-31
    batches:
      - {{name: first, count: 10, activate: true}}
      - {{name: second, count: 20}}
  - id: partners
    name: Partners
    import_file: partners.csv
    batches:
      - {{name: all, count: 5}}
tender:
  id: {id}-gift
  name: {name} gift card
  start_date: 2026-01-01
  currency: USD
"""


def program(
    id: str = "acme", version: int = 1, name: str = "Acme Rewards", prefix: str = "70001"
) -> str:
    return PROGRAM.format(id=id, version=version, name=name, prefix=prefix)


def import_line(number: str, pin: str = "", balances: str = ",,") -> str:
    return f"{number},{pin},{balances}" + "," * 10


@pytest_asyncio.fixture
async def catalog(store: Store) -> AsyncIterator[Catalog]:
    yield Catalog(store, pin_key=PIN_KEY)


# --------------------------------------------------------------------------- program files


async def test_a_program_is_stored_inactive_and_one_version_is_active(catalog: Catalog) -> None:
    assert await catalog.create_program(program(), "acme.yaml") == ("acme", 1)
    stored = await catalog.get("acme")
    assert (stored.status, stored.version, stored.versions) == ("inactive", 1, (1,))
    assert stored.source == program()
    assert [(part.id, part.type) for part in stored.parts] == [("acme-gift", "tender")]
    assert await catalog.active_programs() == []

    token = await catalog.registry_token()
    assert await catalog.activate("acme", 1) == 0
    assert await catalog.registry_token() != token
    assert await catalog.active_programs() == [("acme", 1, program())]

    assert await catalog.update_program(program(version=2), "acme.yaml") == ("acme", 2)
    assert (await catalog.get("acme")).version == 1, "version 0 reads the active one"
    assert await catalog.activate("acme", 2) == 1
    assert (await catalog.get("acme", 1)).status == "inactive"
    assert (await catalog.get("acme", 2)).status == "active"
    token = await catalog.registry_token()
    assert await catalog.activate("acme", 2) == 2, "activating the active version is a no-op"
    assert await catalog.registry_token() == token

    assert await catalog.deactivate("acme", 2) is True
    assert await catalog.registry_token() != token
    token = await catalog.registry_token()
    assert await catalog.deactivate("acme", 2) is False
    assert await catalog.registry_token() == token
    assert await catalog.active_programs() == []
    assert (await catalog.get("acme")).version == 2, "without an active one, the latest"


async def test_ids_and_versions_are_not_reused(catalog: Catalog) -> None:
    await catalog.create_program(program(), "acme.yaml")
    with pytest.raises(AlreadyExistsError) as exists:
        await catalog.create_program(program(version=2), "acme.yaml")
    assert exists.value.reason == "PROGRAM_EXISTS"
    await catalog.update_program(program(version=3), "acme.yaml")
    for version in (3, 2):
        with pytest.raises(ConflictError) as stale:
            await catalog.update_program(program(version=version), "acme.yaml")
        assert stale.value.reason == "VERSION_EXISTS"
    with pytest.raises(NotFoundError) as unknown:
        await catalog.update_program(program(id="other", prefix="70002"), "other.yaml")
    assert unknown.value.reason == "UNKNOWN_PROGRAM"
    for call in (catalog.activate("acme", 7), catalog.deactivate("nobody", 1)):
        with pytest.raises(NotFoundError):
            await call


async def test_a_bad_program_file_names_each_field_and_stores_nothing(catalog: Catalog) -> None:
    bad = program(prefix="12").replace("currency: USD", "currency: USD\n  colour: red")
    with pytest.raises(InputFileError) as invalid:
        await catalog.create_program(bad, "acme.yaml")
    paths = {problem.path for problem in invalid.value.problems}
    assert {"card.serial_prefix", "tender.colour"} <= paths
    assert invalid.value.file == "acme.yaml"
    assert "acme.yaml: card.serial_prefix" in str(invalid.value)

    with pytest.raises(InputFileError) as broken:
        await catalog.create_program("id: [unclosed", "broken.yaml")
    assert "invalid YAML" in str(broken.value)
    with pytest.raises(InputFileError) as json_error:
        await catalog.create_program("{", "broken.json")
    assert "invalid JSON" in str(json_error.value)
    with pytest.raises(NotFoundError):
        await catalog.get("acme")


async def test_a_json_program_file_is_stored_and_read_back(catalog: Catalog) -> None:
    text = (
        '{"id": "js", "name": "JSON", "card": {"type": "J", "serial_prefix": "70009"},'
        ' "tender": {"id": "js-gift", "name": "G", "start_date": "2026-01-01"}}'
    )
    assert await catalog.create_program(text, "js.json") == ("js", 1)
    await catalog.activate("js", 1)
    assert (await catalog.get("js")).card_type == "J"


async def test_two_active_programs_never_share_a_serial_prefix(catalog: Catalog) -> None:
    await catalog.create_program(program(), "acme.yaml")
    await catalog.create_program(program(id="copy", name="Copycat"), "copy.yaml")
    await catalog.activate("acme", 1)
    with pytest.raises(ConflictError) as clash:
        await catalog.activate("copy", 1)
    assert clash.value.reason == "PREFIX_IN_USE"
    assert "acme" in str(clash.value)
    assert [row[0] for row in await catalog.active_programs()] == ["acme"]
    await catalog.deactivate("acme", 1)
    await catalog.activate("copy", 1)
    assert [row[0] for row in await catalog.active_programs()] == ["copy"]


async def test_search_filters_and_pages(catalog: Catalog) -> None:
    await catalog.create_program(DEMO, "demo.yaml")  # northwind: tender, award, loyalty
    await catalog.activate("northwind", 1)
    for index in range(1, 6):
        await catalog.create_program(
            program(id=f"acme{index}", name=f"Acme {index}", prefix=f"7000{index}"), "a.yaml"
        )
    await catalog.activate("acme2", 1)

    def ids(page: SearchPage) -> list[tuple[str, str]]:
        return [(row.program_id, row.part.id) for row in page.programs]

    everything = await catalog.search()
    assert ids(everything) == [
        ("northwind", "rewards"),
        ("northwind", "points"),
        ("northwind", "giftcard"),
        *[(f"acme{i}", f"acme{i}-gift") for i in range(5, 0, -1)],
    ], "sorted by program file id, descending"
    assert ids(await catalog.search(text="NORTHWIND POINTS", exact=True)) == [
        ("northwind", "points")
    ]
    assert ids(await catalog.search(text="acme", exact=True)) == []
    assert len((await catalog.search(text="cme")).programs) == 5
    assert ids(await catalog.search(type="loyalty")) == [("northwind", "points")]
    assert ids(await catalog.search(type="tender", status="active")) == [
        ("northwind", "giftcard"),
        ("acme2", "acme2-gift"),
    ]
    assert len((await catalog.search(status="inactive")).programs) == 4
    assert ids(await catalog.search(serial_prefix="70003")) == [("acme3", "acme3-gift")]
    northwind = (await catalog.search(type="award")).programs[0]
    assert (northwind.card_type, northwind.serial_prefix, northwind.version) == (
        "Northwind Rewards Card",
        "60012",
        1,
    )

    seen: list[tuple[str, str]] = []
    token = ""
    pages = 0
    while True:
        page = await catalog.search(page_size=3, page_token=token)
        seen += ids(page)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and seen == ids(everything)

    with pytest.raises(InvalidFieldError):
        await catalog.search(page_token="not a token")
    with pytest.raises(InvalidFieldError):
        await catalog.search(serial_prefix="7000")
    with pytest.raises(InvalidFieldError):
        await catalog.search(page_size=26)


# --------------------------------------------------------------------------- cards


async def test_generated_numbers_continue_the_series_and_never_repeat(catalog: Catalog) -> None:
    await catalog.create_program(program(), "acme.yaml")
    first = await catalog.generate_cards("acme", "main", 8)
    second = await catalog.generate_cards("acme", "main", 4)
    numbers = [card.number for card in first + second]
    assert numbers[0] == "7000100000000011"
    assert [int(number[5:-1]) for number in numbers] == list(range(1, 13))
    assert all(luhn.is_valid(number) for number in numbers)
    assert len(set(numbers)) == 12
    assert [card.batch for card in first + second] == ["first"] * 10 + ["second"] * 2
    assert [card.active for card in second] == [True, True, False, False]
    assert all(card.pin is not None and len(card.pin) == 4 for card in first)
    assert await catalog.remaining_cards("acme", "main") == 18

    records = await catalog.cards([*numbers, "7000199999999999"])
    assert sorted(records) == sorted(numbers)
    record = records[numbers[0]]
    assert (record.program_id, record.series, record.batch, record.status) == (
        "acme",
        "main",
        "first",
        "active",
    )
    assert record.expires_day == calendar.parse_day("2030-12-31")
    assert records[numbers[-1]].status == "inactive"

    with pytest.raises(ConflictError) as exhausted:
        await catalog.generate_cards("acme", "main", 19)
    assert exhausted.value.reason == "SERIES_EXHAUSTED"
    rest = await catalog.generate_cards("acme", "main", 18)
    assert int(rest[-1].number[5:-1]) == 30
    for count in (0, 10_001):
        with pytest.raises(InvalidFieldError):
            await catalog.generate_cards("acme", "main", count)
    with pytest.raises(InvalidFieldError) as imported:
        await catalog.generate_cards("acme", "partners", 1)
    assert imported.value.reason == "SERIES_IMPORTED"
    with pytest.raises(NotFoundError) as unknown:
        await catalog.generate_cards("acme", "nope", 1)
    assert unknown.value.reason == "UNKNOWN_SERIES"


async def test_only_keyed_pin_hashes_are_stored(catalog: Catalog, store: Store) -> None:
    await catalog.create_program(program(), "acme.yaml")
    (card,) = await catalog.generate_cards("acme", "main", 1)
    assert card.pin is not None
    record = (await catalog.cards([card.number]))[card.number]
    assert record.pin_hash == pin_hash(PIN_KEY, card.number, card.pin)
    assert card.pin.encode() not in (record.pin_hash or b"")
    assert catalog.verify_pin(record, card.pin)
    wrong = "0000" if card.pin != "0000" else "1111"
    assert not catalog.verify_pin(record, wrong)
    other_key = Catalog(store, pin_key=DEVELOPMENT_PIN_KEY)
    assert not other_key.verify_pin(record, card.pin), "the hash is keyed by the server secret"


async def test_an_import_creates_cards_and_queues_opening_balances(catalog: Catalog) -> None:
    await catalog.create_program(program(), "acme.yaml")
    lines = [
        IMPORT_HEADER,
        import_line("7000190000001", "1234", "25.00,,"),
        import_line("7000190000002"),
        import_line("7000190000003", "", "5,,"),
    ]
    summary = await catalog.import_cards("acme", "partners", "\n".join(lines), "partners.csv")
    assert (summary.imported_count, summary.activated_count) == (3, 2)
    records = await catalog.cards(["7000190000001", "7000190000002", "7000190000003"])
    assert [records[n].status for n in sorted(records)] == ["active", "inactive", "active"]
    assert catalog.verify_pin(records["7000190000001"], "1234")
    assert records["7000190000002"].pin_hash is None
    assert not catalog.verify_pin(records["7000190000002"], "")
    opening = await catalog.opening_balances()
    assert [(row[0], row[3]) for row in opening] == [
        ("7000190000001", 2500),
        ("7000190000003", 500),
    ]

    with pytest.raises(InputFileError) as again:
        await catalog.import_cards("acme", "partners", import_line("7000190000002"), "more.csv")
    assert [str(problem) for problem in again.value.problems] == [
        "line 1, CARD_NUMBER: card 7000190000002 already exists"
    ]
    with pytest.raises(InputFileError) as full:
        text = "\n".join(import_line(f"700019000001{digit}") for digit in range(3))
        await catalog.import_cards("acme", "partners", text, "more.csv")
    assert "room for 2" in str(full.value)
    with pytest.raises(InvalidFieldError) as generated:
        await catalog.import_cards("acme", "main", import_line("7000190000009"), "x.csv")
    assert generated.value.reason == "SERIES_GENERATED"


async def test_an_import_with_a_bad_line_names_it_and_writes_nothing(catalog: Catalog) -> None:
    await catalog.create_program(program(), "acme.yaml")
    lines = [
        IMPORT_HEADER,
        import_line("7000190000001"),
        import_line("7000290000002"),  # another prefix
        import_line("7000190000003", "", "-5,,"),
    ]
    with pytest.raises(InputFileError) as invalid:
        await catalog.import_cards("acme", "partners", "\n".join(lines), "partners.csv")
    assert invalid.value.file == "partners.csv"
    assert [problem.path for problem in invalid.value.problems] == [
        "line 3, CARD_NUMBER",
        "line 4, TENDER_BALANCE",
    ]
    assert await catalog.cards(["7000190000001", "7000190000003"]) == {}
    assert await catalog.opening_balances() == []


async def test_batch_status_range_and_expiry(catalog: Catalog) -> None:
    await catalog.create_program(program(), "acme.yaml")
    cards = await catalog.generate_cards("acme", "main", 15)
    second = [card.number for card in cards if card.batch == "second"]
    assert len(second) == 5
    assert (
        await catalog.set_number_range_status(
            "acme", "main", "second", second[1], second[2], "active"
        )
        == 2
    )
    assert await catalog.set_batch_status("acme", "main", "second", "active") == 3
    assert await catalog.set_batch_status("acme", "main", "second", "active") == 0
    assert await catalog.set_batch_status("acme", "main", "first", "inactive") == 10
    statuses = {n: r.status for n, r in (await catalog.cards([c.number for c in cards])).items()}
    assert sorted(set(statuses.values())) == ["active", "inactive"]
    assert all(statuses[number] == "active" for number in second)

    yesterday = calendar.to_day(datetime.date.today()) - 1
    assert (
        await catalog.set_batch_expiry(
            "acme", "main", "second", yesterday, first_number=second[0], last_number=second[0]
        )
        == 1
    )
    records = await catalog.cards(second)
    assert records[second[0]].status == "expired", "an active card past its last day"
    assert records[second[1]].status == "active"

    with pytest.raises(NotFoundError) as batch:
        await catalog.set_batch_status("acme", "main", "third", "active")
    assert batch.value.reason == "UNKNOWN_BATCH"
    with pytest.raises(InvalidFieldError):
        await catalog.set_batch_status(
            "acme", "main", "second", "active", first_number=second[2], last_number=second[1]
        )


async def test_activation_amounts_are_queued_not_posted(catalog: Catalog) -> None:
    await catalog.create_program(program(), "acme.yaml")
    cards = await catalog.generate_cards("acme", "main", 12)
    changed = await catalog.set_batch_status(
        "acme", "main", "second", "active", location="S1", activation_amount=1500,
        activation_currency="USD",
    )  # fmt: skip
    assert changed == 2
    opening = await catalog.opening_balances()
    assert sorted((row[0], row[3], row[6]) for row in opening) == [
        (card.number, 1500, "S1") for card in cards[10:]
    ]
    with pytest.raises(InvalidFieldError):
        await catalog.set_batch_status(
            "acme", "main", "second", "active", activation_amount=1, activation_currency="EUR"
        )


# --------------------------------------------------------------------------- customers


async def test_customers_and_registration(catalog: Catalog) -> None:
    await catalog.create_program(program(), "acme.yaml")
    first, second = await catalog.generate_cards("acme", "main", 2)
    customer, created = await catalog.enroll("C-1", "1990-03-04", "2026-01-15", ["vip", "news"])
    assert created and customer.audiences == frozenset({"vip", "news"})
    assert customer.birth_day == calendar.parse_day("1990-03-04")
    updated, created = await catalog.enroll("C-1", "1990-03-05")
    assert not created
    assert (updated.birth_day, updated.signup_day) == (calendar.parse_day("1990-03-05"), None)
    assert updated.audiences == frozenset({"vip", "news"}), "no lists keeps the memberships"
    assert await catalog.set_audiences("C-1", ["b", "a", "b"]) == ("a", "b")
    await catalog.enroll("C-2")
    assert (await catalog.customers(["C-1", "C-9"]))["C-1"].audiences == frozenset({"a", "b"})
    assert set(await catalog.customers(["C-1", "C-2", "C-9"])) == {"C-1", "C-2"}

    await catalog.register_card(first.number, "C-1")
    await catalog.register_card(first.number, "C-1")  # the same customer again: no change
    with pytest.raises(ConflictError) as taken:
        await catalog.register_card(first.number, "C-2")
    assert taken.value.reason == "CARD_REGISTERED"
    assert (await catalog.cards([first.number]))[first.number].customer_id == "C-1"
    with pytest.raises(NotFoundError) as no_customer:
        await catalog.register_card(second.number, "C-9")
    assert no_customer.value.reason == "UNKNOWN_CUSTOMER"
    with pytest.raises(NotFoundError) as no_card:
        await catalog.register_card("7000199999999999", "C-1")
    assert no_card.value.reason == "UNKNOWN_CARD"
    with pytest.raises(NotFoundError):
        await catalog.set_audiences("C-9", [])
    with pytest.raises(InvalidFieldError):
        await catalog.enroll("C-3", "1990-02-30")
    with pytest.raises(InvalidFieldError):
        await catalog.set_audiences("C-1", [f"list{i}" for i in range(257)])
    stored = await catalog.get("acme")
    assert (stored.account_count, stored.member_count) == (2, 1)


async def test_a_batch_lookup_reads_cards_customers_and_posted_ids_at_once(
    catalog: Catalog, store: Store
) -> None:
    await catalog.create_program(program(), "acme.yaml")
    registered, anonymous = await catalog.generate_cards("acme", "main", 2)
    await catalog.enroll("C-1", "1990-03-04", audiences=["vip"])
    await catalog.register_card(registered.number, "C-1")
    posted = CommitBatch(idempotency=[IdempotencyRecord(anonymous.number, "r-1", b"h", b"answer")])
    assert (await store.commit(posted)).committed

    lookup = await catalog.look_up_batch(
        [registered.number, anonymous.number, "7000199999999999"],
        [(anonymous.number, "r-1"), (anonymous.number, "r-2"), (registered.number, "r-1")],
    )

    assert lookup.cards == await catalog.cards([registered.number, anonymous.number])
    assert lookup.customers == await catalog.customers(["C-1"])
    assert lookup.customers["C-1"].audiences == frozenset({"vip"})
    assert set(lookup.seen) == {(anonymous.number, "r-1")}  # only the (card, id) posted
    assert lookup.seen[anonymous.number, "r-1"] == (b"h", b"answer")
    empty = await catalog.look_up_batch([], [])
    assert (empty.cards, empty.customers, empty.seen) == ({}, {}, {})


async def test_a_program_read_without_counts_skips_counting_its_cards(catalog: Catalog) -> None:
    await catalog.create_program(program(), "acme.yaml")
    await catalog.generate_cards("acme", "main", 6)
    counted = await catalog.get("acme")
    uncounted = await catalog.get("acme", counts=False)
    assert counted.account_count == 6
    assert (uncounted.account_count, uncounted.member_count) == (0, 0)
    assert (uncounted.id, uncounted.version, uncounted.parts) == (
        counted.id,
        counted.version,
        counted.parts,
    )

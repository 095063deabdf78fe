"""Tasks on real PostgreSQL: the demo's task rules make a manager's review of an upgrade to
platinum and a mug to mail with each free-coffee certificate, once per event however often
it is delivered; ListTasks, ClaimTask and CompleteTask with their refusals; and task rules
a program file gets wrong, named."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import yaml
from plugins.posting import post, registry_of, run_job
from plugins.server import Served, line, purchase

from processor import calendar, proto
from processor.engine.types import Line, Purchase
from processor.errors import InputFileError
from processor.outbox.delivery import Deliveries
from processor.outbox.tasks import TaskMaker
from processor.program.loader import load_program, validate_program
from processor.service import errors
from processor.store.catalog_base import encode_page_token
from processor.store.event_log import EventLog, EventRow
from processor.store.events import AWARD_ISSUED, TASK_CREATED, Event
from processor.store.ledger import Store
from processor.store.tasks import Tasks

pytestmark = pytest.mark.integration

admin = proto.admin
ROOT = Path(__file__).resolve().parents[1]


async def tasks_of(served: Served, count: int, **request: Any) -> list[Any]:
    """ListTasks once ``count`` tasks are there (the server's task maker runs every 0.2 s)."""
    for _ in range(300):
        page = await served.admin.ListTasks(admin.ListTasksRequest(**request), timeout=10)
        if len(page.tasks) >= count:
            return list(page.tasks)
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} tasks: {page.tasks}")


async def refused(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert (failure.value.code(), errors.reason_of(failure.value)) == (code, reason)


async def test_an_upgrade_to_platinum_makes_a_review_claimed_and_completed_once(
    served: Served, cards: list[str]
) -> None:
    card = cards[24]
    # $5,000.00: 5,000 stars move the card silver -> gold -> platinum in one transaction.
    answer = await served.transactions.PostTransaction(
        purchase(card, "big-1", lines=[line(1, 500_000)]), timeout=10
    )
    assert [(m.from_level, m.to_level) for m in answer.result.moves] == [
        ("silver", "gold"), ("gold", "platinum"),
    ]  # fmt: skip
    (task,) = await tasks_of(served, 1)
    assert (task.rule, task.title, task.team, task.program, task.account) == (
        "review-platinum", "Review the upgrade to Platinum", "loyalty-managers", "points", card,
    )  # fmt: skip
    assert task.event_key == f"{card}/big-1/1"  # the second move of the request
    assert dict(task.details) == {
        "kind": "level_moved", "move": "advancement", "rule": "to-platinum",
        "from_level": "gold", "to_level": "platinum",
    }  # fmt: skip
    assert task.status == admin.TASK_STATUS_OPEN
    made = await served.admin.ListEvents(
        admin.ListEventsRequest(kinds=[admin.EVENT_KIND_TASK_CREATED]), timeout=10
    )
    (event,) = made.events
    assert (event.key, event.account, event.request_id) == (
        f"{card}/task:{task.task_id}/0", card, f"task:{task.task_id}",
    )  # fmt: skip
    assert event.task_created == admin.TaskCreated(
        task_id=task.task_id, rule="review-platinum", title=task.title,
        team="loyalty-managers", event_key=task.event_key,
    )  # fmt: skip

    claimed = (await served.admin.ClaimTask(admin.ClaimTaskRequest(task_id=task.task_id))).task
    assert claimed.status == admin.TASK_STATUS_CLAIMED
    assert claimed.claimed_by.startswith("key:") and claimed.HasField("claimed_time")
    await refused(
        served.admin.ClaimTask(admin.ClaimTaskRequest(task_id=task.task_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TASK_CLAIMED",
    )
    done = await served.admin.CompleteTask(
        admin.CompleteTaskRequest(task_id=task.task_id, outcome="approved; welcome pack sent")
    )
    assert (done.task.status, done.task.outcome) == (
        admin.TASK_STATUS_DONE, "approved; welcome pack sent",
    )  # fmt: skip
    await refused(
        served.admin.CompleteTask(admin.CompleteTaskRequest(task_id=task.task_id, outcome="x")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TASK_DONE",
    )
    # Done is no longer work to do; asked for, it is listed.
    assert (await served.admin.ListTasks(admin.ListTasksRequest())).tasks == []
    listed = await served.admin.ListTasks(
        admin.ListTasksRequest(statuses=[admin.TASK_STATUS_DONE], team="loyalty-managers")
    )
    assert [t.task_id for t in listed.tasks] == [task.task_id]


INVALID = (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("rpc", "request_", "refusal"),
    [
        ("ClaimTask", admin.ClaimTaskRequest(task_id=999), (NOT_FOUND, "UNKNOWN_TASK")),
        ("ClaimTask", admin.ClaimTaskRequest(), INVALID),
        ("CompleteTask", admin.CompleteTaskRequest(task_id=1), INVALID),
        ("CompleteTask", admin.CompleteTaskRequest(task_id=5, outcome="ok\x00"), INVALID),
        ("ListTasks", admin.ListTasksRequest(statuses=[0]), INVALID),
        ("ListTasks", admin.ListTasksRequest(page_token="nonsense"), INVALID),
        ("ListTasks", admin.ListTasksRequest(page_token=encode_page_token([True])), INVALID),
        ("ListTasks", admin.ListTasksRequest(team="x" * 101), INVALID),
    ],
)  # fmt: skip
async def test_a_bad_task_request_is_refused_with_its_reason(
    served: Served, rpc: str, request_: Any, refusal: tuple[grpc.StatusCode, str]
) -> None:
    await refused(getattr(served.admin, rpc)(request_, timeout=10), *refusal)


async def test_the_coffee_certificate_job_makes_a_mug_to_mail_once_however_often_delivered(
    store: Store, cards: list[str]
) -> None:
    registry = await registry_of(store)
    card = cards[1]
    day = calendar.parse_day("2026-03-04")
    sale = Purchase(
        "s1", card, day, 13 * 3600, "S003", card_present=True, pin_verified=True,
        lines=(Line(1, "JACKET", 35_000, 1, ("OUTERWEAR",)),),
    )  # fmt: skip
    await post(store, registry, [sale])
    await run_job(store, registry, "create-loyalty-award", "2026-03-05")
    await EventLog(store).position()
    tasks = Tasks(store)
    maker = TaskMaker(tasks, registry)
    assert await Deliveries(store).deliver_once(maker) == 1
    # Delivered again (an answer lost): the same event makes no second task.
    rows = await EventLog(store).after(0, 10)
    await maker.send(rows)
    (task,) = await tasks.page()
    assert (task.rule, task.team, task.account_id, task.details["award_rule"]) == (
        "mail-coffee-mug", "warehouse", card, "coffee",
    )  # fmt: skip
    assert task.event_key == f"{card}/job:create-loyalty-award:2026-03-05:{card}/0"
    # Each task made is itself an event, written with it, once: a notification service
    # following the events tells the warehouse.
    await EventLog(store).position()
    told = [row.event for row in await EventLog(store).after(0, 10, kinds=[TASK_CREATED])]
    assert [(e.key, e.program, e.day) for e in told] == [
        (f"{card}/task:{task.id}/0", "points", calendar.parse_day("2026-03-05"))
    ]
    assert dict(told[0].data) == {
        "task_id": task.id, "rule": "mail-coffee-mug", "title": task.title,
        "team": "warehouse", "event_key": task.event_key,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "field", "why"),
    [
        ({"to_level": "diamond"}, "to_level", "unknown level 'diamond'"),
        ({"when": "award_issued", "award_rule": "nothing"}, "award_rule", "unknown award rule"),
        ({"award_rule": "coffee"}, "award_rule", "has no meaning for level_moved tasks"),
        ({"when": "award_issued", "move": "advancement"}, "move", "has no meaning"),
    ],
)
def test_a_task_rule_a_program_file_gets_wrong_is_named(
    rule: dict[str, str], field: str, why: str
) -> None:
    data = yaml.safe_load((ROOT / "examples" / "programs" / "demo.yaml").read_text())
    task = {"id": "t", "name": "Do it", "when": "level_moved", "team": "ops", **rule}
    data["loyalty_programs"][0]["task_rules"] = [task]
    with pytest.raises(InputFileError) as error:
        validate_program("demo.yaml", data)
    paths = [problem.path for problem in error.value.problems]
    assert f"loyalty_programs[0].task_rules[0].{field}" in paths, error.value.problems
    assert why in str(error.value)


class Kept:
    """Tasks made, kept in memory."""

    def __init__(self) -> None:
        self.made: list[Any] = []

    async def add(self, tasks: list[Any]) -> None:
        self.made.extend(tasks)


def award_event(program: str, kind: str, rule: str, source: str | None) -> EventRow:
    data: dict[str, Any] = {
        "code": "C1", "award_kind": kind, "rule": rule, "value": 0, "points_cost": 300,
        "expires_day": None,
    }  # fmt: skip
    if source is not None:
        data["source"] = source
    event = Event("6001200000000010", "r1", 0, AWARD_ISSUED, program, 20_000, data)
    return EventRow(1, event, datetime.datetime.now(datetime.UTC))


@pytest.mark.parametrize(
    ("event", "rules"),
    [
        # The coffee rule issued the certificate (its source, as the commit recorded it).
        (award_event("rewards", "certificate", "free-coffee", "coffee"), ["mail-coffee-mug"]),
        # The award program issued the same certificate itself, on registration: no mug.
        (award_event("rewards", "certificate", "free-coffee", "card_registered"), []),
        # A certificate without its source (an answer of the compiled engine): by its id.
        (award_event("rewards", "certificate", "free-coffee", None), ["mail-coffee-mug"]),
        # A coupon of the points program named like the coffee rule: not a certificate.
        (award_event("points", "coupon", "coffee", "coffee"), []),
        # A certificate of another award program: not this program's.
        (award_event("elsewhere", "certificate", "free-coffee", "coffee"), []),
    ],
)
async def test_an_award_makes_the_task_of_the_rule_that_issued_it_and_no_other(
    event: EventRow, rules: list[str]
) -> None:
    demo = load_program(ROOT / "examples" / "programs" / "demo.yaml")
    program = SimpleNamespace(loyalty=[SimpleNamespace(program=demo.loyalty_programs[0])])
    kept = Kept()
    maker = TaskMaker(kept, SimpleNamespace(for_card=lambda card: program))  # type: ignore[arg-type]
    await maker.send([event])
    assert [task.rule for task in kept.made] == rules

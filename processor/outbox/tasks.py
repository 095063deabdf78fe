"""The task maker: a sender (processor.outbox.delivery) whose deliveries make tasks.

Each event is matched against the task rules of the loyalty programs of its card's active
program file (processor.program.loyalty ``TaskRule``): a level move against the rules of
the program it moved in, an award against the rules of the loyalty program whose award rule
issued it. A match makes one task (processor.store.tasks), keyed by the event and the rule,
so an event delivered again makes nothing more. A card no active program serves makes none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from processor.errors import NotFoundError
from processor.store.event_log import EventRow
from processor.store.events import AWARD_ISSUED, LEVEL_MOVED, Event
from processor.store.tasks import NewTask, Tasks


class TaskMaker:
    """Makes the tasks events call for; ``programs`` gives a card's active program."""

    name = "tasks"

    def __init__(
        self, tasks: Tasks, programs: Any, written: Callable[[], None] | None = None
    ) -> None:
        self.tasks = tasks
        self.programs = programs
        self.written = written  # told when tasks (and their task_created events) were made

    async def send(self, rows: Sequence[EventRow]) -> None:
        made: list[NewTask] = []
        for row in rows:
            event = row.event
            try:
                program = self.programs.for_card(event.account_id)
            except NotFoundError:
                continue
            for plan in program.loyalty:
                loyalty = plan.program
                data = _of_program(loyalty, event)
                if data is None:
                    continue
                for rule in loyalty.task_rules:
                    if rule.matches(event.kind, data):
                        made.append(
                            NewTask(
                                event.key, rule.id, row.position, loyalty.id, event.account_id,
                                rule.name, rule.team, {**data, "kind": event.kind}, event.day,
                            )
                        )  # fmt: skip
        await self.tasks.add(made)
        if made and self.written is not None:
            self.written()


def _of_program(loyalty: Any, event: Event) -> dict[str, Any] | None:
    """What an event of this loyalty program tells its task rules (an award's with the
    award rule of this program that issued it), or None when it is not of this program."""
    data = event.data
    if event.kind == LEVEL_MOVED:
        return dict(data) if event.program == loyalty.id else None
    if event.kind != AWARD_ISSUED:
        return None
    for rule in loyalty.award_rules:
        if rule.type != data.get("award_kind"):
            continue
        holder = (
            loyalty.id if rule.type == "coupon" else rule.award_program or loyalty.award_program
        )
        if event.program != holder:
            continue
        # The issuing rule as the commit recorded it; for a certificate whose source the
        # answer did not keep, the rule that issues that certificate.
        named = rule.certificate if rule.type == "certificate" else rule.id
        source = data.get("source")
        if (source == rule.id) if source else (named is not None and data.get("rule") == named):
            return {**data, "award_rule": rule.id}
    return None

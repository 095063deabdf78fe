"""The task maker: a sender (processor.outbox.delivery) whose deliveries make tasks.

Each event is matched against the task rules of the loyalty programs of its card's active
program file (processor.program.loyalty ``TaskRule``): a level move against the rules of
the program it moved in, an award against the rules of the loyalty program whose award rule
issued it. A match makes one task (processor.store.tasks), keyed by the event and the rule,
so an event delivered again makes nothing more. A card no active program serves makes none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from processor.errors import NotFoundError
from processor.store.event_log import EventRow
from processor.store.events import AWARD_ISSUED, LEVEL_MOVED, Event
from processor.store.tasks import NewTask, Tasks


class TaskMaker:
    """Makes the tasks events call for; ``programs`` gives a card's active program."""

    name = "tasks"

    def __init__(self, tasks: Tasks, programs: Any) -> None:
        self.tasks = tasks
        self.programs = programs

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
                                rule.name, rule.team, {**data, "kind": event.kind},
                            )
                        )  # fmt: skip
        await self.tasks.add(made)


def _of_program(loyalty: Any, event: Event) -> dict[str, Any] | None:
    """What an event of this loyalty program tells its task rules (an award's with the
    award rule that issued it), or None when it is not of this program."""
    if event.kind == LEVEL_MOVED:
        return dict(event.data) if event.program == loyalty.id else None
    if event.kind == AWARD_ISSUED:
        # An issued award names its rule, or for a certificate the certificate's id.
        issued = event.data.get("rule")
        for rule in loyalty.award_rules:
            if issued in (rule.id, getattr(rule, "certificate", None)):
                return {**event.data, "award_rule": rule.id}
    return None

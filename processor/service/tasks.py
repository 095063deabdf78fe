"""ListTasks, ClaimTask and CompleteTask: the tasks events made, as AdminService serves them
(processor.store.tasks holds them; processor.outbox.tasks makes them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from processor import proto
from processor.errors import InvalidFieldError
from processor.limits import AUDIT_TEXT_CHARS_MAX, TASK_TEAM_CHARS_MAX, TASKS_PAGE_SIZE_MAX
from processor.service.auth import principal_var
from processor.store.catalog_base import decode_page_token, encode_page_token
from processor.store.tasks import CLAIMED, DONE, OPEN, Task, Tasks
from processor.wire.admission import checked_text

admin = proto.admin

TASKS_PAGE_SIZE_DEFAULT: Final = 100
"""Tasks of a ListTasks page when the request leaves page_size at zero."""

_STATUS_NUMBERS: Final = {
    OPEN: admin.TASK_STATUS_OPEN,
    CLAIMED: admin.TASK_STATUS_CLAIMED,
    DONE: admin.TASK_STATUS_DONE,
}
_STATUSES: Final[dict[int, str]] = {int(number): name for name, number in _STATUS_NUMBERS.items()}


class TaskDesk:
    """The three RPCs' work over the tasks table."""

    def __init__(self, tasks: Tasks) -> None:
        self.tasks = tasks

    async def list_tasks(self, request: admin.ListTasksRequest) -> admin.ListTasksResponse:
        statuses = _statuses(request.statuses) or [OPEN, CLAIMED]
        team = checked_text(request.team, "team", TASK_TEAM_CHARS_MAX, required=False)
        size = min(request.page_size or TASKS_PAGE_SIZE_DEFAULT, TASKS_PAGE_SIZE_MAX)
        after = 0
        if request.page_token:
            (after,) = decode_page_token(request.page_token, 1)
            if type(after) is not int or after < 0:
                raise InvalidFieldError("page_token", "is not a token this service gave")
        found = await self.tasks.page(statuses=statuses, team=team, after=after, limit=size)
        response = admin.ListTasksResponse(tasks=[task_message(task) for task in found])
        if len(found) == size:
            response.next_page_token = encode_page_token([found[-1].id])
        return response

    async def claim(self, request: admin.ClaimTaskRequest) -> admin.ClaimTaskResponse:
        task = await self.tasks.claim(_task_id(request.task_id), principal_var.get().name)
        return admin.ClaimTaskResponse(task=task_message(task))

    async def complete(self, request: admin.CompleteTaskRequest) -> admin.CompleteTaskResponse:
        outcome = checked_text(request.outcome, "outcome", AUDIT_TEXT_CHARS_MAX, required=True)
        task = await self.tasks.complete(_task_id(request.task_id), outcome)
        return admin.CompleteTaskResponse(task=task_message(task))


def task_message(task: Task) -> admin.Task:
    message = admin.Task(
        task_id=task.id,
        rule=task.rule,
        title=task.title,
        team=task.team,
        program=task.program,
        account=task.account_id,
        event_key=task.event_key,
        event_position=task.position,
        details={key: "" if value is None else str(value) for key, value in task.details.items()},
        status=_STATUS_NUMBERS[task.status],
        claimed_by=task.claimed_by,
        outcome=task.outcome,
    )
    message.created_time.FromDatetime(task.created_at)
    if task.claimed_at is not None:
        message.claimed_time.FromDatetime(task.claimed_at)
    if task.done_at is not None:
        message.done_time.FromDatetime(task.done_at)
    return message


def _statuses(numbers: Sequence[int]) -> list[str]:
    names = []
    for index, number in enumerate(numbers):
        if number not in _STATUSES:
            raise InvalidFieldError(
                f"statuses[{index}]", f"{number} is not a task status (1 to {len(_STATUSES)})"
            )
        names.append(_STATUSES[number])
    return names


def _task_id(value: int) -> int:
    if value < 1:
        raise InvalidFieldError("task_id", "is required (1 or more)")
    return value

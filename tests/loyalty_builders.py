"""Program files as Python dicts, and a small ledger that runs requests through the engine.

Every builder returns plain data shaped like a program file, so a test changes one
field with a keyword and the file still goes through ``validate_program`` exactly as a
YAML file would. ``Ledger`` keeps account states and receipts between batches, the way
the service does, so a test reads as a sequence of requests and their results.
"""

from __future__ import annotations

import copy
from typing import Any

from processor import calendar
from processor.engine import (
    CompiledProgram,
    Engine,
    ReferenceEngine,
    compile_program,
    issue_card,
    run_job,
)
from processor.engine.types import (
    AccountState,
    Customer,
    Engagement,
    Line,
    Lot,
    LoyaltyAccount,
    Purchase,
    Receipt,
    Request,
    Result,
    Return,
    ReturnLine,
    TenderLine,
    TraceEntry,
    Void,
)
from processor.program.loader import validate_program

PROGRAM = "loyal"
WALLET = "wallet"
CARD = "card-1"
START = "2026-01-01"
DAY = calendar.parse_day("2026-03-07")  # a Saturday
NOON = 12 * 3600
POINTS = f"points:{PROGRAM}"
ESCROW = f"escrow:{PROGRAM}"
AWARD = f"award:{WALLET}"
LOCATIONS = {
    "S1": {"region": "east", "format": "mall"},
    "S2": {"region": "east", "format": "outlet"},
    "S3": {"region": "west", "format": "mall"},
    "S4": {"region": "west", "format": "web"},
}


def day(text: str) -> int:
    return calendar.parse_day(text)


# --------------------------------------------------------------------------- program files


def level(level_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": level_id, "name": level_id.title(), **fields}


def issue_rule(
    rule_id: str = "base", calculation: str = "item_value", **fields: Any
) -> dict[str, Any]:
    """An issue rule; item rules default to one point per currency unit."""
    data: dict[str, Any] = {
        "id": rule_id,
        "name": rule_id,
        "start_date": START,
        "calculation": calculation,
    }
    if calculation in ("item_value", "item_quantity"):
        data["multiplier"] = "1"
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def engagement_rule(rule_id: str = "video", **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"fixed_amount": "10", "frequency": "daily", "issues_per_period": 1}
    data.update(fields)
    return issue_rule(rule_id, "engagements", **data)


def coupon_rule(
    rule_id: str = "coupon",
    precedence: int = 1,
    threshold: str = "100",
    cost: str = "100",
    **fields: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": rule_id,
        "name": rule_id,
        "start_date": START,
        "type": "coupon",
        "precedence": precedence,
        "threshold": threshold,
        "cost": cost,
    }
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def award_rule(rule_id: str, rule_type: str, precedence: int = 1, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": rule_id,
        "name": rule_id,
        "start_date": START,
        "type": rule_type,
        "precedence": precedence,
    }
    data.update(fields)
    return data


def movement_rule(
    rule_id: str,
    rule_type: str = "advancement",
    *,
    test: dict[str, Any],
    precedence: int = 1,
    **fields: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": rule_id,
        "name": rule_id,
        "start_date": START,
        "type": rule_type,
        "precedence": precedence,
        "test": test,
    }
    data.update(fields)
    return data


def advancement(
    rule_id: str,
    from_level: str | None,
    to_level: str,
    threshold: str,
    test_type: str = "ytd",
    **fields: Any,
) -> dict[str, Any]:
    return movement_rule(
        rule_id,
        "advancement",
        test={"type": test_type},
        from_level=from_level,
        to_level=to_level,
        threshold=threshold,
        **fields,
    )


def wallet(**fields: Any) -> dict[str, Any]:
    """An award program holding e-award value and one certificate."""
    data: dict[str, Any] = {
        "id": WALLET,
        "name": "Wallet",
        "start_date": START,
        "allow_reloads": True,
        "certificates": [
            {
                "id": "coffee",
                "name": "Free coffee",
                "precedence": 1,
                "max_redemptions": 1,
                "offer": {"id": "coffee", "name": "Coffee", "type": "free_item"},
            }
        ],
    }
    data.update(fields)
    return data


Rules = list[dict[str, Any]]


def loyalty(
    *,
    levels: Rules | None = None,
    issue: Rules | None = None,
    award: Rules | None = None,
    movement: Rules | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A loyalty program: levels silver, gold, platinum and one point per dollar by default."""
    data: dict[str, Any] = {
        "id": PROGRAM,
        "name": "Loyal",
        "start_date": START,
        "levels": levels or [level("silver"), level("gold"), level("platinum")],
        "issue_rules": [issue_rule()] if issue is None else issue,
        "award_rules": award or [],
        "movement_rules": movement or [],
    }
    data.update(fields)
    return data


def program_file(
    loyalty_program: dict[str, Any] | None = None,
    award_programs: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "test",
        "name": "Test card",
        "card": {"type": "Test card", "serial_prefix": "60012"},
        "locations": copy.deepcopy(LOCATIONS),
        "award_programs": award_programs or [],
        "loyalty_programs": [loyalty_program or loyalty()],
    }
    data.update(fields)
    return data


def compile_file(data: dict[str, Any]) -> CompiledProgram:
    return compile_program(validate_program("test.yaml", data))


def build(
    award_programs: list[dict[str, Any]] | None = None, **loyalty_fields: Any
) -> CompiledProgram:
    """Compile a program file whose loyalty program is ``loyalty(**loyalty_fields)``."""
    return compile_file(program_file(loyalty(**loyalty_fields), award_programs))


# --------------------------------------------------------------------------- requests


def line(number: int = 1, amount: int = 1000, item: str = "SKU1", **fields: Any) -> Line:
    return Line(number=number, item=item, amount=amount, **fields)


def purchase(
    request_id: str = "p1",
    *lines: Line,
    day: int = DAY,
    second: int = NOON,
    location: str = "S1",
    **fields: Any,
) -> Purchase:
    return Purchase(
        id=request_id,
        account=fields.pop("account", CARD),
        day=day,
        second=second,
        location=location,
        lines=lines or (line(),),
        **fields,
    )


def engagement(request_id: str = "e1", count: int = 1, day: int = DAY, **fields: Any) -> Engagement:
    return Engagement(
        id=request_id,
        account=fields.pop("account", CARD),
        day=day,
        count=count,
        location=fields.pop("location", "S1"),
        **fields,
    )


def give_back(request_id: str, original_id: str, *lines: tuple[int, int], day: int = DAY) -> Return:
    """A return of ``(line number, quantity)`` pairs; none returns the rest of the sale."""
    return Return(
        id=request_id,
        account=CARD,
        day=day,
        original_id=original_id,
        lines=tuple(ReturnLine(number, quantity) for number, quantity in lines),
    )


def void(request_id: str, original_id: str, day: int = DAY) -> Void:
    return Void(id=request_id, account=CARD, day=day, original_id=original_id)


def tenders(*types: str) -> tuple[TenderLine, ...]:
    return tuple(TenderLine(kind, 1000) for kind in types)


def customer(**fields: Any) -> Customer:
    audiences = frozenset(fields.pop("audiences", ()))
    return Customer(id=fields.pop("id", "cust-1"), audiences=audiences, **fields)


# --------------------------------------------------------------------------- accounts


def account_at(level_id: str, points: int = 0, *, opened: int = DAY, **state: Any) -> AccountState:
    """A card whose account sits at ``level_id`` with ``points`` in one opening lot."""
    account = LoyaltyAccount(
        program=PROGRAM,
        level=level_id,
        created_day=opened,
        level_since_day=opened,
        last_activity_day=opened,
        ytd_year=calendar.year_of(opened),
        lots=[Lot(opened, "opening", "regular", points, opened, None, 1)] if points else [],
    )
    return AccountState(CARD, loyalty={PROGRAM: account}, **state)


ENGINE: Engine = ReferenceEngine()
"""The engine the Ledger evaluates with; the engine fixture switches it per test."""


class Ledger:
    """Account states and receipts carried from one batch to the next."""

    def __init__(self, compiled: CompiledProgram, *states: AccountState) -> None:
        self.compiled = compiled
        self.accounts: dict[str, AccountState] = {state.account: state for state in states}
        self.receipts: dict[str, Receipt] = {}

    def send(self, *requests: Request) -> list[Result]:
        outcome = ENGINE.evaluate(self.compiled, self.accounts, list(requests), self.receipts)
        self.accounts.update(outcome.accounts)
        self.receipts.update(outcome.receipts)
        return list(outcome.results)

    def one(self, request: Request) -> Result:
        return self.send(request)[0]

    def job(self, on: int, job_id: str = "job-1") -> Result:
        outcome = run_job(self.compiled, self.accounts, on, job_id)
        self.accounts.update(outcome.accounts)
        return next(result for result in outcome.results if result.account == CARD)

    def issue(self, on: int = DAY) -> None:
        self.accounts[CARD] = issue_card(self.compiled, CARD, on)

    @property
    def account(self) -> LoyaltyAccount:
        return self.accounts[CARD].loyalty[PROGRAM]


def trace(result: Result, rule: str) -> list[TraceEntry]:
    """The trace entries of the loyalty program for ``rule``."""
    return [entry for entry in result.trace if entry.program == PROGRAM and entry.rule == rule]


def why(result: Result, rule: str) -> tuple[bool, int, str]:
    """(fired, points, reason) of the only trace entry of ``rule``."""
    (entry,) = trace(result, rule)
    return entry.fired, entry.points, entry.reason


def posted(result: Result, balance: str = "points") -> list[tuple[str, int, str]]:
    """(kind, amount, rule) of each posting to ``balance``."""
    return [(p.kind, p.amount, p.rule) for p in result.postings if p.balance == balance]

"""The loyalty program: levels, issue rules, award rules and movement rules.

Field names follow the manual's "Loyalty Program", "Levels", "Issue Rules",
"Award Rules" and "Movement Rules" tabs, in snake case. Points written in a
program file are decimals (``12.5``) and are held as such here; the engine
works in integer point units scaled by ``points_precision``.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Final, Literal

from pydantic import Field

from processor import money
from processor.errors import Problem
from processor.limits import TASK_TEAM_CHARS_MAX
from processor.program.base import (
    Day,
    Factor,
    Identifier,
    Model,
    Money,
    Period,
    PointsValue,
    ProgramHeader,
)
from processor.program.rules import AttributeCondition, LocationDirectory, LocationRule, TimeWindow

CalculationType = Literal[
    "item_value", "item_quantity", "engagements", "transactions", "visits", "month_spend"
]
"""The manual's five calculation types, and ``month_spend``: points on what the card spent in
the month before the review's day, issued by the ``monthly-review`` job (the loyalty workflow's
"total monthly spend x rate"), once per month, never by a transaction."""
AWARDS_PER_RULE_MAX = 100
"""Most awards one award rule may issue in one evaluation; bounds the issuing loop."""


class AgePoints(Model):
    """Point aging: ``fixed`` expires the whole unused balance after ``after`` of inactivity;
    ``relative`` expires each lot ``after`` its earning."""

    type: Literal["fixed", "relative"]
    after: Period


class Level(Model):
    """A loyalty level (tier). Levels are ranked in the order the file lists them.

    An inactive level keeps the accounts already in it, but no movement rule moves an
    account into it and new accounts cannot start in it.
    """

    id: Identifier
    name: str = Field(min_length=1)
    description: str = ""
    color: str = ""
    active: bool = True
    negative_balance_allowed: bool = False
    age_points: AgePoints | None = None
    escrow: Period | None = None


class RuleDates(Model):
    """Name and effective dates shared by issue, award and movement rules."""

    id: Identifier
    name: str = Field(min_length=1)
    pos_name: str = ""
    description: str = ""
    start_date: Day
    end_date: Day | None = None

    def in_effect(self, day: int) -> bool:
        return self.start_date <= day and (self.end_date is None or day <= self.end_date)


class IssueTimeRule(Model):
    """When an issue rule applies: an anniversary, a bonus period, or not in a blackout."""

    name: str = ""
    description: str = ""
    type: Literal["birthday_anniversary", "signup_anniversary", "bonus_period", "blackout_period"]
    window: TimeWindow | None = None
    days_before: int = Field(default=0, ge=0, le=31)
    days_after: int = Field(default=0, ge=0, le=31)


class ItemRule(Model):
    """Which lines an include (or exclude) rule matches.

    ``all`` matches every item (narrowed by ``attributes`` when given),
    ``hierarchy`` matches lines under any listed hierarchy node, ``items`` the
    listed item ids. ``attributes`` narrow ``hierarchy`` and ``items`` too.
    """

    select: Literal["all", "hierarchy", "items"] = "all"
    hierarchy: list[str] = Field(default_factory=list)
    items: list[str] = Field(default_factory=list)
    attributes: list[AttributeCondition] = Field(default_factory=list)


class TenderRule(Model):
    """The tender types that make a transaction eligible."""

    types: list[str] = Field(min_length=1)


class AudienceList(Model):
    """An audience list (``all``, ``stratified``, ``unstratified`` or ``personal``), optionally
    narrowed to some strata of a stratified list."""

    id: Identifier
    type: Literal["all", "stratified", "unstratified", "personal"] = "all"
    strata: list[str] = Field(default_factory=list)


class AudienceRule(Model):
    lists: list[AudienceList] = Field(min_length=1)


class IssueRule(RuleDates):
    """How points are issued (the manual's "Issue Rules" with its seven rule types)."""

    levels: list[Identifier] = Field(default_factory=list)
    customer_eligibility: Literal["card", "transaction"] = "card"
    calculation: CalculationType
    bonus: bool | None = None
    fixed_amount: PointsValue = Decimal(0)
    multiplier: Factor | None = None
    max_transactions_per_day: int | None = Field(default=None, ge=1)
    transaction_minimum: Money | None = None
    include_non_merchandise: bool = False
    allow_zero_price: bool = False
    frequency: Literal["once", "daily", "weekly", "monthly", "yearly"] | None = None
    issues_per_period: int | None = Field(default=None, ge=1)
    unlimited: bool = False
    rule_count_limit: int | None = Field(default=None, ge=1)
    time_rules: list[IssueTimeRule] = Field(default_factory=list)
    item_include: ItemRule | None = None
    item_exclude: ItemRule | None = None
    tender: TenderRule | None = None
    location_include: LocationRule | None = None
    location_exclude: LocationRule | None = None
    audience: AudienceRule | None = None

    @property
    def is_bonus(self) -> bool:
        """Bonus defaults to on for engagements and off otherwise, as the manual says."""
        return self.calculation == "engagements" if self.bonus is None else self.bonus

    @property
    def effective_multiplier(self) -> Decimal:
        if self.calculation in ("item_value", "item_quantity", "month_spend"):
            return Decimal(1) if self.multiplier is None else self.multiplier
        return Decimal(0)


class AwardExpiry(Model):
    """When an award expires.

    ``relative``: ``after`` the award is issued; ``program``: the holding award program's expiry.
    """

    type: Literal["relative", "program"]
    after: Period | None = None


class AwardRule(RuleDates):
    """What a points balance converts into: a coupon, an e-award or an award certificate."""

    type: Literal["coupon", "e_award", "certificate"] = "coupon"
    levels: list[Identifier] = Field(default_factory=list)
    precedence: int = Field(ge=0)
    issue: Literal["immediately", "job"] = "immediately"
    threshold: PointsValue
    cost: PointsValue = Decimal(0)
    cost_type: Literal["fixed", "cashback"] = "fixed"
    award_factor: Factor | None = None
    reset_balance: bool = False
    award_program: Identifier | None = None
    certificate: Identifier | None = None
    amount: Money | None = None
    minimum_award: Money | None = None
    coupon_prefix: str = Field(default="", max_length=16, pattern=r"^[A-Z0-9-]*$")
    expiry: AwardExpiry | None = None


MovementTestType = Literal[
    "ytd", "ltd", "since_last_move", "average_per_month", "time_since_last_move"
]


class MovementTest(Model):
    """The test a movement rule applies; ``months`` for averages, ``period`` for time tests."""

    type: MovementTestType
    months: int | None = Field(default=None, ge=1, le=36)
    period: Period | None = None


class SustainExtension(Model):
    """Keeps a customer at the level ``extend_by`` longer when the extension test passes."""

    test: MovementTest
    threshold: PointsValue
    extend_by: Period


class MovementRule(RuleDates):
    """Moves an account between levels: advancement, sustain (lateral) or demotion."""

    type: Literal["advancement", "sustain", "demotion"]
    from_level: Identifier | None = None
    to_level: Identifier | None = None
    level: Identifier | None = None
    precedence: int = Field(ge=0)
    change: Literal["immediately", "job"] = "immediately"
    threshold: PointsValue = Decimal(0)
    cost: PointsValue = Decimal(0)
    test: MovementTest
    extension: SustainExtension | None = None

    @property
    def source_level(self) -> str:
        return (self.level if self.type == "sustain" else self.from_level) or ""

    @property
    def target_level(self) -> str:
        return (self.level if self.type == "sustain" else self.to_level) or ""


class TaskRule(Model):
    """Makes a task for people when an event of the program matches (processor.outbox.tasks):
    a manager's review of an upgrade to a high level, a gift for the warehouse to dispatch.
    ``to_level`` and ``move`` narrow a ``level_moved`` rule, ``award_rule`` an
    ``award_issued`` one; without them, every event of that kind matches."""

    id: Identifier
    name: str = Field(min_length=1, max_length=200)
    when: Literal["level_moved", "award_issued"]  # the event kind (YAML reads `on` as true)
    team: str = Field(min_length=1, max_length=TASK_TEAM_CHARS_MAX)  # who does it: a queue
    to_level: Identifier | None = None
    move: Literal["advancement", "sustain", "demotion", "extension"] | None = None
    award_rule: Identifier | None = None

    def matches(self, kind: str, data: Mapping[str, object]) -> bool:
        """Whether an event of ``kind`` telling ``data`` (processor.store.events; for an
        award, with the ``award_rule`` that issued it) makes a task of this rule."""
        if kind != self.when:
            return False
        if kind == "level_moved":
            return (self.to_level is None or data.get("to_level") == self.to_level) and (
                self.move is None or data.get("move") == self.move
            )
        return self.award_rule is None or data.get("award_rule") == self.award_rule


class LoyaltyProgram(ProgramHeader):
    """A loyalty program with its points, levels and rules."""

    accounts_on_first_transaction: bool = True
    credit_reversal: bool = True
    debit_reversal: bool = True
    points_name: str = "Points"
    pos_points_name: str = ""
    points_currency_value: Decimal | None = None
    points_precision: int = Field(default=0, ge=0, le=4)
    award_program: Identifier | None = None
    initial_level: Identifier | None = None
    levels: list[Level] = Field(min_length=1, max_length=32)
    issue_rules: list[IssueRule] = Field(default_factory=list, max_length=256)
    award_rules: list[AwardRule] = Field(default_factory=list, max_length=256)
    movement_rules: list[MovementRule] = Field(default_factory=list, max_length=256)
    task_rules: list[TaskRule] = Field(default_factory=list, max_length=64)

    @property
    def start_level(self) -> str:
        return self.initial_level or self.levels[0].id

    def level(self, level_id: str) -> Level:
        for level in self.levels:
            if level.id == level_id:
                return level
        raise KeyError(level_id)

    def rank(self, level_id: str) -> int:
        return [level.id for level in self.levels].index(level_id)

    def points(self, value: Decimal) -> int:
        return money.to_points(value, self.points_precision)


# --------------------------------------------------------------------------- cross-field checks


def loyalty_problems(
    program: LoyaltyProgram,
    path: str,
    directory: LocationDirectory,
    award_programs: Mapping[str, object],
) -> list[Problem]:
    """Every problem of a loyalty program that a single field cannot show."""
    found: list[Problem] = []
    if not money.is_currency(program.currency):
        found.append(Problem(f"{path}.currency", f"unknown currency {program.currency!r}"))
    if program.end_date is not None and program.end_date < program.start_date:
        found.append(Problem(f"{path}.end_date", "is before start_date"))
    level_ids = [level.id for level in program.levels]
    found += _duplicates(level_ids, f"{path}.levels", "level id")
    if program.initial_level is not None and program.initial_level not in level_ids:
        found.append(Problem(f"{path}.initial_level", f"unknown level {program.initial_level!r}"))
    elif not program.level(program.start_level).active:
        found.append(Problem(f"{path}.initial_level", f"level {program.start_level!r} is inactive"))
    if program.award_program is not None and program.award_program not in award_programs:
        found.append(
            Problem(f"{path}.award_program", f"unknown award program {program.award_program!r}")
        )
    found += _duplicates(
        [rule.id for rule in (*program.issue_rules, *program.award_rules, *program.movement_rules)],
        path,
        "rule id",
    )
    for index, issue in enumerate(program.issue_rules):
        found += _issue_rule_problems(program, issue, f"{path}.issue_rules[{index}]", directory)
    for index, award in enumerate(program.award_rules):
        found += _award_rule_problems(
            program, award, f"{path}.award_rules[{index}]", award_programs
        )
    found += _duplicates(
        [f"{rule.precedence}" for rule in program.award_rules], f"{path}.award_rules", "precedence"
    )
    for index, move in enumerate(program.movement_rules):
        found += _movement_rule_problems(program, move, f"{path}.movement_rules[{index}]")
    found += _overlapping_movements(program, path)
    found += _duplicates([rule.id for rule in program.task_rules], path, "task rule id")
    for index, task in enumerate(program.task_rules):
        found += _task_rule_problems(program, task, f"{path}.task_rules[{index}]")
    return found


def _task_rule_problems(program: LoyaltyProgram, rule: TaskRule, path: str) -> list[Problem]:
    found = []
    moving = rule.when == "level_moved"
    for name, applies in (("to_level", moving), ("move", moving), ("award_rule", not moving)):
        if getattr(rule, name) is not None and not applies:
            found.append(Problem(f"{path}.{name}", f"has no meaning for {rule.when} tasks"))
    if (
        moving
        and rule.to_level is not None
        and rule.to_level not in [level.id for level in program.levels]
    ):
        found.append(Problem(f"{path}.to_level", f"unknown level {rule.to_level!r}"))
    if (
        not moving
        and rule.award_rule is not None
        and rule.award_rule not in [award.id for award in program.award_rules]
    ):
        found.append(Problem(f"{path}.award_rule", f"unknown award rule {rule.award_rule!r}"))
    return found


def _duplicates(values: list[str], path: str, what: str) -> list[Problem]:
    seen: set[str] = set()
    found = []
    for value in values:
        if value in seen:
            found.append(Problem(path, f"{what} {value!r} is used more than once"))
        seen.add(value)
    return found


def _points_problem(program: LoyaltyProgram, value: Decimal, path: str) -> list[Problem]:
    try:
        program.points(value)
    except ValueError:
        return [
            Problem(
                path,
                f"{value} has more decimals than points_precision "
                f"{program.points_precision} allows",
            )
        ]
    return []


def _money_problem(currency: str, value: Decimal | None, path: str) -> list[Problem]:
    if value is None or not money.is_currency(currency):
        return []
    try:
        money.to_minor(value, currency)
    except ValueError as error:
        return [Problem(path, str(error))]
    return []


def _dates_problem(rule: RuleDates, path: str) -> list[Problem]:
    if rule.end_date is not None and rule.end_date < rule.start_date:
        return [Problem(f"{path}.end_date", "is before start_date")]
    return []


def _levels_problem(program: LoyaltyProgram, levels: list[str], path: str) -> list[Problem]:
    known = {level.id for level in program.levels}
    return [
        Problem(f"{path}[{index}]", f"unknown level {level!r}")
        for index, level in enumerate(levels)
        if level not in known
    ]


def _issue_rule_problems(
    program: LoyaltyProgram, rule: IssueRule, path: str, directory: LocationDirectory
) -> list[Problem]:
    found = _dates_problem(rule, path) + _levels_problem(program, rule.levels, f"{path}.levels")
    found += _points_problem(program, rule.fixed_amount, f"{path}.fixed_amount")
    found += _money_problem(
        program.currency, rule.transaction_minimum, f"{path}.transaction_minimum"
    )
    counted = rule.calculation in ("item_value", "item_quantity", "month_spend")
    if rule.multiplier is not None and not counted:
        found.append(Problem(f"{path}.multiplier", f"has no meaning for {rule.calculation}"))
    if not counted and rule.fixed_amount == 0:
        found.append(Problem(f"{path}.fixed_amount", f"must be above 0 for {rule.calculation}"))
    if counted and rule.effective_multiplier == 0 and rule.fixed_amount == 0:
        found.append(Problem(f"{path}.multiplier", "and fixed_amount are both 0: no points"))
    found += _engagement_problems(rule, path) + _month_spend_problems(rule, path)
    for index, time_rule in enumerate(rule.time_rules):
        found += _time_rule_problems(time_rule, f"{path}.time_rules[{index}]")
    for name in ("location_include", "location_exclude"):
        location = getattr(rule, name)
        if location is not None:
            found += location.problems(f"{path}.{name}", directory)
    for name in ("item_include", "item_exclude"):
        item = getattr(rule, name)
        if item is not None:
            found += _item_rule_problems(item, f"{path}.{name}")
    return found


_TRANSACTION_ONLY: Final = (
    "item_include", "item_exclude", "tender", "location_include", "location_exclude",
    "max_transactions_per_day",
)  # fmt: skip
"""An issue rule's conditions on the transaction itself: none has a meaning for a month's
spend, which the review counts with no transaction before it."""


def _month_spend_problems(rule: IssueRule, path: str) -> list[Problem]:
    if rule.calculation != "month_spend":
        return []
    found = [
        Problem(f"{path}.{name}", "has no meaning for month_spend: a month has no transaction")
        for name in _TRANSACTION_ONLY
        if getattr(rule, name) is not None
    ]
    if rule.customer_eligibility != "card":
        found.append(
            Problem(f"{path}.customer_eligibility", "must be card for month_spend (no transaction)")
        )
    if rule.time_rules:
        found.append(
            Problem(f"{path}.time_rules", "have no meaning for month_spend: a month is no moment")
        )
    return found


def _engagement_problems(rule: IssueRule, path: str) -> list[Problem]:
    found = []
    engagement_fields = ("frequency", "issues_per_period", "rule_count_limit")
    if rule.calculation != "engagements":
        for name in engagement_fields:
            if getattr(rule, name) is not None:
                found.append(Problem(f"{path}.{name}", "applies only to engagements"))
        if rule.unlimited:
            found.append(Problem(f"{path}.unlimited", "applies only to engagements"))
        return found
    if rule.frequency is None:
        found.append(Problem(f"{path}.frequency", "is required for engagements"))
    if rule.unlimited and rule.issues_per_period is not None:
        found.append(Problem(f"{path}.issues_per_period", "conflicts with unlimited"))
    if not rule.unlimited and rule.issues_per_period is None:
        found.append(Problem(f"{path}.issues_per_period", "is required unless unlimited"))
    if rule.frequency == "once" and rule.issues_per_period not in (None, 1):
        found.append(Problem(f"{path}.issues_per_period", "must be 1 for a one-time frequency"))
    return found


def _time_rule_problems(rule: IssueTimeRule, path: str) -> list[Problem]:
    periods = ("bonus_period", "blackout_period")
    if rule.type in periods and rule.window is None:
        return [Problem(f"{path}.window", f"is required for {rule.type}")]
    if rule.type not in periods and rule.window is not None:
        return [Problem(f"{path}.window", f"has no meaning for {rule.type}")]
    if rule.type in periods and (rule.days_before or rule.days_after):
        return [Problem(f"{path}.days_before", f"has no meaning for {rule.type}")]
    return rule.window.problems(f"{path}.window") if rule.window is not None else []


def _item_rule_problems(rule: ItemRule, path: str) -> list[Problem]:
    if rule.select == "hierarchy" and not rule.hierarchy:
        return [Problem(f"{path}.hierarchy", "must list at least one hierarchy node")]
    if rule.select == "items" and not rule.items:
        return [Problem(f"{path}.items", "must list at least one item")]
    if rule.select != "hierarchy" and rule.hierarchy:
        return [Problem(f"{path}.hierarchy", f"has no meaning with select {rule.select!r}")]
    if rule.select != "items" and rule.items:
        return [Problem(f"{path}.items", f"has no meaning with select {rule.select!r}")]
    return []


def _award_rule_problems(
    program: LoyaltyProgram, rule: AwardRule, path: str, award_programs: Mapping[str, object]
) -> list[Problem]:
    found = _dates_problem(rule, path) + _levels_problem(program, rule.levels, f"{path}.levels")
    found += _points_problem(program, rule.threshold, f"{path}.threshold")
    found += _points_problem(program, rule.cost, f"{path}.cost")
    cashback = rule.type == "e_award" and rule.cost_type == "cashback"
    if not cashback and rule.cost <= 0:
        found.append(Problem(f"{path}.cost", "must be above 0"))
    if not cashback and rule.threshold < rule.cost:
        found.append(Problem(f"{path}.threshold", f"{rule.threshold} is below cost {rule.cost}"))
    if rule.type != "e_award" and rule.cost_type != "fixed":
        found.append(Problem(f"{path}.cost_type", "applies only to e_award rules"))
    holder = rule.award_program or program.award_program
    if rule.type in ("e_award", "certificate"):
        if holder is None:
            found.append(Problem(f"{path}.award_program", f"is required for {rule.type} rules"))
        elif holder not in award_programs:
            found.append(Problem(f"{path}.award_program", f"unknown award program {holder!r}"))
    elif rule.award_program is not None:
        found.append(Problem(f"{path}.award_program", "has no meaning for coupon rules"))
    found += _award_value_problems(rule, path, holder, award_programs)
    if rule.expiry is not None:
        if rule.expiry.type == "relative" and rule.expiry.after is None:
            found.append(Problem(f"{path}.expiry.after", "is required for relative expiry"))
        if rule.expiry.type == "program" and holder is None:
            found.append(Problem(f"{path}.expiry.type", "program expiry needs an award_program"))
    return found


def _award_value_problems(
    rule: AwardRule, path: str, holder: str | None, award_programs: Mapping[str, object]
) -> list[Problem]:
    found = []
    currency = getattr(award_programs.get(holder or ""), "currency", "")
    if rule.type == "certificate":
        if rule.certificate is None:
            found.append(Problem(f"{path}.certificate", "is required for certificate rules"))
        elif holder is not None and holder in award_programs:
            ids = [c.id for c in getattr(award_programs[holder], "certificates", [])]
            if rule.certificate not in ids:
                found.append(
                    Problem(f"{path}.certificate", f"unknown certificate {rule.certificate!r}")
                )
    if rule.type == "e_award" and rule.cost_type == "fixed" and not rule.amount:
        found.append(Problem(f"{path}.amount", "is required for a fixed e-award"))
    if rule.type == "e_award" and rule.cost_type == "cashback" and not rule.award_factor:
        found.append(Problem(f"{path}.award_factor", "is required for a cashback e-award"))
    if rule.cost_type != "cashback":
        for name in ("award_factor", "minimum_award"):
            if getattr(rule, name) is not None:
                found.append(Problem(f"{path}.{name}", "applies only to cashback e-awards"))
        if rule.reset_balance:
            found.append(Problem(f"{path}.reset_balance", "applies only to cashback e-awards"))
    if rule.type != "e_award" and rule.amount is not None:
        found.append(Problem(f"{path}.amount", "applies only to e_award rules"))
    found += _money_problem(currency, rule.amount, f"{path}.amount")
    found += _money_problem(currency, rule.minimum_award, f"{path}.minimum_award")
    return found


def _movement_rule_problems(
    program: LoyaltyProgram, rule: MovementRule, path: str
) -> list[Problem]:
    found = _dates_problem(rule, path)
    found += _points_problem(program, rule.threshold, f"{path}.threshold")
    found += _points_problem(program, rule.cost, f"{path}.cost")
    known = [level.id for level in program.levels]
    names: tuple[str, ...] = ("from_level", "to_level")
    unused: tuple[str, ...] = ("level",)
    if rule.type == "sustain":
        names, unused = unused, names
    for name in names:
        value = getattr(rule, name)
        if value is None:
            found.append(Problem(f"{path}.{name}", f"is required for {rule.type} rules"))
        elif value not in known:
            found.append(Problem(f"{path}.{name}", f"unknown level {value!r}"))
    for name in unused:
        if getattr(rule, name) is not None:
            found.append(Problem(f"{path}.{name}", f"has no meaning for {rule.type} rules"))
    if rule.type != "sustain" and rule.from_level in known and rule.to_level in known:
        step = program.rank(rule.to_level or "") - program.rank(rule.from_level or "")
        if rule.type == "advancement" and step <= 0:
            found.append(Problem(f"{path}.to_level", "an advancement must go to a higher level"))
        if rule.type == "demotion" and step >= 0:
            found.append(Problem(f"{path}.to_level", "a demotion must go to a lower level"))
    found += _test_problems(rule.test, f"{path}.test")
    if (
        rule.type == "demotion"
        and rule.test.type != "time_since_last_move"
        and rule.change != "job"
    ):
        found.append(
            Problem(
                f"{path}.change",
                "a demotion on a points test must run by job, "
                "or every new account would be demoted at once",
            )
        )
    if rule.extension is not None:
        if rule.type == "advancement":
            found.append(Problem(f"{path}.extension", "extends sustain and demotion rules only"))
        if rule.extension.test.type == "time_since_last_move":
            found.append(Problem(f"{path}.extension.test.type", "must be a points test"))
        found += _test_problems(rule.extension.test, f"{path}.extension.test")
        found += _points_problem(program, rule.extension.threshold, f"{path}.extension.threshold")
    return found


def _test_problems(test: MovementTest, path: str) -> list[Problem]:
    if test.type == "average_per_month" and test.months is None:
        return [Problem(f"{path}.months", "is required for average_per_month")]
    if test.type != "average_per_month" and test.months is not None:
        return [Problem(f"{path}.months", f"has no meaning for {test.type}")]
    if test.type == "time_since_last_move" and test.period is None:
        return [Problem(f"{path}.period", "is required for time_since_last_move")]
    if test.type != "time_since_last_move" and test.period is not None:
        return [Problem(f"{path}.period", f"has no meaning for {test.type}")]
    return []


def _overlapping_movements(program: LoyaltyProgram, path: str) -> list[Problem]:
    """Two rules of one kind from one level whose dates overlap must differ in precedence."""
    found = []
    rules = program.movement_rules
    for index, rule in enumerate(rules):
        for other_index in range(index):
            other = rules[other_index]
            if other.source_level != rule.source_level or other.precedence != rule.precedence:
                continue
            if _dates_overlap(rule, other):
                found.append(
                    Problem(
                        f"{path}.movement_rules[{index}].precedence",
                        f"equals that of movement_rules[{other_index}] from the same level "
                        "with overlapping dates: the order would be undefined",
                    )
                )
    return found


def _dates_overlap(first: RuleDates, second: RuleDates) -> bool:
    first_end = first.end_date if first.end_date is not None else 10**9
    second_end = second.end_date if second.end_date is not None else 10**9
    return first.start_date <= second_end and second.start_date <= first_end

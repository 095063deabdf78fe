"""A program compiled for evaluation: decimals turned into exact integers and
fractions, rules sorted, lookups built, once, when a program is activated.

The reference engine reads these plans; the Cython engine packs the same plans
into flat arrays. Nothing here is computed per transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from processor import money
from processor.program.award import AwardProgram
from processor.program.cards import CardDefinition
from processor.program.loyalty import AwardRule, IssueRule, LoyaltyProgram, MovementRule
from processor.program.model import ProgramFile
from processor.program.rules import LocationDirectory
from processor.program.tender import TenderProgram


@dataclass(frozen=True, slots=True)
class IssuePlan:
    rule: IssueRule
    key: str  # "program/rule": how receipts and traces name the rule
    factor: Fraction  # point units per minor unit (item_value) or per item (item_quantity)
    fixed_points: int
    minimum_minor: int | None


@dataclass(frozen=True, slots=True)
class AwardPlan:
    rule: AwardRule
    threshold: int
    cost: int
    holder: AwardProgram | None
    amount_minor: int  # fixed e-award value
    minimum_minor: int  # cashback minimum
    value_per_point: Fraction  # cashback: award minor units per point unit


@dataclass(frozen=True, slots=True)
class MovementPlan:
    rule: MovementRule
    threshold: int
    cost: int
    extension_threshold: int


@dataclass(frozen=True, slots=True)
class LoyaltyPlan:
    program: LoyaltyProgram
    issue: tuple[IssuePlan, ...]
    award: tuple[AwardPlan, ...]
    movement: tuple[MovementPlan, ...]
    award_program: AwardProgram | None


@dataclass(frozen=True, slots=True)
class CompiledProgram:
    """Everything the engine needs about one program file, at one version."""

    id: str
    version: int
    card: CardDefinition
    directory: LocationDirectory
    tender: TenderProgram | None
    award_programs: dict[str, AwardProgram]
    loyalty: tuple[LoyaltyPlan, ...]
    # Decimal digits of every balance the program's accounts hold, by the name results
    # use: the points precision for points:<id> and escrow:<id>, the ISO 4217 exponent
    # for tender and award:<id>.
    balance_digits: dict[str, int]
    source: ProgramFile = field(repr=False)


def compile_program(program: ProgramFile) -> CompiledProgram:
    """Compile a validated program file (see processor.program.loader)."""
    award_programs = {award.id: award for award in program.award_programs}
    return CompiledProgram(
        id=program.id,
        version=program.version,
        card=program.card,
        directory={key: dict(value) for key, value in program.locations.items()},
        tender=program.tender,
        award_programs=award_programs,
        loyalty=tuple(
            _plan_loyalty(loyalty, award_programs) for loyalty in program.loyalty_programs
        ),
        balance_digits=_balance_digits(program),
        source=program,
    )


def _balance_digits(program: ProgramFile) -> dict[str, int]:
    digits: dict[str, int] = {}
    for loyalty in program.loyalty_programs:
        digits[f"points:{loyalty.id}"] = loyalty.points_precision
        digits[f"escrow:{loyalty.id}"] = loyalty.points_precision
    if program.tender is not None:
        digits["tender"] = money.currency_exponent(program.tender.currency)
    for award in program.award_programs:
        digits[f"award:{award.id}"] = money.currency_exponent(award.currency)
    return digits


def _plan_loyalty(program: LoyaltyProgram, awards: dict[str, AwardProgram]) -> LoyaltyPlan:
    holder = awards.get(program.award_program or "")
    return LoyaltyPlan(
        program=program,
        issue=tuple(_plan_issue(program, rule) for rule in program.issue_rules),
        award=tuple(
            _plan_award(program, rule, awards)
            for rule in sorted(program.award_rules, key=lambda rule: rule.precedence)
        ),
        movement=tuple(
            MovementPlan(
                rule=rule,
                threshold=program.points(rule.threshold),
                cost=program.points(rule.cost),
                extension_threshold=(
                    program.points(rule.extension.threshold) if rule.extension else 0
                ),
            )
            for rule in sorted(program.movement_rules, key=lambda rule: rule.precedence)
        ),
        award_program=holder,
    )


def _plan_issue(program: LoyaltyProgram, rule: IssueRule) -> IssuePlan:
    scale = Fraction(10**program.points_precision)
    multiplier = money.ratio(rule.effective_multiplier)
    if rule.calculation in ("item_value", "month_spend"):  # points per unit of the currency
        factor = multiplier * scale / 10 ** money.currency_exponent(program.currency)
    else:
        factor = multiplier * scale
    return IssuePlan(
        rule=rule,
        key=f"{program.id}/{rule.id}",
        factor=factor,
        fixed_points=program.points(rule.fixed_amount),
        minimum_minor=(
            None
            if rule.transaction_minimum is None
            else money.to_minor(rule.transaction_minimum, program.currency)
        ),
    )


def _plan_award(
    program: LoyaltyProgram, rule: AwardRule, awards: dict[str, AwardProgram]
) -> AwardPlan:
    holder = awards.get(rule.award_program or program.award_program or "")
    currency = holder.currency if holder is not None else program.currency
    value_per_point = Fraction(0)
    if rule.award_factor is not None:
        value_per_point = (
            money.ratio(rule.award_factor)
            * 10 ** money.currency_exponent(currency)
            / 10**program.points_precision
        )
    return AwardPlan(
        rule=rule,
        threshold=program.points(rule.threshold),
        cost=program.points(rule.cost),
        holder=holder,
        amount_minor=money.to_minor(rule.amount, currency) if rule.amount else 0,
        minimum_minor=money.to_minor(rule.minimum_award, currency) if rule.minimum_award else 0,
        value_per_point=value_per_point,
    )

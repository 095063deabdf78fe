"""Typical account states of a program: what ``loyalty seed`` loads into the load-test
accounts, and what the account cache's compression dictionary is trained on
(:mod:`processor.cache.compression`).

A neutral module, so that neither the server imports the seeder nor the seeder the server.
The states are realistic rather than random: levels follow :data:`LEVEL_MIX`, balances come
from lots earned under the program's own issue rules, earnings agree with the level. An
edit here changes the candidate compression dictionary of new deployments (never of a
running one: the first dictionary stored in Redis stays, see processor.cache.accounts).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final, Literal

from processor import calendar, money
from processor.engine.loyalty import SPENT_MONTHS_KEPT
from processor.engine.types import (
    AccountState,
    Award,
    AwardAccount,
    Lot,
    LoyaltyAccount,
    TenderAccount,
    ValueLot,
)

if TYPE_CHECKING:
    from processor.program.model import ProgramFile

__all__ = ["AWARD_VALUE_SHARE", "LEVEL_MIX", "TENDER_SHARE", "account_templates"]

LEVEL_MIX: Final = (0.70, 0.22, 0.08)
"""Share of accounts at the program's first, second and third level."""

TENDER_SHARE: Final = 0.35
"""Share of cards with an activated gift-card balance."""

AWARD_VALUE_SHARE: Final = 0.10
"""Share of cards above the first level holding e-award value."""


def account_templates(
    program: ProgramFile, version: int, today: int, rng: random.Random, count: int
) -> list[AccountState]:
    """``count`` realistic account states of the program's first loyalty program.

    Levels follow :data:`LEVEL_MIX`; lots were earned over the past year under the issue
    rules open to the level (regular and bonus), released after the level's escrow and
    expiring as its point aging says; year-to-date and lifetime earnings agree with the
    level (a gold account earned at least what promotes to gold). Some hold a coupon, a
    gift-card balance or e-award value.
    """
    if not program.loyalty_programs:
        raise ValueError(f"program file {program.id} has no loyalty program to sample")
    loyalty = program.loyalty_programs[0]
    levels = [level.id for level in loyalty.levels][: len(LEVEL_MIX)]
    weights = LEVEL_MIX[: len(levels)]
    regular = [rule.id for rule in loyalty.issue_rules if not rule.is_bonus] or ["opening"]
    coupon_rules = [rule for rule in loyalty.award_rules if rule.type == "coupon"]
    award_program = program.award_programs[0] if program.award_programs else None
    scale = 10**loyalty.points_precision
    minor = 10 ** money.currency_exponent(loyalty.currency)
    year = calendar.year_of(today)
    states = []
    for index in range(count):
        level_id = rng.choices(levels, weights)[0]
        rank = levels.index(level_id)
        level = loyalty.level(level_id)
        bonus = [
            rule.id
            for rule in loyalty.issue_rules
            if rule.is_bonus and (not rule.levels or level_id in rule.levels)
        ]
        created = today - rng.randint(60, 3 * 365)
        last_activity = today - rng.randint(0, min(45, today - created))
        lots = []
        for _ in range(rng.choice((1, 2, 3, 3, 4, 5))):
            earned = rng.randint(max(created, today - 330), last_activity)
            is_bonus = bool(bonus) and rng.random() < 0.3
            kind: Literal["regular", "bonus"] = "bonus" if is_bonus else "regular"
            rule = rng.choice(bonus if is_bonus else regular)
            points = rng.randint(5, 150 * (1 + rank)) * scale
            available = earned + (level.escrow.after(0) if level.escrow else 0)
            aging = level.age_points
            expires = aging.after.after(earned) if aging and aging.type == "relative" else None
            lots.append(Lot(earned, rule, kind, points, available, expires, version))
        lots.sort(key=lambda lot: lot.earned_day)
        balance = sum(lot.points for lot in lots)
        # Earnings consistent with the level: what promoted the account, at least.
        floor = (0, 1000, 5000)[min(rank, 2)] * scale
        earned_ytd = max(balance, floor if rank == 1 else 0) + rng.randint(0, 400) * scale
        earned_ltd = max(earned_ytd + rng.randint(0, 3000) * scale, floor)
        by_month: dict[int, int] = {}
        spend: dict[int, int] = {}  # a unit of the currency for each point earned
        for lot in lots:
            month = calendar.month_index(lot.earned_day)
            by_month[month] = by_month.get(month, 0) + lot.points
            spend[month] = spend.get(month, 0) + lot.points * minor // scale
        latest = max(spend, default=0)
        spend = {m: amount for m, amount in spend.items() if m > latest - SPENT_MONTHS_KEPT}
        account = LoyaltyAccount(
            program=loyalty.id,
            level=level_id,
            created_day=created,
            level_since_day=max(created, today - rng.randint(30, 400)),
            last_activity_day=last_activity,
            lots=lots,
            earned_ltd=earned_ltd,
            earned_ytd=earned_ytd,
            ytd_year=year,
            earned_since_move=rng.randint(0, 800) * scale,
            earned_by_month=by_month,
            spent_by_month=spend,
            rule_total={rule: rng.randint(1, 40) for rule in {lot.rule for lot in lots}},
        )
        if coupon_rules and rng.random() < 0.15:
            coupon = rng.choice(coupon_rules)
            issued = rng.randint(max(created, today - 50), today)
            expires_day = (
                coupon.expiry.after.after(issued) if coupon.expiry and coupon.expiry.after else None
            )
            prefix = coupon.coupon_prefix or ""
            account.awards.append(
                Award(
                    f"{prefix}S{index:05d}", "coupon", coupon.id, loyalty.id, issued, expires_day, 1
                )
            )
        state = AccountState(account="", version=1, loyalty={loyalty.id: account})
        if program.tender is not None and rng.random() < TENDER_SHARE:
            tender = program.tender
            amount = rng.choice((1000, 2500, 2500, 5000, 5000, 10000, 20000))
            spent = rng.randint(0, amount // 100) * 100
            activated = rng.randint(created, today)
            state.tender = TenderAccount(
                status="active",
                balance=amount - spent,
                book_value=amount - spent,
                activated_day=activated,
                expires_day=tender.account_expiry.after(activated)
                if tender.account_expiry
                else None,
                usage_day=last_activity,
                lifetime_uses=rng.randint(1, 12),
            )
        if award_program is not None and rank > 0 and rng.random() < AWARD_VALUE_SHARE * 3:
            added = rng.randint(max(created, today - 120), today)
            expiry = award_program.award_expiry
            state.awards[award_program.id] = AwardAccount(
                program=award_program.id,
                created_day=created,
                last_activity_day=added,
                funded=True,
                value=[ValueLot(added, 1000, expiry.after(added) if expiry else None, "seed")],
            )
        states.append(state)
    return states

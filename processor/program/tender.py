"""The tender program: the rules of a card's stored value (a gift card).

A tender program is a corporate liability with intrinsic value that can be
exchanged for merchandise. Its options are the manual's Tender Program tab
(reloads, reversals, partial redemption, usage limits) and its Account Details
tab (activation minimum, balance bounds, cash outs, account expiry, initial
balance and book value, pre-authorizations).

Amounts are written as decimals of the program's currency and read by the
engine in integer minor units through ``minor``. Rules that span fields (a
minimum balance above the maximum, a cash out limit without cash outs) are
reported by ``problems`` so that a loader can name every problem with its own
path in one pass.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from processor import money
from processor.errors import Problem
from processor.program.base import Money, Period, ProgramHeader

USES_MAX = 1_000_000
"""Largest daily or lifetime usage limit a program may set."""

MONEY_FIELDS = (
    "max_redemption_value_per_day",
    "min_activation_amount",
    "min_balance",
    "max_balance",
    "cash_out_limit",
    "initial_balance",
    "initial_book_value",
)
"""The fields holding amounts of the program's currency, checked for exactness."""

POSITIVE_WHEN_SET = ("max_redemption_value_per_day", "max_balance", "cash_out_limit")
"""Limits that, set to zero, would refuse every operation they govern."""


class TenderProgram(ProgramHeader):
    """A stored-value program: every option of the manual's Tender Program and Account Details.

    Absent limits (``None``) mean no limit. ``min_activation_amount`` is the
    least balance an account may be activated with (the amount loaded plus any
    initial balance). ``initial_book_value`` is the accounting value of the
    initial balance; absent, the initial balance is booked at face value.
    ``account_expiry`` counts from the activation day; ``preauthorization_expiry``
    from the day a hold is placed.
    """

    allow_reloads: bool = False
    credit_reversal: bool = False
    debit_reversal: bool = False
    allow_partial_redemption: bool = False
    max_redemption_value_per_day: Money | None = None
    max_daily_uses: int | None = Field(default=None, ge=1, le=USES_MAX)
    max_lifetime_uses: int | None = Field(default=None, ge=1, le=USES_MAX)
    min_activation_amount: Money = Decimal(0)
    min_balance: Money = Decimal(0)
    max_balance: Money | None = None
    allow_cash_outs: bool = False
    cash_out_limit: Money | None = None
    account_expiry: Period | None = None
    initial_balance: Money | None = None
    initial_book_value: Money | None = None
    allow_preauthorizations: bool = False
    preauthorization_expiry: Period | None = None

    def minor(self, value: Decimal) -> int:
        """Minor units of an amount of the program's currency (raises ValueError if inexact)."""
        return money.to_minor(value, self.currency)

    def minor_or_none(self, value: Decimal | None) -> int | None:
        """Minor units of an optional limit; ``None`` (no limit) stays ``None``."""
        return None if value is None else self.minor(value)

    def initial_balance_minor(self) -> int:
        """The balance every account starts with on activation, in minor units (0 when none)."""
        return 0 if self.initial_balance is None else self.minor(self.initial_balance)

    def initial_book_value_minor(self) -> int:
        """The book value of the initial balance: as written, else the initial balance itself."""
        if self.initial_book_value is None:
            return self.initial_balance_minor()
        return self.minor(self.initial_book_value)

    def problems(self, path: str) -> list[Problem]:
        """Every cross-field problem of this program, each under its own dotted path."""
        found = self._date_problems(path) + self._currency_problems(path)
        found += self._bound_problems(path)
        found += self._dependency_problems(path)
        found += self._usage_problems(path)
        return found

    def _date_problems(self, path: str) -> list[Problem]:
        if self.end_date is not None and self.end_date < self.start_date:
            return [Problem(_at(path, "end_date"), "is before start_date")]
        return []

    def _currency_problems(self, path: str) -> list[Problem]:
        # An unknown currency makes every amount unreadable, so the amounts are
        # checked only once the currency itself is known to be valid.
        if not money.is_currency(self.currency):
            reason = f"{self.currency!r} is not an ISO 4217 currency code"
            return [Problem(_at(path, "currency"), reason)]
        found = []
        for name in MONEY_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            try:
                self.minor(value)
            except ValueError as error:
                found.append(Problem(_at(path, name), str(error)))
        return found

    def _bound_problems(self, path: str) -> list[Problem]:
        found = [
            Problem(_at(path, name), "must be greater than 0 when set")
            for name in POSITIVE_WHEN_SET
            if getattr(self, name) == 0
        ]
        ceiling = self.max_balance
        if ceiling is None:
            return found
        for name in ("min_balance", "min_activation_amount", "initial_balance"):
            value = getattr(self, name)
            if value is not None and value > ceiling:
                found.append(Problem(_at(path, name), f"is above max_balance ({ceiling})"))
        return found

    def _dependency_problems(self, path: str) -> list[Problem]:
        found = []
        if self.cash_out_limit is not None and not self.allow_cash_outs:
            reason = "is set but allow_cash_outs is false"
            found.append(Problem(_at(path, "cash_out_limit"), reason))
        if self.preauthorization_expiry is not None and not self.allow_preauthorizations:
            reason = "is set but allow_preauthorizations is false"
            found.append(Problem(_at(path, "preauthorization_expiry"), reason))
        if self.initial_book_value is not None and self.initial_balance is None:
            reason = "is set but initial_balance is not: there is nothing to book"
            found.append(Problem(_at(path, "initial_book_value"), reason))
        return found

    def _usage_problems(self, path: str) -> list[Problem]:
        daily, lifetime = self.max_daily_uses, self.max_lifetime_uses
        if daily is not None and lifetime is not None and daily > lifetime:
            reason = f"is above max_lifetime_uses ({lifetime})"
            return [Problem(_at(path, "max_daily_uses"), reason)]
        return []


def _at(path: str, name: str) -> str:
    """The dotted path of field ``name`` under ``path`` (the field alone at the top level)."""
    return f"{path}.{name}" if path else name

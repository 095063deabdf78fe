"""The award program: e-award value and award certificates held on a card.

An award program holds what a customer can spend at the till: a currency
balance of e-award value (an initial balance and e-awards placed by loyalty
programs) and award certificates, each carrying an entitlement offer with time
and location rules that limit when and where it can be redeemed.

Field-level limits live in the pydantic fields; rules that span fields (a
certificate that must expire because it is issued automatically, two
certificates with one precedence) are reported by ``problems`` so that a
loader can name every problem with its own path in one pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field

from processor import money
from processor.errors import Problem
from processor.limits import TEXT_CHARS_MAX
from processor.program.base import (
    Identifier,
    Model,
    Money,
    Period,
    ProgramHeader,
    TimeOfDay,
)
from processor.program.rules import LocationDirectory, LocationRule, TimeWindow

CERTIFICATES_MAX = 1000
"""Certificates one award program may define."""

TIME_RULES_MAX = 32
"""Time rules one certificate may carry."""

REDEMPTIONS_MAX = 1_000_000
"""Largest number of redemptions a limited certificate may allow."""

PRECEDENCE_MAX = 1_000_000
"""Largest precedence number a certificate may have."""

PERCENT_OFF_MAX = Decimal(100)
"""A percentage discount cannot give away more than the item."""

PERCENT_DIGITS_MAX = 2
"""Decimals a percentage discount may have (12.5 % is fine, 12.345 % is not)."""

CODE_PREFIX_LENGTH_MAX = 16
"""Longest prefix placed before the generated part of an award code."""

Name = Annotated[str, Field(min_length=1, max_length=TEXT_CHARS_MAX)]

IssueSetting = Literal["on_demand", "account_activated", "card_registered"]
"""When a certificate is issued: by a request or loyalty rule, on activation, on registration."""

OfferType = Literal["percent_off", "amount_off", "free_item"]
"""What an entitlement offer gives: a percentage off, an amount off, or an item free."""


class EntitlementOffer(Model):
    """The offer a certificate entitles its holder to (only offers intended as entitlements).

    ``value`` is the percentage for ``percent_off``, the amount in the program's
    currency for ``amount_off``, and absent for ``free_item``.
    """

    id: Identifier
    name: Name
    type: OfferType
    value: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    description: str = ""

    def problems(self, path: str, currency: str) -> list[Problem]:
        """Whether ``value`` fits ``type``; ``currency`` is the program's, known to be valid."""
        where = f"{path}.value"
        if self.type == "free_item":
            return [] if self.value is None else [Problem(where, "must be absent for free_item")]
        if self.value is None or self.value == 0:
            return [Problem(where, f"must be greater than 0 for {self.type}")]
        if self.type == "percent_off":
            return _percent_problems(self.value, where)
        return _money_problems(self.value, currency, where)


class TimeRule(TimeWindow):
    """When a certificate may be redeemed (eligibility) or may not (blackout).

    The window fields (weekdays, start and end time, start and end date) sit
    beside the name and type so that a rule reads as one flat block in YAML.
    """

    name: Name
    description: str = ""
    type: Literal["eligibility", "blackout"]
    # The default is already in seconds; validating it would send it through the
    # parser that reads a bare integer as YAML's sexagesimal minutes (24:00 is 1440).
    end_time: TimeOfDay = Field(default=86400, validate_default=False)


class AwardCertificate(Model):
    """A certificate definition: its offer, when it is issued and where it can be used."""

    id: Identifier
    name: Name
    description: str = ""
    offer: EntitlementOffer
    precedence: int = Field(ge=0, le=PRECEDENCE_MAX)
    issue: IssueSetting = "on_demand"
    expiry: Period | None = None
    unlimited_redemptions: bool = False
    max_redemptions: int | None = Field(default=None, ge=1, le=REDEMPTIONS_MAX)
    time_rules: list[TimeRule] = Field(default_factory=list, max_length=TIME_RULES_MAX)
    location_include: LocationRule | None = None
    location_exclude: LocationRule | None = None

    @property
    def redemptions_allowed(self) -> int:
        """Redemptions a newly issued certificate carries; -1 stands for unlimited."""
        if self.unlimited_redemptions or self.max_redemptions is None:
            return -1
        return self.max_redemptions

    def problems(self, path: str, directory: LocationDirectory, currency: str) -> list[Problem]:
        """Every cross-field problem of this certificate, each under its own path."""
        found = self.offer.problems(f"{path}.offer", currency) if currency else []
        found += self._expiry_problems(path)
        found += self._redemption_problems(path)
        for index, rule in enumerate(self.time_rules):
            found += rule.problems(f"{path}.time_rules[{index}]")
        found += self._location_problems(path, directory)
        return found

    def _expiry_problems(self, path: str) -> list[Problem]:
        # An on demand certificate takes its expiry from whatever issues it (a
        # request or a loyalty award rule); one issued automatically has no such
        # issuer, so the certificate itself must say when it expires.
        if self.issue == "on_demand" and self.expiry is not None:
            reason = "must be absent when issue is on_demand: the issuer sets the expiry"
            return [Problem(f"{path}.expiry", reason)]
        if self.issue != "on_demand" and self.expiry is None:
            return [Problem(f"{path}.expiry", f"is required when issue is {self.issue}")]
        return []

    def _redemption_problems(self, path: str) -> list[Problem]:
        where = f"{path}.max_redemptions"
        if self.unlimited_redemptions and self.max_redemptions is not None:
            return [Problem(where, "must be absent when unlimited_redemptions is true")]
        if not self.unlimited_redemptions and self.max_redemptions is None:
            return [Problem(where, "is required when unlimited_redemptions is false")]
        return []

    def _location_problems(self, path: str, directory: LocationDirectory) -> list[Problem]:
        found: list[Problem] = []
        if self.location_include is not None:
            found += self.location_include.problems(f"{path}.location_include", directory)
        if self.location_exclude is not None:
            found += self.location_exclude.problems(f"{path}.location_exclude", directory)
            included = set(self.location_include.locations if self.location_include else ())
            for index, location in enumerate(self.location_exclude.locations):
                if location in included:
                    reason = f"location {location!r} is also included"
                    found.append(Problem(f"{path}.location_exclude.locations[{index}]", reason))
        return found


class AwardProgram(ProgramHeader):
    """An award program: the manual's Award Program Details, Account Details and Award Expiration.

    ``allow_reloads`` false means the account may be funded once (its initial
    balance or its first e-award) and never again. ``extend_expiry_on_activity``
    recalculates award expiry from each activity date, as a courtesy to a
    customer who keeps shopping.
    """

    allow_reloads: bool = False
    account_expiry: Period | None = None
    initial_balance: Money | None = None
    award_expiry: Period | None = None
    extend_expiry_on_activity: bool = False
    coupon_prefix: str = Field(
        default="", max_length=CODE_PREFIX_LENGTH_MAX, pattern=r"^[A-Za-z0-9_-]*$"
    )
    certificates: list[AwardCertificate] = Field(default_factory=list, max_length=CERTIFICATES_MAX)

    def certificate(self, certificate_id: str) -> AwardCertificate | None:
        return next((item for item in self.certificates if item.id == certificate_id), None)

    def certificates_by_precedence(self) -> list[AwardCertificate]:
        """Certificates in the order they apply: lowest precedence number first."""
        return sorted(self.certificates, key=lambda item: item.precedence)

    def issues_on(self, setting: IssueSetting) -> bool:
        """Whether any of its certificates is issued on ``setting`` (an event of the card)."""
        return any(item.issue == setting for item in self.certificates)

    def initial_balance_units(self) -> int:
        """The initial balance in minor units of the program's currency (0 when none)."""
        if self.initial_balance is None:
            return 0
        return money.to_minor(self.initial_balance, self.currency)

    def problems(self, path: str, directory: LocationDirectory) -> list[Problem]:
        """Every cross-field problem of the program, each under its own dotted path."""
        currency = self.currency if money.is_currency(self.currency) else ""
        found = self._header_problems(path, currency)
        found += _duplicates((item.id for item in self.certificates), path, "id")
        found += _duplicates((item.precedence for item in self.certificates), path, "precedence")
        for index, item in enumerate(self.certificates):
            found += item.problems(f"{path}.certificates[{index}]", directory, currency)
        return found

    def _header_problems(self, path: str, currency: str) -> list[Problem]:
        found = []
        if not currency:
            found.append(Problem(f"{path}.currency", f"unknown currency {self.currency!r}"))
        if self.end_date is not None and self.end_date < self.start_date:
            found.append(Problem(f"{path}.end_date", "is before start_date"))
        if self.initial_balance is not None and currency:
            found += _money_problems(self.initial_balance, currency, f"{path}.initial_balance")
        if self.extend_expiry_on_activity and self.award_expiry is None:
            reason = "needs award_expiry: there is no award expiry to extend"
            found.append(Problem(f"{path}.extend_expiry_on_activity", reason))
        return found


def _money_problems(value: Decimal, currency: str, path: str) -> list[Problem]:
    try:
        money.to_minor(value, currency)
    except ValueError as error:
        return [Problem(path, str(error))]
    return []


def _percent_problems(value: Decimal, path: str) -> list[Problem]:
    if value > PERCENT_OFF_MAX:
        return [Problem(path, f"a percentage cannot exceed {PERCENT_OFF_MAX}")]
    try:
        money.scaled(value, PERCENT_DIGITS_MAX, "percentage")
    except ValueError as error:
        return [Problem(path, str(error))]
    return []


def _duplicates(values: Iterable[object], path: str, field: str) -> list[Problem]:
    """A problem at every certificate after the first that repeats a value of ``field``."""
    seen: Counter[object] = Counter()
    found = []
    for index, value in enumerate(values):
        seen[value] += 1
        if seen[value] > 1:
            reason = f"{field} {value!r} is used by an earlier certificate"
            found.append(Problem(f"{path}.certificates[{index}].{field}", reason))
    return found

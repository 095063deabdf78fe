"""The engine's inputs and outputs: requests, account state and results.

These are plain slotted dataclasses on purpose: both engines (the readable
reference and the Cython one) read and write exactly these, the service packs
them from protobuf messages, and the evaluator from JSON lines.

Conventions, held everywhere:
- money is an int in minor units of the currency named beside it;
- points are ints scaled by the loyalty program's decimal precision;
- days are day numbers (``processor.calendar``), times are seconds since the
  store's local midnight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Customer:
    """The customer a card or a transaction is associated with."""

    id: str
    birth_day: int | None = None
    signup_day: int | None = None
    audiences: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a sale: an item, its extended net amount and quantity."""

    number: int
    item: str
    amount: int
    quantity: int = 1
    hierarchy: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    merchandise: bool = True


@dataclass(frozen=True, slots=True)
class TenderLine:
    """How part of a sale was paid: tender type (``cash``, ``visa``, ...) and amount."""

    type: str
    amount: int


@dataclass(frozen=True, slots=True)
class RequestBase:
    id: str
    account: str
    day: int
    second: int = 0
    location: str = ""
    card_present: bool = True
    pin_verified: bool = False


@dataclass(frozen=True, slots=True)
class Purchase(RequestBase):
    """A sale basket: lines earn points; stored value and awards may pay for it.

    Everything in one basket succeeds or fails together.
    """

    currency: str = "USD"
    exchange_rate: str | None = None  # base units per one unit of ``currency``
    lines: tuple[Line, ...] = ()
    tenders: tuple[TenderLine, ...] = ()
    customer: Customer | None = None
    stored_value: int = 0  # amount paid from this card's tender account, in ``currency``
    redeem_codes: tuple[str, ...] = ()  # coupons and certificates presented


@dataclass(frozen=True, slots=True)
class ReturnLine:
    number: int  # the original sale's line number
    quantity: int


@dataclass(frozen=True, slots=True)
class Return(RequestBase):
    """A credit reversal of (part of) an earlier purchase: takes back what it earned."""

    original_id: str = ""
    lines: tuple[ReturnLine, ...] = ()  # empty: the whole remaining sale


@dataclass(frozen=True, slots=True)
class Void(RequestBase):
    """Cancels an earlier request entirely, as if it had never been posted."""

    original_id: str = ""


@dataclass(frozen=True, slots=True)
class Engagement(RequestBase):
    """A marketing engagement (a video watched, a survey answered)."""

    kind: str = "engagement"
    count: int = 1
    customer: Customer | None = None


TenderOp = Literal[
    "activate",
    "reload",
    "redeem",
    "balance",
    "preauth",
    "capture",
    "release",
    "cash_out",
    "merge",
]


@dataclass(frozen=True, slots=True)
class TenderRequest(RequestBase):
    """A stored-value operation on the card's tender account."""

    op: TenderOp = "balance"
    amount: int = 0
    currency: str = "USD"
    exchange_rate: str | None = None
    reference_id: str = ""  # the pre-authorization a capture or release refers to
    target_account: str = ""  # the surviving card of a merge


@dataclass(frozen=True, slots=True)
class AwardRedemption(RequestBase):
    """Redeem a coupon or certificate by code, or e-award value from an award program."""

    code: str = ""
    program: str = ""
    amount: int = 0


Request = Purchase | Return | Void | Engagement | TenderRequest | AwardRedemption

# --------------------------------------------------------------------------- account state


@dataclass(slots=True)
class Lot:
    """Points earned together: spent and expired oldest first."""

    earned_day: int
    rule: str
    kind: Literal["regular", "bonus"]
    points: int  # remaining in the lot
    available_day: int  # escrow release; equal to earned_day without escrow
    expires_day: int | None
    program_version: int


@dataclass(slots=True)
class Award:
    """A coupon or an award certificate held by an account."""

    code: str
    kind: Literal["coupon", "certificate"]
    rule: str  # the award rule (or certificate) that issued it
    program: str  # the program that holds it
    issued_day: int
    expires_day: int | None
    redemptions_left: int  # -1 means unlimited
    status: Literal["active", "redeemed", "expired", "void"] = "active"


@dataclass(slots=True)
class ValueLot:
    """E-award value added together, with its own expiry."""

    added_day: int
    amount: int
    expires_day: int | None
    source: str  # the award rule or request that added it


@dataclass(slots=True)
class AwardAccount:
    """A card's account in one award program: e-award value and certificates."""

    program: str
    status: Literal["inactive", "active", "expired"] = "active"
    created_day: int = 0
    expires_day: int | None = None
    last_activity_day: int = 0
    funded: bool = False  # value was added once; without reloads no more may be
    value: list[ValueLot] = field(default_factory=list)
    awards: list[Award] = field(default_factory=list)

    @property
    def balance(self) -> int:
        return sum(lot.amount for lot in self.value)


@dataclass(slots=True)
class LoyaltyAccount:
    """A card's account in one loyalty program."""

    program: str
    level: str
    created_day: int
    level_since_day: int
    last_activity_day: int
    lots: list[Lot] = field(default_factory=list)
    debt: int = 0  # points owed after a return larger than the balance
    earned_ltd: int = 0
    earned_ytd: int = 0
    ytd_year: int = 0
    earned_since_move: int = 0
    earned_by_month: dict[int, int] = field(default_factory=dict)  # month index -> points
    rule_day: dict[str, tuple[int, int]] = field(default_factory=dict)  # rule -> (day, uses)
    rule_period: dict[str, tuple[int, int]] = field(default_factory=dict)  # rule -> (period, uses)
    rule_total: dict[str, int] = field(default_factory=dict)  # rule -> uses, ever
    sustain_extended_until: int | None = None
    awards: list[Award] = field(default_factory=list)  # coupons
    # month index -> what the card spent in purchases, in the program currency's minor
    # units, net of returns and voids: the spend the monthly review reads
    spent_by_month: dict[int, int] = field(default_factory=dict)

    def available(self, day: int) -> int:
        """Spendable points on ``day``: released, unexpired lots less any debt."""
        return (
            sum(
                lot.points
                for lot in self.lots
                if lot.available_day <= day and (lot.expires_day is None or day < lot.expires_day)
            )
            - self.debt
        )

    def escrowed(self, day: int) -> int:
        return sum(lot.points for lot in self.lots if lot.available_day > day)


@dataclass(slots=True)
class Hold:
    """A pre-authorization: value set aside for a later capture."""

    amount: int
    created_day: int
    expires_day: int | None


@dataclass(slots=True)
class TenderAccount:
    """A card's stored-value account."""

    status: Literal["inactive", "active", "expired", "closed"] = "inactive"
    balance: int = 0  # minor units of the tender program's currency, holds included
    book_value: int = 0
    activated_day: int | None = None
    expires_day: int | None = None
    usage_day: int = 0  # the business day the daily counters below belong to
    day_redeemed: int = 0
    day_uses: int = 0
    lifetime_uses: int = 0
    holds: dict[str, Hold] = field(default_factory=dict)  # pre-authorization id -> hold

    @property
    def held(self) -> int:
        return sum(hold.amount for hold in self.holds.values())


@dataclass(slots=True)
class AccountState:
    """Everything the engine knows about one card, at one version."""

    account: str
    version: int = 0
    status: Literal["active", "inactive", "expired"] = "active"
    customer: Customer | None = None
    tender: TenderAccount | None = None
    awards: dict[str, AwardAccount] = field(default_factory=dict)
    loyalty: dict[str, LoyaltyAccount] = field(default_factory=dict)


@dataclass(slots=True)
class LineEarning:
    """What one sale line earned, and how much of it has been returned."""

    number: int
    quantity: int
    amount: int
    returned_quantity: int = 0
    points: dict[str, int] = field(default_factory=dict)  # "program/rule" -> points
    points_returned: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Receipt:
    """What a posted request did, kept so a return or void can undo exactly that."""

    id: str
    account: str
    kind: str
    day: int
    program_version: int
    lines: list[LineEarning] = field(default_factory=list)
    basket_points: dict[str, int] = field(default_factory=dict)  # points not tied to lines
    basket_returned: bool = False
    tender_amount: int = 0  # stored value moved (+ credited, - debited)
    awards: list[str] = field(default_factory=list)  # codes issued or redeemed
    voided: bool = False
    original_id: str = ""  # for a return: the purchase it returned from
    points_recovered: dict[str, int] = field(default_factory=dict)  # for a return, per rule
    # Loyalty program -> spend: what a purchase counted in each program's account, less what
    # returns have taken back since; what a return took back from each.
    spent: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Posting:
    """One ledger row: a signed change to one balance, with its cause."""

    program: str
    program_version: int
    balance: Literal["points", "tender", "award_value"]
    kind: str  # regular, bonus, escrow, release, expire, redeem, return, award_cost, ...
    amount: int
    rule: str = ""
    day: int = 0
    account: str = ""  # another card than the request's (a merge's surviving card)


@dataclass(frozen=True, slots=True)
class AwardIssue:
    code: str
    kind: Literal["coupon", "certificate", "e_award"]
    rule: str
    program: str  # the program that holds the award
    value: int  # e-award value in minor units; 0 for coupons and certificates
    points_cost: int
    expires_day: int | None


@dataclass(frozen=True, slots=True)
class LevelMove:
    program: str
    rule: str
    kind: Literal["advancement", "sustain", "demotion", "extension"]
    from_level: str
    to_level: str


@dataclass(frozen=True, slots=True)
class TenderDecision:
    op: str
    approved: bool
    requested: int
    approved_amount: int
    balance: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """Why a rule did or did not fire, and what it gave."""

    program: str
    rule: str
    fired: bool
    points: int = 0
    reason: str = ""


@dataclass(slots=True)
class Result:
    """The engine's answer to one request."""

    id: str
    account: str
    status: Literal["approved", "declined"] = "approved"
    reason: str = ""
    postings: list[Posting] = field(default_factory=list)
    awards: list[AwardIssue] = field(default_factory=list)
    redeemed: list[str] = field(default_factory=list)
    moves: list[LevelMove] = field(default_factory=list)
    tender: TenderDecision | None = None
    trace: list[TraceEntry] = field(default_factory=list)
    balances: dict[str, int] = field(default_factory=dict)


class Declined(Exception):
    """Raised inside the engine to decline a whole request; nothing it did is kept.

    ``reason`` is an upper-case token (the gRPC ErrorInfo reason, e.g.
    ``INSUFFICIENT_BALANCE``); ``detail`` is for people.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

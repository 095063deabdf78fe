"""Who may call what: the one table of roles and RPCs.

Five roles. Four come from the program manual's users (Admin, Manager, Support, Viewer);
Processor is the payment processor or POS platform that posts transactions and tender:

- **Processor** posts: every TransactionService and TenderService RPC, and redeems awards.
- **Viewer** reads: programs, accounts, ledgers, awards and balances, events and tasks.
- **Support** helps cardholders: a Viewer's reads, enrolling customers, registering cards,
  audiences, unlocking a locked PIN, claiming and completing tasks.
- **Manager** runs programs: a Viewer's reads, program files and their activation, batch
  status and expiry, claiming and completing tasks.
- **Admin** administers: every AdminService RPC, alone in making cards (GenerateCards
  answers the new cards' PINs: to an Admin, once, never again) and importing them, and in
  reading the audit log. An Admin does not post transactions: that is the Processor's.

A caller holds one or more roles and may call an RPC when one of them is in its row. A
card-scoped caller (a customer's app, whose key or token names its cards) may call only the
RPCs that act on cards named in the request (:func:`cards_of`), and only on its own.

Health is open to anyone (load balancers probe it without credentials); reflection is open
unless ``auth_reflection_open`` is false, then any authenticated caller may use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

ADMIN: Final = "Admin"
MANAGER: Final = "Manager"
SUPPORT: Final = "Support"
VIEWER: Final = "Viewer"
PROCESSOR: Final = "Processor"
ROLES: Final = (ADMIN, MANAGER, SUPPORT, VIEWER, PROCESSOR)

_READERS: Final = frozenset({ADMIN, MANAGER, SUPPORT, VIEWER})
_POSTING: Final = frozenset({PROCESSOR})
_BALANCE: Final = frozenset({PROCESSOR, ADMIN, MANAGER, SUPPORT, VIEWER})

ALLOWED: Final[dict[str, frozenset[str]]] = {
    "/loyalty.v1.TransactionService/PostTransaction": _POSTING,
    "/loyalty.v1.TransactionService/StreamTransactions": _POSTING,
    "/loyalty.v1.TransactionService/PostTransactions": _POSTING,
    "/loyalty.v1.TenderService/Activate": _POSTING,
    "/loyalty.v1.TenderService/Reload": _POSTING,
    "/loyalty.v1.TenderService/GetBalance": _BALANCE,
    "/loyalty.v1.TenderService/Redeem": _POSTING,
    "/loyalty.v1.TenderService/PreAuthorize": _POSTING,
    "/loyalty.v1.TenderService/Capture": _POSTING,
    "/loyalty.v1.TenderService/Release": _POSTING,
    "/loyalty.v1.TenderService/CashOut": _POSTING,
    "/loyalty.v1.TenderService/Merge": _POSTING,
    "/loyalty.v1.AwardService/ListAwards": _BALANCE,
    "/loyalty.v1.AwardService/RedeemAward": _POSTING,
    "/loyalty.v1.AwardService/RedeemAwardValue": _POSTING,
    "/loyalty.v1.AdminService/CreateProgram": frozenset({ADMIN, MANAGER}),
    "/loyalty.v1.AdminService/UpdateProgram": frozenset({ADMIN, MANAGER}),
    "/loyalty.v1.AdminService/ActivateProgram": frozenset({ADMIN, MANAGER}),
    "/loyalty.v1.AdminService/DeactivateProgram": frozenset({ADMIN, MANAGER}),
    "/loyalty.v1.AdminService/GetProgram": _READERS,
    "/loyalty.v1.AdminService/SearchPrograms": _READERS,
    "/loyalty.v1.AdminService/GenerateCards": frozenset({ADMIN}),
    "/loyalty.v1.AdminService/ImportCards": frozenset({ADMIN}),
    "/loyalty.v1.AdminService/SetBatchStatus": frozenset({ADMIN, MANAGER}),
    "/loyalty.v1.AdminService/SetBatchExpiry": frozenset({ADMIN, MANAGER}),
    "/loyalty.v1.AdminService/EnrollCustomer": frozenset({ADMIN, SUPPORT}),
    "/loyalty.v1.AdminService/RegisterCard": frozenset({ADMIN, SUPPORT}),
    "/loyalty.v1.AdminService/SetAudiences": frozenset({ADMIN, SUPPORT}),
    "/loyalty.v1.AdminService/UnlockPin": frozenset({ADMIN, SUPPORT}),
    "/loyalty.v1.AdminService/GetAccount": _READERS,
    "/loyalty.v1.AdminService/ListLedger": _READERS,
    "/loyalty.v1.AdminService/ListAudit": frozenset({ADMIN}),
    "/loyalty.v1.AdminService/GetScorecard": _READERS,
    "/loyalty.v1.AdminService/ListEvents": _READERS,
    "/loyalty.v1.AdminService/WatchEvents": _READERS,
    "/loyalty.v1.AdminService/ListTasks": _READERS,
    "/loyalty.v1.AdminService/ClaimTask": frozenset({ADMIN, MANAGER, SUPPORT}),
    "/loyalty.v1.AdminService/CompleteTask": frozenset({ADMIN, MANAGER, SUPPORT}),
}
"""The roles that may call each RPC (by its full method name). An RPC not here is refused to
every caller but on the open services below."""

OPEN_SERVICES: Final = ("/grpc.health.v1.Health/",)
"""Served to anyone, with or without credentials."""

REFLECTION_SERVICES: Final = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
"""Open unless ``auth_reflection_open`` is false; then any authenticated caller."""

AUDITED_SERVICE: Final = "/loyalty.v1.AdminService/"
"""Every call of this service is written to the audit log (processor.service.audit)."""


def allowed(full_method: str) -> frozenset[str] | None:
    """The roles that may call ``full_method``; None for a method not in the table, which
    no role may call."""
    return ALLOWED.get(full_method)


def rpc_name(full_method: str) -> str:
    """The RPC's own name: "/loyalty.v1.AdminService/GetAccount" -> "GetAccount"."""
    return full_method.rsplit("/", 1)[-1]


def is_open(full_method: str, *, reflection_open: bool) -> bool:
    """Whether ``full_method`` is served without credentials."""
    if full_method.startswith(OPEN_SERVICES):
        return True
    return reflection_open and full_method.startswith(REFLECTION_SERVICES)


def needs_no_role(full_method: str) -> bool:
    """Reflection: an authenticated caller of any role may use it when it is closed."""
    return full_method.startswith(REFLECTION_SERVICES)


def cards_of(request: Any) -> Iterator[str]:
    """The card numbers a request acts on: its context's card (and a merge's target), a
    request's ``account``, or each transaction's. Requests of RPCs that do not act on
    cards name none, and a card-scoped caller may not make them."""
    if hasattr(request, "transactions"):  # PostTransactions
        for transaction in request.transactions:
            yield transaction.context.account
        return
    if hasattr(request, "transaction"):  # PostTransaction, a message of a stream
        yield request.transaction.context.account
        return
    if hasattr(request, "context") and hasattr(request.context, "account"):
        yield request.context.account
        if hasattr(request, "target_account"):  # Merge
            yield request.target_account
        return
    if hasattr(request, "account"):
        yield request.account


def acts_on_cards(full_method: str) -> bool:
    """Whether ``full_method``'s requests name the cards they act on (:func:`cards_of`)."""
    return full_method in CARD_METHODS


CARD_METHODS: Final = frozenset(
    method
    for method in ALLOWED
    if not method.startswith(AUDITED_SERVICE) or rpc_name(method) in {"GetAccount", "ListLedger"}
)
"""The RPCs a card-scoped caller may make (on its own cards): posting, tender, awards and
the two account inquiries."""


__all__ = [
    "ADMIN",
    "ALLOWED",
    "AUDITED_SERVICE",
    "CARD_METHODS",
    "MANAGER",
    "PROCESSOR",
    "ROLES",
    "SUPPORT",
    "VIEWER",
    "acts_on_cards",
    "allowed",
    "cards_of",
    "is_open",
    "rpc_name",
]

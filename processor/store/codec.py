"""Compact, versioned binary encodings of account state, receipts and results.

Every blob is one msgpack array whose first element is ``FORMAT_VERSION``. Records inside
are positional arrays (the field order *is* the format), closed sets of words (statuses,
kinds, balances) are small integers, and trailing fields still at their defaults are left
off. Days inside a loyalty account are written relative to the day it was opened (one or
two bytes instead of three) and its rule ids once each. An account's state leaves out the
account id: it is the key the blob is stored under, and ``decode_state`` is given it back.
The same bytes live in the PostgreSQL ``accounts.state`` column and in the Redis cache,
where every byte is paid for ten million times over: a card with one loyalty account, a
level and three lots takes about 100 bytes.

Changing the layout means a new format version: ``decode_*`` refuses versions it does not
know (a blob from a newer release must not be half-read), so keep the reader of an old
version for as long as its blobs may be stored. One change stays in a version: a field
added after a record's last, with a default. This release reads records without it (as
the default); an older one refuses a record that has it ("more than N fields"), so a
release that adds one cannot be rolled back once it has written it. The loyalty account's
spend by month is such a field.

Dictionaries keyed by program (``AccountState.awards`` and ``.loyalty``) are written as
lists and rebuilt from each account's ``program``; a key that differs from it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import msgpack  # type: ignore[import-untyped, unused-ignore]

from processor import calendar
from processor.engine.types import (
    AccountState,
    Award,
    AwardAccount,
    AwardIssue,
    Customer,
    Hold,
    LevelMove,
    LineEarning,
    Lot,
    LoyaltyAccount,
    Posting,
    Receipt,
    Result,
    TenderAccount,
    TenderDecision,
    TraceEntry,
    ValueLot,
)
from processor.errors import InternalError
from processor.limits import ENCODED_BLOB_BYTES_MAX

FORMAT_VERSION: Final = 1
"""The layout written by this release, the first element of every blob."""

SUPPORTED_FORMAT_VERSIONS: Final = frozenset({1})
"""The layouts this release reads."""

_REQUIRED: Final = object()
"""Marks a field with no default: it is never left off."""

# The closed vocabularies, in their wire order. Append only: a value's position is its code.
ACCOUNT_STATUSES: Final = ("active", "inactive", "expired")
TENDER_STATUSES: Final = ("inactive", "active", "expired", "closed")
AWARD_ACCOUNT_STATUSES: Final = ("active", "inactive", "expired")
AWARD_KINDS: Final = ("coupon", "certificate")
AWARD_STATUSES: Final = ("active", "redeemed", "expired", "void")
LOT_KINDS: Final = ("regular", "bonus")
BALANCES: Final = ("points", "tender", "award_value")
RESULT_STATUSES: Final = ("approved", "declined")
ISSUE_KINDS: Final = ("coupon", "certificate", "e_award")
MOVE_KINDS: Final = ("advancement", "sustain", "demotion", "extension")


class CodecError(InternalError):
    """A value cannot be encoded, or stored bytes cannot be decoded (unknown format, damage)."""

    reason = "UNDECODABLE_RECORD"


_T = TypeVar("_T")
_S = TypeVar("_S", bound=AccountState)


# --------------------------------------------------------------------------- public API


def encode_state(state: AccountState, version: int | None = None) -> bytes:
    """The stored form of one account's state, without its account id (the key it is under);
    ``version`` in place of the state's own, when given (a commit writes the next one)."""
    return _pack(state_fields(state, version), "account state")


def encode_fields(fields: list[Any], version: int) -> bytes:
    """``encode_state``'s bytes from ``state_fields``' fields, at ``version`` (at least 1):
    a commit sets the version of a state it was given as fields. The list is changed."""
    if type(version) is not int or version < 1:
        raise CodecError(f"an encoded state's version must be at least 1, not {version!r}")
    fields[0] = version
    return _pack(fields, "account state")


def encode_evaluated(accounts: Any, account: str, version: int) -> bytes:
    """``encode_fields(accounts.stored_fields(account), version)``'s bytes, for the compiled
    engine's accounts of a batch (processor._engine.LazyAccounts): a card it evaluated in
    its arrays is written from them as msgpack at once (``stored_bytes``: no list per lot,
    held equal by the engines' property test), any other packed from its fields."""
    if type(version) is not int or version < 1:
        raise CodecError(f"an encoded state's version must be at least 1, not {version!r}")
    try:
        data: bytes | None = accounts.stored_bytes(account, FORMAT_VERSION, version)
    except (TypeError, OverflowError):  # a value that writer does not take: msgpack's turn
        data = None
    if data is None:
        return encode_fields(accounts.stored_fields(account), version)
    if len(data) > ENCODED_BLOB_BYTES_MAX:
        raise CodecError(
            f"account state encodes to {len(data)} bytes, more than {ENCODED_BLOB_BYTES_MAX}"
        )
    return data


def decode_state(data: bytes, account: str) -> AccountState:
    """The state of ``account`` that ``encode_state`` wrote."""
    return _unpack(data, "account state", lambda fields: _state_from(fields, account))


def decode_state_deferred(data: bytes, account: str) -> AccountState:
    """``decode_state``, its loyalty accounts left as their stored fields until read (a
    :class:`DeferredState`): the compiled engine packs them from those fields, without
    the account and lot objects. The rest of the state, and the framing, version and
    shape of every loyalty account, are checked here as ``decode_state`` checks them."""
    return _unpack(data, "account state", lambda fields: _deferred_from(fields, account))


class DeferredState(AccountState):
    """An AccountState whose loyalty accounts are decoded when first read, from the fields
    ``decode_state_deferred`` kept (``stored_loyalty``): to anyone who reads ``loyalty`` it
    is the state ``decode_state`` would have made, and equal to it."""

    __slots__ = ("_stored_loyalty",)
    _stored_loyalty: list[list[Any]] | None

    @property
    def loyalty(self) -> dict[str, LoyaltyAccount]:
        stored = self._stored_loyalty
        if stored is not None:
            accounts = [loyalty_from_stored(one) for one in stored]
            _LOYALTY_SLOT.__set__(self, {one.program: one for one in accounts})
            self._stored_loyalty = None
        held: dict[str, LoyaltyAccount] = _LOYALTY_SLOT.__get__(self)
        return held

    @loyalty.setter
    def loyalty(self, value: dict[str, LoyaltyAccount]) -> None:
        self._stored_loyalty = None
        _LOYALTY_SLOT.__set__(self, value)

    def stored_loyalty(self) -> list[list[Any]] | None:
        """The loyalty accounts' stored fields (``loyalty_fields`` of each, in order), or
        None once ``loyalty`` was read. Not to be changed."""
        return self._stored_loyalty

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccountState):
            return NotImplemented
        return _compared(self) == _compared(other)


_LOYALTY_SLOT: Final[Any] = AccountState.__dict__["loyalty"]


def _compared(state: AccountState) -> tuple[Any, ...]:
    return (
        state.account,
        state.version,
        state.status,
        state.customer,
        state.tender,
        state.awards,
        state.loyalty,
    )


def _deferred_from(values: list[Any], account: str) -> AccountState:
    state, loyalty = _state_without_loyalty(values, account, DeferredState)
    if type(loyalty) is not list:
        raise CodecError("account state's loyalty accounts are not an array")
    for one in loyalty:
        if type(one) is not list or not 3 <= len(one) <= len(_LOYALTY) or type(one[0]) is not str:
            raise CodecError("a loyalty account of the account state is damaged")
    state._stored_loyalty = loyalty
    return state


def loyalty_from_stored(values: list[Any]) -> LoyaltyAccount:
    """``loyalty_from`` of a deferred state's stored fields, damage a CodecError as
    ``decode_state`` reports it."""
    try:
        account: LoyaltyAccount = loyalty_from(values)
        return account
    except CodecError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as error:
        raise CodecError(f"a stored loyalty account is damaged: {error}") from error


def padded_loyalty_fields(values: list[Any]) -> list[Any]:
    """A copy of a loyalty account's stored fields with the trailing ones the writer left
    off put back (``loyalty_from_reference``'s reading), for a reader of the fields."""
    return _pad(list(values), _LOYALTY, "loyalty account")


def loyalty_awards_from(values: list[Any], holder: str, base: int, rules: list[str]) -> list[Award]:
    """A loyalty account's coupons from their stored fields, as ``loyalty_from_reference``
    reads them."""
    return [_award_from(award, holder, base, rules.__getitem__) for award in values]


def encode_receipt(receipt: Receipt) -> bytes:
    """The stored form of a posted request's receipt."""
    return _pack(_receipt_fields(receipt), "receipt")


def stored_receipts(receipts: Mapping[str, Receipt]) -> list[tuple[str, str, bytes]]:
    """(account, request id, stored form) of every receipt of a batch's outcome. The
    compiled engine writes the receipts of its fast-path purchases itself, straight from
    its rows (its ``stored``: the bytes ``encode_receipt`` writes, tested so); the rest
    are encoded here."""
    split = getattr(receipts, "stored", None)
    if split is None:
        return [
            (receipt.account, receipt.id, encode_receipt(receipt)) for receipt in receipts.values()
        ]
    built: list[Receipt]
    written: list[tuple[str, str, bytes]]
    try:
        built, written = split(FORMAT_VERSION)
    except (TypeError, ValueError, OverflowError) as error:
        raise CodecError(f"cannot encode receipt: {error}") from error
    for _, request_id, data in written:
        if len(data) > ENCODED_BLOB_BYTES_MAX:
            raise CodecError(
                f"receipt {request_id} encodes to {len(data)} bytes, more than"
                f" {ENCODED_BLOB_BYTES_MAX}"
            )
    return [(receipt.account, receipt.id, encode_receipt(receipt)) for receipt in built] + written


def decode_receipt(data: bytes) -> Receipt:
    """The receipt ``encode_receipt`` wrote."""
    return _unpack(data, "receipt", _receipt_from)


def encode_result(result: Result) -> bytes:
    """The stored form of a result: what a replay of the same request is answered with."""
    return _pack(_result_fields(result), "result")


def decode_result(data: bytes) -> Result:
    """The result ``encode_result`` wrote."""
    return _unpack(data, "result", _result_from)


# --------------------------------------------------------------------------- framing


def _pack(fields: list[Any], what: str) -> bytes:
    try:
        data: bytes = msgpack.packb([FORMAT_VERSION, *fields], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise CodecError(f"cannot encode {what}: {error}") from error
    if len(data) > ENCODED_BLOB_BYTES_MAX:
        raise CodecError(f"{what} encodes to {len(data)} bytes, more than {ENCODED_BLOB_BYTES_MAX}")
    return data


def _unpack(data: bytes, what: str, build: Callable[[list[Any]], _T]) -> _T:
    if len(data) > ENCODED_BLOB_BYTES_MAX:
        raise CodecError(f"{what} of {len(data)} bytes is larger than {ENCODED_BLOB_BYTES_MAX}")
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise CodecError(f"{what} is not a msgpack record: {error}") from error
    if not isinstance(fields, list) or not fields or type(fields[0]) is not int:
        raise CodecError(f"{what} does not start with a format version")
    version = fields[0]
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise CodecError(
            f"{what} has format version {version}; this release reads "
            f"{sorted(SUPPORTED_FORMAT_VERSIONS)} (was it written by a newer release?)"
        )
    try:
        return build(fields[1:])
    except CodecError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as error:
        raise CodecError(f"{what} (format version {version}) is damaged: {error}") from error


def _trim(values: list[Any], defaults: Sequence[Any]) -> list[Any]:
    """``values`` without the trailing ones that equal their defaults."""
    end = len(values)
    while end and defaults[end - 1] is not _REQUIRED and values[end - 1] == defaults[end - 1]:
        end -= 1
    return values[:end]


def _pad(values: list[Any], defaults: Sequence[Any], what: str) -> list[Any]:
    """``values`` with the fields ``_trim`` left off put back."""
    if type(values) is not list:
        raise CodecError(f"{what} is not an array")
    count = len(values)
    if count == len(defaults):
        return values  # nothing was left off: the common case for every busy record
    if count > len(defaults):
        raise CodecError(f"{what} has {count} fields, more than {len(defaults)}")
    missing = defaults[count:]
    for default in missing:
        if default is _REQUIRED:
            raise CodecError(f"{what} lacks required fields")
    values.extend(missing)
    return values


def _code(value: str, vocabulary: tuple[str, ...], what: str) -> int:
    try:
        return vocabulary.index(value)
    except ValueError:
        raise CodecError(f"{what} {value!r} is not one of {vocabulary}") from None


def _word(code: int, vocabulary: tuple[str, ...], what: str) -> Any:
    if type(code) is not int or not 0 <= code < len(vocabulary):
        raise CodecError(f"{what} code {code!r} is not one of 0..{len(vocabulary) - 1}")
    return vocabulary[code]


def _shift(day: int | None, base: int) -> int | None:
    return None if day is None else day - base


def _unshift(delta: int | None, base: int) -> int | None:
    return None if delta is None else base + delta


# --------------------------------------------------------------------------- account state

_R = _REQUIRED
# The account id is the key the blob is stored under (the accounts row, the Redis key), so
# the blob leaves it out; loyalty comes first because most accounts have nothing else.
_STATE: Final[tuple[Any, ...]] = (0, 0, [], [], None, None)
_CUSTOMER: Final[tuple[Any, ...]] = (_R, None, None, [])
_TENDER: Final[tuple[Any, ...]] = (0, 0, 0, None, None, 0, 0, 0, 0, {})
_HOLD: Final[tuple[Any, ...]] = (_R, _R, None)
_AWARD_ACCOUNT: Final[tuple[Any, ...]] = (_R, 0, 0, None, 0, False, [], [])
_VALUE_LOT: Final[tuple[Any, ...]] = (_R, _R, None, "")
_AWARD: Final[tuple[Any, ...]] = (_R, 0, _R, None, 0, None, 1, 0)
_LOYALTY: Final[tuple[Any, ...]] = (
    _R,
    _R,
    _R,
    0,
    0,
    [],
    [],
    0,
    0,
    0,
    0,
    0,
    {},
    {},
    {},
    {},
    None,
    [],
    {},
)
_LOT: Final[tuple[Any, ...]] = (_R, _R, 0, _R, 0, None, 0)


def state_fields(
    state: AccountState, version: int | None = None, loyalty: list[list[Any]] | None = None
) -> list[Any]:
    """The fields ``encode_state`` packs. ``loyalty``: the loyalty accounts' fields in the
    order of ``state.loyalty`` (``loyalty_fields`` of each) when the caller wrote them
    itself, as the compiled engine does from its arrays; ``state.loyalty`` is then
    ignored."""
    for key, award_account in state.awards.items():
        if key != award_account.program:
            raise CodecError(f"award account {award_account.program!r} is filed under {key!r}")
    if loyalty is None:
        for key, loyalty_account in state.loyalty.items():
            if key != loyalty_account.program:
                raise CodecError(
                    f"loyalty account {loyalty_account.program!r} is filed under {key!r}"
                )
        loyalty = [loyalty_fields(one) for one in state.loyalty.values()]
    values = [
        state.version if version is None else version,
        _code(state.status, ACCOUNT_STATUSES, "account status"),
        loyalty,
        [_award_account_fields(one) for one in state.awards.values()],
        None if state.tender is None else _tender_fields(state.tender),
        None if state.customer is None else _customer_fields(state.customer),
    ]
    return _trim(values, _STATE)


def _state_from(values: list[Any], account: str) -> AccountState:
    state, loyalty = _state_without_loyalty(values, account, AccountState)
    loyalty_accounts = [loyalty_from(one) for one in loyalty]
    state.loyalty = {one.program: one for one in loyalty_accounts}
    return state


def _state_without_loyalty(values: list[Any], account: str, kind: type[_S]) -> tuple[_S, Any]:
    """A state of ``kind`` read from its fields but for its loyalty accounts (none yet),
    and their stored fields."""
    version, status, loyalty, awards, tender, customer = _pad(values, _STATE, "account state")
    award_accounts = [_award_account_from(one) for one in awards]
    state = kind(
        account,
        version,
        _word(status, ACCOUNT_STATUSES, "account status"),
        None if customer is None else _customer_from(customer),
        None if tender is None else _tender_from(tender),
        {one.program: one for one in award_accounts},
        {},
    )
    return state, loyalty


def _customer_fields(customer: Customer) -> list[Any]:
    values = [customer.id, customer.birth_day, customer.signup_day, sorted(customer.audiences)]
    return _trim(values, _CUSTOMER)


def _customer_from(values: list[Any]) -> Customer:
    id_, birth_day, signup_day, audiences = _pad(values, _CUSTOMER, "customer")
    return Customer(id_, birth_day, signup_day, frozenset(audiences))


def _tender_fields(tender: TenderAccount) -> list[Any]:
    values = [
        _code(tender.status, TENDER_STATUSES, "tender status"),
        tender.balance,
        tender.book_value,
        tender.activated_day,
        tender.expires_day,
        tender.usage_day,
        tender.day_redeemed,
        tender.day_uses,
        tender.lifetime_uses,
        {
            hold_id: _trim([hold.amount, hold.created_day, hold.expires_day], _HOLD)
            for hold_id, hold in tender.holds.items()
        },
    ]
    return _trim(values, _TENDER)


def _tender_from(values: list[Any]) -> TenderAccount:
    status, balance, book, activated, expires, usage, redeemed, uses, lifetime, holds = _pad(
        values, _TENDER, "tender account"
    )
    return TenderAccount(
        _word(status, TENDER_STATUSES, "tender status"),
        balance,
        book,
        activated,
        expires,
        usage,
        redeemed,
        uses,
        lifetime,
        {hold_id: Hold(*_pad(hold, _HOLD, "hold")) for hold_id, hold in holds.items()},
    )


def _award_account_fields(account: AwardAccount) -> list[Any]:
    values = [
        account.program,
        _code(account.status, AWARD_ACCOUNT_STATUSES, "award account status"),
        account.created_day,
        account.expires_day,
        account.last_activity_day,
        account.funded,
        [
            _trim([lot.added_day, lot.amount, lot.expires_day, lot.source], _VALUE_LOT)
            for lot in account.value
        ],
        [_award_fields(award, account.program, account.created_day) for award in account.awards],
    ]
    return _trim(values, _AWARD_ACCOUNT)


def _award_account_from(values: list[Any]) -> AwardAccount:
    program, status, created, expires, last_activity, funded, value, awards = _pad(
        values, _AWARD_ACCOUNT, "award account"
    )
    return AwardAccount(
        program,
        _word(status, AWARD_ACCOUNT_STATUSES, "award account status"),
        created,
        expires,
        last_activity,
        funded,
        [ValueLot(*_pad(lot, _VALUE_LOT, "value lot")) for lot in value],
        [_award_from(award, program, created) for award in awards],
    )


def _award_fields(
    award: Award, holder: str, base: int, rule_ref: Callable[[str], Any] = str
) -> list[Any]:
    # The holder's program and the base day are known to the reader, so a coupon held by
    # the program that issued it, on a day near the account's opening, costs a few bytes.
    values = [
        award.code,
        _code(award.kind, AWARD_KINDS, "award kind"),
        rule_ref(award.rule),
        None if award.program == holder else award.program,
        award.issued_day - base,
        _shift(award.expires_day, award.issued_day),
        award.redemptions_left,
        _code(award.status, AWARD_STATUSES, "award status"),
    ]
    return _trim(values, _AWARD)


def _award_from(
    values: list[Any], holder: str, base: int, rule_name: Callable[[Any], str] = str
) -> Award:
    code, kind, rule, program, issued, expires, left, status = _pad(values, _AWARD, "award")
    issued_day = base + issued
    return Award(
        code,
        _word(kind, AWARD_KINDS, "award kind"),
        rule_name(rule),
        holder if program is None else program,
        issued_day,
        _unshift(expires, issued_day),
        left,
        _word(status, AWARD_STATUSES, "award status"),
    )


def loyalty_fields_reference(account: LoyaltyAccount) -> list[Any]:
    # Days are written relative to the day the account was opened, months and years to
    # that day's month and year, and rule ids once each (lots and counters refer to them by
    # position): together they take a typical account from about 150 bytes to about 100.
    base = account.created_day
    rules: dict[str, int] = {}

    def ref(rule: str) -> int:
        return rules.setdefault(rule, len(rules))

    lots = lots_fields(account.lots, base, rules)
    rule_day = {ref(rule): [day - base, uses] for rule, (day, uses) in account.rule_day.items()}
    rule_period = {ref(rule): list(counts) for rule, counts in account.rule_period.items()}
    rule_total = {ref(rule): uses for rule, uses in account.rule_total.items()}
    awards = [_award_fields(award, account.program, base, ref) for award in account.awards]
    base_month = calendar.month_index(base)
    values = [
        account.program,
        account.level,
        base,
        account.level_since_day - base,
        account.last_activity_day - base,
        list(rules),
        lots,
        account.debt,
        account.earned_ltd,
        account.earned_ytd,
        account.ytd_year - calendar.year_of(base),
        account.earned_since_move,
        {month - base_month: points for month, points in account.earned_by_month.items()},
        rule_day,
        rule_period,
        rule_total,
        _shift(account.sustain_extended_until, base),
        awards,
        {month - base_month: spent for month, spent in account.spent_by_month.items()},
    ]
    return _trim(values, _LOYALTY)


def loyalty_from_reference(values: list[Any]) -> LoyaltyAccount:
    (
        program,
        level,
        base,
        level_since,
        last_activity,
        rules,
        lots,
        debt,
        earned_ltd,
        earned_ytd,
        ytd_year,
        earned_since_move,
        by_month,
        rule_day,
        rule_period,
        rule_total,
        sustain_until,
        awards,
        spent,
    ) = _pad(values, _LOYALTY, "loyalty account")
    base_month = calendar.month_index(base)
    return LoyaltyAccount(
        program,
        level,
        base,
        base + level_since,
        base + last_activity,
        lots_from(lots, base, rules),
        debt,
        earned_ltd,
        earned_ytd,
        calendar.year_of(base) + ytd_year,
        earned_since_move,
        {base_month + month: points for month, points in by_month.items()},
        {rules[rule]: (base + day, uses) for rule, (day, uses) in rule_day.items()},
        {rules[rule]: (period, uses) for rule, (period, uses) in rule_period.items()},
        {rules[rule]: uses for rule, uses in rule_total.items()},
        _unshift(sustain_until, base),
        [_award_from(award, program, base, rules.__getitem__) for award in awards],
        {base_month + month: amount for month, amount in spent.items()},
    )


def trimmed_loyalty_fields(values: list[Any]) -> list[Any]:
    """A loyalty account's full field list without the trailing fields at their defaults:
    for a writer of the fields other than ``loyalty_fields_reference`` (the compiled
    engine, from its arrays)."""
    return _trim(values, _LOYALTY)


def loyalty_award_fields(
    awards: list[Award], holder: str, base: int, rules: dict[str, int]
) -> list[list[Any]]:
    """The fields of a loyalty account's coupons, as ``loyalty_fields_reference`` writes
    them: their rules numbered on from ``rules`` (changed), for a writer of the account's
    other fields such as ``trimmed_loyalty_fields``' callers."""

    def ref(rule: str) -> int:
        return rules.setdefault(rule, len(rules))

    return [_award_fields(award, holder, base, ref) for award in awards]


def _lot_fields(lot: Lot, base: int, ref: Callable[[str], int]) -> list[Any]:
    # Escrow release and expiry are written relative to the earning day: 0 and a
    # program-wide constant, the same small numbers for every lot.
    values = [
        lot.earned_day - base,
        ref(lot.rule),
        _code(lot.kind, LOT_KINDS, "lot kind"),
        lot.points,
        lot.available_day - lot.earned_day,
        _shift(lot.expires_day, lot.earned_day),
        lot.program_version,
    ]
    return _trim(values, _LOT)


def lots_fields_reference(lots: list[Lot], base: int, rules: dict[str, int]) -> list[list[Any]]:
    """Each lot's fields; a rule not in ``rules`` yet gets the next position, in lot order."""
    return [_lot_fields(lot, base, lambda rule: rules.setdefault(rule, len(rules))) for lot in lots]


def lots_from_reference(values: Any, base: int, rules: list[str]) -> list[Lot]:
    """The lots ``lots_fields_reference`` wrote."""
    return [_lot_from(lot, base, rules) for lot in values]


def _lot_from(values: list[Any], base: int, rules: list[str]) -> Lot:
    earned, rule, kind, points, available, expires, version = _pad(values, _LOT, "lot")
    earned_day = base + earned
    return Lot(
        earned_day,
        rules[rule],
        _word(kind, LOT_KINDS, "lot kind"),
        points,
        earned_day + available,
        _unshift(expires, earned_day),
        version,
    )


# --------------------------------------------------------------------------- receipts

_RECEIPT: Final[tuple[Any, ...]] = (_R, _R, _R, _R, 0, [], {}, False, 0, [], False, "", {}, {})
_LINE_EARNING: Final[tuple[Any, ...]] = (_R, _R, _R, 0, {}, {})


def _receipt_fields(receipt: Receipt) -> list[Any]:
    values = [
        receipt.id,
        receipt.account,
        receipt.kind,
        receipt.day,
        receipt.program_version,
        [
            _trim(
                [
                    line.number,
                    line.quantity,
                    line.amount,
                    line.returned_quantity,
                    line.points,
                    line.points_returned,
                ],
                _LINE_EARNING,
            )
            for line in receipt.lines
        ],
        receipt.basket_points,
        receipt.basket_returned,
        receipt.tender_amount,
        receipt.awards,
        receipt.voided,
        receipt.original_id,
        receipt.points_recovered,
        receipt.spent,
    ]
    return _trim(values, _RECEIPT)


def _receipt_from(values: list[Any]) -> Receipt:
    (
        id_,
        account,
        kind,
        day,
        program_version,
        lines,
        basket_points,
        basket_returned,
        tender_amount,
        awards,
        voided,
        original_id,
        recovered,
        spent,
    ) = _pad(values, _RECEIPT, "receipt")
    return Receipt(
        id_,
        account,
        kind,
        day,
        program_version,
        [_line_earning_from(line) for line in lines],
        dict(basket_points),
        basket_returned,
        tender_amount,
        list(awards),
        voided,
        original_id,
        dict(recovered),
        dict(spent),
    )


def _line_earning_from(values: list[Any]) -> LineEarning:
    number, quantity, amount, returned, points, points_returned = _pad(
        values, _LINE_EARNING, "line earning"
    )
    return LineEarning(number, quantity, amount, returned, dict(points), dict(points_returned))


# --------------------------------------------------------------------------- results

_RESULT: Final[tuple[Any, ...]] = (_R, _R, 0, "", [], [], [], [], None, [], {})
_POSTING: Final[tuple[Any, ...]] = (_R, _R, _R, _R, _R, "", 0, "")
_ISSUE: Final[tuple[Any, ...]] = (_R, _R, _R, _R, 0, 0, None)
_MOVE: Final[tuple[Any, ...]] = (_R, _R, _R, _R, _R)
_DECISION: Final[tuple[Any, ...]] = (_R, _R, _R, _R, _R, "")
_TRACE: Final[tuple[Any, ...]] = (_R, _R, _R, 0, "")


def _result_fields(result: Result) -> list[Any]:
    tender = result.tender
    values = [
        result.id,
        result.account,
        _code(result.status, RESULT_STATUSES, "result status"),
        result.reason,
        [_posting_fields(posting) for posting in result.postings],
        [
            _trim(
                [
                    issue.code,
                    _code(issue.kind, ISSUE_KINDS, "award issue kind"),
                    issue.rule,
                    issue.program,
                    issue.value,
                    issue.points_cost,
                    issue.expires_day,
                ],
                _ISSUE,
            )
            for issue in result.awards
        ],
        result.redeemed,
        [
            [
                move.program,
                move.rule,
                _code(move.kind, MOVE_KINDS, "level move kind"),
                move.from_level,
                move.to_level,
            ]
            for move in result.moves
        ],
        None
        if tender is None
        else _trim(
            [
                tender.op,
                tender.approved,
                tender.requested,
                tender.approved_amount,
                tender.balance,
                tender.reason,
            ],
            _DECISION,
        ),
        [
            _trim([entry.program, entry.rule, entry.fired, entry.points, entry.reason], _TRACE)
            for entry in result.trace
        ],
        result.balances,
    ]
    return _trim(values, _RESULT)


def _posting_fields(posting: Posting) -> list[Any]:
    values = [
        posting.program,
        posting.program_version,
        _code(posting.balance, BALANCES, "posting balance"),
        posting.kind,
        posting.amount,
        posting.rule,
        posting.day,
        posting.account,
    ]
    return _trim(values, _POSTING)


def _posting_from(values: list[Any]) -> Posting:
    program, version, balance, kind, amount, rule, day, account = _pad(values, _POSTING, "posting")
    return Posting(
        program,
        version,
        _word(balance, BALANCES, "posting balance"),
        kind,
        amount,
        rule,
        day,
        account,
    )


def _result_from(values: list[Any]) -> Result:
    id_, account, status, reason, postings, issues, redeemed, moves, tender, trace, balances = _pad(
        values, _RESULT, "result"
    )
    return Result(
        id_,
        account,
        _word(status, RESULT_STATUSES, "result status"),
        reason,
        [_posting_from(posting) for posting in postings],
        [_issue_from(issue) for issue in issues],
        list(redeemed),
        [_move_from(move) for move in moves],
        None if tender is None else TenderDecision(*_pad(tender, _DECISION, "tender decision")),
        [TraceEntry(*_pad(entry, _TRACE, "trace entry")) for entry in trace],
        dict(balances),
    )


def _issue_from(values: list[Any]) -> AwardIssue:
    code, kind, rule, program, value, cost, expires = _pad(values, _ISSUE, "award issue")
    return AwardIssue(
        code, _word(kind, ISSUE_KINDS, "award issue kind"), rule, program, value, cost, expires
    )


def _move_from(values: list[Any]) -> LevelMove:
    program, rule, kind, from_level, to_level = _pad(values, _MOVE, "level move")
    return LevelMove(
        program, rule, _word(kind, MOVE_KINDS, "level move kind"), from_level, to_level
    )


# --------------------------------------------------------------------------- compiled codec

# Lots and the loyalty accounts holding them are most of a busy account's bytes and most of
# the codec's work: processor._codec (ext/_codec.pyx) does the same in C when built, tested
# equal to the references above (tests/test_codec.py); a loyalty account it does not take
# as it is goes to the reference, so errors are the reference's. Imported last: it imports
# CodecError and the references from this module.
try:
    from processor._codec import (  # type: ignore[import-not-found, unused-ignore]
        lots_fields,
        lots_from,
        loyalty_fields,
        loyalty_from,
    )
except ImportError:  # pragma: no cover - LOYALTY_NO_EXTENSIONS=1
    lots_fields = lots_fields_reference
    lots_from = lots_from_reference
    loyalty_fields = loyalty_fields_reference
    loyalty_from = loyalty_from_reference
COMPILED_LOTS: Final = lots_fields is not lots_fields_reference
"""Whether lots are encoded and decoded by processor._codec."""

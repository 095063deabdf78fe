"""Award accounts: e-award value and award certificates, issued, redeemed and expired.

Every function here is a deterministic step of the engine: it mutates the
``AccountState`` it is given and appends postings, awards and trace entries to
the ``Result`` it is given. A refusal raises ``Declined`` after which the
caller throws the state copy and the result away, so a step may change things
before it finds a reason to refuse. ``add_value`` is the exception: it returns
its reason instead, because a loyalty award rule that cannot place an e-award
must not decline the customer's sale.

Amounts are minor units of the award program's currency; converting a foreign
sale is the caller's job, done before any amount reaches this module.
"""

from __future__ import annotations

from collections.abc import Mapping

from processor import money
from processor.engine.codes import award_code
from processor.engine.types import (
    AccountState,
    Award,
    AwardAccount,
    AwardIssue,
    Declined,
    Posting,
    Purchase,
    RequestBase,
    Result,
    TraceEntry,
    ValueLot,
)
from processor.limits import LAPSED_AWARDS_KEPT_DAYS
from processor.program.award import AwardCertificate, AwardProgram
from processor.program.rules import LocationDirectory, location_allowed


def balance_key(program: AwardProgram) -> str:
    """The key of an award program's balance in ``Result.balances``."""
    return f"award:{program.id}"


def ensure_account(program: AwardProgram, state: AccountState, day: int) -> AwardAccount:
    """The card's account in ``program``, opened on ``day`` if the card has none yet."""
    account = state.awards.get(program.id)
    if account is None:
        expires_day = program.account_expiry.after(day) if program.account_expiry else None
        account = AwardAccount(
            program=program.id,
            status="active",
            created_day=day,
            expires_day=expires_day,
            last_activity_day=day,
        )
        state.awards[program.id] = account
    return account


def account_expired(account: AwardAccount, day: int) -> bool:
    """Whether the account has expired on ``day``, swept or not."""
    if account.status == "expired":
        return True
    return account.expires_day is not None and account.expires_day <= day


def refusal(program: AwardProgram, state: AccountState, day: int) -> str:
    """Why nothing may be added to the card's account in ``program`` on ``day``; "" if it may."""
    if not program.in_effect(day):
        return "PROGRAM_INACTIVE"
    account = state.awards.get(program.id)
    if account is not None and account_expired(account, day):
        return "ACCOUNT_EXPIRED"
    return ""


# --------------------------------------------------------------------------- issuing


def on_account_activated(
    program: AwardProgram,
    state: AccountState,
    request: RequestBase,
    result: Result,
    version: int,
) -> None:
    """Credit the initial balance and issue the certificates given on activation, once.

    The initial balance is the account's first funding, so an account that is
    already funded does not get it again; a certificate already held (in any
    status) is not issued again.
    """
    if not _may_issue(program, state, request, result, "account_activated"):
        return
    account = ensure_account(program, state, request.day)
    initial = program.initial_balance_units()
    if initial > 0 and not account.funded:
        expires_day = program.award_expiry.after(request.day) if program.award_expiry else None
        _credit(program, account, initial, "initial", expires_day, request.day, result, version)
    _issue_automatic(program, state, request, result, version, "account_activated")


def on_card_registered(
    program: AwardProgram,
    state: AccountState,
    request: RequestBase,
    result: Result,
    version: int,
) -> None:
    """Issue the certificates given when the card is registered to a customer, once each."""
    if not _may_issue(program, state, request, result, "card_registered"):
        return
    ensure_account(program, state, request.day)
    _issue_automatic(program, state, request, result, version, "card_registered")


def _may_issue(
    program: AwardProgram, state: AccountState, request: RequestBase, result: Result, event: str
) -> bool:
    reason = refusal(program, state, request.day)
    if reason:
        result.trace.append(TraceEntry(program.id, event, fired=False, reason=reason))
    return not reason


def _issue_automatic(
    program: AwardProgram,
    state: AccountState,
    request: RequestBase,
    result: Result,
    version: int,
    setting: str,
) -> None:
    held = {award.rule for award in state.awards[program.id].awards}
    for certificate in program.certificates_by_precedence():
        if certificate.issue == setting and certificate.id not in held:
            issue_certificate(
                program, certificate.id, state, request, result, version, source=setting
            )


def issue_certificate(
    program: AwardProgram,
    certificate_id: str,
    state: AccountState,
    request: RequestBase,
    result: Result,
    version: int,
    *,
    expires_day: int | None = None,
    source: str = "",
    points_cost: int = 0,
    prefix: str | None = None,
) -> Award:
    """Issue one certificate of ``program`` to the card and record it in the result.

    The expiry is, in order: ``expires_day`` from the issuer, the certificate's
    own expiry, the program's award expiry, none. ``points_cost`` is what a
    loyalty award rule charged for it, recorded on the issue; ``prefix`` is the
    issuing rule's coupon prefix, the program's ``coupon_prefix`` otherwise.
    """
    certificate = program.certificate(certificate_id)
    if certificate is None:
        raise Declined("UNKNOWN_CERTIFICATE", f"{program.id} has no certificate {certificate_id}")
    reason = refusal(program, state, request.day)
    if reason:
        raise Declined(reason, f"cannot issue {certificate_id} from {program.id}")
    account = ensure_account(program, state, request.day)
    award = Award(
        code=_next_code(program, certificate_id, request, result, prefix),
        kind="certificate",
        rule=certificate_id,
        program=program.id,
        issued_day=request.day,
        expires_day=_certificate_expiry(program, certificate, request.day, expires_day),
        redemptions_left=certificate.redemptions_allowed,
    )
    account.awards.append(award)
    result.awards.append(
        AwardIssue(
            award.code, "certificate", certificate_id, program.id, 0, points_cost, award.expires_day
        )
    )
    result.trace.append(TraceEntry(program.id, certificate_id, fired=True, reason=source))
    return award


def _certificate_expiry(
    program: AwardProgram, certificate: AwardCertificate, day: int, expires_day: int | None
) -> int | None:
    if expires_day is not None:
        return expires_day
    if certificate.expiry is not None:
        return certificate.expiry.after(day)
    return program.award_expiry.after(day) if program.award_expiry else None


def _next_code(
    program: AwardProgram,
    certificate_id: str,
    request: RequestBase,
    result: Result,
    prefix: str | None = None,
) -> str:
    # The ordinal keeps codes apart when one request issues the same certificate twice.
    ordinal = sum(
        1 for issue in result.awards if issue.program == program.id and issue.rule == certificate_id
    )
    chosen = program.coupon_prefix if prefix is None else prefix
    return award_code(chosen, program.id, request.account, request.id, certificate_id, ordinal)


# --------------------------------------------------------------------------- e-award value


def add_value(
    program: AwardProgram,
    state: AccountState,
    amount: int,
    request: RequestBase,
    result: Result,
    version: int,
    *,
    source: str,
    expires_day: int | None = None,
    kind: str = "e_award",
) -> str:
    """Credit ``amount`` of e-award value; "" on success, else a reason and nothing changed.

    Without ``expires_day`` the value expires after the program's award expiry,
    or never. The caller records the ``AwardIssue`` (it knows the points cost). ``kind``
    names the posting: an e-award, or a card's ``opening`` balance.
    """
    reason = _add_refusal(program, state, amount, request.day)
    if reason:
        return reason
    account = ensure_account(program, state, request.day)
    if expires_day is None and program.award_expiry is not None:
        expires_day = program.award_expiry.after(request.day)
    _credit(program, account, amount, kind, expires_day, request.day, result, version, source)
    return ""


def _add_refusal(program: AwardProgram, state: AccountState, amount: int, day: int) -> str:
    if amount <= 0:
        return "INVALID_AMOUNT"
    reason = refusal(program, state, day)
    if reason:
        return reason
    account = state.awards.get(program.id)
    if account is not None and account.funded and not program.allow_reloads:
        return "RELOADS_NOT_ALLOWED"
    return ""


def _credit(
    program: AwardProgram,
    account: AwardAccount,
    amount: int,
    kind: str,
    expires_day: int | None,
    day: int,
    result: Result,
    version: int,
    source: str = "",
) -> None:
    account.value.append(ValueLot(day, amount, expires_day, source or kind))
    account.funded = True
    result.postings.append(
        Posting(program.id, version, "award_value", kind, amount, rule=source, day=day)
    )
    result.balances[balance_key(program)] = account.balance


def redeem_value(
    program: AwardProgram,
    state: AccountState,
    amount: int,
    request: RequestBase,
    result: Result,
    version: int,
) -> None:
    """Spend ``amount`` of e-award value, soonest-expiring value first, then the oldest."""
    if amount <= 0:
        shown = _shown(program, amount)
        raise Declined("INVALID_AMOUNT", f"an e-award redemption of {shown} is not positive")
    _check_redeemable(program, state, request)
    account = state.awards.get(program.id)
    if account is None:
        raise Declined("INSUFFICIENT_BALANCE", f"the card holds no value in {program.id}")
    expire_awards(program, state, request.day, result, version)
    if account.balance < amount:
        detail = f"{_shown(program, account.balance)} available, {_shown(program, amount)} asked"
        raise Declined("INSUFFICIENT_BALANCE", detail)
    _spend(account, amount)
    result.postings.append(
        Posting(program.id, version, "award_value", "redeem", -amount, day=request.day)
    )
    result.balances[balance_key(program)] = account.balance


def _spend(account: AwardAccount, amount: int) -> None:
    # Soonest expiry first spares the customer value that would lapse; value
    # that never expires goes last; ties go to the oldest lot.
    order = sorted(
        range(len(account.value)),
        key=lambda index: _spend_rank(account.value[index], index),
    )
    for index in order:
        lot = account.value[index]
        taken = min(lot.amount, amount)
        lot.amount -= taken
        amount -= taken
        if amount == 0:
            break
    account.value = [lot for lot in account.value if lot.amount > 0]


def _spend_rank(lot: ValueLot, index: int) -> tuple[bool, int, int, int]:
    expiry = lot.expires_day if lot.expires_day is not None else 0
    return (lot.expires_day is None, expiry, lot.added_day, index)


def _check_redeemable(program: AwardProgram, state: AccountState, request: RequestBase) -> None:
    """Refuse a redemption from ``program`` that its header settings do not allow."""
    reason = refusal(program, state, request.day)
    if reason:
        raise Declined(reason, f"nothing can be redeemed from {program.id} now")
    if program.card_required and not request.card_present:
        raise Declined("CARD_REQUIRED", f"{program.id} requires the card to be presented")
    if (
        isinstance(request, Purchase)
        and request.currency.upper() != program.currency.upper()
        and not program.allow_foreign_currency
    ):
        raise Declined("FOREIGN_CURRENCY", f"{program.id} accepts only {program.currency}")


# --------------------------------------------------------------------------- codes


def find_award(state: AccountState, code: str) -> Award | None:
    """The coupon or certificate with ``code`` held anywhere on the card."""
    held = [account.awards for account in state.awards.values()]
    held += [account.awards for account in state.loyalty.values()]
    for awards in held:
        for award in awards:
            if award.code == code:
                return award
    return None


def redeem_code(
    programs: Mapping[str, AwardProgram],
    state: AccountState,
    request: RequestBase,
    code: str,
    directory: LocationDirectory,
    result: Result,
    version: int,
) -> None:
    """Redeem one use of a coupon or certificate presented with ``request``.

    A coupon (held in a loyalty account) is checked for expiry and remaining
    redemptions only; a certificate also for its award program's settings, its
    time rules and its location rules. Neither carries value, so neither posts.
    """
    award = find_award(state, code)
    if award is None or award.status == "void":
        raise Declined("UNKNOWN_AWARD", f"no award {code!r} on this card")
    _check_usable(award, request.day)
    if award.kind == "certificate":
        _check_certificate(programs, state, award, request, directory)
    if award.redemptions_left > 0:
        award.redemptions_left -= 1
        if award.redemptions_left == 0:
            award.status = "redeemed"
    result.redeemed.append(code)
    result.trace.append(TraceEntry(award.program, award.rule, fired=True, reason="redeemed"))


def _check_usable(award: Award, day: int) -> None:
    if award.status == "expired" or (award.expires_day is not None and award.expires_day <= day):
        raise Declined("AWARD_EXPIRED", f"award {award.code} has expired")
    if award.status == "redeemed" or award.redemptions_left == 0:
        raise Declined("AWARD_REDEEMED", f"award {award.code} has no redemptions left")


def _check_certificate(
    programs: Mapping[str, AwardProgram],
    state: AccountState,
    award: Award,
    request: RequestBase,
    directory: LocationDirectory,
) -> None:
    program = programs.get(award.program)
    certificate = program.certificate(award.rule) if program is not None else None
    if program is None or certificate is None:
        raise Declined("UNKNOWN_AWARD", f"certificate {award.rule} is no longer offered")
    _check_redeemable(program, state, request)
    if not eligible_now(certificate, request.day, request.second):
        raise Declined("NOT_ELIGIBLE_NOW", f"certificate {certificate.id} is not valid now")
    include, exclude = certificate.location_include, certificate.location_exclude
    if not location_allowed(request.location, include, exclude, directory):
        raise Declined("NOT_ELIGIBLE_HERE", f"certificate {certificate.id} is not valid here")


def eligible_now(certificate: AwardCertificate, day: int, second: int) -> bool:
    """Inside an eligibility period (or there is none) and outside every blackout period."""
    eligibility = [rule for rule in certificate.time_rules if rule.type == "eligibility"]
    if eligibility and not any(rule.matches(day, second) for rule in eligibility):
        return False
    return not any(
        rule.matches(day, second) for rule in certificate.time_rules if rule.type == "blackout"
    )


# --------------------------------------------------------------------------- expiry


def expire_awards(
    program: AwardProgram, state: AccountState, day: int, result: Result, version: int
) -> None:
    """Expire the account itself, its value lots and its certificates that lapse by ``day``.

    An expired account forfeits all its value and certificates. Expiry is
    exclusive: something that expires on day D can no longer be used on day D.
    """
    account = state.awards.get(program.id)
    if account is None:
        return
    if account_expired(account, day) and account.status != "expired":
        account.status = "expired"
        result.trace.append(TraceEntry(program.id, "account", fired=True, reason="expired"))
    everything = account.status == "expired"
    kept = []
    for lot in account.value:
        if everything or (lot.expires_day is not None and lot.expires_day <= day):
            result.postings.append(
                Posting(program.id, version, "award_value", "expire", -lot.amount, lot.source, day)
            )
        else:
            kept.append(lot)
    if len(kept) != len(account.value):
        account.value = kept
        result.balances[balance_key(program)] = account.balance
    for award in account.awards:
        lapsed = award.expires_day is not None and award.expires_day <= day
        if award.status == "active" and (everything or lapsed):
            award.status = "expired"
            result.trace.append(TraceEntry(program.id, award.rule, fired=True, reason="expired"))


def remove_lapsed(state: AccountState, day: int, result: Result) -> None:
    """The award-expiry job's clean-up: mark the loyalty accounts' lapsed coupons expired
    (as aging does) and remove every coupon that can no longer be used and whose expiry day
    is LAPSED_AWARDS_KEPT_DAYS behind ``day``. Nothing is posted: what a coupon was worth
    was posted when it was redeemed. Certificates stay: the program scorecard counts them
    (issued, redeemed) for life from the award accounts."""
    until = day - LAPSED_AWARDS_KEPT_DAYS
    for program_id, account in state.loyalty.items():
        for coupon in account.awards:
            lapsed = coupon.expires_day is not None and coupon.expires_day <= day
            if coupon.status == "active" and lapsed:
                coupon.status = "expired"
        account.awards = _kept(program_id, account.awards, until, result)


def _kept(program_id: str, held: list[Award], until: int, result: Result) -> list[Award]:
    kept = []
    for award in held:
        if (
            award.status != "active"
            and award.expires_day is not None
            and award.expires_day <= until
        ):
            result.trace.append(TraceEntry(program_id, award.rule, fired=True, reason="removed"))
        else:
            kept.append(award)
    return kept if len(kept) != len(held) else held


def touch_activity(program: AwardProgram, state: AccountState, day: int) -> None:
    """Record activity on ``day`` and, if the program says so, extend award expiry from it.

    Only what is still alive on ``day`` is extended, and an expiry never moves
    earlier; value and awards without an expiry keep none.
    """
    account = state.awards.get(program.id)
    if account is None:
        return
    account.last_activity_day = max(account.last_activity_day, day)
    if not program.extend_expiry_on_activity or program.award_expiry is None:
        return
    extended = program.award_expiry.after(day)
    for lot in account.value:
        if lot.expires_day is not None and lot.expires_day > day:
            lot.expires_day = max(lot.expires_day, extended)
    for award in account.awards:
        if award.status == "active" and award.expires_day is not None and award.expires_day > day:
            award.expires_day = max(award.expires_day, extended)


def _shown(program: AwardProgram, amount: int) -> str:
    """E-award value in minor units as a decline's text shows it, with the currency's
    decimals (550 in USD -> "5.50")."""
    return money.format_units(amount, money.currency_exponent(program.currency))

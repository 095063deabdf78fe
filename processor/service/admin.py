"""AdminService: program files, card series, customers, and account and ledger inquiries.

Each RPC checks its request, calls the catalog (program files, cards, customers), the
program registry (what this process serves) or the store (account state), and builds the
answer. Failures are raised as ``processor.errors`` types; the error interceptor turns them
into gRPC statuses with their reasons, so nothing here aborts a call itself.

An activation or deactivation refreshes this process's registry before answering; every
other process picks it up through its registry's refresher within a second or two.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, Final

from processor import calendar, proto
from processor.engine import CompiledProgram, compile_program
from processor.engine.types import AccountState, Award, AwardAccount, LoyaltyAccount, TenderAccount
from processor.errors import InvalidFieldError, NotFoundError, mask_card
from processor.flow.pipeline import Cache
from processor.flow.registry import ProgramRegistry
from processor.jobs import runner
from processor.jobs.named import CARD_REGISTERED
from processor.limits import (
    AUDIT_PAGE_SIZE_MAX,
    AUDIT_TEXT_CHARS_MAX,
    CARD_DIGITS_MAX,
    CARD_IMPORT_BYTES_MAX,
    CUSTOMER_ID_CHARS_MAX,
    GENERATE_CARDS_MAX,
    IDENTIFIER_CHARS_MAX,
    LEDGER_PAGE_SIZE_MAX,
    PROGRAM_FILE_BYTES_MAX,
    SCORECARD_MONTHS_MAX,
    SEARCH_PAGE_SIZE_MAX,
    TEXT_CHARS_MAX,
)
from processor.reports import scorecard
from processor.service.events import EventReader
from processor.service.handlers import Context
from processor.service.tasks import TaskDesk
from processor.store.catalog import Catalog
from processor.store.catalog_base import decode_page_token, encode_page_token
from processor.store.credentials import Credentials
from processor.store.event_log import EventLog
from processor.store.ledger import Store
from processor.store.notifications import Signal
from processor.store.programs import ProgramPart, ProgramSummary, parse_stored_program
from processor.store.scorecards import COLUMNS, SCORECARDS_JOB, Figures
from processor.store.tasks import Tasks
from processor.wire import answers
from processor.wire.admission import checked_text

admin = proto.admin
awards = proto.awards
common = proto.common

LEDGER_PAGE_SIZE_DEFAULT: Final = 100
"""Rows of a ListLedger page when the request leaves page_size at zero."""

AUDIT_PAGE_SIZE_DEFAULT: Final = 100
"""Rows of a ListAudit page when the request leaves page_size at zero."""

_TYPES: Final = {
    "tender": admin.PROGRAM_TYPE_TENDER,
    "award": admin.PROGRAM_TYPE_AWARD,
    "loyalty": admin.PROGRAM_TYPE_LOYALTY,
}
_TYPE_NAMES: Final = {value: key for key, value in _TYPES.items()}
_PROGRAM_STATUS: Final = {
    "active": admin.PROGRAM_STATUS_ACTIVE,
    "inactive": admin.PROGRAM_STATUS_INACTIVE,
}
_ACCOUNT_STATUS: Final = {
    "active": admin.ACCOUNT_STATUS_ACTIVE,
    "inactive": admin.ACCOUNT_STATUS_INACTIVE,
    "closed": admin.ACCOUNT_STATUS_INACTIVE,
    "expired": admin.ACCOUNT_STATUS_EXPIRED,
}
_TENDER_STATUS: Final = {
    "inactive": admin.TENDER_ACCOUNT_STATUS_INACTIVE,
    "active": admin.TENDER_ACCOUNT_STATUS_ACTIVE,
    "expired": admin.TENDER_ACCOUNT_STATUS_EXPIRED,
    "closed": admin.TENDER_ACCOUNT_STATUS_CLOSED,
}
_AWARD_ACCOUNT_STATUS: Final = {
    "inactive": awards.AWARD_ACCOUNT_STATUS_INACTIVE,
    "active": awards.AWARD_ACCOUNT_STATUS_ACTIVE,
    "expired": awards.AWARD_ACCOUNT_STATUS_EXPIRED,
}
_AWARD_KIND: Final = {
    "coupon": common.AWARD_KIND_COUPON,
    "certificate": common.AWARD_KIND_CERTIFICATE,
}
_POSTING_BALANCE: Final = {
    "points": common.POSTING_BALANCE_POINTS,
    "tender": common.POSTING_BALANCE_TENDER,
    "award_value": common.POSTING_BALANCE_AWARD_VALUE,
}


class AdminServicer(proto.admin_grpc.AdminServiceServicer):
    """Every AdminService RPC, over the catalog, the program registry and the store."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        registry: ProgramRegistry,
        store: Store,
        credentials: Credentials | None = None,
        cache: Cache | None = None,
        events_positioned: Signal | None = None,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.store = store
        self.credentials = credentials if credentials is not None else Credentials(store)
        self.cache = cache
        self.events = EventReader(EventLog(store), registry, events_positioned)
        self.task_desk = TaskDesk(Tasks(store))

    # ----------------------------------------------------------------------- program files

    async def CreateProgram(
        self, request: admin.CreateProgramRequest, context: Context
    ) -> admin.CreateProgramResponse:
        _check_size(request.content, "content", PROGRAM_FILE_BYTES_MAX)
        program_id, version = await self.catalog.create_program(
            request.content, request.file_name or "program.yaml"
        )
        return admin.CreateProgramResponse(program_id=program_id, version=version)

    async def UpdateProgram(
        self, request: admin.UpdateProgramRequest, context: Context
    ) -> admin.UpdateProgramResponse:
        _check_size(request.content, "content", PROGRAM_FILE_BYTES_MAX)
        program_id, version = await self.catalog.update_program(
            request.content, request.file_name or "program.yaml"
        )
        return admin.UpdateProgramResponse(program_id=program_id, version=version)

    async def ActivateProgram(
        self, request: admin.ActivateProgramRequest, context: Context
    ) -> admin.ActivateProgramResponse:
        program_id = checked_text(request.program_id, "program_id", IDENTIFIER_CHARS_MAX)
        version = _version(request.version)
        # Compiled before it is made active, so that a version this release cannot load
        # is refused here rather than failing in every process's refresh.
        record = await self.catalog.get(program_id, version)
        compile_program(parse_stored_program(record.id, record.version, record.source))
        previous = await self.catalog.activate(program_id, version)
        await self.registry.refresh()
        return admin.ActivateProgramResponse(
            program_id=program_id, version=version, previous_version=previous
        )

    async def DeactivateProgram(
        self, request: admin.DeactivateProgramRequest, context: Context
    ) -> admin.DeactivateProgramResponse:
        program_id = checked_text(request.program_id, "program_id", IDENTIFIER_CHARS_MAX)
        version = _version(request.version)
        if await self.catalog.deactivate(program_id, version):
            await self.registry.refresh()
        return admin.DeactivateProgramResponse(program_id=program_id, version=version)

    async def GetProgram(
        self, request: admin.GetProgramRequest, context: Context
    ) -> admin.GetProgramResponse:
        program_id = checked_text(request.program_id, "program_id", IDENTIFIER_CHARS_MAX)
        record = await self.catalog.get(program_id, request.version)
        summaries = [
            ProgramSummary(
                part=part,
                program_id=record.id,
                version=record.version,
                status=record.status,
                card_type=record.card_type,
                serial_prefix=record.serial_prefix,
                member_count=record.member_count,
                account_count=record.account_count,
            )
            for part in record.parts
        ]
        return admin.GetProgramResponse(
            program_id=record.id,
            version=record.version,
            name=record.name,
            status=_PROGRAM_STATUS[record.status],
            content=record.source,
            programs=[_summary(summary) for summary in summaries],
            versions=list(record.versions),
        )

    async def SearchPrograms(
        self, request: admin.SearchProgramsRequest, context: Context
    ) -> admin.SearchProgramsResponse:
        if request.type not in (admin.PROGRAM_TYPE_UNSPECIFIED, *_TYPE_NAMES):
            raise InvalidFieldError("type", f"unknown program type {request.type}")
        status = {
            admin.PROGRAM_STATUS_UNSPECIFIED: None,
            admin.PROGRAM_STATUS_ACTIVE: "active",
            admin.PROGRAM_STATUS_INACTIVE: "inactive",
        }
        if request.status not in status:
            raise InvalidFieldError("status", f"unknown program status {request.status}")
        page = await self.catalog.search(
            text=request.text,
            exact=request.match == admin.TEXT_MATCH_EXACT,
            type=_TYPE_NAMES.get(request.type),  # type: ignore[arg-type]
            status=status[request.status],  # type: ignore[arg-type]
            serial_prefix=request.card_serial_prefix,
            page_size=_page_size(request.page_size, SEARCH_PAGE_SIZE_MAX, SEARCH_PAGE_SIZE_MAX),
            page_token=request.page_token,
        )
        return admin.SearchProgramsResponse(
            programs=[_summary(summary) for summary in page.programs],
            next_page_token=page.next_page_token,
        )

    # ----------------------------------------------------------------------- cards

    async def GenerateCards(
        self, request: admin.GenerateCardsRequest, context: Context
    ) -> admin.GenerateCardsResponse:
        program_id = checked_text(request.program_id, "program_id", IDENTIFIER_CHARS_MAX)
        series_id = checked_text(request.series_id, "series_id", IDENTIFIER_CHARS_MAX)
        if not 1 <= request.count <= GENERATE_CARDS_MAX:
            raise InvalidFieldError("count", f"must be 1 to {GENERATE_CARDS_MAX}")
        cards = await self.catalog.generate_cards(program_id, series_id, request.count)
        remaining = await self.catalog.remaining_cards(program_id, series_id)
        return admin.GenerateCardsResponse(
            cards=[
                admin.GeneratedCard(
                    number=card.number, pin=card.pin or "", batch=card.batch, active=card.active
                )
                for card in cards
            ],
            remaining_count=remaining,
        )

    async def ImportCards(
        self, request: admin.ImportCardsRequest, context: Context
    ) -> admin.ImportCardsResponse:
        program_id = checked_text(request.program_id, "program_id", IDENTIFIER_CHARS_MAX)
        series_id = checked_text(request.series_id, "series_id", IDENTIFIER_CHARS_MAX)
        _check_size(request.content, "content", CARD_IMPORT_BYTES_MAX)
        summary = await self.catalog.import_cards(
            program_id, series_id, request.content, request.file_name or "cards.csv"
        )
        return admin.ImportCardsResponse(
            imported_count=summary.imported_count, activated_count=summary.activated_count
        )

    async def SetBatchStatus(
        self, request: admin.SetBatchStatusRequest, context: Context
    ) -> admin.SetBatchStatusResponse:
        program_id, series_id, batch, first, last = _batch_request(request)
        statuses = {admin.CARD_STATUS_ACTIVE: "active", admin.CARD_STATUS_INACTIVE: "inactive"}
        if request.status not in statuses:
            raise InvalidFieldError("status", "must be CARD_STATUS_ACTIVE or CARD_STATUS_INACTIVE")
        amount = None
        currency = ""
        if request.HasField("activation_amount"):
            amount = request.activation_amount.units
            currency = request.activation_amount.currency
        changed = await self.catalog.set_batch_status(
            program_id,
            series_id,
            batch,
            statuses[request.status],  # type: ignore[arg-type]
            first_number=first,
            last_number=last,
            location=request.location,
            activation_amount=amount,
            activation_currency=currency,
        )
        return admin.SetBatchStatusResponse(changed_count=changed)

    async def SetBatchExpiry(
        self, request: admin.SetBatchExpiryRequest, context: Context
    ) -> admin.SetBatchExpiryResponse:
        program_id, series_id, batch, first, last = _batch_request(request)
        expires = _day(request.expires_date, "expires_date")
        if expires is None:
            raise InvalidFieldError("expires_date", "is required")
        changed = await self.catalog.set_batch_expiry(
            program_id, series_id, batch, expires, first_number=first, last_number=last
        )
        return admin.SetBatchExpiryResponse(changed_count=changed)

    # ----------------------------------------------------------------------- customers

    async def EnrollCustomer(
        self, request: admin.EnrollCustomerRequest, context: Context
    ) -> admin.EnrollCustomerResponse:
        if not request.HasField("customer"):
            raise InvalidFieldError("customer", "is required")
        given = request.customer
        customer_id = checked_text(given.id, "customer.id", CUSTOMER_ID_CHARS_MAX)
        customer, created = await self.catalog.enroll(
            customer_id,
            _day(given.birth_date, "customer.birth_date"),
            _day(given.signup_date, "customer.signup_date"),
            # No lists keeps an existing customer's memberships (SetAudiences replaces them).
            list(given.audiences) or None,
        )
        return admin.EnrollCustomerResponse(
            customer=common.Customer(
                id=customer.id,
                birth_date=_date(customer.birth_day),
                signup_date=_date(customer.signup_day),
                audiences=sorted(customer.audiences),
            ),
            created=created,
        )

    async def RegisterCard(
        self, request: admin.RegisterCardRequest, context: Context
    ) -> admin.RegisterCardResponse:
        account = _card_number(request.account, "account")
        customer_id = checked_text(request.customer_id, "customer_id", CUSTOMER_ID_CHARS_MAX)
        await self.catalog.register_card(account, customer_id)
        # The certificates given on registration, once (a retry of the call, which the
        # catalog answers as done, issues them if the first call failed after the link).
        context_of_jobs = runner.JobContext(self.store, self.registry, self.cache)
        await runner.apply(context_of_jobs, CARD_REGISTERED, _today(), [account])
        return admin.RegisterCardResponse(account=account, customer_id=customer_id)

    async def SetAudiences(
        self, request: admin.SetAudiencesRequest, context: Context
    ) -> admin.SetAudiencesResponse:
        customer_id = checked_text(request.customer_id, "customer_id", CUSTOMER_ID_CHARS_MAX)
        stored = await self.catalog.set_audiences(customer_id, list(request.audiences))
        return admin.SetAudiencesResponse(audiences=list(stored))

    # ----------------------------------------------------------------------- accounts

    async def GetAccount(
        self, request: admin.GetAccountRequest, context: Context
    ) -> admin.GetAccountResponse:
        account = _card_number(request.account, "account")
        records = await self.catalog.cards([account])
        loaded = await self.store.load([account])
        record = records.get(account)
        if record is None and account not in loaded:
            raise NotFoundError(f"no card {mask_card(account)}", reason="UNKNOWN_CARD")
        version, state = loaded.get(account, (0, AccountState(account)))
        status = record.status if record is not None else state.status
        customer_id = record.customer_id if record is not None else None
        if customer_id is None and state.customer is not None:
            customer_id = state.customer.id
        return account_message(
            state, version, status, customer_id or "", self._program_of(account), _today()
        )

    async def ListLedger(
        self, request: admin.ListLedgerRequest, context: Context
    ) -> admin.ListLedgerResponse:
        account = _card_number(request.account, "account")
        page_size = _page_size(request.page_size, LEDGER_PAGE_SIZE_DEFAULT, LEDGER_PAGE_SIZE_MAX)
        before = _sequence_before(request.page_token)
        rows = await self.catalog.ledger_page(
            account, program=request.program, before_sequence=before, page_size=page_size
        )
        exponents = balance_exponents(self._program_of(account))
        response = admin.ListLedgerResponse()
        for row in rows:
            entry = response.entries.add(sequence=row.sequence, request_id=row.request_id)
            name = answers.balance_name(row.posting)
            entry.posting.CopyFrom(
                common.Posting(
                    program=row.posting.program,
                    program_version=row.posting.program_version,
                    balance=_POSTING_BALANCE.get(
                        row.posting.balance, common.POSTING_BALANCE_UNSPECIFIED
                    ),
                    kind=row.posting.kind,
                    amount=row.posting.amount,
                    balance_name=name,
                    rule=row.posting.rule,
                    date=calendar.format_day(row.posting.day),
                )
            )
            entry.committed_time.FromDatetime(row.committed_at)
            if name in exponents:
                response.balance_exponents[name] = exponents[name]
        if len(rows) == page_size and rows[-1].sequence > 1:
            response.next_page_token = encode_page_token([rows[-1].sequence])
        return response

    # ----------------------------------------------------------------------- security

    async def UnlockPin(
        self, request: admin.UnlockPinRequest, context: Context
    ) -> admin.UnlockPinResponse:
        account = _card_number(request.account, "account")
        await self.catalog.unlock_pin(account)
        return admin.UnlockPinResponse(account=account)

    async def ListAudit(
        self, request: admin.ListAuditRequest, context: Context
    ) -> admin.ListAuditResponse:
        principal = checked_text(
            request.principal, "principal", AUDIT_TEXT_CHARS_MAX, required=False
        )
        rpc = checked_text(request.rpc, "rpc", IDENTIFIER_CHARS_MAX, required=False)
        page_size = _page_size(request.page_size, AUDIT_PAGE_SIZE_DEFAULT, AUDIT_PAGE_SIZE_MAX)
        before = _sequence_before(request.page_token)
        rows = await self.credentials.audit(
            page_size=page_size, before_sequence=before, principal=principal, rpc=rpc
        )
        response = admin.ListAuditResponse()
        for row in rows:
            entry = response.entries.add(
                sequence=row.sequence,
                principal=row.principal,
                method=row.method,
                roles=list(row.roles),
                rpc=row.rpc,
                target=row.target,
                outcome=row.outcome,
                request_id=row.request_id,
            )
            entry.time.FromDatetime(row.at)
        if len(rows) == page_size and rows[-1].sequence > 1:
            response.next_page_token = encode_page_token([rows[-1].sequence])
        return response

    # ----------------------------------------------------------------------- scorecards

    async def GetScorecard(
        self, request: admin.GetScorecardRequest, context: Context
    ) -> admin.GetScorecardResponse:
        program_id = checked_text(request.program_id, "program_id", IDENTIFIER_CHARS_MAX)
        last_month = scorecard.last_month(request.month, "month")
        if request.months > SCORECARD_MONTHS_MAX:
            raise InvalidFieldError("months", f"is more than {SCORECARD_MONTHS_MAX}")
        months = request.months or scorecard.MONTHS_DEFAULT
        cards = await scorecard.load(
            self.catalog, self.registry, self.store, program_id, last_month, months
        )
        response = admin.GetScorecardResponse(
            program_id=program_id,
            job=SCORECARDS_JOB,
            month_counted=any(card.as_of >= last_month for card in cards),
        )
        for card in cards:
            message = response.scorecards.add(
                month=card.month,
                as_of=calendar.format_day(card.as_of),
                program=card.program,
                type=_TYPES[card.type],
                exponent=card.exponent,
                spend_exponent=card.spend_exponent,
            )
            message.total.CopyFrom(_figures(card, card.total))
            for level, figures in card.levels:
                message.levels.add(level=level).figures.CopyFrom(_figures(card, figures))
        return response

    # ----------------------------------------------------------------------- events

    async def ListEvents(
        self, request: admin.ListEventsRequest, context: Context
    ) -> admin.ListEventsResponse:
        return await self.events.list_events(request)

    async def WatchEvents(
        self, request: admin.WatchEventsRequest, context: Context
    ) -> AsyncIterator[admin.WatchEventsResponse]:
        async for message in self.events.watch(request):
            yield message

    # ----------------------------------------------------------------------- tasks

    async def ListTasks(
        self, request: admin.ListTasksRequest, context: Context
    ) -> admin.ListTasksResponse:
        return await self.task_desk.list_tasks(request)

    async def ClaimTask(
        self, request: admin.ClaimTaskRequest, context: Context
    ) -> admin.ClaimTaskResponse:
        return await self.task_desk.claim(request)

    async def CompleteTask(
        self, request: admin.CompleteTaskRequest, context: Context
    ) -> admin.CompleteTaskResponse:
        return await self.task_desk.complete(request)

    def _program_of(self, account: str) -> CompiledProgram | None:
        try:
            return self.registry.for_card(account)
        except NotFoundError:
            return None  # no active program: amounts are shown without their exponents


# --------------------------------------------------------------------------- answers


def balance_exponents(program: CompiledProgram | None) -> dict[str, int]:
    """The decimal digits of every balance a program's accounts have, by balance name."""
    return {} if program is None else program.balance_digits


def _figures(card: scorecard.ProgramMonth, figures: Figures) -> admin.ScorecardFigures:
    return admin.ScorecardFigures(
        **{name: getattr(figures, name) for name in COLUMNS},
        **dataclasses.asdict(card.ratios(figures)),
    )


def account_message(
    state: AccountState,
    version: int,
    status: str,
    customer_id: str,
    program: CompiledProgram | None,
    day: int,
) -> admin.GetAccountResponse:
    """The GetAccountResponse of a card's state, as of ``day``."""
    exponents = balance_exponents(program)
    response = admin.GetAccountResponse(
        account=state.account,
        status=_ACCOUNT_STATUS.get(status, admin.ACCOUNT_STATUS_INACTIVE),
        customer_id=customer_id,
        version=version,
    )
    for program_id, loyalty in sorted(state.loyalty.items()):
        precision = exponents.get(f"points:{program_id}", 0)
        response.loyalty.append(_loyalty(loyalty, precision, day))
        response.balances[f"points:{program_id}"] = loyalty.available(day)
        escrowed = loyalty.escrowed(day)
        if escrowed:
            response.balances[f"escrow:{program_id}"] = escrowed
    if state.tender is not None:
        tender_program = program.tender if program is not None else None
        currency = tender_program.currency if tender_program is not None else ""
        response.tender.CopyFrom(
            _tender(state.tender, tender_program.id if tender_program else "", currency)
        )
        response.balances["tender"] = state.tender.balance
    held: list[Award] = [award for loyalty in state.loyalty.values() for award in loyalty.awards]
    for program_id, award_account in sorted(state.awards.items()):
        holder = program.award_programs.get(program_id) if program is not None else None
        currency = holder.currency if holder is not None else ""
        response.award_values.append(_award_value(award_account, currency))
        response.balances[f"award:{program_id}"] = award_account.balance
        held.extend(award_account.awards)
    for award in held:
        if award.status == "active" and (award.expires_day is None or day < award.expires_day):
            response.awards.append(_held_award(award))
    for name in response.balances:
        if name in exponents:
            response.balance_exponents[name] = exponents[name]
    return response


def _loyalty(account: LoyaltyAccount, precision: int, day: int) -> Any:
    def points(units: int) -> Any:
        return common.Points(units=units, precision=precision)

    groups: dict[tuple[int, int | None], list[int]] = defaultdict(lambda: [0, 0])
    for lot in account.lots:
        group = groups[lot.available_day, lot.expires_day]
        group[0] += lot.points
        group[1] += 1
    ordered = sorted(
        groups.items(),
        key=lambda item: (item[0][1] is None, item[0][1] or 0, item[0][0]),
    )
    earned_ytd = account.earned_ytd if account.ytd_year == calendar.year_of(day) else 0
    return admin.LoyaltyStanding(
        program=account.program,
        level=account.level,
        level_since_date=calendar.format_day(account.level_since_day),
        available=points(account.available(day)),
        escrowed=points(account.escrowed(day)),
        debt=points(account.debt),
        earned_ytd=points(earned_ytd),
        earned_ltd=points(account.earned_ltd),
        lots=[
            admin.LotSummary(
                available_date=calendar.format_day(available),
                expires_date=_date(expires),
                points=points(total),
                lot_count=count,
            )
            for (available, expires), (total, count) in ordered
        ],
    )


def _tender(account: TenderAccount, program_id: str, currency: str) -> Any:
    return admin.TenderStanding(
        program=program_id,
        status=_TENDER_STATUS.get(account.status, admin.TENDER_ACCOUNT_STATUS_UNSPECIFIED),
        balance=common.Money(units=account.balance, currency=currency),
        held=common.Money(units=account.held, currency=currency),
        activated_date=_date(account.activated_day),
        expires_date=_date(account.expires_day),
    )


def _award_value(account: AwardAccount, currency: str) -> Any:
    return awards.AwardValueBalance(
        program=account.program,
        balance=common.Money(units=account.balance, currency=currency),
        status=_AWARD_ACCOUNT_STATUS.get(account.status, awards.AWARD_ACCOUNT_STATUS_UNSPECIFIED),
        expires_date=_date(account.expires_day),
    )


def _held_award(award: Award) -> Any:
    return awards.HeldAward(
        code=award.code,
        kind=_AWARD_KIND.get(award.kind, common.AWARD_KIND_UNSPECIFIED),
        rule=award.rule,
        program=award.program,
        issued_date=calendar.format_day(award.issued_day),
        expires_date=_date(award.expires_day),
        redemptions_left=award.redemptions_left,
        status=awards.AWARD_STATUS_ACTIVE,
    )


def _summary(summary: ProgramSummary) -> Any:
    part: ProgramPart = summary.part
    return admin.ProgramSummary(
        id=part.id,
        type=_TYPES[part.type],
        name=part.name,
        description=part.description,
        status=_PROGRAM_STATUS[summary.status],
        program_id=summary.program_id,
        version=summary.version,
        card_type=summary.card_type,
        card_serial_prefix=summary.serial_prefix,
        member_count=summary.member_count,
        account_count=summary.account_count,
    )


# --------------------------------------------------------------------------- request checks


def _card_number(value: str, field: str) -> str:
    if not value:
        raise InvalidFieldError(field, "is required")
    if not value.isdigit() or not value.isascii() or len(value) > CARD_DIGITS_MAX:
        raise InvalidFieldError(field, f"a card number is 1 to {CARD_DIGITS_MAX} digits")
    return value


def _version(value: int) -> int:
    if value < 1:
        raise InvalidFieldError("version", "is required (1 or more)")
    return value


def _check_size(text: str, field: str, bytes_max: int) -> None:
    if len(text) > bytes_max or len(text.encode("utf-8")) > bytes_max:
        raise InvalidFieldError(field, f"is larger than {bytes_max} bytes", reason="FILE_TOO_LARGE")


def _sequence_before(page_token: str) -> int | None:
    """The sequence a page of rows newest first starts below (None: the first page)."""
    if not page_token:
        return None
    (before,) = decode_page_token(page_token, 1)
    if not isinstance(before, int) or before < 1:
        raise InvalidFieldError("page_token", "is not a token a previous page returned")
    return before


def _page_size(value: int, default: int, largest: int) -> int:
    """Zero means the default; more than the largest is served as the largest."""
    return default if value == 0 else min(value, largest)


def _day(text: str, field: str) -> int | None:
    if not text:
        return None
    try:
        return calendar.parse_day(text)
    except ValueError:
        raise InvalidFieldError(field, f"{text!r} is not a date (YYYY-MM-DD)") from None


def _date(day: int | None) -> str:
    return "" if day is None else calendar.format_day(day)


def _today() -> int:
    return calendar.to_day(datetime.date.today())


def _batch_request(request: Any) -> tuple[str, str, str, str, str]:
    program_id = checked_text(request.program_id, "program_id", IDENTIFIER_CHARS_MAX)
    series_id = checked_text(request.series_id, "series_id", IDENTIFIER_CHARS_MAX)
    batch = checked_text(request.batch, "batch", TEXT_CHARS_MAX)
    first = last = ""
    if request.HasField("range"):
        first = _card_number(request.range.first_number, "range.first_number")
        last = _card_number(request.range.last_number, "range.last_number")
    return program_id, series_id, batch, first, last

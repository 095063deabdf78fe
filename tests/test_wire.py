"""Conversions between loyalty.v1 messages and engine requests and results.

Each message kind is built as a client would send it and converted; the test checks the
exact engine request (minor units, day numbers, tuples). Every kind of invalid input is
refused with InvalidFieldError naming the field by its protobuf path and a reason.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty_builders import award_rule, compile_file, loyalty, program_file, wallet

from processor import calendar, money
from processor.engine.types import (
    AccountState,
    Award,
    AwardAccount,
    AwardIssue,
    AwardRedemption,
    Customer,
    Engagement,
    LevelMove,
    Line,
    LoyaltyAccount,
    Posting,
    Purchase,
    Result,
    Return,
    ReturnLine,
    TenderDecision,
    TenderLine,
    TenderRequest,
    TraceEntry,
    ValueLot,
    Void,
)
from processor.errors import InvalidFieldError
from processor.limits import AUDIENCE_CHARS_MAX, IDENTIFIER_CHARS_MAX
from processor.proto import awards, common, tender, transactions
from processor.wire import admission, answers

CARD = "6001200000000010"
OTHER_CARD = "6001200000000028"
DAY = calendar.days_from_civil(2026, 3, 2)
SECOND = 9 * 3600 + 5 * 60 + 7
BASE: dict[str, Any] = {
    "id": "r-1",
    "account": CARD,
    "day": DAY,
    "second": SECOND,
    "location": "S001",
    "card_present": True,
    "pin_verified": False,
}


def context(**fields: Any) -> common.RequestContext:
    values: dict[str, Any] = {
        "request_id": "r-1",
        "account": CARD,
        "local_time": "2026-03-02T09:05:07",
        "location": "S001",
    }
    values.update(fields)
    return common.RequestContext(**values)


def purchase(**fields: Any) -> transactions.Transaction:
    values: dict[str, Any] = {
        "currency": "USD",
        "lines": [common.Line(number=1, item="SKU1", amount=1000, quantity=1)],
    }
    values.update(fields)
    return transactions.Transaction(context=context(), purchase=transactions.Purchase(**values))


def refused(call: Any, *args: Any) -> InvalidFieldError:
    with pytest.raises(InvalidFieldError) as caught:
        call(*args)
    return caught.value


# --------------------------------------------------------------------------- compiled purchases

needs_compiled_admission = pytest.mark.skipif(
    not admission.COMPILED_PURCHASES, reason="processor._admission is not built"
)


def outcome(call: Any, *arguments: Any) -> Any:
    try:
        return ("ok", call(*arguments))
    except Exception as error:  # the error is what is compared
        return (type(error), str(error), getattr(error, "field", None))


# Values near every rule's edges, the common ones far more often (each field is odd about
# one time in ten, so about a third of the purchases are in the common form throughout).
ODD_TEXT = ["", " ", "a\x00b", "tab\there", "é", "x" * 64, "x" * 65]


def mostly(common_value: Any, odd: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from([common_value] * (len(odd) * 9) + odd)


text = mostly("SKU-1", ODD_TEXT)
local_times = mostly(
    "2026-03-02T09:05:07",
    [
        "2024-02-29T23:59:59", "2023-02-29T10:00:00", "0000-01-01T00:00:00",
        "0001-01-01T00:00:00", "9999-12-31T23:59:59", "2026-13-01T00:00:00",
        "2026-03-02T24:00:00", "2026-03-02T09:60:00", "2026-03-02T09:05:60",
        "2026-03-02 09:05:07", "2026-03-02T09:05", "２０２６-03-02T09:05:07",
        "2026-03-02T09:05:07Z",
    ],
)  # fmt: skip
accounts = mostly(CARD, ["1234567", "12345678", "1" * 32, "1" * 33, "60012x", "６００１２３４５"])
lines = st.builds(
    common.Line,
    number=st.integers(0, 3),
    item=text,
    amount=mostly(1_000, [0, 10**14, 10**14 + 1, -1]),
    quantity=mostly(1, [0, 2, 1_000_000, 1_000_001]),
    hierarchy=st.lists(text, max_size=2),
    attributes=st.dictionaries(text, text, max_size=2),
    non_merchandise=st.booleans(),
)
purchases = st.builds(
    transactions.Purchase,
    currency=mostly("USD", ["usd", "JPY", "XXX", "ABC", "US", "USDX", "ÜSD"]),
    lines=st.lists(lines, min_size=1, max_size=3, unique_by=lambda line: line.number),
    tenders=st.lists(
        st.builds(common.TenderLine, type=text, amount=mostly(700, [-5, 0])), max_size=2
    ),
    redeem_codes=st.lists(text, max_size=2),
    exchange_rate=mostly("", ["1.08"]),
)
contexts = st.builds(
    common.RequestContext,
    request_id=mostly("r-1", [*ODD_TEXT, "job:points-aging:2026-03-02:6001200000000010"]),
    account=accounts,
    local_time=local_times,
    location=text,
    dry_run=st.booleans(),
)


@needs_compiled_admission
@settings(max_examples=500, deadline=None)
@given(
    context_message=contexts,
    sale=purchases,
    pin=mostly(False, [True]),
    present=st.booleans(),
)
def test_a_compiled_purchase_admission_equals_the_reference(
    context_message: common.RequestContext,
    sale: transactions.Purchase,
    pin: bool,
    present: bool,
) -> None:
    if pin:
        context_message.pin = "0042"
    if present:
        context_message.card_present = False
    message = transactions.Transaction(context=context_message, purchase=sale)
    reference = outcome(admission.transaction_from_proto_reference, message, "transaction")
    compiled = admission._compiled_purchase(message)
    if compiled is not None:
        assert ("ok", compiled) == reference
    assert outcome(admission.transaction_from_proto, message, "transaction") == reference


@needs_compiled_admission
def test_a_plain_purchase_is_admitted_by_the_compiled_path() -> None:
    # The common form must stay on the fast path: a purchase, its lines and tenders.
    message = purchase(tenders=[common.TenderLine(type="visa", amount=1_000)])
    admitted = admission._compiled_purchase(message)
    assert admitted is not None
    assert admitted == admission.transaction_from_proto_reference(message, "transaction")
    for slow in (
        purchase(stored_value=common.Money(units=5)),
        purchase(exchange_rate="1.5"),
        purchase(customer=common.Customer(id="C-1")),
        transactions.Transaction(context=context(pin="0042"), purchase=message.purchase),
        transactions.Transaction(context=context(), void=transactions.Void(original_id="r-0")),
        purchase(lines=[common.Line(number=1, item="A"), common.Line(number=1, item="B")]),
        transactions.Transaction(context=context(request_id="job:x"), purchase=message.purchase),
    ):
        assert admission._compiled_purchase(slow) is None


# --------------------------------------------------------------------------- context


def test_context_converts_every_field() -> None:
    converted = admission.context_from_proto(context(card_present=False, pin="0042", dry_run=True))
    assert converted == admission.Context(
        request_id="r-1",
        account=CARD,
        day=DAY,
        second=SECOND,
        location="S001",
        card_present=False,
        pin="0042",
        dry_run=True,
    )


def test_context_defaults_card_present_and_no_pin() -> None:
    converted = admission.context_from_proto(context(location=""))
    assert converted.card_present is True
    assert converted.pin is None
    assert converted.location == ""
    assert converted.dry_run is False


def test_context_repr_never_shows_the_pin() -> None:
    assert "0042" not in repr(admission.context_from_proto(context(pin="0042")))


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"request_id": ""}, "context.request_id"),
        ({"request_id": "r" * 65}, "context.request_id"),
        ({"request_id": "a\nb"}, "context.request_id"),
        ({"request_id": "job:movement:2026-03-05"}, "context.request_id"),  # the jobs' ids
        ({"account": ""}, "context.account"),
        ({"account": "1234567"}, "context.account"),
        ({"account": "1" * 33}, "context.account"),
        ({"account": "60012000000a0010"}, "context.account"),
        ({"account": "６００１２０００"}, "context.account"),  # full-width digits
        ({"local_time": ""}, "context.local_time"),
        ({"local_time": "2026-03-02 09:05:07"}, "context.local_time"),
        ({"local_time": "2026-03-02T09:05"}, "context.local_time"),
        ({"local_time": "2026-03-02T09:05:07+01:00"}, "context.local_time"),
        ({"local_time": "2026-02-30T09:05:07"}, "context.local_time"),
        ({"local_time": "2026-03-02T25:00:00"}, "context.local_time"),
        ({"location": "S" * 65}, "context.location"),
        ({"pin": ""}, "context.pin"),
        ({"pin": "12a4"}, "context.pin"),
        ({"pin": "1" * 13}, "context.pin"),
    ],
)
def test_context_refuses_a_bad_field(fields: dict[str, Any], path: str) -> None:
    error = refused(admission.context_from_proto, context(**fields))
    assert (error.field, error.reason) == (path, "INVALID_ARGUMENT")


def test_a_pin_is_never_repeated_in_an_error() -> None:
    error = refused(admission.context_from_proto, context(pin="12345678901234"))
    assert "12345678901234" not in str(error)
    error = refused(
        admission.context_from_proto, context(account="6001200000000010999999999999999999")
    )
    assert "6001200000000010" not in str(error)


def test_context_path_follows_the_field_it_came_from() -> None:
    error = refused(admission.context_from_proto, context(account="1"), "transactions[4].context")
    assert error.field == "transactions[4].context.account"


# --------------------------------------------------------------------------- transactions


def test_purchase_converts_to_the_exact_engine_request() -> None:
    message = purchase(
        currency="eur",
        exchange_rate="1.0825",
        lines=[
            common.Line(
                number=1,
                item="SHOE-42",
                amount=12000,
                quantity=2,
                hierarchy=["SHOES", "RUNNING"],
                attributes={"color": "red", "brand": "acme"},
            ),
            common.Line(number=7, item="GIFT", amount=0, quantity=1, non_merchandise=True),
        ],
        tenders=[common.TenderLine(type="visa", amount=9000), common.TenderLine(type="cash")],
        customer=common.Customer(
            id="C-1", birth_date="1990-03-04", signup_date="", audiences=["vip:A", "news"]
        ),
        stored_value=common.Money(units=3000),
        redeem_codes=["NW5-7Q2K", "CERT-1"],
    )
    converted_context, request = admission.transaction_from_proto(message)
    assert converted_context.request_id == "r-1"
    assert request == Purchase(
        **BASE,
        currency="EUR",
        exchange_rate="1.0825",
        lines=(
            Line(
                1,
                "SHOE-42",
                12000,
                2,
                ("SHOES", "RUNNING"),
                (("brand", "acme"), ("color", "red")),
                True,
            ),
            Line(7, "GIFT", 0, 1, (), (), False),
        ),
        tenders=(TenderLine("visa", 9000), TenderLine("cash", 0)),
        customer=Customer(
            "C-1", calendar.days_from_civil(1990, 3, 4), None, frozenset({"vip:A", "news"})
        ),
        stored_value=3000,
        redeem_codes=("NW5-7Q2K", "CERT-1"),
    )


def test_an_audience_membership_holds_a_list_id_and_its_stratum() -> None:
    # What SetAudiences stores a purchase may name: "<list id>:<stratum>" with the longest
    # list id a program file allows.
    stratified = f"{'L' * IDENTIFIER_CHARS_MAX}:GOLD"
    longest = "A" * AUDIENCE_CHARS_MAX
    message = purchase(customer=common.Customer(id="C-1", audiences=[stratified, longest]))
    request = admission.transaction_from_proto(message)[1]
    assert isinstance(request, Purchase) and request.customer is not None
    assert request.customer.audiences == frozenset({stratified, longest})
    too_long = purchase(customer=common.Customer(id="C-1", audiences=[longest + "A"]))
    error = refused(admission.transaction_from_proto, too_long)
    assert error.field == "transaction.purchase.customer.audiences[0]"


def test_pin_verified_is_left_to_the_pipeline_and_card_present_is_copied() -> None:
    message = purchase()
    message.context.pin = "1234"
    message.context.card_present = False
    converted_context, request = admission.transaction_from_proto(message)
    assert converted_context.pin == "1234"
    assert request.pin_verified is False
    assert request.card_present is False


def test_return_void_and_engagement_convert_exactly() -> None:
    returned = transactions.Transaction(
        context=context(),
        sale_return=transactions.Return(
            original_id="s1",
            lines=[transactions.ReturnLine(number=2, quantity=1)],
        ),
    )
    assert admission.transaction_from_proto(returned)[1] == Return(
        **BASE, original_id="s1", lines=(ReturnLine(2, 1),)
    )
    whole = transactions.Transaction(
        context=context(), sale_return=transactions.Return(original_id="s1")
    )
    assert admission.transaction_from_proto(whole)[1] == Return(**BASE, original_id="s1", lines=())
    voided = transactions.Transaction(context=context(), void=transactions.Void(original_id="e1"))
    assert admission.transaction_from_proto(voided)[1] == Void(**BASE, original_id="e1")
    engaged = transactions.Transaction(
        context=context(),
        engagement=transactions.Engagement(
            kind="video", count=3, customer=common.Customer(id="C-2")
        ),
    )
    assert admission.transaction_from_proto(engaged)[1] == Engagement(
        **BASE, kind="video", count=3, customer=Customer("C-2")
    )


def lines(count: int, **fields: Any) -> list[common.Line]:
    values: dict[str, Any] = {"item": "SKU", "amount": 100, "quantity": 1}
    values.update(fields)
    return [common.Line(number=number, **values) for number in range(1, count + 1)]


BAD_LINE = [*lines(2), common.Line(number=3, item="SKU", amount=-1, quantity=1)]


@pytest.mark.parametrize(
    ("message", "path", "reason"),
    [
        (purchase(lines=BAD_LINE), "transaction.purchase.lines[2].amount", "INVALID_AMOUNT"),
        (
            purchase(lines=lines(1, amount=10**14 + 1)),
            "transaction.purchase.lines[0].amount",
            "INVALID_AMOUNT",
        ),
        (
            purchase(tenders=[common.TenderLine(type="visa", amount=-5)]),
            "transaction.purchase.tenders[0].amount",
            "INVALID_AMOUNT",
        ),
        (
            purchase(tenders=[common.TenderLine(type="", amount=5)]),
            "transaction.purchase.tenders[0].type",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(tenders=[common.TenderLine(type="cash")] * 33),
            "transaction.purchase.tenders",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(stored_value=common.Money(units=-1)),
            "transaction.purchase.stored_value.units",
            "INVALID_AMOUNT",
        ),
        (
            purchase(stored_value=common.Money(units=1, currency="ZZZ")),
            "transaction.purchase.stored_value.currency",
            "CURRENCY_UNKNOWN",
        ),
        (
            purchase(stored_value=common.Money(units=1, currency="EUR")),
            "transaction.purchase.stored_value.currency",
            "CURRENCY_NOT_ALLOWED",
        ),
        (purchase(currency=""), "transaction.purchase.currency", "CURRENCY_UNKNOWN"),
        (purchase(currency="XYZ"), "transaction.purchase.currency", "CURRENCY_UNKNOWN"),
        (purchase(currency="840"), "transaction.purchase.currency", "CURRENCY_UNKNOWN"),
        # ISO 4217 codes with no minor unit are not currencies of payment.
        (purchase(currency="XXX"), "transaction.purchase.currency", "CURRENCY_UNKNOWN"),
        (purchase(currency="XAU"), "transaction.purchase.currency", "CURRENCY_UNKNOWN"),
        (purchase(lines=lines(1001)), "transaction.purchase.lines", "TOO_MANY_LINES"),
        (
            purchase(lines=[*lines(2), common.Line(number=2, item="X", amount=1, quantity=1)]),
            "transaction.purchase.lines[2].number",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(lines=[common.Line(item="X", amount=1, quantity=1)]),
            "transaction.purchase.lines[0].number",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(lines=lines(1, quantity=0)),
            "transaction.purchase.lines[0].quantity",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(lines=lines(1, item="")),
            "transaction.purchase.lines[0].item",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(lines=lines(1, hierarchy=["N"] * 17)),
            "transaction.purchase.lines[0].hierarchy",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(lines=[*lines(1), *lines(1, hierarchy=["dept", ""])[:1]]),
            "transaction.purchase.lines[1].number",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(lines=lines(2, hierarchy=["dept", "bad\x07node"])),
            "transaction.purchase.lines[0].hierarchy[1]",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(lines=lines(1, attributes={"color": "red", "": "x"})),
            "transaction.purchase.lines[0].attributes['']",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(lines=lines(1, attributes={f"k{n}": "v" for n in range(65)})),
            "transaction.purchase.lines[0].attributes",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(lines=lines(1, item="S" * 65)),
            "transaction.purchase.lines[0].item",
            "INVALID_ARGUMENT",
        ),
        (purchase(redeem_codes=["C"] * 33), "transaction.purchase.redeem_codes", "TOO_MANY_CODES"),
        (
            purchase(redeem_codes=["C", ""]),
            "transaction.purchase.redeem_codes[1]",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(customer=common.Customer(id="C", birth_date="1990-02-30")),
            "transaction.purchase.customer.birth_date",
            "INVALID_ARGUMENT",
        ),
        (
            purchase(customer=common.Customer(id="")),
            "transaction.purchase.customer.id",
            "INVALID_ARGUMENT",
        ),
        (
            transactions.Transaction(purchase=transactions.Purchase(currency="USD")),
            "transaction.context",
            "INVALID_ARGUMENT",
        ),
        (transactions.Transaction(context=context()), "transaction.kind", "INVALID_ARGUMENT"),
        (
            transactions.Transaction(context=context(), void=transactions.Void()),
            "transaction.void.original_id",
            "INVALID_ARGUMENT",
        ),
        (
            transactions.Transaction(
                context=context(),
                sale_return=transactions.Return(
                    original_id="s1", lines=[transactions.ReturnLine(number=1)]
                ),
            ),
            "transaction.sale_return.lines[0].quantity",
            "INVALID_ARGUMENT",
        ),
        (
            transactions.Transaction(
                context=context(),
                sale_return=transactions.Return(
                    original_id="s1",
                    lines=[transactions.ReturnLine(number=1, quantity=1)] * 2,
                ),
            ),
            "transaction.sale_return.lines[1].number",
            "INVALID_ARGUMENT",
        ),
        (
            transactions.Transaction(context=context(), sale_return=transactions.Return()),
            "transaction.sale_return.original_id",
            "INVALID_ARGUMENT",
        ),
        (
            transactions.Transaction(
                context=context(), engagement=transactions.Engagement(kind="video")
            ),
            "transaction.engagement.count",
            "INVALID_ARGUMENT",
        ),
        (
            transactions.Transaction(
                context=context(), engagement=transactions.Engagement(count=1)
            ),
            "transaction.engagement.kind",
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_transaction_refuses_a_bad_field(
    message: transactions.Transaction, path: str, reason: str
) -> None:
    error = refused(admission.transaction_from_proto, message)
    assert (error.field, error.reason) == (path, reason)


@pytest.mark.parametrize("rate", ["-1", "0", "0.000", "abc", "1e3", "1.0000000001", "1,5", " 1"])
def test_exchange_rate_must_be_a_positive_decimal(rate: str) -> None:
    error = refused(admission.transaction_from_proto, purchase(exchange_rate=rate))
    assert (error.field, error.reason) == (
        "transaction.purchase.exchange_rate",
        "INVALID_EXCHANGE_RATE",
    )


def test_limits_are_inclusive() -> None:
    message = purchase(
        lines=lines(1000, amount=10**14, quantity=1_000_000),
        redeem_codes=[f"C{index}" for index in range(32)],
    )
    request = admission.transaction_from_proto(message)[1]
    assert isinstance(request, Purchase)
    assert len(request.lines) == 1000 and len(request.redeem_codes) == 32


def test_a_transaction_of_a_batch_names_its_index() -> None:
    error = refused(admission.transaction_from_proto, purchase(lines=BAD_LINE), "transactions[3]")
    assert error.field == "transactions[3].purchase.lines[2].amount"


# --------------------------------------------------------------------------- tender


@pytest.mark.parametrize(
    ("method", "message", "fields"),
    [
        (
            "Activate",
            tender.ActivateRequest(
                context=context(), amount=common.Money(units=10000, currency="usd")
            ),
            {"amount": 10000, "currency": "USD"},
        ),
        (
            "Reload",
            tender.ReloadRequest(
                context=context(),
                amount=common.Money(units=500, currency="EUR"),
                exchange_rate="1.08",
            ),
            {"amount": 500, "currency": "EUR", "exchange_rate": "1.08"},
        ),
        ("GetBalance", tender.GetBalanceRequest(context=context()), {"currency": ""}),
        (
            "Redeem",
            tender.RedeemRequest(context=context(), amount=common.Money(units=2500)),
            {"amount": 2500, "currency": ""},
        ),
        (
            "PreAuthorize",
            tender.PreAuthorizeRequest(
                context=context(), amount=common.Money(units=6500, currency="USD")
            ),
            {"amount": 6500, "currency": "USD"},
        ),
        (
            "Capture",
            tender.CaptureRequest(
                context=context(),
                preauthorization_id="p1",
                amount=common.Money(units=6120, currency="USD"),
            ),
            {"amount": 6120, "currency": "USD", "reference_id": "p1"},
        ),
        (
            "Release",
            tender.ReleaseRequest(context=context(), preauthorization_id="p1"),
            {"currency": "", "reference_id": "p1"},
        ),
        (
            "CashOut",
            tender.CashOutRequest(context=context()),
            {"amount": 0, "currency": ""},
        ),
        (
            "Merge",
            tender.MergeRequest(context=context(), target_account=OTHER_CARD),
            {"currency": "", "target_account": OTHER_CARD},
        ),
    ],
)
def test_tender_requests_convert_exactly(method: str, message: Any, fields: dict[str, Any]) -> None:
    op = admission.TENDER_OPS[method]
    converted_context, request = admission.tender_from_proto(op, message)
    assert converted_context.account == CARD
    assert request == TenderRequest(**BASE, op=op, **fields)


@pytest.mark.parametrize(
    ("op", "message", "path", "reason"),
    [
        (
            "redeem",
            tender.RedeemRequest(context=context(), amount=common.Money(units=-1)),
            "amount.units",
            "INVALID_AMOUNT",
        ),
        (
            "reload",
            tender.ReloadRequest(context=context(), amount=common.Money(units=10**14 + 1)),
            "amount.units",
            "INVALID_AMOUNT",
        ),
        (
            "activate",
            tender.ActivateRequest(
                context=context(), amount=common.Money(units=1, currency="DOLLARS")
            ),
            "amount.currency",
            "CURRENCY_UNKNOWN",
        ),
        (
            "activate",
            tender.ActivateRequest(
                context=context(), amount=common.Money(units=1), exchange_rate="-2"
            ),
            "exchange_rate",
            "INVALID_EXCHANGE_RATE",
        ),
        ("capture", tender.CaptureRequest(context=context()), "preauthorization_id", None),
        ("release", tender.ReleaseRequest(context=context()), "preauthorization_id", None),
        (
            "merge",
            tender.MergeRequest(context=context(), target_account="42"),
            "target_account",
            None,
        ),
        ("balance", tender.GetBalanceRequest(), "context", None),
        (
            "balance",
            tender.GetBalanceRequest(context=context(local_time="")),
            "context.local_time",
            None,
        ),
    ],
)
def test_tender_requests_refuse_a_bad_field(
    op: str, message: Any, path: str, reason: str | None
) -> None:
    error = refused(admission.tender_from_proto, op, message)
    assert (error.field, error.reason) == (path, reason or "INVALID_ARGUMENT")


def test_a_tender_message_of_another_operation_is_a_caller_bug() -> None:
    with pytest.raises(TypeError):
        admission.tender_from_proto("redeem", tender.ReloadRequest(context=context()))
    with pytest.raises(TypeError):
        admission.tender_from_proto("refund", tender.ReloadRequest(context=context()))


TENDER_PROGRAM = {"id": "gift", "name": "Gift", "start_date": "2024-01-01", "currency": "KWD"}
E_AWARD = award_rule(
    "credit",
    "e_award",
    cost_type="fixed",
    threshold="5",
    cost="5",
    amount="10",
    award_program="wallet",
)
PROGRAM = compile_file(
    program_file(
        loyalty(points_precision=2, award=[E_AWARD]),
        [wallet(currency="JPY")],
        tender=TENDER_PROGRAM,
    )
)


def test_an_empty_currency_becomes_the_tender_programs() -> None:
    _, request = admission.tender_from_proto(
        "redeem", tender.RedeemRequest(context=context(), amount=common.Money(units=5))
    )
    assert admission.resolve_currency(request, PROGRAM).currency == "KWD"
    sent = TenderRequest(**BASE, op="redeem", amount=5, currency="EUR")
    assert admission.resolve_currency(sent, PROGRAM) is sent


# --------------------------------------------------------------------------- awards


def test_award_redemptions_convert_exactly() -> None:
    by_code = awards.RedeemAwardRequest(context=context(), code="NW5-7Q2K")
    assert admission.award_redemption_from_proto(by_code)[1] == AwardRedemption(
        **BASE, code="NW5-7Q2K"
    )
    by_value = awards.RedeemAwardValueRequest(
        context=context(), program="wallet", amount=common.Money(units=500, currency="JPY")
    )
    assert admission.award_redemption_from_proto(by_value)[1] == AwardRedemption(
        **BASE, program="wallet", amount=500
    )


@pytest.mark.parametrize(
    ("message", "path", "reason"),
    [
        (awards.RedeemAwardRequest(context=context()), "code", "INVALID_ARGUMENT"),
        (awards.RedeemAwardRequest(code="X"), "context", "INVALID_ARGUMENT"),
        (
            awards.RedeemAwardValueRequest(context=context(), amount=common.Money(units=5)),
            "program",
            "INVALID_ARGUMENT",
        ),
        (
            awards.RedeemAwardValueRequest(
                context=context(), program="wallet", amount=common.Money(units=-5)
            ),
            "amount.units",
            "INVALID_AMOUNT",
        ),
        (
            awards.RedeemAwardValueRequest(
                context=context(), program="wallet", amount=common.Money(units=5, currency="QQQ")
            ),
            "amount.currency",
            "CURRENCY_UNKNOWN",
        ),
    ],
)
def test_award_redemptions_refuse_a_bad_field(message: Any, path: str, reason: str) -> None:
    error = refused(admission.award_redemption_from_proto, message)
    assert (error.field, error.reason) == (path, reason)


def test_award_value_must_be_in_the_award_programs_currency() -> None:
    def value(currency: str) -> awards.RedeemAwardValueRequest:
        return awards.RedeemAwardValueRequest(
            context=context(), program="wallet", amount=common.Money(units=5, currency=currency)
        )

    admission.check_award_currency(value("JPY"), PROGRAM)
    admission.check_award_currency(value(""), PROGRAM)
    error = refused(admission.check_award_currency, value("USD"), PROGRAM)
    assert (error.field, error.reason) == ("amount.currency", "CURRENCY_NOT_ALLOWED")


# --------------------------------------------------------------------------- results


def test_result_converts_with_exponents_dates_and_currencies() -> None:
    result = Result(
        id="r-1",
        account=CARD,
        postings=[
            Posting("loyal", 3, "points", "regular", 1234, "base", DAY),
            Posting("gift", 3, "tender", "redeem", -2500, "", DAY, OTHER_CARD),
            Posting("wallet", 3, "award_value", "e_award", 500, "credit", DAY),
        ],
        awards=[
            AwardIssue("", "e_award", "credit", "wallet", 500, 10000, DAY + 30),
            AwardIssue("CPN-1", "coupon", "coupon", "loyal", 0, 0, None),
        ],
        redeemed=["NW5-7Q2K"],
        moves=[LevelMove("loyal", "up", "advancement", "silver", "gold")],
        tender=TenderDecision("redeem", True, 3000, 2500, 7500, "PARTIAL"),
        trace=[TraceEntry("loyal", "base", True, 1234), TraceEntry("loyal", "x", False, 0, "no")],
        balances={"points:loyal": 1234, "escrow:loyal": 0, "tender": 7500, "award:wallet": 500},
    )
    sent = TenderRequest(**BASE, op="redeem", amount=3000, currency="EUR", exchange_rate="0.3")
    message = answers.result_to_proto(result, PROGRAM, replayed=True, request=sent)
    date = calendar.format_day(DAY)
    assert message == common.Result(
        request_id="r-1",
        account=CARD,
        status=common.RESULT_STATUS_APPROVED,
        postings=[
            common.Posting(
                program="loyal",
                program_version=3,
                balance=common.POSTING_BALANCE_POINTS,
                kind="regular",
                amount=1234,
                balance_name="points:loyal",
                rule="base",
                date=date,
            ),
            common.Posting(
                program="gift",
                program_version=3,
                balance=common.POSTING_BALANCE_TENDER,
                kind="redeem",
                amount=-2500,
                balance_name="tender",
                date=date,
                account=OTHER_CARD,
            ),
            common.Posting(
                program="wallet",
                program_version=3,
                balance=common.POSTING_BALANCE_AWARD_VALUE,
                kind="e_award",
                amount=500,
                balance_name="award:wallet",
                rule="credit",
                date=date,
            ),
        ],
        awards=[
            common.AwardIssue(
                kind=common.AWARD_KIND_E_AWARD,
                rule="credit",
                program="wallet",
                value=common.Money(units=500, currency="JPY"),
                points_cost=common.Points(units=10000, precision=2),
                expires_date=calendar.format_day(DAY + 29),
            ),
            common.AwardIssue(
                code="CPN-1",
                kind=common.AWARD_KIND_COUPON,
                rule="coupon",
                program="loyal",
                value=common.Money(units=0, currency="USD"),
                points_cost=common.Points(units=0, precision=2),
            ),
        ],
        redeemed_codes=["NW5-7Q2K"],
        moves=[
            common.LevelMove(
                program="loyal",
                rule="up",
                kind=common.LEVEL_MOVE_KIND_ADVANCEMENT,
                from_level="silver",
                to_level="gold",
            )
        ],
        tender=common.TenderDecision(
            operation=common.TENDER_OPERATION_REDEEM,
            approved=True,
            requested=common.Money(units=3000, currency="EUR"),
            approved_amount=common.Money(units=2500, currency="KWD"),
            balance=common.Money(units=7500, currency="KWD"),
            reason="PARTIAL",
        ),
        trace=[
            common.TraceEntry(
                program="loyal",
                rule="base",
                fired=True,
                points=common.Points(units=1234, precision=2),
            ),
            common.TraceEntry(
                program="loyal", rule="x", points=common.Points(precision=2), reason="no"
            ),
        ],
        balances={"points:loyal": 1234, "escrow:loyal": 0, "tender": 7500, "award:wallet": 500},
        balance_exponents={"points:loyal": 2, "escrow:loyal": 2, "tender": 3, "award:wallet": 0},
        replayed=True,
    )


def test_a_declined_result_and_unknown_balance_names() -> None:
    result = Result(
        id="r-2",
        account=CARD,
        status="declined",
        reason="INSUFFICIENT_BALANCE",
        tender=TenderDecision("debit_reversal", False, 100, 0, 50, "INSUFFICIENT_BALANCE"),
        balances={"tender": 50, "points:gone": 3},
    )
    message = answers.result_to_proto(result, PROGRAM)
    assert message.status == common.RESULT_STATUS_DECLINED
    assert message.reason == "INSUFFICIENT_BALANCE"
    assert message.replayed is False
    assert message.tender.operation == common.TENDER_OPERATION_UNSPECIFIED
    assert message.tender.requested == common.Money(units=100, currency="KWD")
    assert dict(message.balance_exponents) == {"tender": 3}


# --------------------------------------------------------------------------- held awards


def award(code: str, issued: int, **fields: Any) -> Award:
    values: dict[str, Any] = {
        "kind": "certificate",
        "rule": "coffee",
        "program": "wallet",
        "expires_day": None,
        "redemptions_left": 1,
    }
    values.update(fields)
    return Award(code=code, issued_day=issued, **values)


def holder() -> AccountState:
    wallet_account = AwardAccount(
        program="wallet",
        expires_day=DAY + 100,
        value=[
            ValueLot(DAY - 10, 300, None, "opening"),
            ValueLot(DAY - 10, 200, DAY, "lapsed"),  # expires today: not available
            ValueLot(DAY - 5, 100, DAY + 1, "cashback"),
        ],
        awards=[
            award("OLD", DAY - 20),
            award("LAPSED", DAY - 9, expires_day=DAY),
            award("USED", DAY - 8, redemptions_left=0),
            award("GONE", DAY - 7, status="void"),
        ],
    )
    points = LoyaltyAccount("loyal", "silver", DAY - 30, DAY - 30, DAY - 1)
    points.awards = [
        award("CPN", DAY - 1, kind="coupon", rule="coupon", program="loyal", expires_day=DAY + 8)
    ]
    return AccountState(CARD, awards={"wallet": wallet_account}, loyalty={"loyal": points})


def test_held_awards_are_listed_newest_first_with_their_status_today() -> None:
    response = answers.awards_to_proto(holder(), PROGRAM, DAY)
    assert [(held.code, held.status) for held in response.awards] == [
        ("CPN", awards.AWARD_STATUS_ACTIVE),
        ("GONE", awards.AWARD_STATUS_VOID),
        ("USED", awards.AWARD_STATUS_REDEEMED),
        ("LAPSED", awards.AWARD_STATUS_EXPIRED),
        ("OLD", awards.AWARD_STATUS_ACTIVE),
    ]
    assert response.awards[0] == awards.HeldAward(
        code="CPN",
        kind=common.AWARD_KIND_COUPON,
        rule="coupon",
        program="loyal",
        issued_date=calendar.format_day(DAY - 1),
        expires_date=calendar.format_day(DAY + 7),
        redemptions_left=1,
        status=awards.AWARD_STATUS_ACTIVE,
    )
    assert list(response.values) == [
        awards.AwardValueBalance(
            program="wallet",
            balance=common.Money(units=400, currency="JPY"),
            status=awards.AWARD_ACCOUNT_STATUS_ACTIVE,
            expires_date=calendar.format_day(DAY + 100),
        )
    ]
    assert response.next_page_token == ""


def test_an_expired_award_account_expires_its_awards_and_value() -> None:
    response = answers.awards_to_proto(holder(), PROGRAM, DAY + 100)
    assert {held.code: held.status for held in response.awards}["OLD"] == (
        awards.AWARD_STATUS_EXPIRED
    )
    assert response.values[0].status == awards.AWARD_ACCOUNT_STATUS_EXPIRED
    assert response.values[0].balance.units == 0


def test_held_awards_are_paged_and_filtered() -> None:
    state = holder()
    request = awards.ListAwardsRequest(account=CARD, page_size=2, include_inactive=True)
    codes = []
    while True:
        page = answers.awards_to_proto(state, PROGRAM, DAY, request)
        assert len(page.awards) <= 2 and len(page.values) == 1
        codes += [held.code for held in page.awards]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
        state.awards["wallet"].awards.append(award("NEWER", DAY))  # issued between pages
    assert codes == ["CPN", "GONE", "USED", "LAPSED", "OLD"]
    active = answers.awards_to_proto(holder(), PROGRAM, DAY, awards.ListAwardsRequest(account=CARD))
    assert [held.code for held in active.awards] == ["CPN", "OLD"]


def test_a_page_token_not_given_by_the_server_is_refused() -> None:
    request = awards.ListAwardsRequest(account=CARD, page_token="not a token!")
    error = refused(answers.awards_to_proto, holder(), PROGRAM, DAY, request)
    assert error.field == "page_token"


def test_trace_entries_keep_their_order_and_values_while_the_memo_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each distinct trace entry is serialized once and reused; entries carrying points
    # are endless, so the memo is emptied when full, and nothing read from it may drift.
    monkeypatch.setattr(answers, "_TRACE_FIELDS_MAX", 8)
    monkeypatch.setattr(answers, "_TRACE_FIELDS", {})
    for n in range(40):
        trace = [
            TraceEntry("loyal", "base", True, 100 + n),
            TraceEntry("loyal", "bonus", False, 0, "outside the rule's dates"),
            TraceEntry("loyal", "vip", n % 2 == 0, n, "" if n % 2 == 0 else "no audience"),
        ]
        result = Result(id=f"r-{n}", account=CARD, trace=trace, balances={"points:loyal": n})
        message = answers.result_to_proto(result, PROGRAM)
        assert [(e.program, e.rule, e.fired, e.points.units, e.reason) for e in message.trace] == [
            (e.program, e.rule, e.fired, e.points, e.reason) for e in trace
        ]
        assert all(
            e.points.precision == message.balance_exponents["points:loyal"] for e in message.trace
        )
        assert (message.request_id, message.balances["points:loyal"]) == (f"r-{n}", n)
        assert len(answers._TRACE_FIELDS) <= 8


def test_result_bytes_are_what_the_answer_parses_from() -> None:
    result = Result(
        id="r-9",
        account=CARD,
        postings=[Posting("loyal", 3, "points", "regular", 77, "base", DAY)],
        trace=[TraceEntry("loyal", "base", True, 77), TraceEntry("loyal", "x", False, 0, "no")],
        balances={"points:loyal": 77},
    )
    data = answers.result_bytes(result, PROGRAM)
    parsed = common.Result.FromString(data)
    assert parsed == answers.result_to_proto(result, PROGRAM)
    # Re-serialized canonically, it is the same message again: nothing was lost.
    assert common.Result.FromString(parsed.SerializeToString(deterministic=True)) == parsed


def test_currency_codes_without_a_minor_unit_are_no_currency_of_payment() -> None:
    for code in ("XXX", "XTS", "XAU", "XDR"):
        assert not money.is_currency(code)
        with pytest.raises(ValueError, match="not a currency of payment"):
            money.currency_exponent(code)
    assert money.currency_exponent("JPY") == 0 and money.currency_exponent("CLF") == 4


def test_responses_are_assembled_from_result_bytes_without_parsing_them() -> None:
    first = common.Result(request_id="r-1", account="6001200000000010", replayed=False)
    second = common.Result(request_id="r-2", account="6001200000000028")
    single = transactions.PostTransactionResponse.FromString(
        answers.response_bytes(first.SerializeToString())
    )
    assert single.result == first
    several = transactions.PostTransactionsResponse.FromString(
        b"".join(answers.response_bytes(r.SerializeToString()) for r in (first, second))
    )
    assert list(several.results) == [first, second]
    streamed = transactions.StreamTransactionsResponse.FromString(
        answers.response_bytes(second.SerializeToString())
    )
    assert streamed.result == second


def test_a_stored_result_answered_again_is_marked_replayed() -> None:
    stored = common.Result(request_id="r-1", account="6001200000000010")
    again = common.Result.FromString(answers.replayed_bytes(stored.SerializeToString()))
    expected = common.Result()
    expected.CopyFrom(stored)
    expected.replayed = True
    assert again == expected


# --------------------------------------------------------------------------- payload hash


@settings(max_examples=300, deadline=None)
@given(
    context_message=st.one_of(st.none(), contexts),
    sale=purchases,
    pin=st.sampled_from([None, "", "0042"]),
    padding=st.integers(0, 400),
)
def test_a_transactions_hash_is_the_hash_of_its_request_without_pin_or_dry_run(
    context_message: common.RequestContext | None,
    sale: transactions.Purchase,
    pin: str | None,
    padding: int,
) -> None:
    from processor.service.posting import hash_of, transaction_hash

    message = transactions.Transaction(purchase=sale)
    if context_message is not None:
        message.context.CopyFrom(context_message)
        if pin is not None:
            message.context.pin = pin
    message.purchase.redeem_codes.append("c" * padding)  # lengths of one and two bytes
    expected = hash_of(transactions.PostTransactionRequest(transaction=message))
    assert transaction_hash(message) == expected
    # The PIN and the dry-run flag are left out: a retry that re-enters the PIN is the same.
    if context_message is not None:
        plain = transactions.Transaction()
        plain.CopyFrom(message)
        plain.context.ClearField("pin")
        plain.context.dry_run = False
        assert transaction_hash(plain) == expected

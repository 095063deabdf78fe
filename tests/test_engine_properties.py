"""Invariants of the reference engine, checked on generated programs and request streams.

- every balance equals the sum of the postings that made it;
- no issue rule issues outside its time window or for lines its filters exclude;
- a full return (in one go or in parts) takes back exactly what the sale earned;
- a declined request changes nothing; the same inputs give the same results.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processor import calendar
from processor.engine import compile_program
from processor.engine.reference import evaluate
from processor.engine.types import (
    AccountState,
    Line,
    Purchase,
    Receipt,
    Request,
    Return,
    ReturnLine,
    TenderRequest,
)
from processor.program.loader import validate_program
from processor.program.rules import TimeWindow

START = calendar.parse_day("2026-01-05")  # a Monday
CARDS = ("6001200000000010", "6001200000000028", "6001200000000036")
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def program_data(
    window: dict[str, Any],
    multiplier: str,
    precision: int,
    with_awards: bool,
    include: list[str],
    negative: bool = True,
) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {
            "id": "base",
            "name": "Base",
            "start_date": "2026-01-01",
            "calculation": "item_value",
            "multiplier": multiplier,
        },
        {
            "id": "window",
            "name": "Windowed bonus",
            "start_date": "2026-01-01",
            "calculation": "item_value",
            "bonus": True,
            "multiplier": "2",
            "item_include": {"select": "hierarchy", "hierarchy": include},
            "time_rules": [{"type": "bonus_period", "window": window}],
        },
        {
            "id": "count",
            "name": "Per item",
            "start_date": "2026-01-01",
            "calculation": "item_quantity",
            "multiplier": "0.5",
            "fixed_amount": "1",
        },
    ]
    awards = (
        [
            {
                "id": "coupon",
                "name": "Coupon",
                "precedence": 1,
                "threshold": "300",
                "cost": "250",
                "start_date": "2026-01-01",
            },
        ]
        if with_awards
        else []
    )
    return {
        "id": "generated",
        "name": "Generated",
        "card": {"type": "Card", "serial_prefix": "60012"},
        "tender": {
            "id": "gift",
            "name": "Gift",
            "start_date": "2026-01-01",
            "allow_reloads": True,
            "allow_partial_redemption": True,
            "credit_reversal": True,
            "debit_reversal": True,
            "max_balance": "5000.00",
        },
        "loyalty_programs": [
            {
                "id": "points",
                "name": "Points",
                "start_date": "2026-01-01",
                "points_precision": precision,
                "levels": [{"id": "base", "name": "Base", "negative_balance_allowed": negative}],
                "issue_rules": rules,
                "award_rules": awards,
            }
        ],
    }


windows = st.builds(
    lambda days, start, length: {
        "weekdays": days,
        "start_time": f"{start:02d}:00",
        "end_time": f"{(start + length) % 24:02d}:00",
    },
    st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True),
    st.integers(0, 23),
    st.integers(1, 23),
)

lines = st.lists(
    st.builds(
        lambda amount, quantity, node, merchandise: (amount, quantity, node, merchandise),
        st.integers(0, 500_000),
        st.integers(1, 5),
        st.sampled_from(["A", "B", "C"]),
        st.booleans(),
    ),
    min_size=1,
    max_size=6,
)

purchases = st.lists(
    st.tuples(st.sampled_from(CARDS), st.integers(0, 30), st.integers(0, 86399), lines),
    min_size=1,
    max_size=12,
)


def make_purchase(index: int, card: str, day: int, second: int, spec: list[Any]) -> Purchase:
    return Purchase(
        id=f"p{index}",
        account=card,
        day=START + day,
        second=second,
        location="S1",
        lines=tuple(
            Line(number + 1, f"I{number}", amount, quantity, (node,), (), merchandise)
            for number, (amount, quantity, node, merchandise) in enumerate(spec)
        ),
    )


def points_by_account(results: list[Any]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for result in results:
        for posting in result.postings:
            if posting.balance == "points":
                totals[result.account] += posting.amount
    return totals


@settings(max_examples=60)
@given(
    windows, st.sampled_from(["1", "0.5", "1.25", "3"]), st.integers(0, 2), st.booleans(), purchases
)
def test_every_points_balance_equals_the_sum_of_its_postings(
    window: dict[str, Any],
    multiplier: str,
    precision: int,
    with_awards: bool,
    stream: list[Any],
) -> None:
    program = compile_program(
        validate_program(
            "generated.yaml", program_data(window, multiplier, precision, with_awards, ["A"])
        )
    )
    requests: list[Request] = [make_purchase(i, *item) for i, item in enumerate(stream)]
    outcome = evaluate(program, {}, requests, {})
    totals = points_by_account(outcome.results)
    for card, state in outcome.accounts.items():
        account = state.loyalty["points"]
        held = sum(lot.points for lot in account.lots) - account.debt
        assert held == totals[card]
        assert all(lot.points > 0 for lot in account.lots)


@settings(max_examples=60)
@given(windows, st.sampled_from(["1", "0.5", "3"]), purchases)
def test_a_windowed_rule_never_issues_outside_its_window_or_filters(
    window: dict[str, Any], multiplier: str, stream: list[Any]
) -> None:
    program = compile_program(
        validate_program("generated.yaml", program_data(window, multiplier, 0, False, ["A"]))
    )
    requests = [make_purchase(i, *item) for i, item in enumerate(stream)]
    outcome = evaluate(program, {}, requests, {})
    matcher = TimeWindow.model_validate(window)
    factor = Fraction(2, 100)  # multiplier 2, precision 0, cents
    for request, result in zip(requests, outcome.results, strict=True):
        fired = [entry for entry in result.trace if entry.rule == "window" and entry.fired]
        eligible = [
            line
            for line in request.lines
            if line.hierarchy == ("A",) and line.merchandise and line.amount > 0
        ]
        expected = sum(math.floor(line.amount * factor) for line in eligible)
        in_window = matcher.matches(request.day, request.second)
        if fired:
            assert in_window and eligible
            assert fired[0].points == expected
        else:
            assert not (in_window and expected > 0)


@settings(max_examples=80)
@given(
    st.sampled_from(["1", "0.5", "1.25", "3"]),
    st.integers(0, 2),
    lines,
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3)), max_size=6),
)
def test_partial_returns_then_a_full_return_take_back_exactly_what_the_sale_earned(
    multiplier: str, precision: int, spec: list[Any], partials: list[tuple[int, int]]
) -> None:
    window = {"weekdays": WEEKDAYS, "start_time": "00:00", "end_time": "24:00"}
    program = compile_program(
        validate_program(
            "generated.yaml", program_data(window, multiplier, precision, False, ["A", "B"])
        )
    )
    sale = make_purchase(0, CARDS[0], 0, 43200, spec)
    outcome = evaluate(program, {}, [sale], {})
    accounts: dict[str, AccountState] = dict(outcome.accounts)
    receipts: dict[str, Receipt] = dict(outcome.receipts)
    earned = points_by_account(outcome.results)[CARDS[0]]
    taken = 0
    requests: list[Request] = []
    for index, (line_index, quantity) in enumerate(partials):
        number = line_index % len(spec) + 1
        requests.append(
            Return(
                f"r{index}",
                CARDS[0],
                START + 1,
                0,
                "S1",
                original_id="p0",
                lines=(ReturnLine(number, quantity),),
            )
        )
    requests.append(Return("final", CARDS[0], START + 2, 0, "S1", original_id="p0"))
    for request in requests:
        step = evaluate(program, accounts, [request], receipts)
        accounts.update(step.accounts)
        receipts.update(step.receipts)
        result = step.results[0]
        taken -= sum(p.amount for p in result.postings if p.balance == "points")
        assert taken <= earned
    account = accounts[CARDS[0]].loyalty["points"]
    assert taken == earned
    assert account.available(START + 2) == 0
    assert account.earned_ltd == 0


@settings(max_examples=40)
@given(purchases, st.lists(st.integers(1, 200_000), min_size=1, max_size=8))
def test_a_declined_request_changes_nothing_and_results_are_deterministic(
    stream: list[Any], redemptions: list[int]
) -> None:
    window = {"weekdays": ["sat"], "start_time": "09:00", "end_time": "17:00"}
    program = compile_program(
        validate_program("generated.yaml", program_data(window, "1", 0, True, ["A"]))
    )
    requests: list[Request] = [
        TenderRequest(f"a{card}", card, START, 0, "S1", op="activate", amount=10_000)
        for card in CARDS
    ]
    requests += [make_purchase(i, *item) for i, item in enumerate(stream)]
    requests += [
        TenderRequest(f"x{i}", CARDS[i % 3], START + 40, 0, "S1", op="redeem", amount=amount)
        for i, amount in enumerate(redemptions)
    ]
    first = evaluate(program, {}, requests, {})
    second = evaluate(program, {}, requests, {})
    assert first.results == second.results
    for request, result in zip(requests, first.results, strict=True):
        if result.status == "declined":
            before = evaluate(program, {}, requests[: requests.index(request)], {})
            after = evaluate(program, {}, requests[: requests.index(request) + 1], {})
            assert before.accounts.get(request.account) == after.accounts.get(request.account)
    for card, state in first.accounts.items():
        tender_total = sum(
            posting.amount
            for result in first.results
            if result.account == card
            for posting in result.postings
            if posting.balance == "tender"
        )
        assert state.tender is not None and state.tender.balance == tender_total


def test_inputs_are_never_modified() -> None:
    window = {"weekdays": WEEKDAYS, "start_time": "00:00", "end_time": "24:00"}
    program = compile_program(
        validate_program("generated.yaml", program_data(window, "1", 0, True, ["A"]))
    )
    sale = make_purchase(0, CARDS[0], 0, 0, [(50_000, 1, "A", True)])
    first = evaluate(program, {}, [sale], {})
    accounts = copy.deepcopy(first.accounts)
    receipts = copy.deepcopy(first.receipts)
    evaluate(
        program, first.accounts, [Return("r", CARDS[0], START, 0, original_id="p0")], first.receipts
    )
    assert first.accounts == accounts
    assert first.receipts == receipts

"""Invariants of the reference engine, checked on generated programs and request streams.

- every balance equals the sum of the postings that made it;
- no issue rule issues outside its time window or for lines its filters exclude;
- a full return (in one go or in parts) takes back exactly what the sale earned;
- a declined request changes nothing; the same inputs give the same results.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import defaultdict
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processor import calendar
from processor.engine import Engine, compile_program, run_job
from processor.engine.types import (
    AccountState,
    Customer,
    Engagement,
    Line,
    Purchase,
    Receipt,
    Request,
    Return,
    ReturnLine,
    TenderLine,
    TenderRequest,
    Void,
)
from processor.program.loader import validate_program
from processor.program.rules import TimeWindow
from processor.store import codec
from processor.wire import answers

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
    engine: Engine,
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
    outcome = engine.evaluate(program, {}, requests, {})
    totals = points_by_account(outcome.results)
    for card, state in outcome.accounts.items():
        account = state.loyalty["points"]
        held = sum(lot.points for lot in account.lots) - account.debt
        assert held == totals[card]
        assert all(lot.points > 0 for lot in account.lots)


@settings(max_examples=60)
@given(windows, st.sampled_from(["1", "0.5", "3"]), purchases)
def test_a_windowed_rule_never_issues_outside_its_window_or_filters(
    engine: Engine, window: dict[str, Any], multiplier: str, stream: list[Any]
) -> None:
    program = compile_program(
        validate_program("generated.yaml", program_data(window, multiplier, 0, False, ["A"]))
    )
    requests = [make_purchase(i, *item) for i, item in enumerate(stream)]
    outcome = engine.evaluate(program, {}, requests, {})
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
    engine: Engine,
    multiplier: str,
    precision: int,
    spec: list[Any],
    partials: list[tuple[int, int]],
) -> None:
    window = {"weekdays": WEEKDAYS, "start_time": "00:00", "end_time": "24:00"}
    program = compile_program(
        validate_program(
            "generated.yaml", program_data(window, multiplier, precision, False, ["A", "B"])
        )
    )
    sale = make_purchase(0, CARDS[0], 0, 43200, spec)
    outcome = engine.evaluate(program, {}, [sale], {})
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
        step = engine.evaluate(program, accounts, [request], receipts)
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
    engine: Engine, stream: list[Any], redemptions: list[int]
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
    first = engine.evaluate(program, {}, requests, {})
    second = engine.evaluate(program, {}, requests, {})
    assert first.results == second.results
    for request, result in zip(requests, first.results, strict=True):
        if result.status == "declined":
            before = engine.evaluate(program, {}, requests[: requests.index(request)], {})
            after = engine.evaluate(program, {}, requests[: requests.index(request) + 1], {})
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


def test_inputs_are_never_modified(engine: Engine) -> None:
    window = {"weekdays": WEEKDAYS, "start_time": "00:00", "end_time": "24:00"}
    program = compile_program(
        validate_program("generated.yaml", program_data(window, "1", 0, True, ["A"]))
    )
    sale = make_purchase(0, CARDS[0], 0, 0, [(50_000, 1, "A", True)])
    first = engine.evaluate(program, {}, [sale], {})
    given_accounts, given_receipts = dict(first.accounts), dict(first.receipts)
    accounts = copy.deepcopy(given_accounts)
    receipts = copy.deepcopy(given_receipts)
    engine.evaluate(
        program,
        given_accounts,
        [Return("r", CARDS[0], START, 0, original_id="p0")],
        given_receipts,
    )
    assert given_accounts == accounts
    assert given_receipts == receipts


# --------------------------------------------------------------------------- the two engines


def rich_program(draw: st.DrawFn) -> dict[str, Any]:
    """A program drawing on every feature the compiled engine packs."""
    precision = draw(st.integers(0, 2))
    levels = []
    for index, name in enumerate(["bronze", "silver", "gold"]):
        level: dict[str, Any] = {
            "id": name,
            "name": name.title(),
            "negative_balance_allowed": draw(st.booleans()),
        }
        aging = draw(st.sampled_from([None, "fixed", "relative"]))
        if aging:
            level["age_points"] = {"type": aging, "after": f"{draw(st.integers(5, 40))} days"}
        if index and draw(st.booleans()):
            level["escrow"] = f"{draw(st.integers(1, 10))} days"
        levels.append(level)
    window = draw(windows)
    issue = [
        {
            "id": "base",
            "name": "Base",
            "start_date": "2026-01-01",
            "calculation": "item_value",
            "multiplier": draw(st.sampled_from(["1", "0.5", "1.25"])),
            "item_exclude": {"select": "items", "items": ["I3"]},
        },
        {
            "id": "window",
            "name": "Window",
            "start_date": "2026-01-01",
            "calculation": "item_value",
            "bonus": True,
            "multiplier": "2",
            "levels": ["silver", "gold"],
            "time_rules": [{"type": "bonus_period", "window": window}],
            "item_include": {"select": "hierarchy", "hierarchy": ["A", "B"]},
            "location_exclude": {"attributes": [{"name": "format", "values": ["outlet"]}]},
        },
        {
            "id": "items",
            "name": "Per item",
            "start_date": "2026-01-01",
            "calculation": "item_quantity",
            "multiplier": "3",
            "allow_zero_price": True,
            "include_non_merchandise": draw(st.booleans()),
            "item_include": {"select": "all", "attributes": [{"name": "brand", "values": ["x"]}]},
        },
        {
            "id": "visit",
            "name": "Visit",
            "start_date": "2026-01-01",
            "calculation": "visits",
            "fixed_amount": "5",
            "location_include": {"locations": ["S1", "S2"]},
        },
        {
            "id": "trips",
            "name": "Trips",
            "start_date": "2026-01-01",
            "end_date": "2026-02-10",
            "calculation": "transactions",
            "fixed_amount": "7",
            "max_transactions_per_day": 2,
            "transaction_minimum": "10.00",
            "tender": {"types": ["visa"]},
        },
        {
            "id": "birthday",
            "name": "Birthday",
            "start_date": "2026-01-01",
            "calculation": "item_value",
            "multiplier": "1",
            "customer_eligibility": draw(st.sampled_from(["card", "transaction"])),
            "time_rules": [{"type": "birthday_anniversary", "days_before": 2, "days_after": 2}],
        },
        {
            "id": "vip",
            "name": "VIP",
            "start_date": "2026-01-01",
            "calculation": "transactions",
            "fixed_amount": "11",
            "audience": {"lists": [{"id": "vip", "strata": ["A"]}]},
        },
        {
            "id": "monthly",
            "name": "Monthly",
            "start_date": "2026-01-01",
            "calculation": "month_spend",
            "multiplier": "0.1",
        },
        {
            "id": "video",
            "name": "Video",
            "start_date": "2026-01-01",
            "calculation": "engagements",
            "fixed_amount": "3",
            "frequency": "weekly",
            "issues_per_period": 2,
        },
    ]
    awards = [
        {
            "id": "coupon",
            "name": "Coupon",
            "precedence": 1,
            "threshold": "400",
            "cost": "300",
            "coupon_prefix": "C-",
            "start_date": "2026-01-01",
            "expiry": {"type": "relative", "after": "20 days"},
        },
        {
            "id": "wallet",
            "name": "Wallet",
            "type": "e_award",
            "precedence": 2,
            "threshold": "900",
            "cost": "800",
            "amount": "5.00",
            "start_date": "2026-01-01",
            "expiry": {"type": "program"},
            "levels": ["silver", "gold"],
        },
        {
            "id": "cashback",
            "name": "Cashback",
            "type": "e_award",
            "cost_type": "cashback",
            "precedence": 3,
            "threshold": "1500",
            "award_factor": "0.01",
            "minimum_award": "1.00",
            "reset_balance": draw(st.booleans()),
            "start_date": "2026-01-01",
            "levels": ["gold"],
        },
        {
            "id": "cert",
            "name": "Certificate",
            "type": "certificate",
            "certificate": "treat",
            "precedence": 4,
            "threshold": "700",
            "cost": "600",
            "start_date": "2026-01-01",
            "issue": draw(st.sampled_from(["immediately", "job"])),
        },
    ]
    moves = [
        {
            "id": "up1",
            "name": "Up",
            "type": "advancement",
            "from_level": "bronze",
            "to_level": "silver",
            "precedence": 1,
            "threshold": "500",
            "test": {"type": "ytd"},
            "start_date": "2026-01-01",
        },
        {
            "id": "up2",
            "name": "Up again",
            "type": "advancement",
            "from_level": "silver",
            "to_level": "gold",
            "precedence": 2,
            "threshold": "1200",
            "cost": "100",
            "test": {"type": draw(st.sampled_from(["ltd", "since_last_move"]))},
            "start_date": "2026-01-01",
        },
        {
            "id": "keep",
            "name": "Keep",
            "type": "sustain",
            "level": "gold",
            "precedence": 3,
            "threshold": "50",
            "test": {"type": "time_since_last_move", "period": "10 days"},
            "start_date": "2026-01-01",
        },
        {
            "id": "down",
            "name": "Down",
            "type": "demotion",
            "from_level": "gold",
            "to_level": "silver",
            "precedence": 4,
            "threshold": "100000",
            "test": {"type": "time_since_last_move", "period": "20 days"},
            "extension": {
                "test": {"type": "average_per_month", "months": 1},
                "threshold": "0",
                "extend_by": "5 days",
            },
            "start_date": "2026-01-01",
        },
    ]
    return {
        "id": "rich",
        "name": "Rich",
        "card": {"type": "Card", "serial_prefix": "60012"},
        "locations": {
            "S1": {"format": "mall"},
            "S2": {"format": "outlet"},
            "S3": {"format": "mall"},
        },
        "tender": {
            "id": "gift",
            "name": "Gift",
            "start_date": "2026-01-01",
            "allow_reloads": True,
            "allow_partial_redemption": True,
            "credit_reversal": True,
            "debit_reversal": True,
        },
        "award_programs": [
            {
                "id": "wallet",
                "name": "Wallet",
                "start_date": "2026-01-01",
                "allow_reloads": True,
                "award_expiry": "30 days",
                "extend_expiry_on_activity": True,
                "certificates": [
                    {
                        "id": "treat",
                        "name": "Treat",
                        "precedence": 1,
                        "offer": {"id": "o", "name": "Treat", "type": "free_item"},
                        "max_redemptions": 1,
                    }
                ],
            }
        ],
        "loyalty_programs": [
            {
                "id": "points",
                "name": "Points",
                "start_date": "2026-01-01",
                "points_precision": precision,
                "award_program": "wallet",
                "levels": levels,
                "issue_rules": issue,
                "award_rules": awards,
                "movement_rules": moves,
                "card_merge_permitted": True,
            }
        ],
    }


def rich_stream(draw: st.DrawFn) -> list[Request]:
    requests: list[Request] = []
    sales: list[tuple[str, str, int]] = []
    customers = [
        None,
        Customer("c1", birth_day=START + 3, audiences=frozenset({"vip:A"})),
        Customer("c2", birth_day=START - 400, audiences=frozenset({"vip:B"})),
    ]
    for index in range(draw(st.integers(1, 40))):
        card = draw(st.sampled_from(CARDS))
        day = START + draw(st.integers(0, 60)) + index // 4
        second = draw(st.integers(0, 86399))
        kind = draw(st.sampled_from(["sale"] * 6 + ["return", "void", "tender", "engage"]))
        if kind == "sale" or not sales:
            count = draw(st.integers(1, 5))
            lines = tuple(
                Line(
                    number + 1,
                    f"I{draw(st.integers(0, 4))}",
                    draw(st.integers(0, 90_000)),
                    draw(st.integers(1, 3)),
                    (draw(st.sampled_from(["A", "B", "C"])),),
                    (("brand", draw(st.sampled_from(["x", "y"]))),),
                    draw(st.booleans()),
                )
                for number in range(count)
            )
            requests.append(
                Purchase(
                    f"s{index}",
                    card,
                    day,
                    second,
                    draw(st.sampled_from(["S1", "S2", "S3", "S9"])),
                    lines=lines,
                    tenders=(TenderLine(draw(st.sampled_from(["visa", "cash"])), 1),),
                    customer=draw(st.sampled_from(customers)),
                    stored_value=draw(st.sampled_from([0, 0, 0, 500])),
                )
            )
            sales.append((f"s{index}", card, count))
        elif kind == "return":
            original, owner, count = draw(st.sampled_from(sales))
            lines = () if draw(st.booleans()) else (ReturnLine(draw(st.integers(1, count)), 1),)
            requests.append(
                Return(f"r{index}", owner, day, second, "S1", original_id=original, lines=lines)
            )
        elif kind == "void":
            original, owner, _ = draw(st.sampled_from(sales))
            requests.append(Void(f"v{index}", owner, day, second, "S1", original_id=original))
        elif kind == "tender":
            requests.append(
                TenderRequest(
                    f"g{index}",
                    card,
                    day,
                    second,
                    "S1",
                    op=draw(st.sampled_from(["activate", "redeem"])),
                    amount=draw(st.integers(1, 20_000)),
                )
            )
        else:
            requests.append(
                Engagement(f"e{index}", card, day, second, "S1", count=draw(st.integers(1, 3)))
            )
    return requests


@settings(max_examples=120)
@given(st.data())
def test_the_compiled_engine_equals_the_reference_result_for_result(data: st.DataObject) -> None:
    from processor.engine import get_engine

    program = compile_program(
        validate_program("rich.yaml", data.draw(st.composite(lambda draw: rich_program(draw))()))
    )
    requests = data.draw(st.composite(lambda draw: rich_stream(draw))())
    split = data.draw(st.integers(0, len(requests)))
    reference, compiled = get_engine("python"), get_engine("cython")
    outcomes = []
    for engine in (reference, compiled):
        # Two batches, so the second starts from the first's accounts and receipts.
        first = engine.evaluate(program, {}, requests[:split], {})
        accounts, receipts = dict(first.accounts), dict(first.receipts)
        second = engine.evaluate(program, accounts, requests[split:], receipts)
        outcomes.append(
            (
                list(first.results) + list(second.results),
                {**accounts, **dict(second.accounts)},
                {**receipts, **dict(second.receipts)},
            )
        )
        job = run_job(program, outcomes[-1][1], START + 90, "job")
        outcomes[-1] += (job.results, dict(job.accounts))
    # The compiled engine given states read from their stored bytes (loyalty accounts
    # packed from their stored fields) answers and ends as it does given the objects.
    first = compiled.evaluate(program, {}, requests[:split], {})
    stored = {
        account: codec.decode_state_deferred(codec.encode_state(state), account)
        for account, state in dict(first.accounts).items()
    }
    deferred = compiled.evaluate(program, stored, requests[split:], dict(first.receipts))
    assert list(deferred.results) == outcomes[1][0][split:]
    assert {**dict(first.accounts), **dict(deferred.accounts)} == outcomes[1][1]
    (ref_results, ref_accounts, ref_receipts, ref_job, ref_after), cy = outcomes[0], outcomes[1]
    for expected, actual in zip(ref_results, cy[0], strict=True):
        assert actual == expected
    # The answers the compiled engine writes from its rows are the reference's bytes.
    last = compiled.evaluate(program, {}, requests, {})
    written = answers.written_by_engine(last.results, program)
    for ready, full in zip(written, last.results, strict=True):
        if ready is not None:
            assert ready[1] == answers.result_bytes_reference(full, program)
            assert ready[0] == dataclasses.replace(full, trace=[])
    # And the receipts it stores without building them are the reference codec's bytes.
    stored = codec.stored_receipts(last.receipts)
    receipts = dict(last.receipts).values()
    assert sorted(stored) == sorted((r.account, r.id, codec.encode_receipt(r)) for r in receipts)
    # The states it writes from its arrays, without unpacking them, are the codec's bytes
    # of the unpacked states, and the levels it reads there are theirs.
    again = compiled.evaluate(program, {}, requests, {})
    accounts_in_order = list(again.accounts)
    fields = {one: again.accounts.stored_fields(one) for one in accounts_in_order}
    written = {one: codec.encode_evaluated(again.accounts, one, 7) for one in accounts_in_order}
    levels = {one: again.accounts.level(one, program.id) for one in accounts_in_order}
    for account in accounts_in_order:
        state = again.accounts[account]
        assert codec.encode_fields(fields[account], 7) == codec.encode_state(state, 7)
        assert written[account] == codec.encode_state(state, 7)
        held = state.loyalty.get(program.id)
        assert levels[account] == ("" if held is None else str(held.level))
    assert cy[1] == ref_accounts
    assert cy[2] == ref_receipts
    assert cy[3] == ref_job and cy[4] == ref_after

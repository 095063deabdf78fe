"""Engine calls never hold one request id on two cards, and keep every card's order.

Request ids are unique per card only, while a call keys its receipts by id
(processor.engine.calls). Checked on the cutting itself, with hypothesis, and through the
offline evaluator, which cuts its batches the same way as the service does.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.engine import compile_program, engine_calls, keyed, receipts_of
from processor.engine.types import Purchase, Receipt, Request, Return, Void
from processor.program.loader import load_program
from processor.tools import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from engine_bench import DEMO, workload

CARDS = ("6001200000000010", "6001200000000028", "6001200000000036")


def sale(card: str, request_id: str) -> Request:
    template: Purchase = workload(1, 1, 1)[0]
    return dataclasses.replace(template, id=request_id, account=card)


def back(card: str, request_id: str, original_id: str) -> Request:
    return Return(request_id, card, 20_600, 36_000, "S001", True, False, original_id)


def same(request: Request) -> Request:
    return request


def test_a_list_with_no_id_on_two_cards_is_one_call_in_its_order() -> None:
    requests = [sale(CARDS[0], "a"), sale(CARDS[1], "b"), sale(CARDS[0], "c")]
    assert engine_calls(requests, same, {}) == [requests]


def test_one_id_on_two_cards_goes_to_two_calls_each_card_in_its_order() -> None:
    x_a, y_a, y_b, x_c = (
        sale(CARDS[0], "a"), sale(CARDS[1], "a"), sale(CARDS[1], "b"), sale(CARDS[0], "c"),
    )  # fmt: skip
    assert engine_calls([x_a, y_a, y_b, x_c], same, {}) == [[x_a, x_c], [y_a, y_b]]


def test_a_return_whose_sale_id_another_card_uses_is_cut_apart_and_given_its_own_receipt() -> None:
    receipt = Receipt("a", CARDS[0], "purchase", 20_500, 1)
    other = Receipt("a", CARDS[1], "purchase", 20_500, 1)
    known = keyed([receipt, other])
    returned, bought = back(CARDS[0], "r", "a"), sale(CARDS[1], "a")
    calls = engine_calls([returned, bought], same, known)
    assert calls == [[returned], [bought]]
    assert receipts_of(calls[0], known) == {"a": receipt}
    # A void of a return also needs the sale the return came from.
    known[CARDS[0], "r"] = Receipt("r", CARDS[0], "return", 20_600, 1, original_id="a")
    voided = Void("v", CARDS[0], 20_601, 36_000, "S001", True, False, "r")
    assert receipts_of([voided], known) == {"r": known[CARDS[0], "r"], "a": receipt}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CARDS), st.sampled_from("abcd")), max_size=12))
def test_every_call_holds_an_id_on_one_card_and_every_card_keeps_its_order(
    pairs: list[tuple[str, str]],
) -> None:
    requests = [sale(card, request_id) for card, request_id in pairs]
    calls = engine_calls(list(enumerate(requests)), lambda item: item[1], {})
    assert sorted(index for call in calls for index, _ in call) == list(range(len(requests)))
    for call in calls:
        owners: dict[str, set[str]] = {}
        for _, request in call:
            owners.setdefault(request.id, set()).add(request.account)
        assert all(len(cards) == 1 for cards in owners.values())
    flat = [index for call in calls for index, _ in call]
    for card in CARDS:
        mine = [index for index in flat if requests[index].account == card]
        assert mine == sorted(mine)


def test_the_evaluator_keeps_both_cards_sales_under_one_id_and_answers_in_order() -> None:
    program = compile_program(load_program(DEMO))
    requests = [
        sale(CARDS[0], "t-1"),
        sale(CARDS[1], "t-1"),
        back(CARDS[0], "t-2", "t-1"),
        back(CARDS[1], "t-2", "t-1"),
    ]
    for engine in ("python", "cython"):
        evaluation = evaluate.Evaluation(program, requests, {}, engine)
        results = list(evaluate.run(evaluation))
        assert [(result.account, result.id) for result in results] == [
            (request.account, request.id) for request in requests
        ]
        assert [result.status for result in results] == ["approved"] * 4, results

"""The offline evaluator: what a program would issue for a file of transactions.

A program manager runs it before activating a program, or a new version of
one: ``loyalty evaluate`` prints one JSON result per transaction, ``--summary``
totals them by rule, level, award and move, and ``--compare OTHER`` shows, per
transaction and in total, what would change between two program versions.
Nothing is written anywhere; the accounts file is read, never updated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.engine import (
    CompiledProgram,
    Receipts,
    compile_program,
    engine_calls,
    get_engine,
    issue_card,
    keyed,
    receipts_of,
)
from processor.engine.types import AccountState, Request, Result
from processor.program.loader import load_program
from processor.tools.records import Formatter, read_accounts, read_requests

BATCH_REQUESTS_MAX = 10_000
"""Requests evaluated per engine call; bounds the working set of one call."""


@dataclass(slots=True)
class Evaluation:
    program: CompiledProgram
    requests: list[Request]
    accounts: dict[str, AccountState]
    engine_name: str | None = None  # None: the default engine (see processor.engine)


def prepare(
    program_path: str | Path, transactions_path: str | Path, accounts_path: str | Path | None
) -> Evaluation:
    """Load and validate every input before evaluating anything."""
    program = compile_program(load_program(program_path))
    requests = read_requests(transactions_path)
    accounts = read_accounts(accounts_path, program) if accounts_path else {}
    return Evaluation(program, requests, accounts)


def run(
    evaluation: Evaluation, program: CompiledProgram | None = None, engine_name: str | None = None
) -> Iterator[Result]:
    """Results in request order; ``program`` replaces the evaluation's program (for diffs)."""
    program = program or evaluation.program
    engine = get_engine(engine_name or evaluation.engine_name)
    accounts = dict(evaluation.accounts)
    receipts: Receipts = {}  # by (card, request id): ids are unique per card only
    for account_id, day in _first_days(evaluation.requests).items():
        if account_id not in accounts:
            accounts[account_id] = issue_card(program, account_id, day)
    requests = evaluation.requests
    for start in range(0, len(requests), BATCH_REQUESTS_MAX):
        chunk = list(enumerate(requests[start : start + BATCH_REQUESTS_MAX]))
        results: dict[int, Result] = {}
        for call in engine_calls(chunk, _request, receipts):
            batch = [request for _, request in call]
            outcome = engine.evaluate(program, accounts, batch, receipts_of(batch, receipts))
            accounts.update(outcome.accounts)
            receipts.update(keyed(outcome.receipts[key] for key in outcome.receipts))
            results.update(zip((index for index, _ in call), outcome.results, strict=True))
        yield from (results[index] for index, _ in chunk)


def _request(item: tuple[int, Request]) -> Request:
    return item[1]


def _first_days(requests: Sequence[Request]) -> dict[str, int]:
    first: dict[str, int] = {}
    for request in requests:
        first.setdefault(request.account, request.day)
    return first


# --------------------------------------------------------------------------- summary


@dataclass(slots=True)
class Summary:
    """Totals over a run, in integer units (see Formatter for display)."""

    requests: Counter[str] = field(default_factory=Counter)  # status or decline reason
    points_by_rule: Counter[str] = field(default_factory=Counter)  # "program/rule"
    points_by_kind: Counter[str] = field(default_factory=Counter)  # "program/kind"
    points_by_level: Counter[str] = field(default_factory=Counter)  # "program/level"
    awards_by_rule: Counter[str] = field(default_factory=Counter)
    moves: Counter[str] = field(default_factory=Counter)  # "program: from -> to"
    tender_by_kind: Counter[str] = field(default_factory=Counter)


def summarize(results: Iterator[Result], levels: Mapping[str, str] | None = None) -> Summary:
    """Totals of a run; ``levels`` maps "account/program" to the level after each result."""
    summary = Summary()
    for result in results:
        summary.requests[result.status if not result.reason else result.reason] += 1
        for posting in result.postings:
            if posting.balance == "points":
                summary.points_by_kind[f"{posting.program}/{posting.kind}"] += posting.amount
                if posting.rule and posting.kind in ("regular", "bonus", "escrow", "return"):
                    summary.points_by_rule[f"{posting.program}/{posting.rule}"] += posting.amount
            elif posting.balance == "tender":
                summary.tender_by_kind[posting.kind] += posting.amount
        for award in result.awards:
            summary.awards_by_rule[f"{award.program}/{award.rule}/{award.kind}"] += 1
        for move in result.moves:
            summary.moves[f"{move.program}: {move.from_level} -> {move.to_level}"] += 1
        # Points count for the level the account was at when it earned them: the level
        # before the request's first move, if it moved.
        before = {move.program: move.from_level for move in reversed(result.moves)}
        for trace in result.trace:
            if trace.fired and trace.points > 0 and levels is not None:
                level = before.get(trace.program) or levels.get(
                    f"{result.account}/{trace.program}", ""
                )
                summary.points_by_level[f"{trace.program}/{level}"] += trace.points
    return summary


def summary_record(summary: Summary, formatter: Formatter) -> dict[str, Any]:
    def points(counter: Counter[str]) -> dict[str, str]:
        return {
            key: formatter.amount(f"points:{key.split('/')[0]}", value)
            for key, value in sorted(counter.items())
        }

    return {
        "requests": dict(sorted(summary.requests.items())),
        "points_by_rule": points(summary.points_by_rule),
        "points_by_kind": points(summary.points_by_kind),
        "points_by_level": points(summary.points_by_level),
        "awards_by_rule": dict(sorted(summary.awards_by_rule.items())),
        "moves": dict(sorted(summary.moves.items())),
        "tender_by_kind": {
            key: formatter.amount("tender", value)
            for key, value in sorted(summary.tender_by_kind.items())
        },
    }


def summarize_run(evaluation: Evaluation, program: CompiledProgram | None = None) -> Summary:
    """Summary of a run, with points attributed to the level the account was at."""
    program = program or evaluation.program
    levels: dict[str, str] = {}
    state_level = _LevelTracker(program, evaluation, levels)
    return summarize(state_level.results(), levels)


class _LevelTracker:
    """Follows each account's level through a run, for points-by-level totals."""

    def __init__(
        self, program: CompiledProgram, evaluation: Evaluation, levels: dict[str, str]
    ) -> None:
        self.program = program
        self.evaluation = evaluation
        self.levels = levels
        for account_id, state in evaluation.accounts.items():
            for program_id, account in state.loyalty.items():
                levels[f"{account_id}/{program_id}"] = account.level

    def results(self) -> Iterator[Result]:
        for result in run(self.evaluation, self.program):
            for plan in self.program.loyalty:
                key = f"{result.account}/{plan.program.id}"
                self.levels.setdefault(key, plan.program.start_level)
            for move in result.moves:
                self.levels[f"{result.account}/{move.program}"] = move.to_level
            yield result


# --------------------------------------------------------------------------- diff


def _signature(result: Result, formatter: Formatter) -> dict[str, Any]:
    """What a program manager compares between two versions for one transaction."""
    points: Counter[str] = Counter()
    for posting in result.postings:
        if posting.balance == "points":
            points[f"{posting.program}/{posting.rule or posting.kind}"] += posting.amount
    return {
        "status": result.status,
        "points": {
            key: formatter.amount(f"points:{key.split('/')[0]}", value)
            for key, value in sorted(points.items())
        },
        "awards": sorted(f"{award.program}/{award.rule}" for award in result.awards),
        "moves": [f"{move.from_level}->{move.to_level}" for move in result.moves],
    }


def diff(
    evaluation: Evaluation, other: CompiledProgram, formatter: Formatter
) -> Iterator[dict[str, Any]]:
    """One record per transaction whose outcome differs, then a totals record."""
    before_summary, after_summary = Summary(), Summary()
    for before, after in zip(run(evaluation), run(evaluation, other), strict=True):
        before_summary = _accumulate(before_summary, before)
        after_summary = _accumulate(after_summary, after)
        first, second = _signature(before, formatter), _signature(after, formatter)
        if first != second:
            yield {"id": before.id, "account": before.account, "before": first, "after": second}
    yield {
        "totals": {
            "before": summary_record(before_summary, formatter),
            "after": summary_record(after_summary, formatter),
        }
    }


def _accumulate(summary: Summary, result: Result) -> Summary:
    partial = summarize(iter([result]))
    for name in (
        "requests",
        "points_by_rule",
        "points_by_kind",
        "awards_by_rule",
        "moves",
        "tender_by_kind",
    ):
        getattr(summary, name).update(getattr(partial, name))
    return summary


def load_other(path: str | Path) -> CompiledProgram:
    return compile_program(load_program(path))

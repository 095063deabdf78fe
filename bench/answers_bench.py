"""The answer writer: microseconds to write one Result's bytes, compiled and reference.

Also, from one batch's evaluation to what it writes, with the server's collector
settings: the results built as objects and written (``materialized_us``) against the
answers the compiled engine writes from its rows (``from_rows_us``,
answers.written_by_engine); and the receipts built and encoded (``receipts_built_us``)
against those it writes from its rows (``receipts_from_rows_us``, codec.stored_receipts);
and, per account, the new states unpacked and encoded (``states_unpacked_us``) against
those it writes from its arrays as fields packed by msgpack (``states_from_arrays_us``)
and as msgpack written at once (``states_written_us``, codec.encode_evaluated); and,
per account, stored states decoded and a batch evaluated on them, with their loyalty
accounts decoded into objects (``states_read_us``) against packed from their stored fields
(``states_read_deferred_us``, codec.decode_state_deferred).

The results are the demo program's evaluations of a retail workload (bench/engine_bench.py's
baskets: 15 trace entries and 2.5 postings a result on average, some with awards and level
moves). Each figure is the median of five timings over all the results, with the compiled
writer (processor._answers) and with the Python reference, in one run; the bytes of the two
are compared too. Prints one JSON line.

    .venv/bin/python bench/answers_bench.py --results 5000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_bench import DEMO, workload  # noqa: E402

from processor.engine import compile_program, get_engine  # noqa: E402
from processor.program.loader import load_program  # noqa: E402
from processor.runtime.serve import tune_collector  # noqa: E402
from processor.store import codec  # noqa: E402
from processor.wire import answers  # noqa: E402

ROUNDS = 5


def per_result_us(write: Callable[..., bytes], results: list[Any], program: Any) -> float:
    for result in results[: min(len(results), 500)]:
        write(result, program)  # warm the shared cache of trace entries
    timings = []
    for _ in range(ROUNDS):
        began = time.process_time()
        for result in results:
            write(result, program)
        timings.append((time.process_time() - began) / len(results) * 1e6)
    return round(statistics.median(timings), 2)


def batch_us(
    write_all: Callable[[Any], Any], program: Any, requests: list[Any], per_account: bool = False
) -> float:
    """µs per request (or per account written) for ``write_all`` on a fresh outcome of
    ``requests``, median of the rounds."""
    engine = get_engine("cython")
    timings = []
    for _ in range(ROUNDS):
        outcome = engine.evaluate(program, {}, requests, {})
        count = len(outcome.accounts) if per_account else len(requests)
        began = time.process_time()
        write_all(outcome)
        timings.append((time.process_time() - began) / count * 1e6)
    return round(statistics.median(timings), 2)


def states_read_us(program: Any, requests: list[Any]) -> dict[str, float]:
    """µs per account to decode the stored states ``requests`` left and evaluate one
    purchase on each, eagerly and deferred: the same evaluation, so the difference is the
    reading and packing of the loyalty accounts (medians of the rounds)."""
    engine = get_engine("cython")
    evaluated = engine.evaluate(program, {}, requests, {})
    stored = {one: codec.encode_state(evaluated.accounts[one]) for one in evaluated.accounts}
    first: dict[str, Any] = {}
    for request in requests:
        first.setdefault(request.account, request)
    one_each = list(first.values())
    timings: dict[str, list[float]] = {"states_read_us": [], "states_read_deferred_us": []}
    decoders = (
        ("states_read_us", codec.decode_state),
        ("states_read_deferred_us", codec.decode_state_deferred),
    )
    for _ in range(3 * ROUNDS):  # alternating, so the machine's noise falls on both
        for name, decode in decoders:
            began = time.process_time()
            states = {one: decode(blob, one) for one, blob in stored.items()}
            engine.evaluate(program, states, one_each, {})
            timings[name].append((time.process_time() - began) / len(stored) * 1e6)
    return {name: round(statistics.median(values), 2) for name, values in timings.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=int, default=5_000)
    args = parser.parse_args()
    if args.results <= 0:
        parser.error("--results must be positive")
    program = compile_program(load_program(DEMO))
    results = get_engine("cython").evaluate(program, {}, workload(args.results, 7, 500), {}).results
    reference = [answers.result_bytes_reference(result, program) for result in results]
    figures: dict[str, Any] = {
        "results": len(results),
        "compiled_available": answers.COMPILED_RESULTS,
        "bytes_per_result": round(sum(map(len, reference)) / len(reference), 1),
        "reference_us": per_result_us(answers.result_bytes_reference, results, program),
    }
    if answers.COMPILED_RESULTS:
        figures["compiled_us"] = per_result_us(answers.result_bytes, results, program)
        figures["same_bytes"] = reference == [
            answers.result_bytes(result, program) for result in results
        ]
        requests = workload(args.results, 7, 500)
        tune_collector()  # as `loyalty serve` runs

        def materialized(outcome: Any) -> None:
            for result in outcome.results:
                answers.result_bytes(result, program)

        def from_rows(outcome: Any) -> None:
            results = outcome.results
            for index, ready in enumerate(answers.written_by_engine(results, program)):
                if ready is None:
                    answers.result_bytes(results[index], program)

        def receipts_built(outcome: Any) -> None:
            for key in outcome.receipts:
                codec.encode_receipt(outcome.receipts[key])

        figures["materialized_us"] = batch_us(materialized, program, requests)
        figures["from_rows_us"] = batch_us(from_rows, program, requests)
        figures["receipts_built_us"] = batch_us(receipts_built, program, requests)
        figures["receipts_from_rows_us"] = batch_us(
            lambda outcome: codec.stored_receipts(outcome.receipts), program, requests
        )

        def states_unpacked(outcome: Any) -> None:
            for account in outcome.accounts:
                codec.encode_state(outcome.accounts[account], 2)

        def states_from_arrays(outcome: Any) -> None:
            for account in outcome.accounts:
                codec.encode_fields(outcome.accounts.stored_fields(account), 2)

        def states_written(outcome: Any) -> None:
            for account in outcome.accounts:
                codec.encode_evaluated(outcome.accounts, account, 2)

        figures.update(states_read_us(program, requests))
        figures["states_written_us"] = batch_us(states_written, program, requests, True)
        figures["states_unpacked_us"] = batch_us(states_unpacked, program, requests, True)
        figures["states_from_arrays_us"] = batch_us(states_from_arrays, program, requests, True)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

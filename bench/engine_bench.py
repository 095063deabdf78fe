"""Engine micro-benchmark: the reference and the compiled engine on one workload.

Generates a seeded workload of purchases (1 to 10 lines each) against the demo
program, then times each engine evaluating it, packing of the transactions into
the engine's arrays included (both engines are handed the same Python request
objects). The results are checked equal, so a fast wrong engine cannot win.

The last line printed is one JSON object:
``{"cython_txn_per_s": ..., "python_txn_per_s": ..., "speedup": ...}``.

    .venv/bin/python bench/engine_bench.py [--transactions 100000] [--seed 7]
        [--batch-size 1]

``--batch-size`` hands the engines the workload in batches of that many (each from empty
accounts): 1 is what a lone unary caller's batches are, where the fixed cost of a batch
shows; the default is the whole workload in one batch.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from processor import calendar
from processor.engine import compile_program, get_engine
from processor.engine.types import Customer, Line, Purchase, TenderLine
from processor.program.loader import load_program

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "programs" / "demo.yaml"


def workload(count: int, seed: int, cards: int) -> list[Purchase]:
    """Purchases spread over ``cards`` cards and 100 days, 1-10 lines each.

    Line prices are log-uniform between $1 and $60 and most quantities are 1, so a basket
    is a retail basket (about $90 on average); 5% of lines are non-merchandise charges.
    """
    rng = random.Random(seed)
    start = calendar.parse_day("2026-03-02")
    catalogue = (
        [(f"SHOE-{i}", ("SHOES",), (("brand", "trailrun"),)) for i in range(20)]
        + [(f"JACKET-{i}", ("OUTERWEAR",), ()) for i in range(50)]
        + [(f"TENT-{i}", ("CAMPING",), (("brand", "northwind"),)) for i in range(30)]
        + [("GC-50", ("GIFTCARDS",), ())]
    )
    customer = Customer("C-1", birth_day=start + 10, audiences=frozenset({"vip:A"}))
    requests = []
    for index in range(count):
        lines = []
        for number in range(1, rng.randint(1, 10) + 1):
            item, hierarchy, attributes = rng.choice(catalogue)
            lines.append(
                Line(
                    number,
                    item,
                    int(10 ** rng.uniform(2, 3.78)),
                    rng.choice((1, 1, 1, 2, 3)),
                    hierarchy,
                    attributes,
                    rng.random() < 0.95,
                )
            )
        requests.append(
            Purchase(
                f"t{index}",
                f"600120{rng.randrange(cards):010d}",
                start + index * 100 // count,
                rng.randrange(86_400),
                rng.choice(["S001", "S002", "S003", "WEB"]),
                lines=tuple(lines),
                tenders=(TenderLine(rng.choice(["visa", "northwind-visa", "cash"]), 100),),
                customer=customer if rng.random() < 0.2 else None,
            )
        )
    return requests


def timed(
    engine_name: str, program, requests, repeats: int, batch_size: int = 0
) -> tuple[float, list]:
    """Median seconds to evaluate ``requests`` (in batches of ``batch_size``, 0: one), and
    the results of the last run."""
    engine = get_engine(engine_name)
    size = batch_size or len(requests)
    seconds = []
    results: list = []
    for _ in range(repeats):
        gc.collect()
        began = time.perf_counter()
        outcomes = [
            engine.evaluate(program, {}, requests[start : start + size], {})
            for start in range(0, len(requests), size)
        ]
        seconds.append(time.perf_counter() - began)
        results = [result for outcome in outcomes for result in outcome.results]
    return statistics.median(seconds), results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine; median kept")
    parser.add_argument(
        "--reference-sample",
        type=int,
        default=20_000,
        help="transactions the slow reference engine times (a prefix)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="requests per engine call (0: all in one)"
    )
    args = parser.parse_args()
    if args.transactions <= 0 or args.batch_size < 0:
        parser.error("--transactions must be positive and --batch-size not negative")
    print(
        f"seed {args.seed}, {args.transactions} transactions, {args.cards} cards, "
        f"python {platform.python_version()}, {platform.machine()}",
        file=sys.stderr,
    )
    program = compile_program(load_program(DEMO))
    requests = workload(args.transactions, args.seed, args.cards)
    sample = requests[: args.reference_sample]
    compiled_seconds, _ = timed("cython", program, requests, args.repeats, args.batch_size)
    reference_seconds, reference = timed("python", program, sample, 1, args.batch_size)
    _, sample_compiled = timed("cython", program, sample, 1, args.batch_size)
    if sample_compiled != reference:
        print("the engines disagree: the benchmark is void", file=sys.stderr)
        return 1
    cython_rate = len(requests) / compiled_seconds
    python_rate = len(sample) / reference_seconds
    print(
        f"cython: {compiled_seconds:.3f} s for {len(requests)} (median of {args.repeats}); "
        f"python: {reference_seconds:.3f} s for {len(sample)}",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "cython_txn_per_s": round(cython_rate),
                "python_txn_per_s": round(python_rate),
                "speedup": round(cython_rate / python_rate, 1),
                "transactions": len(requests),
                "batch_size": args.batch_size or len(requests),
                "seed": args.seed,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What admitting a purchase costs: the compiled check (processor._admission) against the
reference (processor.wire.admission), on the same messages.

Builds ``--purchases`` typical purchases (bench/ceiling.py's: one to four lines, a tender),
checks that both admissions agree on each, and times each over all of them ``--rounds``
times, keeping the best round. Prints one JSON line: µs per purchase of each, and their
ratio.

    .venv/bin/python bench/admission_bench.py --purchases 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling

from processor.wire import admission


def best_us(purchases: list, admit, rounds: int) -> float:  # type: ignore[type-arg, no-untyped-def]
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for message in purchases:
            admit(message)
        best = min(best, time.perf_counter() - started)
    return best / len(purchases) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--purchases", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    if args.purchases < 1 or args.rounds < 1:
        parser.error("--purchases and --rounds must be positive")
    if not admission.COMPILED_PURCHASES:
        parser.error("the compiled extensions are not built (make build)")
    rng = random.Random(args.seed)
    purchases = [
        ceiling.purchase(rng, f"600120000{index % 1000:07d}0", f"a-{index}", ceiling.local_time())
        for index in range(args.purchases)
    ]
    for message in purchases:
        if admission.transaction_from_proto(message) != admission.transaction_from_proto_reference(
            message
        ):
            raise SystemExit(f"the admissions differ on {message}")
    compiled = best_us(purchases, admission.transaction_from_proto, args.rounds)
    reference = best_us(purchases, admission.transaction_from_proto_reference, args.rounds)
    print(json.dumps({
        "seed": args.seed,
        "compiled_us_per_purchase": round(compiled, 2),
        "reference_us_per_purchase": round(reference, 2),
        "ratio": round(reference / compiled, 1),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The state codec: microseconds to encode and decode one account state, by lots held.

States are the demo program's typical accounts (processor.engine.samples), then the same
accounts holding ``--lots`` lots each, as a card that shops every week keeps for a year:
lots are most of a busy account's bytes and most of the codec's work. Each figure is the
best of five timings, with the compiled codec (processor._codec: lots and loyalty
accounts) and with the Python references, in one run. Then the cache's compression of the
typical states with the dictionary the server would make of the demo program: zstd, what
the cache writes, and zlib, what the release before wrote (``cache_zstd_*``,
``cache_zlib_*``: µs to compress and to decompress a state, and its bytes). Prints one
JSON line.

    .venv/bin/python bench/codec_bench.py --lots 30
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import random
import sys
import timeit
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from processor import calendar  # noqa: E402
from processor.cache import entries  # noqa: E402
from processor.cache.compression import sample_states_dictionary  # noqa: E402
from processor.engine.samples import account_templates  # noqa: E402
from processor.engine.types import AccountState  # noqa: E402
from processor.errors import present  # noqa: E402
from processor.program.loader import parse_program_text  # noqa: E402
from processor.store import codec  # noqa: E402

DEMO = ROOT / "examples" / "programs" / "demo.yaml"


def with_lots(state: AccountState, count: int) -> AccountState:
    """``state`` with every loyalty account holding ``count`` lots, a day apart."""
    state = codec.decode_state(codec.encode_state(state), state.account)
    for account in state.loyalty.values():
        if account.lots:
            first = account.lots[0]
            account.lots = [
                dataclasses.replace(
                    first,
                    earned_day=first.earned_day + 7 * n,
                    available_day=first.earned_day + 7 * n,
                    points=10 + n,
                )
                for n in range(count)
            ]
    return state


def per_state(run: Callable[[], Any], states: int) -> float:
    """Best of five timings of ``run`` (which handles every state once), µs per state."""
    return min(timeit.repeat(run, number=10, repeat=5)) / 10 / states * 1e6


def compression(program: Any, states: list[AccountState]) -> dict[str, float]:
    """The cache's two compressions of ``states``, with the program's sample dictionary."""
    dictionary = present(sample_states_dictionary([program]), "a dictionary of the demo")
    blobs = [codec.encode_state(state) for state in states]
    zstd = entries.ZstdCodec(zlib.adler32(dictionary), dictionary)
    # The release before's writer: a primed compressor copied per state.
    primed = zlib.compressobj(6, zlib.DEFLATED, 13, 8, zdict=dictionary)
    inflater = zlib.decompressobj(13, zdict=dictionary)

    def deflate(blob: bytes) -> bytes:
        copy = primed.copy()
        return copy.compress(blob) + copy.flush()

    def inflate(data: bytes) -> bytes:
        return inflater.copy().decompress(data)

    figures: dict[str, float] = {}
    for name, pack, unpack in (
        ("zstd", zstd.compress, zstd.decompress),
        ("zlib", deflate, inflate),
    ):
        figures.update(timed_codec(name, pack, unpack, blobs))
    return figures


def timed_codec(
    name: str, pack: Callable[[bytes], Any], unpack: Callable[[Any], Any], blobs: list[bytes]
) -> dict[str, float]:
    packed = [pack(blob) for blob in blobs]
    assert [unpack(data) for data in packed] == blobs
    return {
        f"cache_{name}_compress_us": round(
            per_state(lambda: [pack(blob) for blob in blobs], len(blobs)), 2
        ),
        f"cache_{name}_decompress_us": round(
            per_state(lambda: [unpack(data) for data in packed], len(blobs)), 2
        ),
        f"cache_{name}_bytes": round(sum(map(len, packed)) / len(packed), 1),
    }


def measure(states: list[AccountState]) -> dict[str, float]:
    blobs = [codec.encode_state(state) for state in states]

    def encode() -> None:
        for state in states:
            codec.encode_state(state)

    def decode() -> None:
        for blob, state in zip(blobs, states, strict=True):
            codec.decode_state(blob, state.account)

    return {
        "encode_us": round(per_state(encode, len(states)), 2),
        "decode_us": round(per_state(decode, len(states)), 2),
        "bytes": round(sum(map(len, blobs)) / len(blobs), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=200)
    parser.add_argument("--lots", type=int, default=30, help="lots per account, heavy case")
    args = parser.parse_args()
    program = parse_program_text(DEMO.read_text(encoding="utf-8"), DEMO.name)
    today = calendar.to_day(datetime.date(2026, 3, 1))
    typical = account_templates(program, 1, today, random.Random(1), args.states)
    heavy = [with_lots(state, args.lots) for state in typical]
    figures: dict[str, Any] = {"lots": args.lots, "compiled_available": codec.COMPILED_LOTS}
    implementations = {
        "compiled": (codec.lots_fields, codec.lots_from, codec.loyalty_fields, codec.loyalty_from),
        "reference": (
            codec.lots_fields_reference,
            codec.lots_from_reference,
            codec.loyalty_fields_reference,
            codec.loyalty_from_reference,
        ),
    }
    for name, chosen in implementations.items():
        if name == "compiled" and not codec.COMPILED_LOTS:
            continue
        codec.lots_fields, codec.lots_from, codec.loyalty_fields, codec.loyalty_from = chosen
        for case, states in (("typical", typical), ("heavy", heavy)):
            for key, value in measure(states).items():
                figures[f"{name}_{case}_{key}"] = value
    figures.update(compression(program, typical))
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

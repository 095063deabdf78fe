"""The latency SLA gate over a headless locust run.

    .venv/bin/python bench/sla.py bench/results/unary_stats.csv [--p99-ms 50] \\
        [--failures-max 0.001] [--metrics-url http://127.0.0.1:8000/metrics \\
         --metrics-before bench/results/metrics_before.txt]

Reads the ``<prefix>_stats.csv`` locust writes with ``--csv <prefix>`` and exits 1, saying
why, when any RPC's 99th percentile is above the SLA (50 ms unless told) or when more than
0.1% of all requests failed; 0 when the run is inside it; 2 when the file is unusable (no
requests at all counts as unusable, not as a pass).

Locust keeps response times under 100 ms rounded to whole milliseconds, so the gate also
prints the server's own 99th percentile per method when the server exports a Prometheus
histogram named ``grpc_server_handling_seconds`` (labels ``grpc_service``, ``grpc_method``):
from the difference between a scrape saved before the run (``--metrics-before``) and one
taken now, interpolated inside the bucket as PromQL's ``histogram_quantile`` does. With
``--gate-server`` the server's p99 is held to the SLA too. A server without that metric,
or one that does not answer, is reported and otherwise ignored.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

P99_MS_DEFAULT: Final = 50.0
FAILURES_MAX_DEFAULT: Final = 0.001
SERVER_METRIC: Final = "grpc_server_handling_seconds"
AGGREGATED: Final = "Aggregated"


@dataclass(frozen=True, slots=True)
class RpcStats:
    """One row of locust's stats CSV."""

    name: str
    requests: int
    failures: int
    p50_ms: float | None
    p99_ms: float | None
    requests_per_second: float


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    problems: tuple[str, ...]
    lines: tuple[str, ...]


def _number(text: str | None) -> float | None:
    if text is None or text.strip() in ("", "N/A"):
        return None
    return float(text)


def read_stats(path: str | Path) -> list[RpcStats]:
    """The rows of a locust ``_stats.csv`` (the ``Aggregated`` row last)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            rows.append(
                RpcStats(
                    name=row["Name"],
                    requests=int(row["Request Count"]),
                    failures=int(row["Failure Count"]),
                    p50_ms=_number(row.get("50%")),
                    p99_ms=_number(row.get("99%")),
                    requests_per_second=_number(row.get("Requests/s")) or 0.0,
                )
            )
    return rows


def judge(
    stats: Sequence[RpcStats],
    *,
    p99_ms: float = P99_MS_DEFAULT,
    failures_max: float = FAILURES_MAX_DEFAULT,
    server_p99_s: Mapping[str, float] | None = None,
    gate_server: bool = False,
) -> Verdict:
    """Whether the run is inside the SLA, with every reason it is not."""
    problems: list[str] = []
    lines: list[str] = []
    methods = [row for row in stats if row.name != AGGREGATED and row.requests > 0]
    total = next((row for row in stats if row.name == AGGREGATED), None)
    requests = total.requests if total else sum(row.requests for row in methods)
    failures = total.failures if total else sum(row.failures for row in methods)
    if requests == 0:
        return Verdict(False, ("no requests were made",), ())
    for row in methods:
        server = (server_p99_s or {}).get(row.name)
        shown = f", server p99 {server * 1000:.2f} ms" if server is not None else ""
        lines.append(
            f"{row.name}: {row.requests} requests, {row.failures} failed, "
            f"p50 {row.p50_ms} ms, p99 {row.p99_ms} ms{shown}"
        )
        if row.p99_ms is not None and row.p99_ms > p99_ms:
            problems.append(f"{row.name}: p99 {row.p99_ms:g} ms is over the SLA of {p99_ms:g} ms")
        if gate_server and server is not None and server * 1000 > p99_ms:
            problems.append(
                f"{row.name}: server p99 {server * 1000:.2f} ms is over the SLA of {p99_ms:g} ms"
            )
    ratio = failures / requests
    lines.append(f"all: {requests} requests, {failures} failed ({ratio:.4%})")
    if ratio > failures_max:
        problems.append(
            f"{failures} of {requests} requests failed ({ratio:.3%}), more than {failures_max:.3%}"
        )
    return Verdict(not problems, tuple(problems), tuple(lines))


# --------------------------------------------------------------------------- server metrics


Buckets = dict[str, list[tuple[float, float]]]  # method -> [(upper bound, cumulative count)]


def histogram_buckets(text: str, metric: str = SERVER_METRIC) -> Buckets:
    """Cumulative bucket counts of ``metric`` by method, summed over the other labels."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            method = sample.labels.get("grpc_method", "")
            bound = float(sample.labels["le"])
            per_method = sums.setdefault(method, {})
            per_method[bound] = per_method.get(bound, 0.0) + sample.value
    return {method: sorted(bounds.items()) for method, bounds in sums.items()}


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """``histogram_quantile(q, ...)`` over cumulative buckets; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # the highest finite bucket, as PromQL answers
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return buckets[-1][0]


def server_p99(after: str, before: str | None = None, q: float = 0.99) -> dict[str, float]:
    """The server's ``q`` quantile in seconds per method, over what happened between two
    scrapes (or since the server started)."""
    now = histogram_buckets(after)
    then = histogram_buckets(before) if before else {}
    found = {}
    for method, buckets in now.items():
        earlier = dict(then.get(method, []))
        window = [(bound, count - earlier.get(bound, 0.0)) for bound, count in buckets]
        value = quantile(window, q)
        if value is not None:
            found[method] = value
    return found


def scrape(url: str, timeout_seconds: float = 5.0) -> str | None:
    """The text of a /metrics page, or None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            return str(response.read().decode("utf-8"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


# --------------------------------------------------------------------------- command


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stats", help="locust's <prefix>_stats.csv")
    parser.add_argument("--p99-ms", type=float, default=P99_MS_DEFAULT, help="SLA (50)")
    parser.add_argument(
        "--failures-max", type=float, default=FAILURES_MAX_DEFAULT, help="share (0.001)"
    )
    parser.add_argument("--metrics-url", help="the server's /metrics, for its own p99")
    parser.add_argument("--metrics-before", help="a scrape saved before the run")
    parser.add_argument("--gate-server", action="store_true", help="hold server p99 to the SLA")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        stats = read_stats(args.stats)
    except (OSError, KeyError, ValueError) as error:
        print(f"sla: cannot read {args.stats}: {error}", file=sys.stderr)
        return 2
    server: dict[str, float] = {}
    if args.metrics_url:
        text = scrape(args.metrics_url)
        before = Path(args.metrics_before).read_text() if args.metrics_before else None
        if text is None:
            print(f"sla: {args.metrics_url} does not answer; client figures only")
        elif SERVER_METRIC not in text:
            print(f"sla: the server exports no {SERVER_METRIC}; client figures only")
        else:
            server = server_p99(text, before)
    verdict = judge(
        stats,
        p99_ms=args.p99_ms,
        failures_max=args.failures_max,
        server_p99_s=server,
        gate_server=args.gate_server,
    )
    for line in verdict.lines:
        print(f"sla: {line}")
    if not verdict.lines:
        print(f"sla: FAIL: {verdict.problems[0]}")
        return 2
    for problem in verdict.problems:
        print(f"sla: FAIL: {problem}")
    print(f"sla: {'PASS' if verdict.passed else 'FAIL'} (p99 <= {args.p99_ms:g} ms, "
          f"failures <= {args.failures_max:.2%})")  # fmt: skip
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""The scheduled jobs over seeded accounts: accounts per second, and this process's CPU per
account, for each job in one run.

Loads ``--accounts`` seeded accounts (``loyalty seed``'s states: a mix of levels, lots,
coupons, gift-card balances) into a fresh schema of the database ``LOYALTY_DATABASE_URL``
names (or the embedded one), then runs each job over them as of ``--as-of`` (a day when
some lots are due, certificates lapse and job rules apply), the way ``loyalty jobs run``
does, and prints one JSON line: per job, accounts gone through and changed, postings,
seconds, accounts per second, and the runner's own CPU per account (PostgreSQL's is not
counted; it shares the machine). For opening-balances, every seeded account's card is first
queued 100 points, as a card import of them would. The schema is dropped at the end unless
``--keep``.

    .venv/bin/python bench/jobs_bench.py --accounts 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from processor import calendar  # noqa: E402
from processor.flow.registry import ProgramRegistry  # noqa: E402
from processor.jobs import runner  # noqa: E402
from processor.jobs.named import JOBS  # noqa: E402
from processor.limits import JOB_CHUNK_ACCOUNTS_MAX  # noqa: E402
from processor.runtime import serve  # noqa: E402
from processor.runtime.settings import Settings  # noqa: E402
from processor.store.cards import today  # noqa: E402
from processor.store.catalog import Catalog  # noqa: E402
from processor.store.ledger import Store  # noqa: E402
from processor.store.migrate import migrate  # noqa: E402
from processor.tools import seed  # noqa: E402


def positive(name: str, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be a positive whole number up to {high}, got {text!r}"
            )
        return value

    return parse


# Seeding queues no opening balance: 100 points for every seeded account's card, as a card
# import of them would queue, so opening-balances goes through (and changes) all of them.
_QUEUE_OPENINGS = """
INSERT INTO card_opening_balances (card_number, program_id, version, loyalty)
SELECT cards.card_number, cards.program, programs.version, 100
FROM accounts
JOIN cards ON cards.card_number = accounts.account_id
JOIN programs ON programs.id = cards.program AND programs.status = 'active'
ON CONFLICT (card_number) DO NOTHING
"""


async def queue_openings(store: Store) -> None:
    async with store.pool.connection() as connection, connection.transaction():
        await connection.execute("SET LOCAL statement_timeout = 0")
        await connection.execute(_QUEUE_OPENINGS)


async def run_jobs(url: str, names: list[str], as_of: int, chunk: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with Store(url, pool_size_max=2) as store:
        registry = ProgramRegistry(Catalog(store))
        await registry.refresh()
        context = runner.JobContext(store, registry)
        for name in names:
            if JOBS[name].walks == "opening_balances":
                await queue_openings(store)
            cpu, wall = time.process_time(), time.perf_counter()
            report = await runner.run(context, JOBS[name], as_of, chunk_accounts=chunk)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            figures[name] = {
                "accounts": report.accounts_done,
                "changed": report.accounts_changed,
                "postings": report.postings,
                "seconds": round(wall, 2),
                "accounts_per_second": round(report.accounts_done / wall),
                "cpu_us_per_account": round(cpu / max(1, report.accounts_done) * 1e6, 1),
            }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=positive("--accounts", 10_000_000), default=100_000)
    parser.add_argument(
        "--chunk-accounts", type=positive("--chunk-accounts", JOB_CHUNK_ACCOUNTS_MAX), default=1_000
    )
    parser.add_argument("--as-of", default="", help="the jobs' day (default: a year on)")
    parser.add_argument("--jobs", nargs="*", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--keep", action="store_true", help="keep the schema for another run")
    args = parser.parse_args()
    as_of = calendar.parse_day(args.as_of) if args.as_of else today() + 365
    resolved = serve.resolve_servers(Settings(), cache=False)
    schema = f"jobs_bench_{uuid.uuid4().hex[:8]}"
    base = resolved.database_url
    options = conninfo_to_dict(base).get("options", "")
    url = make_conninfo(base, options=f"{options} -c search_path={schema}".strip())
    try:
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        migrate(url)
        asyncio.run(serve.load_demo(Settings(demo=True), url))
        started = time.perf_counter()
        seed.seed(url, args.accounts, progress=None)
        seeded = time.perf_counter() - started
        figures = asyncio.run(run_jobs(url, args.jobs, as_of, args.chunk_accounts))
        print(
            json.dumps(
                {
                    "accounts": args.accounts,
                    "seed_seconds": round(seeded, 1),
                    "as_of": calendar.format_day(as_of),
                    "chunk_accounts": args.chunk_accounts,
                    "cpus": os.cpu_count(),
                    "jobs": figures,
                }
            )
        )
    finally:
        if not args.keep:
            with psycopg.connect(base, autocommit=True) as connection:
                connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        resolved.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

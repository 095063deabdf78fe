"""The ``loyalty`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from processor import __version__
from processor.engine import ENGINES
from processor.errors import LoyaltyError

if TYPE_CHECKING:
    from processor.jobs.named import Job


def _evaluate(args: argparse.Namespace) -> int:
    from processor.tools import evaluate
    from processor.tools.records import Formatter

    evaluation = evaluate.prepare(args.program, args.transactions, args.accounts)
    evaluation.engine_name = args.engine
    formatter = Formatter(evaluation.program)
    out = sys.stdout
    if args.compare:
        other = evaluate.load_other(args.compare)
        for record in evaluate.diff(evaluation, other, formatter):
            out.write(json.dumps(record) + "\n")
    elif args.summary:
        summary = evaluate.summarize_run(evaluation)
        out.write(json.dumps(evaluate.summary_record(summary, formatter), indent=2) + "\n")
    else:
        for result in evaluate.run(evaluation):
            out.write(json.dumps(formatter.result(result)) + "\n")
    return 0


SERVER_FLAGS = (
    "listen",
    "metrics_listen",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "workers",
    "database_url",
    "redis_url",
    "data_dir",
    "engine",
    "demo",
)


def _settings(args: argparse.Namespace) -> Any:
    """The settings from flags, LOYALTY_* variables and defaults; an invalid one is a
    clear error naming its setting, raised before anything starts."""
    from pydantic import ValidationError

    from processor.errors import InputFileError, Problem
    from processor.program.loader import pydantic_problems
    from processor.runtime.settings import Settings

    given = {name: getattr(args, name) for name in SERVER_FLAGS if getattr(args, name, None)}
    try:
        return Settings(**given)
    except ValidationError as error:
        problems = [
            Problem(f"{problem.path} (LOYALTY_{problem.path.upper()})", problem.reason)
            for problem in pydantic_problems(error)
        ]
        raise InputFileError("settings", problems) from None


def _count(low: int, high: int) -> Any:
    """An argparse type: an integer from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def _serve(args: argparse.Namespace) -> int:
    import logging

    from processor.runtime import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return serve.run(_settings(args))


def _migrate(args: argparse.Namespace) -> int:
    from processor.runtime import serve
    from processor.store.migrate import migrate

    resolved = serve.resolve_servers(_settings(args))
    try:
        applied = migrate(resolved.database_url)
    finally:
        resolved.stop()
    print("applied: " + (", ".join(applied) if applied else "nothing, the schema is current"))
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    mismatches = _with_store(args, lambda store: store.reconcile())
    for mismatch in mismatches:
        print(
            f"{mismatch.account_id} {mismatch.program or '-'} {mismatch.balance}: state "
            f"{mismatch.state_balance} != ledger {mismatch.ledger_sum}"
        )
    print(f"{len(mismatches)} mismatches")
    return 1 if mismatches else 0


def _deployment_database(args: argparse.Namespace) -> str:
    """The database URL the settings name; refused without one: an embedded database would
    be another one than the deployment's, holding none of its cards or keys."""
    from processor.errors import InputFileError, Problem
    from processor.runtime.settings import secret

    database_url = secret(_settings(args).database_url)
    if not database_url:
        raise InputFileError(
            "settings",
            [Problem("database_url (LOYALTY_DATABASE_URL)", "names the deployment's database")],
        )
    return database_url


def _locally(args: argparse.Namespace, command: str, target: str, action: Any) -> Any:
    """Run ``action(store)`` (a coroutine function) against the deployment's database, as a
    call made here by hand: its change's audit row names the operating-system user and
    ``command``, written in the change's own transaction."""
    import asyncio
    import getpass

    from processor.store import audit_log
    from processor.store.ledger import Store

    database_url = _deployment_database(args)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    entry = audit_log.AuditEntry(f"local:{user}", "local", [], command, target, "-")

    async def run() -> Any:
        audit_log.pending.set(entry)  # this run's own context: nothing else sees it
        async with Store(database_url, pool_size_max=1) as store:
            return await action(store)

    return asyncio.run(run())


def _printable(text: str) -> str:
    """``text`` with control characters shown escaped: a principal or target a caller chose
    cannot pose as other rows on the terminal."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _unlock_pin(args: argparse.Namespace) -> int:
    from processor.errors import mask_card
    from processor.store.catalog import Catalog

    shown = mask_card(args.card)
    _locally(
        args,
        "cards unlock-pin",
        f"account={shown}",
        lambda store: Catalog(store).unlock_pin(args.card),
    )
    print(f"{shown}: PIN unlocked (wrong PINs counted from 0 again)")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from processor.store.credentials import Credentials, new_key_id

    key_id = new_key_id()
    record, key = _locally(
        args,
        "keys create",
        f"key {key_id} ({args.name})",
        lambda store: Credentials(store).create_key(
            args.name, sorted(set(args.role)), cards=args.card or None, key_id=key_id
        ),
    )
    scope = f", cards {', '.join(record.cards)}" if record.cards else ""
    print(
        f"key {record.key_id} ({record.name}), roles {', '.join(record.roles)}{scope}.\n"
        "The key, shown this once (only its hash is stored); send it as x-api-key:",
        file=sys.stderr,
    )
    print(key)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from processor.store.credentials import Credentials

    for key in _locally(args, "keys list", "", lambda store: Credentials(store).keys()):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "live"
        cards = f" cards={','.join(key.cards)}" if key.cards else ""
        demo = " demo" if key.demo else ""
        print(
            f"{key.key_id}\t{_printable(key.name)}\t{','.join(key.roles)}\t"
            f"created {key.created_at:%Y-%m-%d %H:%M}\t{state}{cards}{demo}"
        )
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from processor.store.credentials import Credentials

    newly = _locally(
        args,
        "keys revoke",
        f"key {args.key_id}",
        lambda store: Credentials(store).revoke_key(args.key_id),
    )
    print(f"key {args.key_id} " + ("revoked" if newly else "was revoked already"))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from processor.store.credentials import Credentials

    rows = _locally(
        args,
        "audit",
        "",
        lambda store: Credentials(store).audit(
            page_size=args.limit, principal=args.principal, rpc=args.rpc
        ),
    )
    for row in rows:
        print(
            f"{row.sequence}\t{row.at:%Y-%m-%dT%H:%M:%S%z}\t{_printable(row.principal)}\t"
            f"{','.join(row.roles) or '-'}\t{row.rpc}\t{_printable(row.target)}\t"
            f"{row.outcome}\t{_printable(row.request_id)}"
        )
    return 0


def _jobs_list(args: argparse.Namespace) -> int:
    from processor.jobs.named import JOBS

    runs = _with_store(args, _latest_runs)
    for job in JOBS.values():
        run = runs.get(job.name)
        last = "never run" if run is None else _run_line(run)
        print(f"{job.name}\t{last}\t{job.summary}")
    return 0


def _jobs_history(args: argparse.Namespace) -> int:
    from processor.jobs.named import job_named

    name = job_named(args.job).name if args.job else ""

    async def recent(store: Any) -> list[Any]:
        from processor.store.job_runs import JobRuns

        return await JobRuns(store).recent(name, args.limit)

    for run in _with_store(args, recent):
        print(f"{run.job}\t{_run_line(run)}")
    return 0


async def _latest_runs(store: Any) -> dict[str, Any]:
    from processor.store.job_runs import JobRuns

    return await JobRuns(store).latest()


def _run_line(run: Any) -> str:
    from processor import calendar

    state = run.status + (f" ({_printable(run.error)})" if run.error else "")
    return (
        f"as of {calendar.format_day(run.as_of)}: {state}, {run.accounts_done} of "
        f"{run.accounts_total} accounts, {run.accounts_changed} changed, {run.postings} "
        f"postings, started {run.started_at:%Y-%m-%d %H:%M:%S%z}"
    )


def _jobs_run(args: argparse.Namespace) -> int:
    import asyncio

    from processor import calendar
    from processor.jobs.named import job_named
    from processor.runtime import serve

    job = job_named(args.job)
    as_of = _as_of(args.as_of, job)
    settings = _settings(args)
    chunk = args.chunk_accounts or settings.jobs_chunk_accounts
    resolved = serve.resolve_servers(settings)
    try:
        report = asyncio.run(
            _run_locally(job, as_of, chunk, settings, resolved.database_url, resolved.redis_url)
        )
    finally:
        resolved.stop()
    print(json.dumps(report.as_dict()))
    if report.already:
        print(
            f"{job.name} as of {calendar.format_day(as_of)} had finished before: "
            "nothing was run again",
            file=sys.stderr,
        )
    return 0


async def _run_locally(
    job: Any, as_of: int, chunk: int, settings: Any, database_url: str, redis_url: str | None
) -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped]

    from processor.cache import compression
    from processor.flow.registry import ProgramRegistry
    from processor.jobs import runner
    from processor.limits import EVENTS_RELAY_ROWS_MAX
    from processor.store.catalog import Catalog
    from processor.store.event_log import EventLog
    from processor.store.ledger import Store

    # The run's lock, and its reads and commits (processor.jobs.runner).
    async with Store(database_url, pool_size_max=2) as store:
        registry = ProgramRegistry(Catalog(store))
        await registry.refresh()
        cache = (
            compression.open_for_programs(redis_url, registry.programs(), settings)
            if redis_url
            else None
        )  # as the server opens it: the same keys, the same candidate dictionary
        bar = tqdm(desc=job.name, unit=" accounts", file=sys.stderr, disable=None)
        try:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            context = runner.JobContext(store, registry, cache)
            report = await runner.run(context, job, as_of, chunk_accounts=chunk, progress=progress)
            # No relay runs here: the run's events are numbered now, for readers to see at
            # once (a server's relay would find them within NOTIFIED_POLL_SECONDS anyway).
            while await EventLog(store).position() == EVENTS_RELAY_ROWS_MAX:
                pass
            return report
        finally:
            bar.close()
            if cache is not None:
                await cache.aclose()


def _report_scorecard(args: argparse.Namespace) -> int:
    from processor import calendar
    from processor.reports import scorecard

    month = scorecard.last_month(args.month or "", "--month")
    cards = _program_report(args, scorecard.load, month)
    if args.html:
        from processor.reports import page

        _write_page(
            args.html, page.render(args.program, cards, calendar.format_month(month), args.months)
        )
    elif args.json:
        print(json.dumps([scorecard.as_dict(card) for card in cards], indent=2))
    else:
        print(scorecard.text(cards, calendar.format_month(month)), end="")
    if not any(card.month == calendar.format_month(month) for card in cards):
        print(
            f"no scorecards of {args.program} for {calendar.format_month(month)}: the "
            "scorecards job has not finished a run in that month (`loyalty jobs history "
            "scorecards`; `loyalty jobs run scorecards` counts them now)",
            file=sys.stderr,
        )
    return 0


def _report_roi(args: argparse.Namespace) -> int:
    return _months_report(
        args,
        "roi",
        "a month marked 'not counted' has no finished run of the scorecards job, whose "
        "figures this report reads (`loyalty jobs run scorecards --as-of DATE`)",
    )


def _report_health(args: argparse.Namespace) -> int:
    return _months_report(
        args,
        "health",
        "points of a month marked 'not counted' come from the scorecards job, which has "
        "not finished a run in it (`loyalty jobs run scorecards --as-of DATE`)",
    )


def _months_report(args: argparse.Namespace, name: str, not_counted: str) -> int:
    """A report made of the scorecards' months (processor.reports.<name>: ``load``,
    ``as_dict``, ``text``; its page, ``<name>_page.render``, imported only for --html, as
    plotly is): tables, JSON or the page, and ``not_counted`` said when a month is."""
    import importlib

    from processor import calendar
    from processor.reports import scorecard

    report_module = importlib.import_module(f"processor.reports.{name}")
    month = scorecard.last_month(args.month or "", "--month")
    report = _program_report(args, report_module.load, month)
    if args.html:
        page_module = importlib.import_module(f"processor.reports.{name}_page")
        page = page_module.render(args.program, report, calendar.format_month(month), args.months)
        _write_page(args.html, page)
    elif args.json:
        print(json.dumps([report_module.as_dict(month) for month in report], indent=2))
    else:
        print(report_module.text(report), end="")
    if not all(month.counted for month in report):
        print(not_counted, file=sys.stderr)
    return 0


def _write_page(path: str, html: str) -> None:
    """Write a report's HTML page to ``path`` (``--html``); refused naming it otherwise."""
    from processor.errors import InvalidFieldError

    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(html)
    except OSError as error:
        raise InvalidFieldError("--html", f"{path}: {error.strerror}") from None
    print(f"wrote {path}: open it in a browser", file=sys.stderr)


def _program_report(args: argparse.Namespace, load: Any, month: int) -> Any:
    """A report's ``load(catalog, registry, store, program, month, months)`` of the program
    file ``args.program`` against the settings' database."""

    async def read(store: Any) -> Any:
        from processor.flow.registry import ProgramRegistry
        from processor.store.catalog import Catalog

        catalog = Catalog(store)
        return await load(
            catalog, ProgramRegistry(catalog), store, args.program, month, args.months
        )

    return _with_store(args, read)


def _as_of(text: str | None, job: Job) -> int:
    from processor import calendar
    from processor.errors import InvalidFieldError
    from processor.store.cards import today

    if text is None:
        return job.as_of(today())
    try:
        return calendar.parse_day(text)
    except ValueError:
        raise InvalidFieldError("--as-of", f"{text!r} is not a date YYYY-MM-DD") from None


def _with_store(args: argparse.Namespace, action: Any) -> Any:
    """``action(store)`` against the settings' database (the embedded one by default)."""
    import asyncio

    from processor.runtime import serve
    from processor.store.ledger import Store

    resolved = serve.resolve_servers(_settings(args), cache=False)

    async def run() -> Any:
        async with Store(resolved.database_url, pool_size_max=1) as store:
            return await action(store)

    try:
        return asyncio.run(run())
    finally:
        resolved.stop()


def _seed(args: argparse.Namespace) -> int:
    from processor.tools import seed

    report = seed.run(
        _settings(args),
        args.accounts,
        warm_cache=args.warm,
        chunk_accounts=args.chunk_accounts,
        seed_value=args.random_seed,
    )
    print(json.dumps(report.as_dict()))
    return 0


def _config_show(args: argparse.Namespace) -> int:
    print(json.dumps(_settings(args).redacted(), indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    from processor.engine import default_engine_name

    print(f"loyalty {__version__}, engine {default_engine_name()}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from processor.program.loader import load_program

    program = load_program(args.program)
    print(
        f"{args.program}: valid, program {program.id} version {program.version}, "
        f"programs {', '.join(program.program_ids())}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from processor.limits import AUDIT_PAGE_SIZE_MAX, JOB_CHUNK_ACCOUNTS_MAX, SCORECARD_MONTHS_MAX
    from processor.service.roles import ROLES
    from processor.tools import seed as seed_limits

    parser = argparse.ArgumentParser(
        prog="loyalty",
        description="The loyalty and stored-value transaction processor: the gRPC server, "
        "its database and keys, and the offline evaluator. `loyalty COMMAND --help` for one.",
    )
    parser.add_argument("--version", action="version", version=f"loyalty {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate transactions against a program file, writing nothing"
    )
    evaluate.add_argument("--program", required=True, help="program file (YAML or JSON)")
    evaluate.add_argument("--transactions", required=True, help="requests, JSON lines")
    evaluate.add_argument("--accounts", help="opening account states, JSON lines")
    evaluate.add_argument(
        "--engine", choices=ENGINES, help="rule engine (default: the compiled one when built)"
    )
    mode = evaluate.add_mutually_exclusive_group()
    mode.add_argument(
        "--summary", action="store_true", help="print totals by rule, level, award and move"
    )
    mode.add_argument(
        "--compare", metavar="PROGRAM", help="print what changes if PROGRAM replaced --program"
    )
    evaluate.set_defaults(handler=_evaluate)

    serve = commands.add_parser("serve", help="run the gRPC server")
    _server_flags(serve)
    serve.add_argument(
        "--demo", action="store_true", help="load the demo program and cards before serving"
    )
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations")
    _server_flags(migrate)
    migrate.set_defaults(handler=_migrate)

    reconcile = commands.add_parser(
        "reconcile", help="check every balance against the sum of its ledger rows"
    )
    _server_flags(reconcile)
    reconcile.set_defaults(handler=_reconcile)

    cards = commands.add_parser("cards", help="card operations for Support")
    card_commands = cards.add_subparsers(dest="cards_command", required=True)
    unlock = card_commands.add_parser(
        "unlock-pin", help="clear a card's wrong-PIN count: a locked PIN works again"
    )
    unlock.add_argument("card", help="the card number")
    _server_flags(unlock)
    unlock.set_defaults(handler=_unlock_pin)

    keys = commands.add_parser("keys", help="API keys: create, list, revoke")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser(
        "create", help="make a key; it is printed once, on standard output"
    )
    create.add_argument("--name", required=True, help="who holds it, e.g. pos-gateway-eu")
    create.add_argument(
        "--role",
        action="append",
        required=True,
        choices=ROLES,
        help="a role it holds (repeat for more)",
    )
    create.add_argument(
        "--card",
        action="append",
        help="scope it to this card (repeat for more): a customer's app acting on its cards",
    )
    _server_flags(create)
    create.set_defaults(handler=_keys_create)
    listed = key_commands.add_parser("list", help="every key, live and revoked (no secrets)")
    _server_flags(listed)
    listed.set_defaults(handler=_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key (every process within seconds)")
    revoke.add_argument("key_id", help="the key's id (lk_<key_id>_...)")
    _server_flags(revoke)
    revoke.set_defaults(handler=_keys_revoke)

    audit = commands.add_parser("audit", help="the audit log, newest first")
    audit.add_argument("--principal", default="", help="only this principal, e.g. key:3f2a...")
    audit.add_argument("--rpc", default="", help="only this RPC, e.g. ActivateProgram")
    audit.add_argument(
        "--limit", type=_count(1, AUDIT_PAGE_SIZE_MAX), default=100, help="rows (default 100)"
    )
    _server_flags(audit)
    audit.set_defaults(handler=_audit)

    jobs = commands.add_parser("jobs", help="the scheduled jobs: list, run, history")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    listed_jobs = job_commands.add_parser("list", help="every job, its last run, what it does")
    _server_flags(listed_jobs)
    listed_jobs.set_defaults(handler=_jobs_list)
    run_job = job_commands.add_parser(
        "run", help="run a job now (or go on with its stopped run), with a progress bar"
    )
    run_job.add_argument("job", help="the job's name (`loyalty jobs list`)")
    run_job.add_argument(
        "--as-of",
        dest="as_of",
        help="the business day it runs as of (default: today; scorecards: yesterday)",
    )
    run_job.add_argument(
        "--chunk-accounts",
        dest="chunk_accounts",
        type=_count(1, JOB_CHUNK_ACCOUNTS_MAX),
        help="accounts per commit (default: the jobs_chunk_accounts setting)",
    )
    _server_flags(run_job)
    run_job.set_defaults(handler=_jobs_run)
    history = job_commands.add_parser("history", help="the latest runs, newest first")
    history.add_argument("job", nargs="?", default="", help="only this job")
    history.add_argument(
        "--limit", type=_count(1, AUDIT_PAGE_SIZE_MAX), default=20, help="runs (default 20)"
    )
    _server_flags(history)
    history.set_defaults(handler=_jobs_history)

    report = commands.add_parser(
        "report",
        help="what program managers read: scorecards, the monthly health report, the ROI",
    )
    report_commands = report.add_subparsers(dest="report_command", required=True)
    for name, summary, handler in (
        ("scorecard", "a program file's scorecards: each program's figures in a month, and by "
         "month", _report_scorecard),
        ("health", "each loyalty program's points issued and members moved up or down, by "
         "month", _report_health),
        ("roi", "each loyalty program's spend by level: the average spend per account against "
         "the first level's, and the points issued, by month", _report_roi),
    ):  # fmt: skip
        reporting = report_commands.add_parser(name, help=summary)
        reporting.add_argument("program", help="the program file's id")
        reporting.add_argument("--month", help="the (last) month, YYYY-MM (default: this month)")
        reporting.add_argument(
            "--months",
            type=_count(1, SCORECARD_MONTHS_MAX),
            default=12,
            help="months back, the month included (default 12)",
        )
        shown = reporting.add_mutually_exclusive_group()
        shown.add_argument("--json", action="store_true", help="JSON instead of tables")
        shown.add_argument(
            "--html", metavar="FILE", help="write a self-contained HTML page with charts to FILE"
        )
        _server_flags(reporting)
        reporting.set_defaults(handler=handler)

    seed = commands.add_parser(
        "seed", help="bulk-load cards, customers and accounts for load tests (resumable)"
    )
    seed.add_argument(
        "--accounts",
        type=_count(0, seed_limits.ACCOUNTS_MAX),
        required=True,
        help="seeded accounts wanted in all (not added)",
    )
    seed.add_argument("--warm", action="store_true", help="then fill the Redis cache with them")
    seed.add_argument(
        "--chunk-accounts",
        dest="chunk_accounts",
        type=_count(1, seed_limits.CHUNK_ACCOUNTS_MAX),
        default=50_000,
        help="accounts per transaction (50,000)",
    )  # fmt: skip
    seed.add_argument(
        "--random-seed", dest="random_seed", type=int, default=7, help="generator seed (7)"
    )
    _server_flags(seed)
    seed.set_defaults(handler=_seed)

    config = commands.add_parser("config", help="settings")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective settings, redacted")
    _server_flags(show)
    show.set_defaults(handler=_config_show)

    info = commands.add_parser("info", help="print the version and the engine in use")
    info.set_defaults(handler=_info)

    check = commands.add_parser("check", help="validate a program file")
    check.add_argument("program")
    check.set_defaults(handler=_check)
    return parser


def _server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", help="gRPC address (default 127.0.0.1:50051)")
    parser.add_argument(
        "--metrics-listen", dest="metrics_listen", help="metrics address (default 127.0.0.1:8000)"
    )
    parser.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate chain: TLS on")
    parser.add_argument("--tls-key", dest="tls_key", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca", dest="tls_client_ca", help="PEM CA bundle: clients must present a cert"
    )
    parser.add_argument("--workers", type=_count(1, 64), help="server processes sharing the port")
    parser.add_argument(
        "--database-url",
        dest="database_url",
        help="PostgreSQL URL (env LOYALTY_DATABASE_URL; default: embedded)",
    )
    parser.add_argument(
        "--redis-url", dest="redis_url", help="Redis URL (env LOYALTY_REDIS_URL; default: embedded)"
    )
    parser.add_argument("--data-dir", dest="data_dir", help="embedded servers' data (.data)")
    parser.add_argument("--engine", choices=ENGINES, help="rule engine")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except LoyaltyError as error:
        print(f"loyalty: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())

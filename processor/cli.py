"""The ``loyalty`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from processor import __version__
from processor.engine import ENGINES
from processor.errors import LoyaltyError


def _evaluate(args: argparse.Namespace) -> int:
    from processor import evaluate
    from processor.records import Formatter

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
    parser = argparse.ArgumentParser(prog="loyalty", description=__doc__)
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

    info = commands.add_parser("info", help="print the version and the engine in use")
    info.set_defaults(handler=_info)

    check = commands.add_parser("check", help="validate a program file")
    check.add_argument("program")
    check.set_defaults(handler=_check)
    return parser


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

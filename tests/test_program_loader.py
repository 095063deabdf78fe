"""The program-file loader: YAML and JSON, and every kind of bad file reported in one pass.

Each bad-file test makes one small edit to the demo program, so the problem it expects is
the only one in the file; the error must name the file, the field path and the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor.errors import InputFileError, Problem
from processor.limits import (
    PROGRAM_FILE_BYTES_MAX,
    PROGRAM_FILE_DEPTH_MAX,
    PROGRAM_FILE_NODES_MAX,
)
from processor.program import loader
from processor.program.loader import (
    load_program,
    parse_program_text,
    parse_program_text_elsewhere,
    validate_program,
)
from processor.program.model import ProgramFile

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "programs" / "demo.yaml"
DEMO_IMPORT = ROOT / "examples" / "cards" / "demo_import.csv"

Edit = Callable[[dict[str, Any]], object]


def demo_data() -> dict[str, Any]:
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def points(data: dict[str, Any]) -> dict[str, Any]:
    """The demo's loyalty program."""
    program = data["loyalty_programs"][0]
    assert isinstance(program, dict)
    return program


def write_yaml(tmp_path: Path, data: Any, name: str = "program.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def edited(tmp_path: Path, edit: Edit) -> Path:
    data = demo_data()
    edit(data)
    return write_yaml(tmp_path, data)


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(InputFileError) as error:
        load_program(path)
    assert error.value.file == str(path)
    for line in str(error.value).splitlines():
        assert line.startswith(f"{path}: ")
    return error.value.problems


def only_problem(path: Path) -> Problem:
    found = problems_of(path)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- valid files


def test_the_demo_program_loads() -> None:
    program = load_program(DEMO)
    assert isinstance(program, ProgramFile)
    assert program.id == "northwind"
    assert program.version == 1
    assert program.program_ids() == ["giftcard", "rewards", "points"]
    assert [level.id for level in program.loyalty_programs[0].levels] == [
        "silver",
        "gold",
        "platinum",
    ]


def test_the_demo_written_as_json_loads_to_the_same_program(tmp_path: Path) -> None:
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(demo_data(), default=str), encoding="utf-8")
    assert load_program(path) == load_program(DEMO)


def test_a_string_path_loads_like_a_path() -> None:
    assert load_program(str(DEMO)) == load_program(DEMO)


def test_an_unquoted_yaml_time_is_a_time_of_day_not_a_base_60_number(tmp_path: Path) -> None:
    text = DEMO.read_text(encoding="utf-8")
    assert 'start_time: "07:00"' in text
    path = tmp_path / "program.yaml"
    path.write_text(text.replace('start_time: "07:00"', "start_time: 10:30"), encoding="utf-8")
    program = load_program(path)
    cafe_hours = program.award_programs[0].certificates[1].time_rules[0]
    assert cafe_hours.start_time == 10 * 3600 + 30 * 60  # 37800 seconds, not 10*60+30 = 630


def test_validate_program_checks_parsed_data_without_a_file() -> None:
    program = validate_program("inline", demo_data())
    assert program == load_program(DEMO)
    with pytest.raises(InputFileError) as error:
        validate_program("inline", [])
    assert str(error.value) == "inline: must be a mapping of fields at the top level"


# --------------------------------------------------------------------------- unreadable files


def test_a_missing_file_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    problem = only_problem(path)
    assert problem == Problem("", "cannot be read: No such file or directory")


def test_a_directory_cannot_be_read(tmp_path: Path) -> None:
    problem = only_problem(tmp_path)
    assert problem.path == ""
    assert problem.reason.startswith("cannot be read: ")


def test_a_file_larger_than_the_api_stores_is_refused(tmp_path: Path) -> None:
    # The limit of CreateProgram, so that a file `loyalty check` passes can be stored.
    text = DEMO.read_text(encoding="utf-8")
    path = tmp_path / "program.yaml"
    path.write_text(text + "#" * (PROGRAM_FILE_BYTES_MAX + 1 - len(text)), encoding="utf-8")
    assert only_problem(path) == Problem("", f"is larger than {PROGRAM_FILE_BYTES_MAX} bytes")


@pytest.mark.parametrize(
    ("file_name", "text"),
    [
        # Nesting far past what a recursive builder survives, in both syntaxes.
        ("program.yaml", "id: x\nnested: " + "[" * 5_000 + "]" * 5_000 + "\n"),
        ("program.json", '{"id": "x", "nested": ' + "[" * 5_000 + "]" * 5_000 + "}"),
        # Just past the limit.
        ("program.yaml", "nested: " + "[" * (PROGRAM_FILE_DEPTH_MAX + 1) + "]" * 33 + "\n"),
    ],
)
def test_a_document_nested_too_deep_is_refused_before_it_is_built(
    tmp_path: Path, file_name: str, text: str
) -> None:
    path = tmp_path / file_name
    path.write_text(text, encoding="utf-8")
    reason = f"nests mappings and lists more than {PROGRAM_FILE_DEPTH_MAX} deep"
    assert only_problem(path) == Problem("", reason)


@pytest.mark.parametrize("file_name", ["program.yaml", "program.json"])
def test_a_document_with_too_many_values_is_refused(tmp_path: Path, file_name: str) -> None:
    items = ", ".join(["1"] * (PROGRAM_FILE_NODES_MAX + 1))
    path = tmp_path / file_name
    text = f"{{\"id\": \"x\", \"items\": [{items}]}}"  # JSON, which is YAML too
    path.write_text(text, encoding="utf-8")
    reason = f"has more than {PROGRAM_FILE_NODES_MAX:,} mappings, lists and values"
    assert only_problem(path) == Problem("", reason)


def test_yaml_aliases_are_refused_so_no_few_lines_stand_for_billions(tmp_path: Path) -> None:
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"{chr(98 + n)}: &{chr(98 + n)} [*{chr(97 + n)}, *{chr(97 + n)}]" for n in range(9)]
    path = tmp_path / "program.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problem = only_problem(path)
    assert (problem.path, problem.reason) == (
        "line 2, column 8",
        "YAML aliases (*name) are not supported",
    )


def test_a_file_that_is_not_utf8_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "program.yaml"
    path.write_bytes(b"id: northwind\nname: \xff\xfe\n")
    assert only_problem(path) == Problem("", "is not UTF-8 text: invalid start byte")


def test_invalid_yaml_names_the_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "program.yaml"
    path.write_text("id: northwind\nname: [unclosed\ncard: {}\n", encoding="utf-8")
    problem = only_problem(path)
    assert problem.path.startswith("line ")
    assert ", column " in problem.path
    assert problem.reason.startswith("invalid YAML: ")
    assert str(problem) in str(problems_of(path)[0])


def test_invalid_yaml_indentation_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "program.yaml"
    path.write_text("id: northwind\n  name: x\n version: 1\n", encoding="utf-8")
    problem = only_problem(path)
    assert problem.path == "line 2, column 7"
    assert problem.reason == "invalid YAML: mapping values are not allowed here"


def test_invalid_json_names_the_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "program.json"
    path.write_text('{"id": "northwind",\n "name": }\n', encoding="utf-8")
    problem = only_problem(path)
    assert problem == Problem("line 2, column 10", "invalid JSON: Expecting value")
    with pytest.raises(InputFileError) as error:
        load_program(path)
    assert str(error.value) == f"{path}: line 2, column 10: invalid JSON: Expecting value"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n", ""])
def test_a_top_level_that_is_not_a_mapping_is_rejected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "program.yaml"
    path.write_text(text, encoding="utf-8")
    assert only_problem(path) == Problem("", "must be a mapping of fields at the top level")


# --------------------------------------------------------------------------- field problems


def test_an_unknown_field_is_named_by_its_full_path(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: points(data)["levels"][1].update(colour="gold"))
    assert only_problem(path) == Problem("loyalty_programs[0].levels[1].colour", "unknown field")
    with pytest.raises(InputFileError) as error:
        load_program(path)
    assert str(error.value) == f"{path}: loyalty_programs[0].levels[1].colour: unknown field"


def test_a_missing_required_field_is_required(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: data.pop("name"))
    assert only_problem(path) == Problem("name", "is required")


def test_a_missing_nested_field_names_its_path(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: points(data)["movement_rules"][2].pop("test"))
    assert only_problem(path) == Problem(
        "loyalty_programs[0].movement_rules[2].test", "is required"
    )


def test_a_field_of_the_wrong_type_is_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: points(data).update(points_precision="many"))
    problem = only_problem(path)
    assert problem.path == "loyalty_programs[0].points_precision"
    assert "valid integer" in problem.reason


def test_a_negative_multiplier_is_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: points(data)["issue_rules"][0].update(multiplier=-1))
    assert only_problem(path) == Problem(
        "loyalty_programs[0].issue_rules[0].multiplier",
        "Input should be greater than or equal to 0",
    )


def test_money_with_more_decimals_than_the_currency_is_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: data["tender"].update(max_balance="10.001"))
    assert only_problem(path) == Problem(
        "tender.max_balance", "amount in USD 10.001 has more than 2 decimal places"
    )


def test_points_with_more_decimals_than_points_precision_are_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: points(data)["award_rules"][0].update(threshold="500.5"))
    assert only_problem(path) == Problem(
        "loyalty_programs[0].award_rules[0].threshold",
        "500.5 has more decimals than points_precision 0 allows",
    )


def test_an_unknown_loyalty_currency_is_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: points(data).update(currency="XYZ"))
    assert only_problem(path) == Problem(
        "loyalty_programs[0].currency", "unknown currency 'XYZ'"
    )


def test_an_unknown_tender_currency_is_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: data["tender"].update(currency="XYZ"))
    assert only_problem(path) == Problem(
        "tender.currency", "'XYZ' is not an ISO 4217 currency code"
    )


# --------------------------------------------------------------------------- cross-field problems


def test_a_movement_rule_to_an_unknown_level_is_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: points(data)["movement_rules"][0].update(to_level="ruby"))
    assert only_problem(path) == Problem(
        "loyalty_programs[0].movement_rules[0].to_level", "unknown level 'ruby'"
    )


def test_an_award_threshold_below_its_cost_is_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: points(data)["award_rules"][0].update(threshold=400))
    assert only_problem(path) == Problem(
        "loyalty_programs[0].award_rules[0].threshold", "400 is below cost 500"
    )


def test_a_program_id_used_twice_is_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda data: data["tender"].update(id="points"))
    assert only_problem(path) == Problem("", "program id 'points' is used more than once")


def test_a_file_without_programs_is_rejected(tmp_path: Path) -> None:
    def remove_programs(data: dict[str, Any]) -> None:
        for name in ("tender", "award_programs", "loyalty_programs"):
            del data[name]

    path = edited(tmp_path, remove_programs)
    assert only_problem(path) == Problem("", "defines no tender, award or loyalty program")


def test_movement_rules_from_one_level_with_equal_precedence_are_rejected(
    tmp_path: Path,
) -> None:
    # to-platinum (precedence 2, from gold) is given keep-gold's precedence 3: both apply to
    # gold accounts with open-ended dates, so their order would be undefined.
    path = edited(tmp_path, lambda data: points(data)["movement_rules"][1].update(precedence=3))
    assert only_problem(path) == Problem(
        "loyalty_programs[0].movement_rules[2].precedence",
        "equals that of movement_rules[1] from the same level with overlapping dates: "
        "the order would be undefined",
    )


def test_equal_precedence_is_allowed_when_the_dates_do_not_overlap(tmp_path: Path) -> None:
    def split(data: dict[str, Any]) -> None:
        rules = points(data)["movement_rules"]
        rules[1].update(precedence=3, end_date="2026-06-30")
        rules[2].update(start_date="2026-07-01")

    load_program(edited(tmp_path, split))


# --------------------------------------------------------------------------- many problems


def test_several_field_problems_are_reported_together(tmp_path: Path) -> None:
    def break_fields(data: dict[str, Any]) -> None:
        points(data)["levels"][1]["colour"] = "gold"
        data.pop("name")
        points(data)["issue_rules"][0]["multiplier"] = -1

    found = problems_of(edited(tmp_path, break_fields))
    assert {problem.path for problem in found} == {
        "name",
        "loyalty_programs[0].levels[1].colour",
        "loyalty_programs[0].issue_rules[0].multiplier",
    }


def test_several_cross_field_problems_are_reported_together(tmp_path: Path) -> None:
    def break_rules(data: dict[str, Any]) -> None:
        data["tender"]["max_balance"] = "10.001"
        points(data)["award_rules"][0]["threshold"] = 400
        points(data)["movement_rules"][0]["to_level"] = "ruby"

    path = edited(tmp_path, break_rules)
    assert problems_of(path) == [
        Problem("tender.max_balance", "amount in USD 10.001 has more than 2 decimal places"),
        Problem("loyalty_programs[0].award_rules[0].threshold", "400 is below cost 500"),
        Problem("loyalty_programs[0].movement_rules[0].to_level", "unknown level 'ruby'"),
    ]
    with pytest.raises(InputFileError) as error:
        load_program(path)
    assert len(str(error.value).splitlines()) == 3


# --------------------------------------------------------------------------- card import files


def import_series(**changes: Any) -> dict[str, Any]:
    """A series whose cards are listed in demo_import.csv (five cards)."""
    series: dict[str, Any] = {
        "id": "legacy",
        "name": "Legacy cards",
        "import_file": "cards/demo_import.csv",
        "batches": [{"name": "migrated", "count": 5}],
    }
    series.update(changes)
    return series


def with_import(tmp_path: Path, series: dict[str, Any], csv_text: str | None = None) -> Path:
    (tmp_path / "cards").mkdir()
    target = tmp_path / "cards" / "demo_import.csv"
    if csv_text is None:
        shutil.copyfile(DEMO_IMPORT, target)
    else:
        target.write_text(csv_text, encoding="utf-8")
    data = demo_data()
    data["series"].append(series)
    return write_yaml(tmp_path, data)


def test_a_series_import_file_is_read_relative_to_the_program_file(tmp_path: Path) -> None:
    program = load_program(with_import(tmp_path, import_series()))
    assert [series.id for series in program.series] == ["launch", "legacy"]


def test_a_missing_import_file_is_reported_at_the_series(tmp_path: Path) -> None:
    data = demo_data()
    data["series"].append(import_series(import_file="nowhere.csv"))
    problem = only_problem(write_yaml(tmp_path, data))
    assert problem == Problem(
        "series[1].import_file", "nowhere.csv cannot be read: No such file or directory"
    )


def test_import_file_problems_name_the_series_the_file_and_the_line(tmp_path: Path) -> None:
    text = DEMO_IMPORT.read_text(encoding="utf-8").replace("6001200009000029", "7001200009000029")
    path = with_import(tmp_path, import_series(), text)
    assert problems_of(path) == [
        Problem(
            "series[1].import_file",
            "cards/demo_import.csv line 3, CARD_NUMBER: "
            "7001200009000029 does not start with the prefix 60012",
        )
    ]
    with pytest.raises(InputFileError) as error:
        load_program(path)
    assert str(error.value) == (
        f"{path}: series[1].import_file: cards/demo_import.csv line 3, CARD_NUMBER: "
        "7001200009000029 does not start with the prefix 60012"
    )


def test_import_balances_use_the_tender_currency(tmp_path: Path) -> None:
    # JPY has no minor unit: "25.00" is a whole number of yen, "5.50" is not.
    data_path = with_import(tmp_path, import_series())
    data = yaml.safe_load(data_path.read_text(encoding="utf-8"))
    data["tender"]["currency"] = "JPY"
    for name in ("min_activation_amount", "min_balance", "max_balance", "cash_out_limit",
                 "max_redemption_value_per_day"):
        data["tender"][name] = data["tender"][name].removesuffix(".00")
    assert only_problem(write_yaml(tmp_path, data)) == Problem(
        "series[1].import_file",
        "cards/demo_import.csv line 3, AWARD_BALANCE: amount in JPY 5.50 has more than 0 decimal "
        "places",
    )


def test_import_points_use_the_first_loyalty_programs_precision(tmp_path: Path) -> None:
    text = DEMO_IMPORT.read_text(encoding="utf-8").replace(",,,250,,", ",,,250.5,,")
    path = with_import(tmp_path, import_series(), text)
    found = problems_of(path)
    assert len(found) == 1
    assert found[0].path == "series[1].import_file"
    assert found[0].reason.startswith("cards/demo_import.csv line 4, LOYALTY_BALANCE: ")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    points(data)["points_precision"] = 1
    load_program(write_yaml(tmp_path, data))


def test_the_import_card_count_must_match_total_cards(tmp_path: Path) -> None:
    path = with_import(tmp_path, import_series(total_cards=4, batches=[{"name": "a", "count": 4}]))
    assert only_problem(path) == Problem(
        "series[1].total_cards", "is 4 but the import file lists 5 cards"
    )


def test_the_import_card_count_must_match_the_batches_without_total_cards(
    tmp_path: Path,
) -> None:
    path = with_import(tmp_path, import_series(batches=[{"name": "a", "count": 6}]))
    assert only_problem(path) == Problem(
        "series[1].batches", "batch counts sum to 6, the import file lists 5"
    )


def test_import_problems_are_reported_with_the_other_problems(tmp_path: Path) -> None:
    data = demo_data()
    data["series"].append(import_series(import_file="nowhere.csv"))
    data["tender"]["max_balance"] = "10.001"
    assert [problem.path for problem in problems_of(write_yaml(tmp_path, data))] == [
        "tender.max_balance",
        "series[1].import_file",
    ]


def test_validate_program_reads_no_import_file() -> None:
    data = demo_data()
    data["series"].append(import_series(import_file="nowhere.csv"))
    program = validate_program("inline", data)
    assert program.series[1].import_file == "nowhere.csv"



def test_import_balances_use_the_first_programs_currency_without_a_tender(tmp_path: Path) -> None:
    data_path = with_import(tmp_path, import_series())
    data = yaml.safe_load(data_path.read_text(encoding="utf-8"))
    del data["tender"]
    data["award_programs"][0]["currency"] = "JPY"
    assert only_problem(write_yaml(tmp_path, data)) == Problem(
        "series[1].import_file",
        "cards/demo_import.csv line 3, AWARD_BALANCE: amount in JPY 5.50 has more than 0 decimal "
        "places",
    )


# --------------------------------------------------------------------------- off the loop


async def test_a_program_text_is_checked_in_a_worker_process_with_the_same_outcome() -> None:
    text = DEMO.read_text(encoding="utf-8")
    assert await parse_program_text_elsewhere(text, "demo.yaml") == parse_program_text(
        text, "demo.yaml"
    )
    bad = "id: x\nnested: " + "[" * 100 + "]" * 100 + "\n"
    with pytest.raises(InputFileError) as caught:
        await parse_program_text_elsewhere(bad, "bad.yaml")
    assert caught.value.file == "bad.yaml"
    assert caught.value.problems == [
        Problem("", f"nests mappings and lists more than {PROGRAM_FILE_DEPTH_MAX} deep")
    ]


async def test_the_event_loop_keeps_turning_while_a_large_upload_is_checked() -> None:
    items = ", ".join(["1"] * (PROGRAM_FILE_NODES_MAX // 5))
    large = f"id: x\nitems: [{items}]\n"  # a second of YAML building, then its problems
    with pytest.raises(InputFileError):  # the worker process is started
        await parse_program_text_elsewhere("id: warm-up\n")
    checking = asyncio.ensure_future(parse_program_text_elsewhere(large, "large.yaml"))
    turns = 0
    while not checking.done():
        await asyncio.sleep(0)
        turns += 1
    # Built on the loop, the file would have held it: no turn until it was done.
    assert turns > 1
    with pytest.raises(InputFileError):
        await checking


async def test_a_worker_process_that_died_is_replaced_for_the_next_upload() -> None:
    text = DEMO.read_text(encoding="utf-8")
    await parse_program_text_elsewhere(text, "demo.yaml")  # the worker runs
    worker_pool = loader._parser
    assert worker_pool is not None
    with pytest.raises(BrokenProcessPool):
        await asyncio.wrap_future(worker_pool.submit(os._exit, 1))  # the worker dies
    program = await parse_program_text_elsewhere(text, "demo.yaml")
    assert program.id == "northwind" and loader._parser is not worker_pool

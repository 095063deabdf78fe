"""The offline evaluator, ``loyalty evaluate`` and ``loyalty check``, on the demo files.

Key numbers, by hand from examples/programs/demo.yaml (points_precision 0, so points are
whole and a fraction is dropped):

- t-0002 (silver, S001): base = 120.00 shoes + 15.00 socks = 135 x 1 = 135 (the gift wrap
  is non-merchandise); shoes = 1 pair x 3 = 3; cobrand (northwind-visa) = 25; visit (S001) = 5.
- t-0004: base = 699.99 x 1 = 699; the balance 75 + 699 = 774 buys one 500-point coupon;
  YTD earned 575 + 699 = 1274 >= 1000 moves silver -> gold.
- t-0009: gift card activated with 100.00 (t-0001), 50.00 paid from it in t-0002, so a
  redemption of 80.00 is partially approved for the remaining 50.00, leaving 0.00.
- t-0011 (Saturday 2026-03-14 10:00, S001): base 1100 + weekend 1100 + cobrand 25 + visit 5
  = 2230, which buys four 500-point coupons and leaves 230.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor.cli import main

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "examples" / "programs" / "demo.yaml"
TRANSACTIONS = ROOT / "examples" / "transactions" / "demo.jsonl"
IDS = [f"t-{n:04d}" for n in range(1, 14)]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def evaluate(capsys: pytest.CaptureFixture[str], *extra: str | Path,
             program: Path = PROGRAM) -> list[dict[str, Any]]:
    code, out, err = run_cli(
        capsys, "evaluate", "--program", program, "--transactions", TRANSACTIONS, *extra
    )
    assert (code, err) == (0, "")
    return [json.loads(line) for line in out.splitlines()]


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {record["id"]: record for record in records}


def demo_with(tmp_path: Path, name: str, **base_rule: Any) -> Path:
    """The demo program with its base issue rule changed."""
    data = yaml.safe_load(PROGRAM.read_text(encoding="utf-8"))
    data["loyalty_programs"][0]["issue_rules"][0].update(base_rule)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def postings(result: dict[str, Any]) -> dict[str, str]:
    return {f"{p['kind']}/{p['rule']}": p["amount"] for p in result["postings"]
            if p["balance"] == "points" and p["kind"] != "award_cost"}


# --------------------------------------------------------------------------- evaluate


def test_evaluate_prints_one_result_per_request_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = evaluate(capsys)
    assert [result["id"] for result in results] == IDS
    assert [result["status"] for result in results] == ["approved"] * 12 + ["declined"]
    assert results[-1]["reason"] == "ACCOUNT_INACTIVE"  # t-0013: that card has no gift card


def test_evaluate_issues_the_hand_computed_points(capsys: pytest.CaptureFixture[str]) -> None:
    results = by_id(evaluate(capsys))
    assert postings(results["t-0002"]) == {
        "regular/base": "135", "bonus/shoes": "3", "regular/cobrand": "25", "regular/visit": "5",
    }
    assert results["t-0002"]["balances"]["points:points"] == "168"
    tent = results["t-0004"]
    assert postings(tent) == {"regular/base": "699"}
    assert [award["rule"] for award in tent["awards"]] == ["coupon-5"]
    assert tent["balances"]["points:points"] == "274"
    assert [(m["from"], m["to"]) for m in tent["moves"]] == [("silver", "gold")]
    kayak = results["t-0011"]
    assert postings(kayak) == {
        "regular/base": "1100", "bonus/weekend": "1100", "regular/cobrand": "25",
        "regular/visit": "5",
    }
    assert len(kayak["awards"]) == 4
    assert kayak["balances"]["points:points"] == "230"


def test_a_partial_redemption_approves_the_available_balance(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tender = by_id(evaluate(capsys))["t-0009"]["tender"]
    assert tender == {
        "op": "redeem", "approved": True, "requested": "80.00", "approved_amount": "50.00",
        "balance": "0.00", "reason": "",
    }


def test_evaluate_runs_as_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    in_process = evaluate(capsys)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "processor.cli", "evaluate", "--program", str(PROGRAM),
         "--transactions", str(TRANSACTIONS)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )
    assert (completed.returncode, completed.stderr) == (0, "")
    lines = completed.stdout.splitlines()
    assert len(lines) == len(IDS)
    assert [json.loads(line) for line in lines] == in_process


def test_a_bad_transactions_file_evaluates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = TRANSACTIONS.read_text(encoding="utf-8").splitlines()
    lines[5] = lines[5].replace('"count": 3', '"count": 3, "colour": "red"')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "evaluate", "--program", PROGRAM, "--transactions", bad)
    assert (code, out) == (2, "")
    assert err == f"loyalty: {bad}: line 6.colour: unknown field\n"


# --------------------------------------------------------------------------- summary


def test_summary_totals_points_by_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "evaluate", "--program", PROGRAM, "--transactions", TRANSACTIONS, "--summary"
    )
    assert (code, err) == (0, "")
    summary = json.loads(out)
    assert summary["requests"] == {"ACCOUNT_INACTIVE": 1, "approved": 12}
    # Net of returns: base 135 + 260 + 699 - 274 (t-0005 recovers only the 274 left)
    # + 216 - 108 (half the boots back) + 1100 = 2028; weekend 310 (t-0003, gift card
    # included) + 1100 = 1410; shoes 3 + 6 - 3 = 6; visit 5 x 3 = 15; cobrand 25 x 2 = 50;
    # video 2 issues per week x 10 = 20.
    assert summary["points_by_rule"] == {
        "points/base": "2028", "points/cobrand": "50", "points/shoes": "6",
        "points/video": "20", "points/visit": "15", "points/weekend": "1410",
    }
    assert summary["points_by_kind"] == {
        "points/award_cost": "-3000", "points/bonus": "1439", "points/regular": "2475",
        "points/return": "-385",
    }
    earned = sum(int(value) for value in summary["points_by_level"].values())
    assert earned == 1439 + 2475  # every point issued is attributed to some level
    assert summary["awards_by_rule"] == {
        "points/coupon-5/coupon": 6, "rewards/welcome/certificate": 1,
    }
    assert summary["moves"] == {"points: silver -> gold": 2}
    assert summary["tender_by_kind"] == {
        "activate": "100.00", "credit_reversal": "50.00", "redeem": "-100.00",
    }


# --------------------------------------------------------------------------- compare


def test_compare_prints_changed_transactions_and_totals(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    double = demo_with(tmp_path, "double.yaml", multiplier=2)
    records = evaluate(capsys, "--compare", double)
    changed, totals = records[:-1], records[-1]
    # Every request that earns or returns base points changes; tender, engagement and void
    # requests do not.
    assert [record["id"] for record in changed] == [
        "t-0002", "t-0003", "t-0004", "t-0005", "t-0007", "t-0008", "t-0011",
    ]
    shoes = changed[0]
    assert str(shoes["before"]["points"]["points/base"]) == "135"
    assert str(shoes["after"]["points"]["points/base"]) == "270"  # 135 x 2
    tent = changed[2]
    # 699.99 x 2 = 1399.98 -> 1399; with 335 left from t-0003 that buys three coupons.
    assert str(tent["after"]["points"]["points/base"]) == "1399"
    assert tent["after"]["awards"] == ["points/coupon-5"] * 3
    assert set(totals) == {"totals"}
    assert totals["totals"]["before"]["points_by_rule"]["points/base"] == "2028"
    assert totals["totals"]["after"]["points_by_rule"]["points/base"] == "4371"
    assert totals["totals"]["after"]["awards_by_rule"]["points/coupon-5/coupon"] == 10


def test_comparing_a_program_with_itself_prints_only_totals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = evaluate(capsys, "--compare", PROGRAM)
    assert len(records) == 1
    totals = records[0]["totals"]
    assert totals["before"] == totals["after"]
    assert totals["before"]["points_by_rule"]["points/base"] == "2028"


def test_compare_shows_points_in_the_programs_precision(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = yaml.safe_load(PROGRAM.read_text(encoding="utf-8"))
    data["loyalty_programs"][0]["points_precision"] = 2
    before = tmp_path / "before.yaml"
    before.write_text(yaml.safe_dump(data), encoding="utf-8")
    data["loyalty_programs"][0]["issue_rules"][0]["multiplier"] = 2
    after = tmp_path / "after.yaml"
    after.write_text(yaml.safe_dump(data), encoding="utf-8")
    first = evaluate(capsys, "--compare", after, program=before)[0]
    assert first["id"] == "t-0002"
    assert first["before"]["points"]["points/base"] == "135.00"


# --------------------------------------------------------------------------- bad programs, check


def test_a_bad_program_exits_2_with_one_line_per_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = demo_with(tmp_path, "bad.yaml", multiplier=-1, colour="red")
    code, out, err = run_cli(
        capsys, "evaluate", "--program", bad, "--transactions", TRANSACTIONS
    )
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"loyalty: {bad}: loyalty_programs[0].issue_rules[0].multiplier: "
        "Input should be greater than or equal to 0",
        f"{bad}: loyalty_programs[0].issue_rules[0].colour: unknown field",
    ]


def test_a_bad_compare_program_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    code, out, err = run_cli(
        capsys, "evaluate", "--program", PROGRAM, "--transactions", TRANSACTIONS,
        "--compare", missing,
    )
    assert (code, out) == (2, "")
    assert err == f"loyalty: {missing}: cannot be read: No such file or directory\n"


def test_check_reports_a_valid_program(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "check", PROGRAM)
    assert (code, err) == (0, "")
    assert out == (
        f"{PROGRAM}: valid, program northwind version 1, programs giftcard, rewards, points\n"
    )


def test_check_reports_every_problem_of_a_bad_program(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = demo_with(tmp_path, "bad.yaml", end_date="2025-12-31", levels=["ruby"])
    code, out, err = run_cli(capsys, "check", bad)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"loyalty: {bad}: loyalty_programs[0].issue_rules[0].end_date: is before start_date",
        f"{bad}: loyalty_programs[0].issue_rules[0].levels[0]: unknown level 'ruby'",
    ]


def test_check_runs_as_a_command() -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "processor.cli", "check", "examples/programs/demo.yaml"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )
    assert (completed.returncode, completed.stderr) == (0, "")
    assert completed.stdout.startswith("examples/programs/demo.yaml: valid, program northwind")

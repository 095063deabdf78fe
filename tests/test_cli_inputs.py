"""Bad server settings and flags fail at once, with a message naming the setting, before
any server, database or file is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.cli import main
from processor.runtime.settings import Settings
from processor.service.server import check_secrets, pin_key_of, server_options
from processor.store.cards import DEVELOPMENT_PIN_KEY


def test_a_negative_seed_size_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["seed", "--accounts", "-5", "--data-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert "argument --accounts: -5 is not in 0..100000000" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_seed_size_that_is_not_a_number_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["seed", "--accounts", "many"])
    assert "'many' is not a whole number" in capsys.readouterr().err


def test_zero_workers_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--workers", "0"])
    assert "argument --workers: 0 is not in 1..64" in capsys.readouterr().err


def test_an_invalid_setting_from_the_environment_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOYALTY_BATCH_REQUESTS_MAX", "0")
    assert main(["serve", "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "settings: batch_requests_max (LOYALTY_BATCH_REQUESTS_MAX)" in error
    assert "greater than or equal to 1" in error
    assert list(tmp_path.iterdir()) == []


def test_config_show_redacts_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOYALTY_DATABASE_URL", "postgresql://app:secret@db/loyalty")
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    assert "secret" not in shown and '"database_url": "**********"' in shown


@pytest.mark.parametrize(
    ("variable", "value", "field", "why"),
    [
        (
            "LOYALTY_BATCHES_IN_FLIGHT_MAX",
            "0",
            "batches_in_flight_max",
            "greater than or equal to 1",
        ),
        (
            "LOYALTY_BATCHES_IN_FLIGHT_MAX",
            "17",
            "batches_in_flight_max",
            "less than or equal to 16",
        ),
        ("LOYALTY_CACHE_COMPRESSION", "maybe", "cache_compression", "valid boolean"),
        ("LOYALTY_CARD_CACHE", "sometimes", "card_cache", "valid boolean"),
        ("LOYALTY_NOTIFICATIONS", "listen", "notifications", "valid boolean"),
        ("LOYALTY_HTTP2_BDP_PROBE", "often", "http2_bdp_probe", "valid boolean"),
        ("LOYALTY_PLAINTEXT_ALLOWED", "perhaps", "plaintext_allowed", "valid boolean"),
        ("LOYALTY_PIN_ATTEMPTS_MAX", "0", "pin_attempts_max", "greater than or equal to 1"),
        ("LOYALTY_PIN_ATTEMPTS_MAX", "101", "pin_attempts_max", "less than or equal to 100"),
        ("LOYALTY_JOBS_SCHEDULE", "nightly", "jobs_schedule", "valid boolean"),
        ("LOYALTY_JOBS_CRON", "every night", "jobs_cron", "five fields"),
        ("LOYALTY_JOBS_CRON", "61 2 * * *", "jobs_cron", "five fields"),
        ("LOYALTY_JOBS_CHUNK_ACCOUNTS", "0", "jobs_chunk_accounts", "greater than or equal to 1"),
        ("LOYALTY_JOBS_CHUNK_ACCOUNTS", "5001", "jobs_chunk_accounts", "less than or equal to"),
        ("LOYALTY_EVENTS_WEBHOOK_URL", "mailto:ops@example.com", "events_webhook_url", "http"),
        ("LOYALTY_EVENTS_LOG", "loudly", "events_log", "valid boolean"),
        ("LOYALTY_EVENTS_POINTS_ISSUED", "some", "events_points_issued", "valid boolean"),
        ("LOYALTY_EVENTS_KEPT_DAYS", "0", "events_kept_days", "greater than or equal to 1"),
        ("LOYALTY_EVENTS_SENDERS", "kafka", "events_senders", "no sender 'kafka' is installed"),
    ],
)
def test_the_overlap_cache_and_card_settings_refuse_bad_values(
    variable: str,
    value: str,
    field: str,
    why: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["serve", "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"settings: {field} ({variable})" in error
    assert why in error
    assert list(tmp_path.iterdir()) == []


def test_the_server_sends_no_bandwidth_probes_unless_asked() -> None:
    assert ("grpc.http2.bdp_probe", 0) in server_options(Settings())
    assert ("grpc.http2.bdp_probe", 1) in server_options(Settings(http2_bdp_probe=True))


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (None, "required outside the demo"),
        (" " * 40, "required outside the demo"),
        ("short secret", "at least 32 characters"),
        (DEVELOPMENT_PIN_KEY.decode(), "a public value"),
        ("CHANGE-ME-to-a-secret-of-at-least-32-characters", "a public value"),
    ],
)
def test_serve_refuses_real_cards_without_a_pin_key_of_its_own(
    key: str | None,
    why: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("LOYALTY_PIN_KEY", raising=False)
    if key is not None:
        monkeypatch.setenv("LOYALTY_PIN_KEY", key)
    assert main(["serve", "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "pin_key (LOYALTY_PIN_KEY)" in error and why in error
    assert key is None or key not in error  # the secret is never printed
    assert list(tmp_path.iterdir()) == []  # refused before any embedded server started


def test_the_demo_may_use_the_development_pin_key_and_a_deployment_its_own() -> None:
    check_secrets(Settings(demo=True))
    check_secrets(Settings(pin_key="x" * 32))
    assert pin_key_of(Settings(pin_key="x" * 32)) == b"x" * 32
    assert pin_key_of(Settings(demo=True)) is None  # the environment's, or the development one

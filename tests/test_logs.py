"""Logging: plain and JSON lines, the request id on every record, card numbers masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from processor.runtime import logs
from processor.runtime.settings import Settings
from processor.service.guard import request_id_var

CARD = "6001200000000010"  # 16 digits
MASKED = "600120******0010"


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level put back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def logger_to(stream: io.StringIO, log_format: str) -> logging.Logger:
    logger = logging.getLogger(f"test_logs.{log_format}.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logs.make_handler(log_format, stream))
    return logger


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"card {CARD} declined", f"card {MASKED} declined"),
        ("4111111111111", "411111***1111"),  # 13 digits
        ("1234567890123456789", "123456*********6789"),  # 19 digits
        ("id 123456789012 and 12345678901234567890", "id 123456789012 and 12345678901234567890"),
        (f"{CARD},{CARD}", f"{MASKED},{MASKED}"),
        ("amount 12000 at 2026-03-02T10:00:00", "amount 12000 at 2026-03-02T10:00:00"),
    ],
)
def test_mask_cards_masks_13_to_19_digit_runs_only(text: str, expected: str) -> None:
    assert logs.mask_cards(text) == expected


def test_a_card_number_in_a_log_call_comes_out_masked_in_json_lines() -> None:
    stream = io.StringIO()
    logger = logger_to(stream, "json")
    token = request_id_var.set("req-42")
    try:
        logger.info("purchase on card %s for %d cents", CARD, 12000)
        logger.warning(f"no card {CARD}")
        try:
            raise ValueError(f"bad card {CARD}")
        except ValueError:
            logger.exception("failed")
    finally:
        request_id_var.reset(token)
    logger.info("outside any call")

    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert CARD not in stream.getvalue()
    assert records[0]["message"] == f"purchase on card {MASKED} for 12000 cents"
    assert records[0]["level"] == "INFO"
    assert records[0]["request_id"] == "req-42"
    assert records[0]["logger"] == logger.name
    assert records[0]["time"].endswith("Z")
    assert records[1]["message"] == f"no card {MASKED}"
    assert MASKED in records[2]["exception"] and "ValueError" in records[2]["exception"]
    assert records[3]["request_id"] == "-"
    assert len(records) == 4


def test_plain_lines_carry_the_request_id_and_masked_cards() -> None:
    stream = io.StringIO()
    logger = logger_to(stream, "plain")
    token = request_id_var.set("abc")
    try:
        logger.error("card %s", CARD)
    finally:
        request_id_var.reset(token)
    line = stream.getvalue().strip()
    assert line.endswith(f"ERROR {logger.name} [abc] card {MASKED}")


def test_install_replaces_the_root_handlers(root_logging: logging.Logger) -> None:
    logging.basicConfig(force=True)
    stream = io.StringIO()
    logs.install("json", "warning", stream=stream)
    assert len(root_logging.handlers) == 1
    assert root_logging.level == logging.WARNING
    logging.getLogger("processor.somewhere").info("not shown")
    logging.getLogger("processor.somewhere").warning("card %s", CARD)
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == f"card {MASKED}"
    logs.install("plain", logging.DEBUG, stream=stream)
    assert len(root_logging.handlers) == 1


def test_bad_formats_and_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="log_format"):
        logs.make_handler("xml")
    with pytest.raises(ValueError, match="log level"):
        logs.install("plain", "LOUD")
    assert Settings(log_format="JSON", log_level="debug").log_format == "json"
    assert Settings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValueError):
        Settings(log_format="xml")

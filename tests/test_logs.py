"""Logging setup: JSON and text lines, the request id on every record, secret redaction."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from kiro_fast.logs import RedactingFilter, redact, request_id_var, setup_logging

ACCESS_TOKEN = "aoaAAAAAGhAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
REFRESH_TOKEN = "aorAAAAAGhZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210:c2lnbmF0dXJl"


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_documented_fields(restore_root) -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream)
    log = logging.getLogger("kiro_fast.test")
    token = request_id_var.set("0123456789abcdef")
    try:
        log.info("served %s in %d ms", "/v1/messages", 12, extra={"status": 200})
    finally:
        request_id_var.reset(token)
    log.debug("below the level")
    (line,) = lines(stream)
    entry = orjson.loads(line)
    assert entry["level"] == "info"
    assert entry["logger"] == "kiro_fast.test"
    assert entry["msg"] == "served /v1/messages in 12 ms"
    assert entry["request_id"] == "0123456789abcdef"
    assert entry["status"] == 200
    assert entry["ts"].endswith("Z") and entry["ts"][10] == "T"
    assert "exc" not in entry


def test_json_lines_include_the_exception(restore_root) -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream)
    try:
        raise ValueError("broken thing")
    except ValueError:
        logging.getLogger("kiro_fast.test").exception("failed")
    entry = orjson.loads(lines(stream)[0])
    assert entry["level"] == "error"
    assert entry["request_id"] == "-"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert "ValueError: broken thing" in entry["exc"]


def test_text_lines_show_the_request_id(restore_root) -> None:
    stream = io.StringIO()
    setup_logging("debug", "text", stream=stream)
    log = logging.getLogger("kiro_fast.test")
    log.debug("outside")
    token = request_id_var.set("feedfacecafebeef")
    try:
        log.warning("inside")
    finally:
        request_id_var.reset(token)
    outside, inside = lines(stream)
    assert outside.endswith(" DEBUG   kiro_fast.test [-] outside")
    assert inside.endswith(" WARNING kiro_fast.test [feedfacecafebeef] inside")


def test_secrets_are_masked_in_messages_args_and_tracebacks(restore_root) -> None:
    stream = io.StringIO()
    setup_logging("info", "text", stream=stream)
    log = logging.getLogger("kiro_fast.test")
    log.info("upstream said: Authorization: Bearer %s", ACCESS_TOKEN)
    log.info("refresh with %s", REFRESH_TOKEN)
    try:
        raise RuntimeError(f"refresh failed for {REFRESH_TOKEN}")
    except RuntimeError:
        log.exception("refresh error")
    output = stream.getvalue()
    assert ACCESS_TOKEN not in output
    assert REFRESH_TOKEN not in output
    assert REFRESH_TOKEN[:20] not in output
    assert "Authorization: Bearer ***" in output
    assert "refresh with aor***" in output
    assert "RuntimeError: refresh failed for aor***" in output


def test_secrets_are_masked_in_json_exception_text(restore_root) -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream)
    try:
        raise RuntimeError("key ksk_live_0123456789")
    except RuntimeError:
        logging.getLogger("kiro_fast.test").exception("with %s", "sk-client-0123456789")
    entry = orjson.loads(lines(stream)[0])
    assert entry["msg"] == "with sk-***"
    assert "RuntimeError: key ksk_***" in entry["exc"]


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("authorization: bearer ksk_123456789", "authorization: bearer ***"),
        (f"token={ACCESS_TOKEN} next", "token=aoa*** next"),
        (f'{{"refreshToken": "{REFRESH_TOKEN}"}}', '{"refreshToken": "***"}'),
        (
            '{"clientSecret": "s3cr3t", "region": "us-east-1"}',
            '{"clientSecret": "***", "region": "us-east-1"}',
        ),
        ("x-api-key: sk-demo-client-key", "x-api-key: ***"),
        ("using key sk-demo-client-key now", "using key sk-*** now"),
        ("api_key=abc&mode=x", "api_key=***&mode=x"),
        ("ksk_abcdefgh", "ksk_***"),
        # ordinary text is left alone
        ("the aorta and the aoa", "the aorta and the aoa"),
        ("task-12345678 on disk-0123456789", "task-12345678 on disk-0123456789"),
    ],
)
def test_redact(raw: str, masked: str) -> None:
    assert redact(raw) == masked


def test_redacting_filter_keeps_clean_records_unchanged() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain %s", ("text",), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "plain text"


def test_setup_twice_replaces_its_own_handlers_only(restore_root) -> None:
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "text", stream=first)
    setup_logging("info", "text", stream=second)
    logging.getLogger("kiro_fast.test").info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1
    assert foreign in logging.getLogger().handlers
    logging.getLogger().removeHandler(foreign)


def test_setup_writes_to_a_file(restore_root, tmp_path) -> None:
    path = tmp_path / "kiro.log"
    setup_logging("warning", "json", file=str(path))
    logging.getLogger("kiro_fast.test").warning("to the file")
    logging.getLogger("kiro_fast.test").info("filtered out")
    for handler in logging.getLogger().handlers:
        handler.flush()
    (line,) = path.read_text().splitlines()
    assert orjson.loads(line)["msg"] == "to the file"


def test_setup_rejects_unknown_values(restore_root) -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("loud")
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("info", "xml")

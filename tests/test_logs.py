"""LOG_FORMAT=json: one JSON object per line with the run, step, worker and trace id when known,
read back line by line; the text format stays the default."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from core.config import Settings
from core.liveness import this_worker_id
from core.logs import JsonFormatter, configure_logging, run_context, set_step


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("core.tests.json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)


def _entries(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_line_inside_a_run_carries_its_id_step_worker_and_the_current_trace_id(lines):
    logger, buffer = lines
    tracer = TracerProvider().get_tracer("tests")  # a real SDK tracer, not the global one
    logger.info("before any run")
    with run_context("run-1"), tracer.start_as_current_span("step") as span:
        logger.info("Workflow %s - Step %s: %s (%d%%)", "run-1", "validate", "processing", 0)
        set_step("generate_image")
        logger.warning("a retry", extra={"step": "upload_image"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed")
    logger.info("after the run")
    trace_id = format(span.get_span_context().trace_id, "032x")
    outside, first, retry, failed, after = _entries(buffer)
    assert outside.keys() == {"time", "level", "logger", "message"}
    assert outside["logger"] == "core.tests.json" and outside["level"] == "INFO"
    assert first["message"] == "Workflow run-1 - Step validate: processing (0%)"
    assert first["run_id"] == "run-1" and first["worker"] == this_worker_id()
    assert first["trace_id"] == trace_id and len(first["span_id"]) == 16
    assert "step" not in first  # no step set yet
    assert retry["step"] == "upload_image" and retry["level"] == "WARNING"  # extra= wins
    assert failed["step"] == "generate_image" and "ValueError: boom" in failed["exception"]
    assert "run_id" not in after and "trace_id" not in after
    assert first["time"].endswith("+00:00")


def test_json_is_asked_for_and_text_stays_the_default(monkeypatch):
    root, engine = logging.getLogger(), logging.getLogger("core")
    saved = root.handlers[:], root.level, engine.level
    try:
        configure_logging(Settings(_env_file=None))
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        monkeypatch.setenv("LOG_FORMAT", "json")
        configure_logging(Settings(_env_file=None))
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        logging.basicConfig(handlers=saved[0], level=saved[1], force=True)
        engine.setLevel(saved[2])
        logging.captureWarnings(False)

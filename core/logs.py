"""Logging setup shared by the app, the CLI, the API and the workers. `DEBUG=workflow:*` turns on
the engine's detail; `LOG_FORMAT=json` writes one JSON object per line (time, level, logger,
message, and the run, step, worker and trace id when known) for a log shipper, where the default
stays the original text (`Workflow <id> - Step <step>: <status> (<progress>%)`).

The run and step come from a context the runner sets (`run_context`, `set_step`), so every line
logged while a run executes carries them, whichever module logs it; `extra={"run_id": ...}`
names them on a line logged elsewhere. A small Formatter rather than a JSON logging library:
the fields are these few, and json.dumps writes them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import trace
from rich.console import Console
from rich.logging import RichHandler

from core.config import Settings
from core.liveness import this_worker_id


@dataclass
class _RunContext:
    run_id: str
    worker: str
    step: str | None = None


_run: ContextVar[_RunContext | None] = ContextVar("reelforge_run", default=None)


@contextmanager
def run_context(workflow_id: str) -> Iterator[None]:
    """Lines logged inside carry this run's id and this process's worker id."""
    token = _run.set(_RunContext(workflow_id, this_worker_id()))
    try:
        yield
    finally:
        _run.reset(token)


def current_run_id() -> str | None:
    """The run this thread (context) is executing, if any."""
    current = _run.get()
    return None if current is None else current.run_id


def set_step(step: str) -> None:
    """The step the current run is executing, for the lines that follow."""
    current = _run.get()
    if current is not None:
        current.step = str(step)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = _run.get()
        if current is not None:
            entry.update(run_id=current.run_id, step=current.step, worker=current.worker)
        for field in ("run_id", "step", "worker"):  # extra= wins over the context
            if field in record.__dict__:
                entry[field] = record.__dict__[field]
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in entry.items() if v is not None}, default=str)


def json_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler


def configure_logging(
    settings: Settings, *, level: int = logging.INFO, console: Console | None = None
) -> None:
    if settings.log_format == "json":
        handler = json_handler()
        logging.captureWarnings(True)  # a library's warning is a line of the log too
    else:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("core").setLevel(logging.DEBUG if settings.debug_workflow else level)

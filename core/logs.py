"""Logging setup shared by the app and the CLI. `DEBUG=workflow:*` turns on the engine's detail."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

from core.config import Settings


def configure_logging(
    settings: Settings, *, level: int = logging.INFO, console: Console | None = None
) -> None:
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("core").setLevel(logging.DEBUG if settings.debug_workflow else level)

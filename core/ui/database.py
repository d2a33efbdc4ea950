"""A page's reads and changes through the database: when it does not answer, logged once, one
banner, and the page stops cleanly instead of showing a traceback. The UI's one place that opens
a write transaction for a page."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.runtime import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")
DB_DOWN = "The database is not answering right now. Reload the page in a moment."


@contextmanager
def guarded(what: str, *, stop: bool = True) -> Iterator[None]:
    """Around a read or a change, e.g. `with guarded("history could not read runs"),
    runtime.db.read() as session:`. On a database error: log `what`, show the banner, stop the
    page. With stop=False only the rest of the block is skipped: for a change whose page should
    stay, and inside a fragment (st.stop() there would also end the page's first full run)."""
    try:
        yield
    except SQLAlchemyError:
        log.exception("App - %s", what)
        st.error(DB_DOWN)
        if stop:
            st.stop()


def change(runtime: Runtime, action: Callable[[Session], T], *, what: str) -> tuple[bool, T | None]:
    """`action` in its own transaction: committed when it returns, rolled back when it raises.
    Our own errors (a refusal) reach the caller to word; when the database does not answer, the
    banner and (False, None), and the page goes on."""
    with guarded(what, stop=False), runtime.db.begin() as session:
        return True, action(session)
    return False, None

"""A page's reads and changes when the database does not answer: logged once, one banner, and
the page stops cleanly instead of showing a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)
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

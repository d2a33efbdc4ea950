"""Text that came from a user, shown literally on every page.

Streamlit reads Markdown in st.markdown, st.caption, alert bodies, toasts and in every label and
tooltip, and extends it with emoji shortcodes (`:smile:`), colour directives (`:red[...]`), LaTeX
(`$...$`) and GitHub autolinks (bare URLs and emails). The shortcodes and autolinks are found in
the already-parsed text, so no escaping can keep them inert. Hence one rule: prompts, names,
emails, reasons, provider messages and ids from a URL never go into those elements. They go
through `literal` (st.text, which interprets nothing) or into dataframe cells; our own words
stay in the Markdown elements around them.
"""

from __future__ import annotations

import re

import streamlit as st

from core.ui import format as fmt

# Bidirectional controls are refused on the way in (core.schemas); rows written before that rule
# may still hold them, so they are shown as code points instead of reordering the line.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    return _BIDI.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)


def literal(text: str, *, limit: int | None = None) -> None:
    """`text` exactly as the user wrote it (shortened to `limit` characters when given)."""
    st.text(visible(fmt.shorten(text, limit) if limit else text))


def titled(title: str, text: str, *, limit: int | None = None) -> None:
    """Our bold title (Markdown), the user's text beneath it (literal)."""
    st.markdown(f"**{title}**")
    literal(text, limit=limit)


ALERTS = {"success": st.success, "info": st.info, "warning": st.warning, "error": st.error}


def alert(kind: str, message: str, detail: str | None = None, *, icon: str | None = None) -> None:
    """An alert in our words, with the user's part (a name, a reason, a provider's message)
    shown literally beneath it."""
    ALERTS.get(kind, st.info)(message, icon=icon)
    if detail:
        literal(detail)

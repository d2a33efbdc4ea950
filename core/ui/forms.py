"""Form helpers: drafts that survive a trip to another page, and inline field errors.

Streamlit forgets a widget's value once a run does not draw it (e.g. after visiting another
page); a page keeps its own copy under a draft key and restores the widgets from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import streamlit as st


def restore(draft_key: str, defaults: Mapping[str, Any]) -> None:
    """Give every widget key a value before its widget is drawn: the draft's, else the default."""
    draft = st.session_state.get(draft_key, {})
    for key, default in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = draft.get(key, default)


def remember(draft_key: str, keys: Iterable[str]) -> None:
    st.session_state[draft_key] = {k: st.session_state[k] for k in keys if k in st.session_state}


def field_errors(problems: Mapping[str, str], *fields: str) -> None:
    """Inline errors under a field, for each problem whose key starts with one of `fields`."""
    for name, message in problems.items():
        if any(name == f or name.startswith(f"{f}.") for f in fields):
            st.error(f"{_label(name)} {message}", icon=":material/error:")


def _label(field: str) -> str:
    labels = {
        "imagePrompt": "The image prompt",
        "videoPrompt": "The video prompt",
        "projectId": "The project",
        "webhookUrl": "The webhook URL",
        "webhookEvents": "The webhook events",
    }
    if field in labels:
        return labels[field]
    return field.split(".")[-1].replace("generateAudio", "audio").replace("aspectRatio", "aspect")


def char_counter(text: str, limit: int) -> None:
    count = len(text.strip())
    colour = "red" if count > limit else "gray"
    st.caption(f":{colour}[{count:,} / {limit:,} characters]")

"""Reelforge's Streamlit entry point. The dashboard pages arrive with their own issue; for now this
starts the engine (schema upgrade, recovery, heartbeats) and shows what it runs on."""

import streamlit as st

from core.config import load_settings
from core.runtime import Runtime


@st.cache_resource
def runtime() -> Runtime:
    engine = Runtime(load_settings())
    engine.start_background()
    return engine


st.set_page_config(page_title="Reelforge", page_icon="🎬", layout="wide")
engine = runtime()
st.title("🎬 Reelforge")
st.caption("Two prompts in, a short video out.")
st.subheader("Engine")
st.table(
    {
        "capability": list(engine.providers.labels),
        "provider": list(engine.providers.labels.values()),
    }
)
st.info(
    "The dashboard pages are on their way. Meanwhile, run a workflow from a terminal: "
    '`python -m core run --image-prompt "a red fox in fresh snow" '
    '--video-prompt "slow dolly in, snow falling"`'
)

"""System health (admins): the database, a storage write/read/delete probe and each provider's
credentials through its cheapest call, with latencies — what `python -m core health` shows."""

import streamlit as st

from core.health import check_all
from core.ui.runtime import get_runtime
from core.ui.session import require_admin

runtime = get_runtime()
require_admin()

st.title("🩺 System health")
st.caption(
    "Each check makes a real call: the database and its schema version, a storage probe, and "
    "the cheapest call that proves each provider's credentials."
)
if st.button("Check again", key="health_check_again", icon=":material/refresh:"):
    st.rerun()

with st.spinner("Checking…"):
    checks = check_all(runtime)

down = [check for check in checks if not check.ok]
if down:
    st.error(f"{len(down)} of {len(checks)} checks are down: {', '.join(c.name for c in down)}")
else:
    st.success(f"All {len(checks)} checks are up.")
st.dataframe(
    [
        {
            "check": check.name,
            "status": "✅ up" if check.ok else "❌ down",
            "latency (ms)": round(check.latency_ms, 1),
            "detail": check.detail,
        }
        for check in checks
    ],
    hide_index=True,
    use_container_width=True,
    key="health_table",
)
st.caption(
    "Providers in use: "
    + ", ".join(f"{capability} → {label}" for capability, label in runtime.providers.labels.items())
    + f" · database: {runtime.db.dialect} · worker threads: {runtime.settings.worker_threads}"
)

"""The receipt of a run that ended failed or cancelled: why, which step, whether the video
provider confirmed stopping, and the refund with its ledger entry; and, on any run, the still it
reused instead of paying for."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import streamlit as st

from core.states import WorkflowStatus
from core.ui import format as fmt
from core.ui import text
from core.views.watch import Receipt, StillReused


def receipt(rec: Receipt, tz: ZoneInfo | None) -> None:
    cancelled = rec.status is WorkflowStatus.CANCELLED
    with st.container(key="watch_receipt", border=True):
        title = "🚫 Run cancelled" if cancelled else "❌ Run failed"
        st.subheader(title)
        where = f" during **{fmt.STEP_LABELS[rec.step][1]}**" if rec.step else ""
        reason = rec.reason or "no reason was recorded"
        # The reason may be a provider's message or the user's words: shown literally.
        text.alert(
            "warning" if cancelled else "error",
            f"{'Stopped' if cancelled else 'Failed'}{where}. The reason:",
            f"{reason[:1].upper()}{reason[1:]}",
        )
        if rec.provider_cancel is True:
            st.success("The video provider confirmed it stopped the job.", icon=":material/done:")
        elif rec.provider_cancel is False:
            st.warning(
                "The video provider did not confirm it stopped the job; you are not charged "
                "for it either way.",
                icon=":material/help:",
            )
        if rec.entry is not None:
            entry = rec.entry
            st.markdown(f"**Refunded {entry.amount} credits** to your balance.")
            st.caption(
                f"Ledger entry #{entry.id} · {entry.kind} +{entry.amount} · balance after "
                f"{entry.balance_after} · {fmt.local_time(entry.created_at, tz, with_date=True)}"
                " · reason:"
            )
            text.literal(entry.reason)
        else:
            st.caption("No refund was recorded for this run (it cost nothing).")
        if rec.still_reused is not None:
            reused_still(rec.still_reused, tz)
        if rec.category:
            st.caption(f"Failure category: `{rec.category}`")


def reused_still(reused: StillReused, tz: ZoneInfo | None) -> None:
    entry = reused.entry
    st.info(
        f"Still reused from run {reused.source_id}, saved {reused.saved} credits.",
        icon=":material/recycling:",
    )
    st.caption(
        f"Ledger entry #{entry.id} · {entry.kind} +{entry.amount} · balance after "
        f"{entry.balance_after} · {fmt.local_time(entry.created_at, tz, with_date=True)}"
    )

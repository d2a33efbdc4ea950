"""Inbox: what happened to the user's runs, budgets and credits, newest first. Opening an entry
marks it read and goes to its run (the watch page, with the receipt of a refunded run) or shows
its ledger entry; the sidebar's bell counts what is still unread."""

import streamlit as st

from core import credits, inbox
from core.inbox import Notice
from core.ui import format as fmt
from core.ui import nav, text
from core.ui.database import change, guarded
from core.ui.runtime import get_runtime
from core.ui.session import require_user, show_flashes

SHOWN = 100
ICONS = {
    "run_completed": ":material/check_circle:",
    "run_failed": ":material/error:",
    "run_cancelled": ":material/cancel:",
    "budget_alert": ":material/savings:",
    "credits": ":material/account_balance_wallet:",
}

runtime = get_runtime()
user = require_user()
tz = fmt.zone(st.context.timezone)

st.title("🔔 Inbox")
show_flashes()


def mark_read(ids: list[int] | None) -> None:
    change(
        runtime,
        lambda s: inbox.mark_read(s, user.id, ids),
        what="inbox could not mark entries read",
    )


entry_param = st.query_params.get("entry")
with guarded("inbox could not read entries"), runtime.db.read() as session:
    notices = inbox.recent(session, user.id, limit=SHOWN)
    entry = (
        credits.entry_of(session, user.id, int(entry_param))
        if entry_param and entry_param.isdigit()
        else None
    )

if entry is not None:
    with st.container(border=True, key="inbox_ledger_entry"):
        st.markdown(f"**Ledger entry #{entry.id}** · {entry.kind} {entry.amount:+,} credits")
        st.caption(
            f"Balance after {entry.balance_after:,} · "
            f"{fmt.local_time(entry.created_at, tz, with_date=True)} · by and why:"
        )
        text.literal(entry.actor)
        text.literal(entry.reason)
elif entry_param:
    st.warning("There is no such ledger entry in your account.")

unread = [n.id for n in notices if not n.is_read]
top = st.container(horizontal=True, vertical_alignment="center")
top.caption(f"{len(unread):,} unread · the newest {SHOWN} entries are shown")
if top.button(
    "Mark all read", key="inbox_mark_all", disabled=not unread, icon=":material/done_all:"
):
    mark_read(None)
    st.rerun()

if not notices:
    st.info("Nothing yet: runs that end, budget alerts and credit changes appear here.")


def draw(notice: Notice) -> None:
    with st.container(border=True, key=f"inbox_entry_{notice.id}"):
        words, actions = st.columns([5, 1.3], vertical_alignment="center")
        with words:
            status = "read" if notice.is_read else "**new**"
            st.markdown(f"{status} · {fmt.local_time(notice.created_at, tz, with_date=True)}")
            # Titles and bodies may quote a prompt, a project name or an admin's reason.
            text.literal(notice.title)
            if notice.body:
                text.literal(notice.body, limit=300)
        with actions:
            if notice.run_id is not None and st.button(
                "Open run", key=f"inbox_open_{notice.id}", icon=ICONS.get(notice.kind)
            ):
                mark_read([notice.id])
                st.switch_page(nav.WATCH.path, query_params={"id": notice.run_id})
            if notice.ledger_id is not None and st.button(
                "Ledger entry", key=f"inbox_open_{notice.id}", icon=ICONS.get(notice.kind)
            ):
                mark_read([notice.id])
                st.query_params["entry"] = str(notice.ledger_id)
                st.rerun()
            if not notice.is_read and st.button("Mark read", key=f"inbox_read_{notice.id}"):
                mark_read([notice.id])
                st.rerun()


for notice in notices:
    draw(notice)

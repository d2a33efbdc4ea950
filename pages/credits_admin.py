"""Credits (admins): balances with low-balance highlighting, grants and deductions with a reason,
each user's ledger, refunds, monthly budgets, the CREDIT_COSTS editor and user management.
Every change goes through core.admin, which re-checks the actor and leaves a ledger row or an
audit event."""

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.orm import Session

from core import admin
from core.admin import UserRow
from core.auth import Role
from core.budgets import TEAM, Scope, ScopeKind
from core.errors import (
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    RequestValidationError,
)
from core.ui import database, text
from core.ui import format as fmt
from core.ui.runtime import get_runtime
from core.ui.session import flash, require_admin, show_flashes

REFUSED = "Only an active admin may do this."
LOW_STYLE = "background-color: rgba(239, 68, 68, 0.22)"

runtime = get_runtime()
actor = require_admin()
tz = fmt.zone(st.context.timezone)

st.title("💳 Credits")
show_flashes()


def refuse(exc: Exception, icon: str | None = None) -> None:
    """Why a change was refused; the problem may quote what was typed, so it is shown literally."""
    if isinstance(exc, PermissionDeniedError):
        st.error(REFUSED, icon=icon)
    elif isinstance(exc, RequestValidationError):
        problems = "; ".join(f"{f} {msg}" for f, msg in exc.problems.items())
        text.alert("error", "Not saved:", problems, icon=icon)
    else:
        text.alert("error", "Not saved:", str(exc), icon=icon)


def change(action: Callable[[Session], Any]) -> tuple[bool, Any]:
    """One admin action in its own transaction; a refusal becomes a message, never a
    traceback, and rolls everything back."""
    try:
        return database.change(runtime, action, what="credits admin could not save a change")
    except (
        RequestValidationError,
        InsufficientCreditsError,
        PermissionDeniedError,
        NotFoundError,
    ) as exc:
        refuse(exc, ":material/block:")
        return False, None


def read(query: Callable[[Session], Any]) -> Any:
    """A read for the page; when it fails the page says so and stops."""
    try:
        with database.guarded("credits admin could not read"), runtime.db.read() as session:
            return query(session)
    except (PermissionDeniedError, RequestValidationError, NotFoundError) as exc:
        refuse(exc)
    st.stop()


def when(moment: Any) -> str:
    return fmt.local_time(moment, tz, with_date=True)


default_threshold = read(admin.low_balance_threshold)
threshold = st.number_input(
    "Low balance below",
    min_value=0,
    value=default_threshold,
    step=1,
    key="credits_low_threshold",
    help="Default: what one run with the default options costs now.",
)
users: list[UserRow] = read(lambda s: admin.list_users(s, actor, low_balance_below=int(threshold)))
by_id = {u.id: u for u in users}


def label(user_id: int) -> str:
    u = by_id[user_id]
    return f"{u.email} · {u.balance:,} cr" + ("" if u.is_active else " · inactive")


balances, ledger, refunds_tab, budgets_tab, costs_tab, users_tab = st.tabs(
    ["Balances", "Ledger", "Refunds", "Budgets", "Credit costs", "Users"]
)

# ---------------------------------------------------------------------------------------------
with balances:
    low = [u for u in users if u.low_balance]
    counts = st.columns(3)
    counts[0].metric("Accounts", f"{len(users):,}")
    counts[1].metric("Low balance", f"{len(low):,}")
    counts[2].metric("Credits held", f"{sum(u.balance for u in users):,}")
    table = pd.DataFrame(
        [
            {
                "email": u.email,
                "name": u.display_name,
                "role": u.role.value,
                "active": u.is_active,
                "balance": u.balance,
                "low balance": "⚠️ low" if u.low_balance else "",
            }
            for u in users
        ]
    )
    st.dataframe(
        table.style.apply(lambda row: [LOW_STYLE if row["low balance"] else ""] * len(row), axis=1),
        hide_index=True,
        width="stretch",
        key="credits_balances_table",
    )

    with st.form("credits_move_form"):
        st.markdown("**Grant or deduct credits**")
        who, what, how_many = st.columns([3, 1.2, 1])
        target = who.selectbox(
            "User", list(by_id), index=None, format_func=label, key="credits_move_user"
        )
        kind = what.radio("Action", ["Grant", "Deduct"], horizontal=True, key="credits_move_kind")
        amount = how_many.number_input(
            "Credits",
            min_value=1,
            max_value=admin.MAX_CREDITS_PER_MOVE,
            value=10,
            step=1,
            key="credits_move_amount",
        )
        reason = st.text_input(
            "Reason (required, kept in the ledger)",
            max_chars=admin.REASON_MAX_CHARS,
            key="credits_move_reason",
        )
        moved = st.form_submit_button("Apply", type="primary", key="credits_move_submit")
    if moved:
        if target is None:
            st.error("Choose a user.")
        else:
            move = admin.grant_credits if kind == "Grant" else admin.deduct_credits
            ok, balance = change(lambda s: move(s, actor, target, int(amount), reason=reason))
            if ok:
                verb = "Granted" if kind == "Grant" else "Deducted"
                flash(
                    f"{verb} {int(amount):,} credits; the balance is now {balance:,}.",
                    detail=by_id[target].email,
                )
                st.rerun()

# ---------------------------------------------------------------------------------------------
with ledger:
    whose = st.selectbox(
        "User",
        list(by_id),
        index=None,
        format_func=label,
        key="credits_ledger_user",
        placeholder="Choose a user to see their ledger",
    )
    if whose is not None:
        page = st.number_input("Page", min_value=1, value=1, step=1, key="credits_ledger_page")
        history = read(lambda s: admin.ledger_history(s, actor, whose, page=int(page)))
        if history.entries:
            st.dataframe(
                pd.DataFrame(
                    [
                        {
                            "when": when(e.created_at),
                            "kind": e.kind,
                            "amount": e.amount,
                            "balance after": e.balance_after,
                            "by": e.actor,
                            "reason": e.reason,
                            "run": e.workflow_id or "",
                        }
                        for e in history.entries
                    ]
                ),
                hide_index=True,
                width="stretch",
                key="credits_ledger_table",
            )
        else:
            st.info("No ledger rows on this page.")
        st.caption(f"{fmt.plural(history.total, 'ledger row')} · page {page} of {history.pages}")

# ---------------------------------------------------------------------------------------------
with refunds_tab:
    refunded = read(lambda s: admin.refunds(s, actor, limit=200))
    if refunded:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "when": when(r.created_at),
                        "user": r.email,
                        "credits": r.amount,
                        "run": r.workflow_id or "",
                        "run status": r.workflow_status or "",
                        "failure": r.error_category or "",
                        "by": r.actor,
                        "reason": r.reason,
                    }
                    for r in refunded
                ]
            ),
            hide_index=True,
            width="stretch",
            key="credits_refunds_table",
        )
        st.caption("The 200 most recent refunds; failed and cancelled runs refund themselves.")
    else:
        st.info("No refunds yet.")
    with st.form("credits_refund_form"):
        st.markdown("**Refund a finished run** (e.g. a completed clip that is unusable)")
        run_id = st.text_input("Run id", key="credits_refund_run")
        refund_reason = st.text_input(
            "Reason (required)", max_chars=admin.REASON_MAX_CHARS, key="credits_refund_reason"
        )
        refund_now = st.form_submit_button("Refund", key="credits_refund_submit")
    if refund_now:
        ok, given = change(
            lambda s: admin.refund_run(s, actor, run_id.strip(), reason=refund_reason)
        )
        if ok:
            flash(f"Refunded {given:,} credits for the run.", detail=run_id.strip())
            st.rerun()

# ---------------------------------------------------------------------------------------------
with budgets_tab:
    st.caption(
        "Monthly credit caps. A start that would take a user, a project or the team past its "
        "budget is refused; refunds give budget back. Months are calendar months in UTC: every "
        "budget resets on the 1st at 00:00 UTC. Users and admins are told at 80% and 100%."
    )
    listed = read(lambda s: admin.budget_statuses(s, actor))
    if listed:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "scope": b.scope.kind.value,
                        "budget": b.name,
                        "limit": b.limit,
                        "spent this month": b.spent,
                        "left": b.left,
                        "resets (UTC)": f"{b.resets_at:%Y-%m-%d %H:%M}",
                    }
                    for b in listed
                ]
            ),
            hide_index=True,
            width="stretch",
            key="credits_budgets_table",
        )
    else:
        st.info("No budgets set: spending is limited only by each balance.")
    all_projects = read(lambda s: admin.budget_projects(s, actor))
    kinds = {ScopeKind.USER: "A user", ScopeKind.PROJECT: "A project", ScopeKind.TEAM: "The team"}
    kind = st.radio(
        "Budget for", list(kinds), format_func=kinds.get, horizontal=True, key="credits_budget_kind"
    )
    scope: Scope | None = TEAM
    if kind is ScopeKind.USER:
        chosen = st.selectbox(
            "User", list(by_id), index=None, format_func=label, key="credits_budget_user"
        )
        scope = None if chosen is None else Scope(ScopeKind.USER, chosen)
    elif kind is ScopeKind.PROJECT:
        chosen = st.selectbox(
            "Project",
            list(all_projects),
            index=None,
            format_func=all_projects.get,
            key="credits_budget_project",
        )
        scope = None if chosen is None else Scope(ScopeKind.PROJECT, chosen)
    monthly = st.number_input(
        "Credits per month",
        min_value=1,
        max_value=admin.MAX_CREDITS_PER_MOVE,
        value=100,
        step=1,
        key="credits_budget_monthly",
    )
    set_col, clear_col = st.columns(2)
    set_now = set_col.button("Set budget", type="primary", key="credits_budget_set")
    clear_now = clear_col.button("Clear budget", key="credits_budget_clear")
    if (set_now or clear_now) and scope is None:
        st.error("Choose who the budget is for.")
    elif set_now:
        ok, status = change(lambda s: admin.set_budget(s, actor, scope, int(monthly)))
        if ok:
            flash(
                f"Budget set: {status.limit:,} credits a month, {status.left:,} left this month.",
                detail=status.name,
            )
            st.rerun()
    elif clear_now:
        ok, cleared = change(lambda s: admin.clear_budget(s, actor, scope))
        if ok:
            flash("Budget cleared." if cleared else "There was no budget to clear.")
            st.rerun()

# ---------------------------------------------------------------------------------------------
with costs_tab:
    costs = read(lambda s: admin.credit_costs(s, actor))
    st.caption(
        "Built-in defaults, never edited."
        if costs.updated_at is None
        else f"Last changed {when(costs.updated_at)} by {costs.updated_by}."
    )
    current = admin.cost_fields(costs.costs.model_dump())
    with st.form("credits_costs_form"):
        st.markdown("**CREDIT_COSTS** — whole credits per image, and per second of video")
        typed: dict[str, str] = {}
        columns = st.columns(4)
        for i, (path, value) in enumerate(current.items()):
            typed[path] = columns[i % 4].text_input(
                path, value=str(value), key=f"credits_cost_{path.replace('.', '_')}"
            )
        save_costs = st.form_submit_button("Save costs", type="primary", key="credits_costs_save")
    if save_costs:
        raw = admin.costs_from_fields(typed)
        ok, _ = change(lambda s: admin.update_credit_costs(s, actor, raw))
        if ok:
            flash("Credit costs saved; new runs are priced with them.")
            st.rerun()
    cost_changes = read(lambda s: admin.audit_log(s, actor, action_prefix="credit_costs"))
    if cost_changes:
        st.markdown("**Changes**")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "when": when(e.at),
                        "by": e.actor,
                        "changed": ", ".join(
                            f"{c.path}: {c.old} → {c.new}" for c in admin.cost_changes(e)
                        ),
                    }
                    for e in cost_changes
                ]
            ),
            hide_index=True,
            width="stretch",
            key="credits_costs_audit",
        )

# ---------------------------------------------------------------------------------------------
with users_tab:
    with st.form("credits_create_form", clear_on_submit=False):
        st.markdown("**Create an account**")
        left, right = st.columns(2)
        email = left.text_input("Email", key="credits_create_email")
        name = right.text_input("Display name (optional)", key="credits_create_name")
        role = left.selectbox(
            "Role", list(Role), format_func=lambda r: r.value, key="credits_create_role"
        )
        starting = right.number_input(
            "Starting credits",
            min_value=0,
            max_value=admin.MAX_CREDITS_PER_MOVE,
            value=0,
            step=1,
            key="credits_create_credits",
        )
        password = left.text_input(
            "Password (optional: one is generated)", type="password", key="credits_create_pw"
        )
        create = st.form_submit_button("Create", type="primary", key="credits_create_submit")
    if create:
        ok, created = change(
            lambda s: admin.create_user(
                s,
                actor,
                email.strip(),
                role=role,
                password=password or None,
                display_name=name,
                starting_credits=int(starting),
            )
        )
        if ok:
            message = f"Created the account ({created.user.role.value})."
            if created.generated_password:
                message += (
                    f" Its password, shown only now: `{created.generated_password}`"
                    " — pass it on securely."
                )
            flash(message, detail=created.user.email)
            st.rerun()

    st.markdown("**Manage an account**")
    managed = st.selectbox(
        "Account",
        list(by_id),
        index=None,
        format_func=label,
        key="credits_manage_user",
        placeholder="Choose an account",
    )
    if managed is not None:
        account = by_id[managed]
        state, role_col, role_button = st.columns([1.4, 1.4, 1], vertical_alignment="bottom")
        toggle_label = "Deactivate" if account.is_active else "Reactivate"
        if state.button(toggle_label, key="credits_manage_active"):
            ok, _ = change(lambda s: admin.set_active(s, actor, managed, not account.is_active))
            if ok:
                flash(f"{toggle_label}d the account.", detail=account.email)
                st.rerun()
        new_role = role_col.selectbox(
            "Role",
            list(Role),
            index=list(Role).index(account.role),
            format_func=lambda r: r.value,
            key=f"credits_manage_role_{managed}",
        )
        if role_button.button(
            "Change role", key="credits_manage_role_save", disabled=new_role is account.role
        ):
            ok, _ = change(lambda s: admin.set_role(s, actor, managed, new_role))
            if ok:
                flash(f"The account is now {new_role.value}.", detail=account.email)
                st.rerun()
    user_changes = read(lambda s: admin.audit_log(s, actor, action_prefix="user.", limit=50))
    if user_changes:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "when": when(e.at),
                        "by": e.actor,
                        "action": e.action,
                        "target": e.target,
                        "details": ", ".join(f"{k}: {v}" for k, v in e.details.items()),
                    }
                    for e in user_changes
                ]
            ),
            hide_index=True,
            width="stretch",
            key="credits_users_audit",
        )

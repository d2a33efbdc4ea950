"""Monitoring (admins): KPIs, outcomes over time, step durations, failures, provider performance,
credit usage and the true cost of a delivered video (stills reused included) for a time range,
narrowed by user, project and provider. Every number comes aggregated from
core.views.monitoring; each panel exports what it shows as CSV."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from core.ui import charts
from core.ui import format as fmt
from core.ui.database import guarded
from core.ui.runtime import get_runtime
from core.ui.session import require_admin
from core.views import monitoring
from core.views.monitoring import MonitoringFilter

RANGES = {
    "1h": ("Last hour", timedelta(hours=1)),
    "24h": ("Last 24 hours", timedelta(days=1)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
    "90d": ("Last 90 days", timedelta(days=90)),
    "365d": ("Last year", timedelta(days=365)),
}
REFRESH_S = 15

runtime = get_runtime()
require_admin()

st.title("📈 Monitoring")


@st.cache_data(ttl=REFRESH_S, max_entries=32, show_spinner=False)
def load_panels(flt: MonitoringFilter) -> dict[str, Any]:
    """Every panel of one filter. `flt.until` is rounded to REFRESH_S, so reruns within that
    window (a widget click, several admins) share one set of queries."""
    with runtime.db.read() as session:
        durations = monitoring.step_durations(session, flt)
        stats = monitoring.provider_performance(session, flt)
        return {
            "kpis": monitoring.kpis(session, flt),
            "outcomes": monitoring.outcomes_over_time(session, flt),
            "durations": durations,
            "histogram": monitoring.histogram(durations),
            "reasons": monitoring.failure_reasons(session, flt),
            "codes": monitoring.error_codes(session, flt),
            "stats": stats,
            "totals": monitoring.provider_totals(stats),
            "usage_user": monitoring.credit_usage(session, flt, by="user"),
            "usage_project": monitoring.credit_usage(session, flt, by="project"),
            "reuse": monitoring.reuse_stats(session, flt),
            "delivered": monitoring.delivered_cost(session, flt),
        }


with guarded("monitoring could not read its filter choices"), runtime.db.read() as session:
    choices = monitoring.filter_choices(session)

emails = dict(choices.users)
projects = {pid: f"{name} · {emails.get(owner, owner)}" for pid, name, owner in choices.projects}
range_col, user_col, project_col, provider_col = st.columns([1.2, 2, 2, 1.2])
period = range_col.selectbox(
    "Time range", list(RANGES), index=2, key="monitoring_range", format_func=lambda r: RANGES[r][0]
)
user_id = user_col.selectbox(
    "User",
    list(emails),
    index=None,
    key="monitoring_user",
    format_func=emails.get,
    placeholder="All users",
)
project_id = project_col.selectbox(
    "Project",
    list(projects),
    index=None,
    key="monitoring_project",
    format_func=projects.get,
    placeholder="All projects",
)
provider = provider_col.selectbox(
    "Provider",
    choices.providers,
    index=None,
    key="monitoring_provider",
    placeholder="All providers",
)
auto_refresh = st.toggle(f"Auto-refresh every {REFRESH_S} s", key="monitoring_auto_refresh")


def current_filter() -> MonitoringFilter:
    now = datetime.now(UTC)
    until = now.replace(microsecond=0) - timedelta(seconds=now.second % REFRESH_S)
    until += timedelta(seconds=REFRESH_S)  # the window's end, so runs made just now are in
    return MonitoringFilter.last(
        RANGES[period][1], now=until, user_id=user_id, project_id=project_id, provider=provider
    )


def download(items: list[Any], name: str) -> None:
    if items:
        st.download_button(
            "CSV",
            monitoring.to_csv(items).encode("utf-8"),
            file_name=f"reelforge-{name}.csv",
            mime="text/csv",
            key=f"monitoring_csv_{name}",
            icon=":material/download:",
            on_click="ignore",
        )


def header(title: str, items: list[Any], name: str) -> None:
    left, right = st.columns([6, 1], vertical_alignment="bottom")
    left.subheader(title)
    with right:
        download(items, name)


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def draw_kpis(kpis: monitoring.Kpis) -> None:
    header("Key figures", [kpis], "kpis")
    columns = st.columns(6)
    columns[0].metric("Workflows", f"{kpis.workflows:,}")
    columns[1].metric("Success rate", percent(kpis.success_rate))
    columns[2].metric("Median duration", fmt.duration(kpis.p50_duration_s))
    columns[3].metric("p95 duration", fmt.duration(kpis.p95_duration_s))
    columns[4].metric("Credits spent", f"{kpis.credits_spent:,}")
    columns[5].metric("In flight now", f"{kpis.in_flight_now:,}")


def draw_outcomes(flt: MonitoringFilter, outcomes: list[monitoring.OutcomeBucket]) -> None:
    header(f"Success and failure per {flt.granularity.value}", outcomes, "outcomes")
    if not any(b.total for b in outcomes):
        st.info("No runs were created in this range.")
        return
    charts.chart(charts.outcomes_figure(outcomes, flt), "monitoring_chart_outcomes")


def draw_steps(panels: dict[str, Any]) -> None:
    durations = panels["durations"]
    header("Step durations", durations, "step_durations")
    if not durations:
        st.info("No step completed in this range.")
        return
    left, right = st.columns(2)
    with left:
        charts.chart(charts.step_percentiles_figure(durations), "monitoring_chart_steps")
    with right:
        charts.chart(charts.histogram_figure(panels["histogram"]), "monitoring_chart_histogram")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "step": d.step,
                    "completed": d.count,
                    "p50 (s)": d.p50_s,
                    "p95 (s)": d.p95_s,
                    "mean (s)": d.mean_s,
                    "max (s)": d.max_s,
                }
                for d in durations
            ]
        ),
        hide_index=True,
        width="stretch",
        key="monitoring_table_steps",
    )


def draw_failures(panels: dict[str, Any]) -> None:
    reasons, codes = panels["reasons"], panels["codes"]
    header("Failure reasons by step", reasons, "failure_reasons")
    if reasons:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "step": r.step or "(before any step)",
                        "category": r.category or "–",
                        "runs": r.count,
                        "example": r.example or "",
                    }
                    for r in reasons
                ]
            ),
            hide_index=True,
            width="stretch",
            key="monitoring_table_reasons",
        )
    else:
        st.info("No run failed in this range.")
    header("Provider error codes", codes, "error_codes")
    if codes:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "step": c.step or "–",
                        "provider": c.provider,
                        "operation": c.operation,
                        "outcome": c.outcome,
                        "error code": c.error_code or "–",
                        "HTTP status": c.status_code,
                        "attempts": c.count,
                    }
                    for c in codes
                ]
            ),
            hide_index=True,
            width="stretch",
            key="monitoring_table_codes",
        )
    else:
        st.info("No provider call failed in this range.")


def draw_providers(panels: dict[str, Any]) -> None:
    stats, totals = panels["stats"], panels["totals"]
    header("Provider API performance", stats, "provider_performance")
    if not stats:
        st.info("No provider calls in this range.")
        return
    left, right = st.columns(2)
    with left:
        charts.chart(charts.provider_latency_figure(stats), "monitoring_chart_latency")
    with right:
        charts.chart(charts.provider_totals_figure(totals), "monitoring_chart_providers")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "provider": s.provider,
                    "operation": s.operation,
                    "attempts": s.calls,
                    "p50 (ms)": s.p50_ms,
                    "p95 (ms)": s.p95_ms,
                    "error rate": s.error_rate,
                    "transient rate": s.transient_rate,
                    "retried": s.retried_share,
                    "USD": s.cost_usd,
                }
                for s in stats
            ]
        ),
        column_config={
            name: st.column_config.NumberColumn(format="percent")
            for name in ("error rate", "transient rate", "retried")
        }
        | {"USD": st.column_config.NumberColumn(format="dollar")},
        hide_index=True,
        width="stretch",
        key="monitoring_table_providers",
    )
    download(totals, "provider_totals")


def draw_usage(flt: MonitoringFilter, panels: dict[str, Any]) -> None:
    by = st.segmented_control(
        "Credit usage by", ["user", "project"], default="user", key="monitoring_usage_by"
    )
    usage = panels["usage_project" if by == "project" else "usage_user"]
    header(f"Credit usage by {by or 'user'}", usage, f"credit_usage_{by or 'user'}")
    if not usage:
        st.info("No credits were spent in this range.")
        return
    charts.chart(charts.credit_usage_figure(usage, flt), "monitoring_chart_usage")
    table = pd.DataFrame(
        [
            {"who": u.label, "reserved": u.reserved, "refunded": u.refunded, "spent": u.spent}
            for u in usage
        ]
    )
    st.dataframe(
        table.groupby("who", as_index=False).sum().sort_values("spent", ascending=False),
        hide_index=True,
        width="stretch",
        key="monitoring_table_usage",
    )


def usd(value: float | None) -> str:
    return "–" if value is None else f"${value:,.2f}"


def per_video(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f} cr"


def draw_delivered(flt: MonitoringFilter, panels: dict[str, Any]) -> None:
    costs: monitoring.DeliveredCosts = panels["delivered"]
    over_time, total = costs.by_time, costs.total
    header("What a delivered video really costs", [total], "delivered_cost")
    st.caption(
        "Everything spent on the finished runs created in the range (failed, retried and "
        "cancelled attempts included) divided by the videos delivered. Credits are net of "
        "refunds and of reused stills; list price is what the providers bill. Waste: what "
        "went to runs that delivered nothing."
    )
    columns = st.columns(6)
    columns[0].metric("Videos delivered", f"{total.delivered:,} of {total.runs:,}")
    columns[1].metric("Credits per video", per_video(total.credits_per_video))
    columns[2].metric("List price per video", usd(total.usd_per_video))
    columns[3].metric("Waste (list price)", usd(total.waste_usd))
    columns[4].metric("Refunded share", percent(total.refunded_share))
    reuse = panels["reuse"]
    columns[5].metric(
        "Stills reused",
        f"{reuse.hits:,}",
        f"{reuse.credits_saved:,} credits saved",
        delta_color="off",
    )
    if not over_time:
        st.info("No run finished in this range.")
        return
    charts.chart(charts.delivered_cost_figure(over_time, flt), "monitoring_chart_delivered")
    by = st.segmented_control(
        "Cost per delivered video by",
        ["model", "user", "project"],
        default="model",
        key="monitoring_delivered_by",
    )
    rows = costs.by(by or "model")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    by or "model": c.label,
                    "runs": c.runs,
                    "delivered": c.delivered,
                    "credits spent": c.credits_spent,
                    "credits / video": c.credits_per_video,
                    "USD": c.list_usd,
                    "USD / video": c.usd_per_video,
                    "waste USD": c.waste_usd,
                    "refunded": c.refunded_share,
                    "saved by reuse": c.credits_saved,
                }
                for c in rows
            ]
        ),
        column_config={
            name: st.column_config.NumberColumn(format="dollar")
            for name in ("USD", "USD / video", "waste USD")
        }
        | {
            "refunded": st.column_config.NumberColumn(format="percent"),
            "credits / video": st.column_config.NumberColumn(format="%.1f"),
        },
        hide_index=True,
        width="stretch",
        key="monitoring_table_delivered",
    )
    download(rows, f"delivered_cost_{by or 'model'}")


@st.fragment(run_every=REFRESH_S if auto_refresh else None)
def dashboard() -> None:
    flt = current_filter()
    panels = None
    with guarded("monitoring could not read its panels", stop=False):
        panels = load_panels(flt)
    if panels is None:
        return
    st.caption(
        f"{RANGES[period][0]} up to {fmt.local_time(flt.until, None, with_date=True)}, in "
        f"{'hourly' if flt.granularity.value == 'hour' else 'daily'} buckets (UTC)."
    )
    draw_kpis(panels["kpis"])
    draw_outcomes(flt, panels["outcomes"])
    draw_steps(panels)
    draw_failures(panels)
    draw_providers(panels)
    draw_usage(flt, panels)
    draw_delivered(flt, panels)


dashboard()

"""Plotly figures for the admin pages, built from the monitoring engine's already-aggregated
dataclasses (pure, testable without Streamlit), and one helper that draws a figure."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
import streamlit as st

from core.ui import format as fmt
from core.views.monitoring import (
    CreditUsage,
    DeliveredCost,
    Granularity,
    HistogramBin,
    MonitoringFilter,
    OutcomeBucket,
    ProviderStats,
    ProviderTotals,
    StepDuration,
)

OUTCOMES = ("completed", "failed", "cancelled", "in_flight")
OUTCOME_COLOURS = {**fmt.STATUS_COLOURS, "in_flight": fmt.STATUS_COLOURS["running"]}
P50_COLOUR, P95_COLOUR = "#3b82f6", "#f59e0b"


def _layout(figure: go.Figure, *, height: int = 320, **extra: object) -> go.Figure:
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 30},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        # Above the plot area, anchored by its bottom: Plotly widens the top margin to fit it,
        # so a legend that wraps never covers the bars.
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        **extra,
    )
    return figure


def _time_axis(figure: go.Figure, flt: MonitoringFilter, bucket: Granularity) -> go.Figure:
    """The filter's whole range on the x axis, each bar as wide as its bucket: one day of data
    stays one day wide (not stretched across the chart with sub-second ticks)."""
    step_ms = bucket.step.total_seconds() * 1000
    figure.update_traces(width=step_ms * 0.8, offset=step_ms * 0.1, selector={"type": "bar"})
    figure.update_xaxes(
        type="date",
        # From one bucket before `since`: buckets start on whole hours, days or Mondays.
        range=[flt.since - bucket.step, flt.until],
        tickformat="%H:%M\n%b %d" if bucket is Granularity.HOUR else "%b %d",
    )
    return figure


def outcomes_figure(buckets: Sequence[OutcomeBucket], flt: MonitoringFilter) -> go.Figure:
    """Runs per bucket, stacked by how they ended."""
    figure = go.Figure(
        [
            go.Bar(
                x=[b.start for b in buckets],
                y=[getattr(b, outcome) for b in buckets],
                name=outcome.replace("_", " "),
                marker_color=OUTCOME_COLOURS[outcome],
            )
            for outcome in OUTCOMES
        ]
    )
    figure = _time_axis(figure, flt, flt.granularity)
    return _layout(figure, barmode="stack", xaxis_title="UTC", yaxis_title="runs")


def step_percentiles_figure(durations: Sequence[StepDuration]) -> go.Figure:
    """p50 and p95 seconds per step, side by side."""
    steps = [d.step for d in durations]
    figure = go.Figure(
        [
            go.Bar(x=steps, y=[d.p50_s for d in durations], name="p50", marker_color=P50_COLOUR),
            go.Bar(x=steps, y=[d.p95_s for d in durations], name="p95", marker_color=P95_COLOUR),
        ]
    )
    return _layout(figure, barmode="group", yaxis_title="seconds")


def bin_label(row: HistogramBin) -> str:
    if row.upper_s is None:
        return f"≥ {row.lower_s:g} s"
    return f"{row.lower_s:g}–{row.upper_s:g} s"


def histogram_figure(rows: Sequence[HistogramBin]) -> go.Figure:
    """Completed steps per duration bin, one trace per step (bins in duration order)."""
    order: list[str] = []
    for row in sorted(rows, key=lambda r: r.lower_s):
        if bin_label(row) not in order:
            order.append(bin_label(row))
    by_step: dict[str, dict[str, int]] = {}
    for row in rows:
        by_step.setdefault(row.step, {})[bin_label(row)] = row.count
    figure = go.Figure(
        [
            go.Bar(x=order, y=[counts.get(label, 0) for label in order], name=step)
            for step, counts in by_step.items()
        ]
    )
    return _layout(
        figure,
        barmode="group",
        xaxis={"title": "step duration", "categoryorder": "array", "categoryarray": order},
        yaxis_title="completed steps",
    )


def provider_latency_figure(stats: Sequence[ProviderStats]) -> go.Figure:
    """p50 and p95 latency per provider operation (a log axis: HEADs beside video renders)."""
    names = [f"{s.provider} · {s.operation}" for s in stats]
    figure = go.Figure(
        [
            go.Bar(
                y=names,
                x=[s.p50_ms for s in stats],
                name="p50",
                orientation="h",
                marker_color=P50_COLOUR,
            ),
            go.Bar(
                y=names,
                x=[s.p95_ms for s in stats],
                name="p95",
                orientation="h",
                marker_color=P95_COLOUR,
            ),
        ]
    )
    return _layout(
        figure,
        height=max(240, 60 + 40 * len(names)),
        barmode="group",
        xaxis={"title": "ms", "type": "log"},
        yaxis={"autorange": "reversed"},
    )


def provider_totals_figure(totals: Sequence[ProviderTotals]) -> go.Figure:
    """Calls (bars) and estimated USD (markers, second axis) per provider."""
    providers = [t.provider for t in totals]
    figure = go.Figure(
        [
            go.Bar(x=providers, y=[t.calls for t in totals], name="calls", marker_color=P50_COLOUR),
            go.Scatter(
                x=providers,
                y=[t.cost_usd for t in totals],
                name="USD (list prices)",
                mode="markers+text",
                text=[f"${t.cost_usd:,.2f}" for t in totals],
                textposition="top center",
                marker={"size": 12, "color": P95_COLOUR},
                yaxis="y2",
            ),
        ]
    )
    return _layout(
        figure,
        yaxis_title="calls",
        yaxis2={"title": "USD", "overlaying": "y", "side": "right", "rangemode": "tozero"},
    )


def credit_usage_figure(usage: Sequence[CreditUsage], flt: MonitoringFilter) -> go.Figure:
    """Credits spent (reserved minus refunded) per bucket, stacked by user or project."""
    by_label: dict[str, dict[object, int]] = {}
    for u in usage:
        series = by_label.setdefault(u.label, {})
        series[u.start] = series.get(u.start, 0) + u.spent
    figure = go.Figure(
        [
            # Plotly reads a few HTML tags (links too) in names; an email or a project name
            # is a user's text, so its markup is escaped (Plotly shows entities as characters).
            go.Bar(x=list(series), y=list(series.values()), name=html.escape(label))
            for label, series in by_label.items()
        ]
    )
    figure = _time_axis(figure, flt, flt.usage_granularity)
    return _layout(figure, barmode="stack", xaxis_title="UTC", yaxis_title="credits spent")


def delivered_cost_figure(costs: Sequence[DeliveredCost], flt: MonitoringFilter) -> go.Figure:
    """List-price USD per bucket, split into what went to delivered videos and the waste (runs
    that delivered nothing), with the USD per delivered video as a line on its own axis."""
    starts = [c.key for c in costs]
    figure = go.Figure(
        [
            go.Bar(
                x=starts,
                y=[c.delivered_list_usd for c in costs],
                name="delivered",
                marker_color=OUTCOME_COLOURS["completed"],
            ),
            go.Bar(
                x=starts,
                y=[c.waste_usd for c in costs],
                name="waste",
                marker_color=OUTCOME_COLOURS["failed"],
            ),
            go.Scatter(
                x=starts,
                y=[c.usd_per_video for c in costs],
                name="USD per delivered video",
                mode="lines+markers",
                yaxis="y2",
                marker_color=P95_COLOUR,
            ),
        ]
    )
    figure = _time_axis(figure, flt, flt.usage_granularity)
    return _layout(
        figure,
        barmode="stack",
        xaxis_title="UTC",
        yaxis_title="list price (USD)",
        yaxis2={
            "title": "USD per video",
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
        },
    )


def chart(figure: go.Figure, key: str) -> None:
    st.plotly_chart(figure, key=key, width="stretch", config={"displayModeBar": False})

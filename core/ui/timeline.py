"""The timeline of a run: one bar per step from its start to its end (or now), after the time the
run waited for a worker, coloured by state."""

from __future__ import annotations

from datetime import datetime

import plotly.graph_objects as go
import streamlit as st

from core.clock import utcnow
from core.ui import format as fmt
from core.workflows import WorkflowView


def timeline_figure(view: WorkflowView, now: datetime | None = None) -> go.Figure:
    now = now or utcnow()
    origin = view.created_at
    labels, starts, lengths, colours, texts = [], [], [], [], []
    if view.started_at is not None:
        wait = (view.started_at - origin).total_seconds()
        labels.append("⏳ Waiting for a worker")
        starts.append(0.0)
        lengths.append(max(wait, 0.0))
        colours.append(fmt.STATUS_COLOURS["waiting"])
        texts.append(fmt.duration(wait))
    for step in view.steps:
        emoji, label = fmt.STEP_LABELS[step.name]
        labels.append(f"{emoji} {label}")
        if step.started_at is None:
            starts.append(0.0)
            lengths.append(0.0)
            texts.append("")
        else:
            end = step.finished_at or now
            starts.append((step.started_at - origin).total_seconds())
            lengths.append(max((end - step.started_at).total_seconds(), 0.0))
            texts.append(fmt.duration(step.duration_s))
        colours.append(fmt.STATUS_COLOURS[step.status.value])
    figure = go.Figure(
        go.Bar(
            y=labels,
            x=lengths,
            base=starts,
            orientation="h",
            marker={"color": colours},
            text=texts,
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}<br>from %{base:.2f} s, lasted %{x:.2f} s<extra></extra>",
        )
    )
    figure.update_layout(
        height=300,
        margin={"l": 10, "r": 40, "t": 10, "b": 30},
        xaxis_title="seconds since the run was created",
        yaxis={"autorange": "reversed"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        showlegend=False,
    )
    return figure


def timeline(view: WorkflowView) -> None:
    st.plotly_chart(
        timeline_figure(view),
        key=None,
        width="stretch",
        config={"displayModeBar": False},
    )

"""Labels, icons, colours and number formats shared by the pages (no streamlit here)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.states import StepName, StepStatus, WorkflowStatus

# The seed's STEP_ICONS, one per pipeline step, with the label a user reads.
STEP_LABELS: dict[StepName, tuple[str, str]] = {
    StepName.VALIDATE: ("🛡️", "Validation & safety"),
    StepName.GENERATE_IMAGE: ("🎨", "Generate image"),
    StepName.UPLOAD_IMAGE: ("☁️", "Upload image"),
    StepName.GENERATE_VIDEO: ("🎬", "Generate video"),
    StepName.UPLOAD_VIDEO: ("📤", "Upload video"),
    StepName.FINALIZE: ("✅", "Finalize"),
}

# (icon, badge colour) per state name, shared by steps and workflows; colours are st.badge's.
_STATE_STYLE: dict[str, tuple[str, str]] = {
    "pending": (":material/schedule:", "gray"),
    "queued": (":material/schedule:", "gray"),
    "processing": (":material/progress_activity:", "blue"),
    "running": (":material/progress_activity:", "blue"),
    "completed": (":material/check_circle:", "green"),
    "failed": (":material/error:", "red"),
    "cancelled": (":material/cancel:", "orange"),
    "skipped": (":material/remove:", "gray"),
}
STEP_STATUS_STYLE = {status: _STATE_STYLE[status.value] for status in StepStatus}
WORKFLOW_STATUS_STYLE = {status: _STATE_STYLE[status.value] for status in WorkflowStatus}
STATUS_EMOJI: dict[WorkflowStatus, str] = {
    WorkflowStatus.QUEUED: "⏳",
    WorkflowStatus.RUNNING: "🔄",
    WorkflowStatus.COMPLETED: "✅",
    WorkflowStatus.FAILED: "❌",
    WorkflowStatus.CANCELLED: "🚫",
}
# Plotly colours matching the badges on the dark theme.
STATUS_COLOURS: dict[str, str] = {
    "pending": "#6b7280",
    "queued": "#6b7280",
    "processing": "#3b82f6",
    "running": "#3b82f6",
    "completed": "#22c55e",
    "failed": "#ef4444",
    "cancelled": "#f59e0b",
    "skipped": "#4b5563",
    "waiting": "#8b5cf6",
}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local_time(moment: datetime | None, tz: ZoneInfo | None, *, with_date: bool = False) -> str:
    """A timestamp in the browser's time zone (UTC when it is unknown)."""
    if moment is None:
        return "–"
    shown = moment.astimezone(tz or UTC)
    suffix = "" if tz else " UTC"
    pattern = "%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S"
    return shown.strftime(pattern) + suffix


def ago(moment: datetime, now: datetime | None = None) -> str:
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def short_id(workflow_id: str) -> str:
    return workflow_id[:8]


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"

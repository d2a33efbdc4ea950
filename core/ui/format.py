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

# (icon, badge colour) per state; colours are st.badge's names.
STEP_STATUS_STYLE: dict[StepStatus, tuple[str, str]] = {
    StepStatus.PENDING: (":material/schedule:", "gray"),
    StepStatus.PROCESSING: (":material/progress_activity:", "blue"),
    StepStatus.COMPLETED: (":material/check_circle:", "green"),
    StepStatus.FAILED: (":material/error:", "red"),
    StepStatus.CANCELLED: (":material/cancel:", "orange"),
    StepStatus.SKIPPED: (":material/remove:", "gray"),
}
WORKFLOW_STATUS_STYLE: dict[WorkflowStatus, tuple[str, str]] = {
    WorkflowStatus.QUEUED: (":material/schedule:", "gray"),
    WorkflowStatus.RUNNING: (":material/progress_activity:", "blue"),
    WorkflowStatus.COMPLETED: (":material/check_circle:", "green"),
    WorkflowStatus.FAILED: (":material/error:", "red"),
    WorkflowStatus.CANCELLED: (":material/cancel:", "orange"),
}
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

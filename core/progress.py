"""The progress detail generate_video keeps on its step row while it waits on the provider: the
one definition of those keys, written by the pipeline and read by the watch view."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.providers.base import VideoJobState

_PHASES = frozenset(state.value for state in VideoJobState)


@dataclass(frozen=True)
class VideoJobProgress:
    request_id: str | None = None
    phase: VideoJobState | None = None  # None: not polled yet (submitting or reattaching)
    queue_position: int | None = None  # the provider's count of jobs ahead; 0 is next in line

    def to_output(self) -> dict[str, Any]:
        """The step's `output` while it runs (its final output replaces it)."""
        output: dict[str, Any] = {"request_id": self.request_id}
        if self.phase is not None:
            output["phase"] = self.phase.value
        if self.queue_position is not None:
            output["queue_position"] = self.queue_position
        return output

    @classmethod
    def from_output(cls, output: Mapping[str, Any]) -> VideoJobProgress:
        """Read back what `to_output` wrote; a missing or malformed value reads as unknown."""
        request_id, phase, position = (
            output.get("request_id"),
            output.get("phase"),
            output.get("queue_position"),
        )
        return cls(
            request_id=request_id if isinstance(request_id, str) else None,
            phase=VideoJobState(phase) if isinstance(phase, str) and phase in _PHASES else None,
            queue_position=position
            if isinstance(position, int) and not isinstance(position, bool)
            else None,
        )

"""The video job's progress detail: written and read back through one type."""

from __future__ import annotations

import pytest

from core.progress import VideoJobProgress
from core.providers.base import VideoJobState


@pytest.mark.parametrize(
    "progress",
    [
        VideoJobProgress("job-1"),
        VideoJobProgress("job-1", VideoJobState.QUEUED, 0),
        VideoJobProgress("job-1", VideoJobState.QUEUED, 7),
        VideoJobProgress("job-1", VideoJobState.IN_PROGRESS),
        VideoJobProgress("job-1", VideoJobState.COMPLETED),
    ],
)
def test_progress_reads_back_as_written(progress):
    assert VideoJobProgress.from_output(progress.to_output()) == progress


def test_the_stored_keys_are_the_ones_earlier_runs_wrote():
    written = VideoJobProgress("job-1", VideoJobState.QUEUED, 2).to_output()
    assert written == {"request_id": "job-1", "phase": "queued", "queue_position": 2}


@pytest.mark.parametrize(
    "output",
    [
        {},
        {"phase": "thinking", "queue_position": "3"},
        {"phase": ["queued"], "queue_position": True, "request_id": 5},
    ],
)
def test_a_missing_or_malformed_detail_reads_as_unknown(output):
    assert VideoJobProgress.from_output(output) == VideoJobProgress()

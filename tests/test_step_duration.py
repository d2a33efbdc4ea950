"""workflow_steps.duration_ms, the stored column monitoring reads, against exact timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from core import workflows
from core.models import WorkflowStep
from core.schemas import parse_request


@pytest.mark.parametrize(
    ("started", "lasted_us", "expected_ms"),
    [
        (datetime(2026, 4, 17, 20, 18, 42, 999606, tzinfo=UTC), 531_997, 532),
        (datetime(2026, 4, 17, 20, 18, 42, 999999, tzinfo=UTC), 1, 0),
        (datetime(2026, 4, 17, 20, 18, 42, 500000, tzinfo=UTC), 2_250_400, 2250),
    ],
)
def test_a_steps_duration_is_exact_even_starting_at_the_end_of_a_second(
    db, make_user, started, lasted_us, expected_ms
):
    user = make_user()
    request = parse_request({"imagePrompt": "a", "videoPrompt": "b"})
    workflow_id = workflows.start_workflow(
        db, user_id=user.id, request=request, client_key="k", actor="t"
    ).workflow_id
    validate = (WorkflowStep.workflow_id == workflow_id, WorkflowStep.name == "validate")
    with db.begin() as session:
        session.execute(
            update(WorkflowStep)
            .where(*validate)
            .values(started_at=started, finished_at=started + timedelta(microseconds=lasted_us))
        )
    with db.read() as session:
        assert session.scalar(select(WorkflowStep.duration_ms).where(*validate)) == expected_ms

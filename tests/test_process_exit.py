"""A process that exits with a run in flight stops promptly and leaves the run to recovery."""

import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import select

from core.db import Database
from core.models import Workflow

CHILD = textwrap.dedent(
    """
    import itertools, sys, time
    sys.path.insert(0, {root!r})
    from core.auth import create_user
    from core.config import Settings
    from core.providers import build_providers
    from core.providers.base import VideoJobState, VideoJobStatus
    from core.runtime import Runtime
    from core.schemas import parse_request
    from tests.fakes import Spy
    import dataclasses

    settings = Settings(_env_file=None, data_dir={data!r}, database_url={url!r},
                        offline_latency_s=0, poll_interval_s=0.05)
    stuck = VideoJobStatus(VideoJobState.IN_PROGRESS, progress=0.1)
    offline = build_providers(settings)
    video = Spy(offline.video, status=itertools.repeat(stuck))
    providers = dataclasses.replace(offline, video=video)
    runtime = Runtime(settings, upgrade=False, providers=providers)
    runtime.start_background()
    with runtime.db.begin() as session:
        user = create_user(session, "exit@example.com", starting_credits=100)
    request = parse_request({{"imagePrompt": "a", "videoPrompt": "b"}})
    workflow_id, _ = runtime.start_workflow(user, request)
    while providers.video.calls["status"] < 2:
        time.sleep(0.02)
    print(workflow_id, flush=True)
    # falls off the end: the interpreter exits with the run still generating
    """
)


def test_exiting_mid_run_returns_promptly_and_releases_the_run(database_url, tmp_path):
    script = CHILD.format(root=str(Path.cwd()), data=str(tmp_path), url=database_url)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    workflow_id = done.stdout.split()[-1]
    db = Database.from_url(database_url)
    with db.read() as session:
        row = session.execute(select(Workflow).where(Workflow.id == workflow_id)).scalar_one()
        assert (row.status, row.runner_id, row.heartbeat_at) == ("running", None, None)
    db.dispose()

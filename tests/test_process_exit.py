"""A process that exits with a run in flight stops promptly and leaves the run to recovery."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sqlalchemy import select

from core.db import Database
from core.models import Workflow
from tests.reliability import record

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


# Far below the time the stuck video would hold a process that waited for it (its step budget,
# 900 s): the bound proves the exit does not wait for the job, not how fast the machine is.
EXIT_BOUND_S = 20


def test_exiting_mid_run_returns_promptly_and_releases_the_run(database_url, tmp_path):
    script = CHILD.format(root=str(Path.cwd()), data=str(tmp_path), url=database_url)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workflow_id = child.stdout.readline().strip()  # printed just before the interpreter exits
    told = time.monotonic()
    _, errors = child.communicate(timeout=60)
    exit_s = time.monotonic() - told
    assert child.returncode == 0, errors
    assert exit_s < EXIT_BOUND_S
    db = Database.from_url(database_url)
    with db.read() as session:
        row = session.execute(select(Workflow).where(Workflow.id == workflow_id)).scalar_one()
        assert (row.status, row.runner_id, row.heartbeat_at) == ("running", None, None)
    db.dispose()
    record("process_exit", database_url, exit_s=round(exit_s, 2), bound_s=EXIT_BOUND_S)

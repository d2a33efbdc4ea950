"""Freshness: how long after a step's state change is committed a viewer sees it, (a) on the
watch page, which reads the run with core.views.run.load_run once a second, and (b) as an event
on a real API process's run stream (`python -m core api`, Server-Sent Events).

Runs execute in this process (threads executor) with OFFLINE_LATENCY_S=1, so their steps change
state seconds apart. A change's commit time is the stamp the engine wrote in that same
transaction: a step's started_at (processing) or finished_at (completed), an event's created_at.
Changes committed before a viewer began watching are left out.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse
from runs import REQUEST, bench_user, runtime, settings_for
from sqlalchemy import select
from sse import free_port, start_api, wait_healthy

from core import tokens
from core.auth import UserView
from core.config import Settings
from core.db import Database
from core.models import RunEvent
from core.providers.base import Providers
from core.states import StepStatus
from core.views.run import load_run

WATCH_POLL_S = 1.0  # the watch page's refresh


@dataclass(frozen=True)
class Delays:
    watch: list[float]
    sse: list[float]


def measure(
    url: str,
    workdir: Path,
    *,
    runs: int,
    providers: Callable[[Settings], Providers | None],
    latency_s: float = 1.0,
) -> Delays:
    settings = settings_for(
        url,
        workdir,
        offline_latency_s=latency_s,
        worker_threads=runs,
        max_active_runs_per_user=runs,
    )
    with runtime(settings, providers(settings)) as engine, tempfile.TemporaryDirectory() as api_dir:
        user = bench_user(engine.db, "freshness@example.com")
        with engine.db.begin() as session:
            secret = tokens.create_token(session, user.id, name="bench").secret
        port = free_port()
        # Started before any run: its startup recovery must find nothing to take.
        api = start_api(url, port, Path(api_dir))
        try:
            asyncio.run(wait_healthy(f"http://127.0.0.1:{port}", api))
            ids = [engine.start_workflow(user, REQUEST)[0] for _ in range(runs)]
            watched = {}
            pollers = [
                threading.Thread(target=_watch, args=(engine.db, w, user, watched)) for w in ids
            ]
            for poller in pollers:
                poller.start()
            received = asyncio.run(_follow_all(f"http://127.0.0.1:{port}", secret, ids))
            for poller in pollers:
                poller.join()
        finally:
            api.terminate()
            api.wait(timeout=30)
        return Delays(
            _watch_delays(engine.db, ids, user, watched), _sse_delays(engine.db, received)
        )


def _watch(db: Database, workflow_id: str, user: UserView, seen: dict) -> None:
    """Read the run as the watch page does, once a second, until it ends; the first time each
    (step, status) was seen. Starts at the first read (what it shows was committed before),
    at a random point of the second, as a page opened at any moment would: the steps' own
    rhythm (the providers' latency) must not line up with the reads."""
    time.sleep(random.uniform(0, WATCH_POLL_S))
    began = time.time()
    seen[(workflow_id, "began")] = began
    next_at = time.monotonic()
    while True:
        with db.read() as session:
            view = load_run(session, workflow_id, user)
        now = time.time()
        for step in view.steps:
            seen.setdefault((workflow_id, step.name, step.status), now)
        if view.status.is_terminal:
            return
        next_at += WATCH_POLL_S
        time.sleep(max(0.0, next_at - time.monotonic()))


def _watch_delays(db: Database, ids: list[str], user: UserView, seen: dict) -> list[float]:
    delays = []
    with db.read() as session:
        views = [load_run(session, w, user) for w in ids]
    for view in views:
        began = seen[(view.id, "began")]
        for step in view.steps:
            for status, stamp in (
                (StepStatus.PROCESSING, step.started_at),
                (StepStatus.COMPLETED, step.finished_at),
            ):
                at = seen.get((view.id, step.name, status))
                # None: a step that started and ended between two reads was never shown
                # processing; it counts once, when shown completed.
                if at is not None and stamp is not None and stamp.timestamp() >= began:
                    delays.append(at - stamp.timestamp())
    return delays


async def _follow_all(base_url: str, secret: str, ids: list[str]) -> dict:
    """Every run's stream until its final event: when each event (run, seq) arrived, and when
    each stream opened (events committed earlier are left out)."""
    received: dict = {}
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=120
    ) as client:
        await asyncio.gather(*(_follow(client, w, received) for w in ids))
    return received


async def _follow(client: httpx.AsyncClient, workflow_id: str, received: dict) -> None:
    async with aconnect_sse(client, "GET", f"/api/workflow/{workflow_id}/stream") as source:
        received[(workflow_id, "opened")] = time.time()
        async for sse in source.aiter_sse():
            if sse.id and sse.id.isdigit():
                received[(workflow_id, int(sse.id))] = time.time()


def _sse_delays(db: Database, received: dict) -> list[float]:
    ids = sorted({w for w, _ in received})
    with db.read() as session:
        events = session.execute(
            select(RunEvent.workflow_id, RunEvent.seq, RunEvent.created_at).where(
                RunEvent.workflow_id.in_(ids), RunEvent.kind == "step"
            )
        ).all()
    delays = []
    for workflow_id, seq, created_at in events:
        at = received.get((workflow_id, seq))
        if at is None or created_at.timestamp() < received[(workflow_id, "opened")]:
            continue
        delays.append(at - created_at.timestamp())
    return delays

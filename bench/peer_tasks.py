"""The Celery peer: six no-op tasks chained on Redis, and the same six each persisting its state
with one Postgres statement. Runs in .venv-peers (never imports `core`); the worker is
`celery -A peer_tasks worker --pool=solo`, started by bench/peers.py.
"""

from __future__ import annotations

import os

import psycopg2
from celery import Celery

app = Celery("peer_tasks")
app.conf.update(
    broker_url=os.environ["PEER_REDIS_URL"],
    result_backend=os.environ["PEER_REDIS_URL"],
    task_default_queue="bench-peer",
    task_serializer="json",
    accept_content=["json"],
    result_expires=600,
    worker_hijack_root_logger=False,
)

STEPS = (
    "validate",
    "generate_image",
    "upload_image",
    "generate_video",
    "upload_video",
    "finalize",
)
_connection = None


def _cursor():
    """One autocommit connection per worker process: each statement is its own transaction."""
    global _connection
    if _connection is None:
        _connection = psycopg2.connect(os.environ["PEER_DATABASE_URL"])
        _connection.autocommit = True
    return _connection.cursor()


@app.task(name="peer.step")
def step(run_id: str, name: str) -> str:
    """A no-op step: the engine's own figure has its provider time taken out too."""
    return run_id


@app.task(name="peer.persisted_step")
def persisted_step(run_id: str, name: str) -> str:
    """The same no-op, recording its state as one UPDATE (the first step's INSERT makes the row),
    as an engine persisting every state change must."""
    with _cursor() as cursor:
        if name == STEPS[0]:
            cursor.execute(
                "INSERT INTO peer_runs (id, step, updated_at) VALUES (%s, %s, now())",
                (run_id, name),
            )
        else:
            cursor.execute(
                "UPDATE peer_runs SET step = %s, updated_at = now() WHERE id = %s",
                (name, run_id),
            )
    return run_id

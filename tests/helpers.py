"""Reading the engine's state back in tests, and waiting on conditions instead of sleeping."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import select

from core import credits, telemetry, workflows
from core.auth import UserView
from core.models import CreditTransaction, Workflow
from core.runtime import Runtime

# Variables that would point the engine at real providers or a real database: tests (and the
# app the browser tests start) never see them, so a developer's keys never cause a paid call.
ENGINE_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "FAL_KEY",
    "S3_BUCKET_NAME",
    "S3_ENDPOINT_URL",
    "DATABASE_URL",
    "IMAGE_PROVIDER",
    "VIDEO_PROVIDER",
    "MODERATION_PROVIDER",
    "STORAGE_BACKEND",
    "OFFLINE_LATENCY_S",
    "DATA_DIR",
    "DEBUG",
    "EXECUTOR",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "MAX_ACTIVE_RUNS_PER_USER",
    "LOG_FORMAT",
    "METRICS_PORT",
    "PROMETHEUS_MULTIPROC_DIR",
    # A developer's collector never receives the tests' spans (tracing tests set their own).
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def free_port() -> int:
    """A TCP port nobody listens on right now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def load(runtime: Runtime, workflow_id: str) -> workflows.WorkflowView:
    with runtime.db.read() as session:
        return workflows.load_workflow(session, workflow_id)


def balance(runtime: Runtime, user: UserView) -> int:
    """The user's balance, after checking the ledger invariant for every user."""
    with runtime.db.read() as session:
        mismatches = credits.balance_mismatches(session)
        assert mismatches == [], f"ledger invariant broken: {mismatches}"
        return credits.history(session, user.id, limit=1)[0].balance_after


def refunds(runtime: Runtime, workflow_id: str) -> list[int]:
    with runtime.db.read() as session:
        rows = session.execute(
            select(CreditTransaction.amount).where(
                CreditTransaction.workflow_id == workflow_id, CreditTransaction.kind == "refund"
            )
        )
        return list(rows.scalars())


def run_core(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m core ARGS` as a user runs it, with `env` as its whole environment."""
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


class ParkedExecutor:
    """An executor that runs nothing: for tests that look at what starting writes, or that make
    a run's state changes themselves."""

    runs_here = True

    def bind(self, job: Callable[[str], object]) -> None:
        pass

    def submit(self, workflow_id: str, *, reserved: bool = False) -> None:
        pass

    def reserve(self) -> bool:
        return False  # nothing here runs a run: a start leaves it queued

    def unreserve(self) -> None:
        pass

    def revoke(self, workflow_id: str) -> None:
        pass

    def shutdown(self, *, wait: bool = True) -> None:
        pass


@dataclass(frozen=True)
class Scrape:
    """One `/metrics` answer, parsed with the Prometheus text parser."""

    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
        return sum(
            s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()
        )

    def moved(self, before: Scrape, name: str, **labels: str) -> float:
        return self.value(name, **labels) - before.value(name, **labels)


def scrape(url: str) -> Scrape:
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    return scrape_text(answer.text)


def scrape_text(exposition: str) -> Scrape:
    families = text_string_to_metric_families(exposition)
    return Scrape([sample for family in families for sample in family.samples])


def a_run(
    run_id: str, user_id: int, status: str, created: datetime, *, cost_credits: int = 0, **more
) -> Workflow:
    """A run row as monitoring tests write history: its own client key, placeholder prompts."""
    return Workflow(
        id=run_id,
        user_id=user_id,
        client_key=run_id,
        status=status,
        image_prompt="i",
        video_prompt="v",
        request={},
        cost_credits=cost_credits,
        created_at=created,
        **more,
    )


def call_attempt(attributes: Mapping[str, Any]) -> tuple:
    """A provider call attempt's span attributes, as the fields of its api_calls row."""
    return tuple(
        attributes[key]
        for key in (
            telemetry.STEP,
            telemetry.PROVIDER,
            telemetry.OPERATION,
            telemetry.ATTEMPT,
            telemetry.OUTCOME,
            telemetry.COST_USD,
        )
    )

"""The process the crash test kills: runs workflows on the offline providers, recovering what the
previous (killed) incarnation left behind, and logs every image generation and video submission
so the parent can prove none was repeated for a step already completed.

    python -m tests.crash_child DATABASE_URL DATA_DIR LOG [--until-done]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from sqlalchemy import select

from core.auth import ensure_user
from core.config import Settings
from core.models import Workflow
from core.providers import build_providers
from core.runtime import Runtime
from core.schemas import parse_request

USER = "crash@example.com"
KEEP_ACTIVE = 4  # runs in flight at any time
MAX_TOTAL = 24  # runs created over the whole test
PAYLOAD = {
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}


class Logged:
    """Appends "<what> <unix time> <prompt>" to the log after each call of `method` returns."""

    def __init__(self, inner: Any, method: str, log_path: str) -> None:
        self._inner, self._method, self._log_path = inner, method, log_path
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._method:
            return attribute

        def logged(spec: Any, **kwargs: Any) -> Any:
            result = attribute(spec, **kwargs)
            with open(self._log_path, "a", encoding="utf-8") as log:
                log.write(f"{name} {time.time():.6f} {spec.prompt.splitlines()[0][:60]}\n")
            return result

        return logged


def settings_for(database_url: str, data_dir: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        data_dir=data_dir,
        offline_latency_s=0.2,
        fault_latency_s=0.15,  # every provider call takes a while, so each step can be caught
        poll_interval_s=0.05,
        progress_min_interval_s=0.1,
        heartbeat_interval_s=0.1,
        heartbeat_stale_s=0.6,
        recovery_interval_s=0.3,
        max_recoveries=100,
        worker_threads=KEEP_ACTIVE,
    )


def top_up(runtime: Runtime, user: Any) -> bool:
    """Create runs until KEEP_ACTIVE are in flight (client keys make this idempotent across
    incarnations). False once every run there will ever be has ended."""
    with runtime.db.read() as session:
        statuses = list(session.execute(select(Workflow.status)).scalars())
    active = sum(s in ("queued", "running") for s in statuses)
    for number in range(len(statuses), min(MAX_TOTAL, len(statuses) + KEEP_ACTIVE - active)):
        payload = {
            **PAYLOAD,
            "imagePrompt": f"scene {number:03d} of the crash test",
            "videoPrompt": f"motion {number:03d}",
        }
        runtime.start_workflow(user, parse_request(payload), client_key=f"crash-{number}")
    return active > 0 or len(statuses) < MAX_TOTAL


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("data_dir")
    parser.add_argument("log")
    parser.add_argument("--until-done", action="store_true")
    args = parser.parse_args()
    settings = settings_for(args.database_url, args.data_dir)
    offline = build_providers(settings)
    providers = dataclasses.replace(
        offline,
        image=Logged(offline.image, "generate", args.log),
        video=Logged(offline.video, "submit", args.log),
    )
    runtime = Runtime(settings, upgrade=False, providers=providers)
    with runtime.db.begin() as session:
        user = ensure_user(session, USER, starting_credits=100_000)
    runtime.start_background()
    while top_up(runtime, user) or not args.until_done:
        time.sleep(0.1)
    runtime.shutdown()


if __name__ == "__main__":
    main()

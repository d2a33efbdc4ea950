"""The API as a client meets it: `python -m core api` in a subprocess on a free port, against a
migrated database (Postgres when configured, as in CI), with instant offline providers; real
HTTP with httpx. Accounts and tokens are made directly in the same database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core import tokens
from core.auth import Role, UserView, create_user
from core.db import Database
from tests.helpers import ENGINE_ENV, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Account:
    user: UserView
    token: str
    client: httpx.Client


@dataclass
class Api:
    url: str
    db: Database
    data_dir: Path
    clients: list[httpx.Client]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.clients.append(httpx.Client(base_url=self.url, headers=headers, timeout=30))
        return self.clients[-1]

    def account(self, *, credits: int = 100, role: Role = Role.USER) -> Account:
        with self.db.begin() as session:
            user = create_user(
                session,
                f"api-{uuid.uuid4().hex[:8]}@example.com",
                role=role,
                starting_credits=credits,
            )
            secret = tokens.create_token(session, user.id, name="tests").secret
        return Account(user, secret, self.client(secret))


def _healthy(url: str, process: subprocess.Popen, log: Path) -> Callable[[], bool]:
    def check() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited early:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    return check


@pytest.fixture
def start_api(primary_database_url: str, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Starts the API; `latency_s` slows the offline providers (0: runs finish at once), and
    `settings` are more environment variables (e.g. STREAM_PING_S="0.2"). Rate limits are out
    of the way unless a test sets them (API_RATE_LIMIT, API_START_RATE_LIMIT, REDIS_URL)."""
    started: list[tuple[subprocess.Popen, Api]] = []

    def start(latency_s: float = 0, **settings: str) -> Api:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in (*ENGINE_ENV, "REDIS_URL")}
        env.update(
            DATABASE_URL=primary_database_url,
            DATA_DIR=str(tmp_path / "data"),
            LOCAL_STORAGE_DIR=str(tmp_path / "data" / "storage"),
            OFFLINE_LATENCY_S=str(latency_s),
            POLL_INTERVAL_S="0.05",
            RETRY_INITIAL_WAIT_S="0",
            RETRY_MAX_WAIT_S="0",
            API_PORT=str(port),
            ALLOW_PRIVATE_WEBHOOKS="1",  # the tests' receivers listen on 127.0.0.1
            WEBHOOK_POLL_INTERVAL_S="0.05",
            STREAM_POLL_INTERVAL_S="0.05",
            API_RATE_LIMIT="100000/minute",
            API_START_RATE_LIMIT="100000/minute",
        )
        env.update(settings)
        log = tmp_path / f"api-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "core", "api"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        db = Database.from_url(primary_database_url)
        api = Api(f"http://127.0.0.1:{port}", db, tmp_path / "data", [])
        started.append((process, api))
        wait_for(_healthy(api.url, process, log), timeout_s=60)
        return api

    yield start
    for process, api in started:
        for client in api.clients:
            client.close()
        process.terminate()
        process.wait(timeout=30)
        api.db.dispose()


@pytest.fixture
def api(start_api) -> Api:
    return start_api()

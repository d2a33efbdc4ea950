"""The harness's side of the peers (bench/peers.py, run by .venv-peers' Python): start them,
ask for timed runs, read the versions that ran."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
PEERS = ("celery", "celery_pg", "prefect")
LABELS = {
    "celery": "Celery chain (Redis)",
    "celery_pg": "Celery chain + 1 Postgres write/step",
    "prefect": "Prefect 3 flow (ephemeral server)",
}


class PeerError(Exception):
    """The peers' process failed: one line, the log has the rest."""


class Peers:
    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self._process, self._log = process, log
        self.versions = {f"peers: {k}": v for k, v in self._answer()["versions"].items()}

    def run(self, peer: str, runs: int) -> list[float]:
        """Wall time of each of `runs` runs of `peer`, one after another."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"peer": peer, "runs": runs}) + "\n")
        self._process.stdin.flush()
        return self._answer()["walls"]

    def _answer(self) -> dict:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            said = [x for x in self._log.read_text(errors="replace").splitlines() if x.strip()]
            last = said[-1].strip() if said else "nothing"
            raise PeerError(f"bench: the peers' process stopped; the last it said: {last}")
        return json.loads(line)


def libpq_url(url: str) -> str:
    """The scratch database's SQLAlchemy URL as psycopg2 takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def start(python: Path, redis_url: str, database_url: str, workdir: Path) -> Iterator[Peers]:
    log = workdir / "peers.log"
    env = {
        **os.environ,
        "PEER_REDIS_URL": redis_url,
        "PEER_DATABASE_URL": libpq_url(database_url),
        # Prefect's home (its ephemeral server's SQLite database) stays in the scratch folder.
        "PREFECT_HOME": str(workdir / "prefect"),
        # Only how long to wait for that server to start (default 20 s, too short on a busy
        # 2-core machine); the flow runs with Prefect's defaults.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [str(python), str(HERE / "peers.py")],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )
        try:
            yield Peers(process, log)
        finally:
            if process.stdin is not None:
                process.stdin.close()  # peers.py stops its worker and exits at end of input
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()

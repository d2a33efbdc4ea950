"""API keys never reach logs, output or the database: not in settings' repr, not in the CLI's
output or its debug logs, not in any stored row, not even when a provider fails with a 401 that
repeats the key."""

import os
import re
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, select

from core.config import Settings
from tests.helpers import run_core
from tests.local_http import Request, local_server

OPENAI_SECRET = "sk-test-NEVER-PRINT-ME-0123456789"
FAL_SECRET = "fal-NEVER-PRINT-ME-abcdef"


def test_settings_never_show_their_keys():
    settings = Settings(_env_file=None, openai_api_key=OPENAI_SECRET, fal_key=FAL_SECRET)
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert OPENAI_SECRET not in text and FAL_SECRET not in text


def echo_the_key(request: Request) -> tuple[int, dict]:
    """A hostile provider: a 401 whose message repeats the whole key it was sent."""
    key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    message = f"Incorrect API key provided: {key}"
    return 401, {"error": {"message": message, "type": "invalid_request_error", "code": None}}


def everything_stored(data_dir: Path) -> str:
    """Every row of every table of the run's database, as text."""
    engine = create_engine(f"sqlite:///{data_dir / 'reelforge.db'}")
    schema = MetaData()
    schema.reflect(engine)
    with engine.connect() as connection:
        rows = [str(tuple(r)) for t in schema.sorted_tables for r in connection.execute(select(t))]
    engine.dispose()
    return "\n".join(rows)


@pytest.mark.parametrize("provider", ["unreachable", "echoing the key in a 401"])
def test_a_failing_real_run_and_health_check_never_print_or_store_the_keys(tmp_path, provider):
    with local_server(echo_the_key) as hostile:
        base_url = "http://127.0.0.1:9/v1" if provider == "unreachable" else f"{hostile.url}/v1"
        env = {
            **os.environ,
            "DATA_DIR": str(tmp_path),
            "OPENAI_API_KEY": OPENAI_SECRET,
            "OPENAI_BASE_URL": base_url,  # nothing listens on port 9: every call fails
            "FAL_KEY": FAL_SECRET,
            "RETRY_MAX_ATTEMPTS": "2",
            "RETRY_INITIAL_WAIT_S": "0",
            "DEBUG": "workflow:*",
            "COLUMNS": "200",
        }
        env.pop("DATABASE_URL", None)
        outputs = []
        for args in (["-v", "run", "--image-prompt", "a fox", "--video-prompt", "pan"], ["health"]):
            done = run_core(env, tmp_path, *args)
            assert done.returncode == 1
            outputs.append(done.stdout + done.stderr)
    everything = "\n".join(outputs)
    # The debug logs really were on, so they were scanned too.
    assert re.search(r"DEBUG +Workflow \w+ - Step validate: ", everything), everything[-2000:]
    if provider == "unreachable":
        assert "OPENAI_API_KEY" in everything or "connect" in everything.lower()
    else:
        assert hostile.requests, "the hostile provider was never called"
        assert "401" in everything or "key" in everything.lower()
    stored = everything_stored(tmp_path)
    assert "validate" in stored  # the run's rows are there to scan
    for secret in (OPENAI_SECRET, FAL_SECRET):
        assert secret not in everything
        assert secret not in stored

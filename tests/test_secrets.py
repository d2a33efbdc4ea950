"""API keys never reach logs or output: not in settings' repr, not in the CLI's output or its
verbose logs, not even when the providers fail."""

import os
import subprocess
import sys

from core.config import Settings

OPENAI_SECRET = "sk-test-NEVER-PRINT-ME-0123456789"
FAL_SECRET = "fal-NEVER-PRINT-ME-abcdef"


def test_settings_never_show_their_keys():
    settings = Settings(_env_file=None, openai_api_key=OPENAI_SECRET, fal_key=FAL_SECRET)
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert OPENAI_SECRET not in text and FAL_SECRET not in text


def test_a_failing_real_run_and_health_check_never_print_the_keys(tmp_path):
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "OPENAI_API_KEY": OPENAI_SECRET,
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # nothing listens: every call fails
        "FAL_KEY": FAL_SECRET,
        "RETRY_MAX_ATTEMPTS": "2",
        "RETRY_INITIAL_WAIT_S": "0",
        "DEBUG": "workflow:*",
    }
    env.pop("DATABASE_URL", None)
    outputs = []
    for args in (["-v", "run", "--image-prompt", "a fox", "--video-prompt", "pan"], ["health"]):
        done = subprocess.run(
            [sys.executable, "-m", "core", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert done.returncode == 1
        outputs.append(done.stdout + done.stderr)
    everything = "\n".join(outputs)
    assert "OPENAI_API_KEY" in everything or "connect" in everything.lower()
    assert OPENAI_SECRET not in everything
    assert FAL_SECRET not in everything

import pytest
from pydantic import ValidationError

from core.config import Settings


def test_debug_workflow_star_turns_on_engine_debug_logs():
    assert Settings(_env_file=None, debug="workflow:*").debug_workflow
    assert not Settings(_env_file=None, debug="").debug_workflow


def test_no_database_url_means_a_sqlite_file_under_the_data_dir(tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve()}/reelforge.db"


def test_step_budgets_override_only_known_steps():
    settings = Settings(_env_file=None, step_timeouts_s={"generate_video": 30})
    assert settings.step_timeout_s("generate_video") == 30
    assert settings.step_timeout_s("validate") == 60
    with pytest.raises(ValidationError, match="unknown step names"):
        Settings(_env_file=None, step_timeouts_s={"render": 1})


def test_step_budgets_come_from_json_in_the_environment(monkeypatch):
    monkeypatch.setenv("STEP_TIMEOUTS_S", '{"finalize": 5}')
    assert Settings(_env_file=None).step_timeout_s("finalize") == 5

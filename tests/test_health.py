"""`python -m core health` and the health checks: every check reports, and a broken part says
why."""

import dataclasses

from core.cli import main
from core.health import check_all, check_settings
from core.providers import build_providers
from core.runtime import Runtime
from tests.fakes import Spy


def test_an_offline_install_is_healthy_on_every_check(settings):
    checks = {c.name: c for c in check_settings(settings)}
    assert set(checks) == {
        "database",
        "storage probe",
        "image provider",
        "video provider",
        "moderation provider",
        "storage credentials",
    }
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert checks["storage probe"].detail == "local: write/read/delete ok"


def test_a_database_behind_the_code_is_reported_down(settings, tmp_path):
    empty = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path}/empty.db"})
    database = next(c for c in check_settings(empty) if c.name == "database")
    assert not database.ok
    assert "db upgrade" in database.detail


def test_storage_that_cannot_be_written_is_reported_down(settings, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the storage folder should be")
    broken = settings.model_copy(update={"local_storage_dir": blocked})
    probe = next(c for c in check_settings(broken) if c.name == "storage probe")
    assert not probe.ok


def test_a_forced_real_provider_without_its_key_is_reported_not_raised(settings):
    forced = settings.model_copy(update={"image_provider": "openai"})
    providers = next(c for c in check_settings(forced) if c.name == "providers")
    assert not providers.ok
    assert "OPENAI_API_KEY" in providers.detail


def test_the_health_command_exits_non_zero_when_something_is_down(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/empty.db")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert main(["health"]) == 1


def test_the_page_checks_the_running_engines_own_providers(settings):
    image = Spy(build_providers(settings).image)
    providers = dataclasses.replace(build_providers(settings), image=image)
    runtime = Runtime(settings, upgrade=False, providers=providers)
    try:
        checks = {c.name: c for c in check_all(runtime)}
    finally:
        runtime.shutdown()
    assert checks["image provider"].ok and checks["database"].ok
    assert image.calls["check"] == 1

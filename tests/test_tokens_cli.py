"""`python -m core tokens ...`, run as an operator would run it."""

from core import tokens
from core.db import Database
from tests.test_cli import run_cli


def _secret(stdout: str) -> str:
    return stdout.strip().splitlines()[-1].strip()


def test_a_token_is_created_listed_and_revoked_from_the_command_line(tmp_path):
    email = "scripts@example.com"
    assert run_cli(tmp_path, "users", "create", email, "--password", "long-enough").returncode == 0
    created = run_cli(tmp_path, "tokens", "create", "--user", email, "--name", "nightly")
    assert created.returncode == 0, created.stderr
    secret = _secret(created.stdout)
    db = Database.from_url(f"sqlite:///{tmp_path / 'data' / 'reelforge.db'}")
    try:
        with db.read() as session:
            assert tokens.authenticate(session, secret).user.email == email
        listed = run_cli(tmp_path, "tokens", "list", "--user", email)
        assert secret[:8] in listed.stdout and "nightly" in listed.stdout
        assert "active" in listed.stdout and secret not in listed.stdout
        revoked = run_cli(tmp_path, "tokens", "revoke", secret[:8])
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked" in run_cli(tmp_path, "tokens", "list", "--user", email).stdout
        with db.read() as session:
            assert tokens.authenticate(session, secret) is None
    finally:
        db.dispose()


def test_a_token_for_an_unknown_account_names_the_field(tmp_path):
    done = run_cli(tmp_path, "tokens", "create", "--user", "nobody@example.com")
    assert done.returncode == 2
    assert "user no account for nobody@example.com" in done.stderr

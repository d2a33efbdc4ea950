"""`python -m core budgets set|clear|list`: caps by email, project name or the team, listed with
what each spent this month; bad input names the flag."""

from __future__ import annotations

import pytest

from core import cli
from core.projects import create_project
from core.schemas import parse_request
from core.workflows import start_workflow

REQUEST = parse_request({"imagePrompt": "a fox", "videoPrompt": "dolly in"})


@pytest.fixture
def core_cli(database_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setattr(cli.console, "width", 200)

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, words(out), words(err)

    return run


def words(printed: str) -> str:
    """Printed text as single-spaced words, without the table's lines."""
    return " ".join(printed.translate(str.maketrans("", "", "│┃┏┓┗┛┡┩└┘━─┳┻╇┼┬┴")).split())


def test_budgets_are_set_listed_and_cleared(core_cli, db, make_user):
    user = make_user(email="ana@example.com", credits=500)
    with db.begin() as session:
        project = create_project(session, user.id, "Winter")
    start_workflow(
        db,
        user_id=user.id,
        request=REQUEST.model_copy(update={"project_id": project.id}),
        client_key="k",
        actor=user.email,
    )

    code, out, _ = core_cli("budgets", "set", "--user", "ana@example.com", "--monthly", "100")
    assert code == 0
    assert "ana@example.com: 100 credits a month; 19 spent and 81 left this month" in out
    assert core_cli("budgets", "set", "--project", "winter", "--monthly", "50")[0] == 0
    assert core_cli("budgets", "set", "--team", "--monthly", "5000")[0] == 0

    code, out, _ = core_cli("budgets", "list")
    assert code == 0
    assert "team the team 5,000 19 (0%) 4,981" in out
    assert "user ana@example.com 100 19 (19%) 81" in out
    assert "project project 'Winter' of ana@example.com 50 19 (38%) 31" in out
    assert "00:00 UTC" in out

    code, out, _ = core_cli("budgets", "clear", "--team")
    assert (code, out) == (0, "cleared the monthly budget of the team")
    assert "the team" not in core_cli("budgets", "list")[1]


def test_bad_budget_input_names_the_flag(core_cli, make_user):
    make_user(email="ana@example.com")
    code, _, err = core_cli("budgets", "set", "--user", "ana@example.com", "--monthly", "0")
    assert (code, err) == (2, "error: --monthly must be between 1 and 1,000,000,000")
    code, _, err = core_cli("budgets", "set", "--user", "nobody@example.com", "--monthly", "5")
    assert (code, err) == (2, "error: --user no account for nobody@example.com")
    code, _, err = core_cli("budgets", "clear", "--project", "nope")
    assert (code, err) == (2, "error: --project no project called 'nope'")

"""Hostile and malformed input: fuzzed requests, huge and strange prompts, unknown ids, the CLI.
Every case gets a clear message naming the field, and nothing is written or charged."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from core.cli import main
from core.errors import NotFoundError, RequestValidationError
from core.executor import InlineExecutor
from core.models import CreditTransaction, Workflow
from core.runtime import Runtime
from core.schemas import WorkflowRequest, parse_request

VALID = {"imagePrompt": "a fox", "videoPrompt": "slow pan"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)
fields = st.sampled_from(
    ["imagePrompt", "videoPrompt", "imageConfig", "videoConfig", "projectId", "imageModel", "x"]
)


@given(st.dictionaries(fields, json_values, max_size=7))
def test_any_json_is_either_a_valid_request_or_a_named_refusal(payload):
    try:
        request = parse_request(payload)
    except RequestValidationError as refusal:
        assert refusal.problems, "a refusal must name at least one field"
        assert all(isinstance(m, str) and m for m in refusal.problems.values())
    else:
        assert isinstance(request, WorkflowRequest)
        assert request.image_prompt.strip() and request.video_prompt.strip()


@given(
    st.fixed_dictionaries(
        {
            "imageConfig": st.fixed_dictionaries(
                {"size": st.text(max_size=12), "quality": st.sampled_from(["standard", "ultra"])}
            ),
            "videoConfig": st.fixed_dictionaries(
                {"duration": st.sampled_from(["4s", "8s", "9s", 8]), "resolution": st.text()}
            ),
        }
    )
)
def test_invalid_config_combinations_name_the_exact_field(config):
    legal = {
        "imageConfig.size": ("1024x1024", "1792x1024", "1024x1792"),
        "imageConfig.quality": ("standard", "hd"),
        "videoConfig.duration": ("4s", "6s", "8s"),
        "videoConfig.resolution": ("720p", "1080p"),
    }
    wrong = {
        name
        for name, values in legal.items()
        if config[name.split(".")[0]][name.split(".")[1]] not in values
    }
    try:
        parse_request({**VALID, **config})
    except RequestValidationError as refusal:
        assert set(refusal.problems) == wrong
    else:
        assert wrong == set(), f"accepted with {wrong} wrong"


@pytest.mark.parametrize(
    "prompt",
    [
        "<script>alert('x')</script> a fox",
        "right-to-left scripts stay legal: עברית ועربي",
        "🦊🎬 emoji fox ✨",
        "a" * 4000,
        "line one\nline two\ttabbed",
    ],
)
def test_strange_but_legal_prompts_are_kept_exactly_as_typed(prompt):
    assert parse_request({**VALID, "imagePrompt": prompt}).image_prompt == prompt.strip()


@pytest.mark.parametrize(
    ("prompt", "field", "message"),
    [
        ("a" * 4001, "imagePrompt", "too long"),
        ("bell\x07", "imagePrompt", "control characters"),
        ("fox \u202egnp.exe\u202c", "imagePrompt", "bidirectional control characters"),
        ("isolate \u2066x\u2069", "imagePrompt", "bidirectional control characters"),
        ("", "imagePrompt", "must not be empty"),
        (None, "imagePrompt", "valid string"),
    ],
)
def test_illegal_prompts_are_refused_with_the_field_named(prompt, field, message):
    with pytest.raises(RequestValidationError) as caught:
        parse_request({**VALID, "imagePrompt": prompt})
    assert message in caught.value.problems[field]


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(fields, json_values, max_size=7))
def test_a_refused_start_writes_and_charges_nothing(settings_for_fuzz, payload):
    runtime, user = settings_for_fuzz
    try:
        parse_request(payload)
    except RequestValidationError:
        with pytest.raises(RequestValidationError):
            runtime.start_workflow(user, parse_request(payload))
        with runtime.db.read() as session:
            assert session.scalar(select(func.count()).select_from(Workflow)) == 0
            assert session.scalar(select(func.count()).select_from(CreditTransaction)) == 1


@pytest.fixture
def settings_for_fuzz(settings, make_user):
    runtime = Runtime(settings, upgrade=False, executor=InlineExecutor())
    yield runtime, make_user(credits=100)
    runtime.shutdown()


def test_an_unknown_or_foreign_workflow_id_looks_the_same(settings, make_user):
    runtime = Runtime(settings, upgrade=False, executor=InlineExecutor())
    owner, stranger = make_user(), make_user()
    workflow_id, _ = runtime.start_workflow(
        owner, parse_request({**VALID, "videoConfig": {"duration": "4s"}})
    )
    # Someone else's run is indistinguishable from one that does not exist.
    for unknown in ("no-such-id", "' OR 1=1 --", "../../etc/passwd", workflow_id):
        with pytest.raises(NotFoundError):
            runtime.cancel(unknown, stranger)
    runtime.shutdown()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(max_size=20), max_size=5))
def test_the_cli_never_answers_garbage_with_a_traceback(capsys, args):
    # Subcommands that would do real work are excluded; everything else must fail cleanly.
    if args and args[0] in ("run", "recover", "load", "users", "credits", "db", "health"):
        return
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code in (0, 2)
    assert "Traceback" not in capsys.readouterr().err

"""The API's operator endpoints end to end: `/metrics` scraped from a real server and parsed with
the Prometheus text parser while a run goes through it, and `/livez` / `/readyz` as a process
supervisor sees them, before and after the database goes away."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from core.db import scratch_database
from core.states import StepName
from tests.helpers import scrape, wait_for

BODY = {
    "imagePrompt": "a lighthouse at dusk, waves below",
    "videoPrompt": "slow push in, the beam sweeping",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}


def test_metrics_move_by_one_completed_run_its_six_steps_its_calls_and_its_credits(start_api):
    api = start_api(latency_s=0.3, HEARTBEAT_INTERVAL_S="0.2")
    alice = api.account(credits=100)
    metrics_url = f"{api.url}/metrics"
    wait_for(lambda: scrape(metrics_url).value("reelforge_workers_alive", kind="threads") == 1)
    before = scrape(metrics_url)

    run = alice.client.post("/api/workflow/start", json=BODY).json()
    with alice.client.stream("GET", run["links"]["stream"]) as stream:
        lines = stream.iter_lines()
        next(lines)  # the stream is open on the server once its first event arrives
        assert scrape(metrics_url).moved(before, "reelforge_sse_streams_open") == 1
        for _ in lines:  # to the final event, after which the server closes the stream
            pass
    wait_for(lambda: scrape(metrics_url).moved(before, "reelforge_sse_streams_open") == 0)

    # Counted just after the commit the status is read from: wait for the count, not the run.
    wait_for(lambda: scrape(metrics_url).moved(before, "reelforge_runs_finished_total") == 1)
    after = scrape(metrics_url)
    status = alice.client.get(f"/api/workflow/{run['workflowId']}/status").json()
    assert status["status"] == "completed"
    # No videoModel in the request: the installation's VIDEO_MODEL, labelled "default".
    assert after.moved(before, "reelforge_runs_started_total", model="default") == 1
    assert after.moved(before, "reelforge_runs_finished_total", status="completed") == 1
    assert after.moved(before, "reelforge_runs_finished_total", status="failed") == 0
    steps = "reelforge_step_duration_seconds_count"
    for step in StepName:
        assert after.moved(before, steps, step=step.value, outcome="completed") == 1, step
    calls = after.moved(before, "reelforge_provider_call_duration_seconds_count", outcome="ok")
    assert calls >= 4  # moderation, image, video submit and polls, storage
    assert after.moved(before, "reelforge_provider_call_duration_seconds_sum") > 0
    assert after.moved(before, "reelforge_provider_errors_total") == 0
    assert after.moved(before, "reelforge_provider_retries_total") == 0
    assert after.moved(before, "reelforge_credits_spent_total") == status["costCredits"]
    assert after.moved(before, "reelforge_refunds_total") == 0
    assert after.value("reelforge_runs_queued") == 0
    assert after.value("reelforge_runs_running") == 0
    assert after.value("reelforge_oldest_queued_run_age_seconds") == 0
    assert after.value("reelforge_webhook_deliveries_pending") == 0
    assert after.value("reelforge_workers_alive", kind="celery") == 0


def test_metrics_and_probes_need_no_token_and_are_not_rate_limited(start_api):
    api = start_api(API_RATE_LIMIT="2/minute")
    anonymous = api.client()
    for _ in range(4):
        assert anonymous.get("/metrics").status_code == 200
        assert anonymous.get("/livez").json() == {"live": True}
        assert anonymous.get("/readyz").status_code == 200
    assert "/metrics" not in anonymous.get("/openapi.json").json()["paths"]


def test_with_log_format_json_every_line_the_api_writes_is_json_and_a_runs_lines_carry_its_id(
    start_api, tmp_path: Path
):
    api = start_api(LOG_FORMAT="json", DEBUG="workflow:*")  # the API logs warnings only, else
    alice = api.account()
    run = alice.client.post("/api/workflow/start", json=BODY).json()
    wait_for(
        lambda: alice.client.get(run["links"]["status"]).json()["status"] == "completed",
        timeout_s=60,
    )
    port = api.url.rsplit(":", 1)[1]
    entries = [
        json.loads(line)
        for line in (tmp_path / f"api-{port}.log").read_text().splitlines()
        if line.strip()
    ]
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # the server's own lines too
    of_run = [e for e in entries if e.get("run_id") == run["workflowId"]]
    steps = {e["step"] for e in of_run if e["message"].endswith("completed (100%)")}
    assert steps == {step.value for step in StepName}


def test_readiness_fails_with_the_database_named_when_it_goes_away_and_liveness_holds(
    start_api, postgres_url
):
    with scratch_database(postgres_url, prefix="reelforge_ready") as url:
        api = start_api(DATABASE_URL=url)
        probe = api.client()
        ready = probe.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "checks": {"database": "ok"}, "failed": []}
        _drop(postgres_url, url)
        gone = probe.get("/readyz")
        assert gone.status_code == 503
        assert gone.json() == {
            "ready": False,
            "checks": {"database": "down"},
            "failed": ["database"],
        }
        assert "Traceback" not in gone.text
        assert probe.get("/livez").status_code == 200
        # Still a valid scrape: the process's own metrics, without the database's gauges.
        after = scrape(f"{api.url}/metrics")
        assert not [s for s in after.samples if s.name == "reelforge_runs_queued"]


def _drop(server_url: str, url: str) -> None:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            name = make_url(url).database
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()

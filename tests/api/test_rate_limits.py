"""Rate limits on the real server: a token over its budget gets a 429 problem with Retry-After
and the RateLimit headers (which every answer carries), a start has its own lower budget, a
caller without a token is counted by address, and two API processes on one Redis share one
budget. When the counting store is down, requests pass and a warning says so."""

from __future__ import annotations

import logging

import pytest
import redis
from pydantic import ValidationError

from core.api.ratelimit import Quota, RateLimiter, headers
from core.config import Settings
from tests.api.test_workflows_api import BODY, _is_problem, _start
from tests.helpers import free_port


def _budget(answer) -> tuple[int, int]:
    return int(answer.headers["ratelimit-limit"]), int(answer.headers["ratelimit-remaining"])


@pytest.fixture
def limits_redis_url(redis_url: str) -> str:
    """The shared test Redis, without the counts of an earlier test."""
    # Token ids restart with each test's database: forget the counts of an earlier run (only
    # the limiter's keys: the database may be the Celery broker's too).
    store = redis.Redis.from_url(redis_url)
    for key in store.scan_iter("LIMITS*"):
        store.delete(key)
    store.close()
    return redis_url


def test_a_burst_over_a_budget_is_a_429_and_a_start_has_a_lower_budget(start_api):
    """One server for both budgets (its start is most of the cost)."""
    api = start_api(API_RATE_LIMIT="5/minute", API_START_RATE_LIMIT="2/minute")
    alice, bob, carol = api.account(), api.account(), api.account(credits=100)
    answers = [alice.client.get("/api/me") for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [_budget(a) for a in answers] == [(5, 4), (5, 3), (5, 2), (5, 1), (5, 0)]
    assert all(0 < int(a.headers["ratelimit-reset"]) <= 60 for a in answers)

    refused = alice.client.get("/api/me")
    problem = _is_problem(refused, 429)
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert _budget(refused) == (5, 0)
    assert "5 requests per minute" in problem["detail"]
    assert bob.client.get("/api/me").status_code == 200  # another token, its own budget

    anonymous = api.client()
    health = [anonymous.get("/api/workflow/health").status_code for _ in range(6)]
    assert health == [200] * 5 + [429]  # counted by address

    starts = [_start(carol.client) for _ in range(2)]
    assert [s.status_code for s in starts] == [202, 202]
    assert _budget(starts[1]) == (2, 0)  # the tighter budget is the one shown
    third = _start(carol.client, {**BODY, "videoPrompt": "a third take"})
    assert "2 starts per minute" in _is_problem(third, 429)["detail"]
    reading = carol.client.get("/api/workflows")
    assert len(reading.json()["items"]) == 2  # the third never started
    assert _budget(reading) == (5, 1)  # reading has the larger budget (3 starts + this)


def test_two_api_processes_on_one_redis_share_one_budget(start_api, limits_redis_url):
    first = start_api(REDIS_URL=limits_redis_url, API_RATE_LIMIT="4/minute")
    second = start_api(REDIS_URL=limits_redis_url, API_RATE_LIMIT="4/minute")
    alice = first.account()
    clients = [alice.client, second.client(alice.token)]
    remaining = [_budget(clients[i % 2].get("/api/me"))[1] for i in range(4)]
    assert remaining == [3, 2, 1, 0]
    for client in clients:
        _is_problem(client.get("/api/me"), 429)


def test_a_store_that_does_not_answer_lets_requests_pass_with_a_warning(caplog):
    down = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    limiter = RateLimiter(Settings(_env_file=None, redis_url=down, api_rate_limit="1/minute"))
    with caplog.at_level(logging.WARNING, logger="core.api.ratelimit"):
        assert limiter.hit(limiter.requests, "requests", "token:1") is None
        assert limiter.hit(limiter.requests, "requests", "token:1") is None
    warnings = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per request


def test_the_headers_show_the_tightest_budget_and_retry_after_only_when_refused():
    roomy, tight = Quota(100, 90, 30, True), Quota(5, 1, 50, True)
    assert headers([roomy, tight]) == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": "50",
    }
    refused = Quota(5, 0, 12, False)
    assert headers([roomy, refused])["Retry-After"] == "12"
    assert headers([]) == {}


def test_a_rate_that_is_not_one_is_refused_at_start_naming_the_setting():
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, api_start_rate_limit="lots")
    assert "api_start_rate_limit" in str(refused.value) and "120/minute" in str(refused.value)

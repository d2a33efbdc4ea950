"""A user's runs: start, status, cancel, list, and the files a finished run left."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Query, Request, Response
from pydantic import BeforeValidator, Field
from starlette.concurrency import run_in_threadpool

from core import idempotency, run_events, webhooks
from core.api.deps import CurrentUser, RuntimeDep, WatcherDep, start_rate_limited
from core.api.problems import ApiProblem
from core.api.responses import (
    AssetLink,
    Cancelling,
    Delivery,
    Links,
    Refund,
    Run,
    RunError,
    RunList,
    RunSummary,
    Started,
    Step,
    problems,
)
from core.api.watcher import RunEventWatcher
from core.auth import UserView, find_user
from core.clock import utcnow
from core.errors import NotFoundError, PermissionDeniedError, RequestValidationError
from core.projects import PROJECT_NAME_MAX_CHARS
from core.run_events import step_payload
from core.runtime import Runtime
from core.schemas import WorkflowRequest, text_problem
from core.states import WorkflowStatus
from core.views.history import RunCursor, RunFilter, runs_after
from core.views.run import RunDetail, download_name, load_result, load_run, run_detail
from core.views.watch import live_phase
from core.webhooks import DeliveryView
from core.workflows import AssetView

router = APIRouter(prefix="/api", tags=["workflows"], responses=problems(401, 404, 422))

PAGE_MAX = 100
RETRY_AFTER = {
    "Retry-After": {
        "description": "While the run is active: seconds until it is worth asking again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
# OpenAPI links from a started run to what a client does next with it (schemathesis follows
# them in its stateful tests).
NEXT_OPERATIONS = {
    name: {"operationId": operation, "parameters": {"workflow_id": "$response.body#/workflowId"}}
    for name, operation in (("status", "run_status"), ("cancel", "cancel_run"))
}
EXAMPLE_BODY = {
    "imagePrompt": "a lighthouse at dusk, waves below",
    "videoPrompt": "slow push in, the beam sweeping",
    "imageConfig": {"size": "1792x1024"},
    "videoConfig": {"duration": "4s", "resolution": "720p"},
}
WAIT_MAX_S = 60
_WAIT_PREFERENCE = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})\b", re.ASCII)
Prefer = Annotated[
    str | None,
    Header(
        description="`wait=N` (seconds, at most 60): answer once the run has ended or N seconds "
        "have passed, with the run as it is then (RFC 7240; `Preference-Applied` says so).",
        examples=["wait=30"],
    ),
]


def _links(app: FastAPI, workflow_id: str) -> Links:
    return Links(
        status=app.url_path_for("run_status", workflow_id=workflow_id),
        stream=app.url_path_for("run_stream", workflow_id=workflow_id),
        cancel=app.url_path_for("cancel_run", workflow_id=workflow_id),
    )


class StartRequest(WorkflowRequest):
    """The run's request, and how to pay for its still."""

    reuse_still: bool = Field(
        True,
        alias="reuseStill",
        description="Reuse the still of an earlier run of yours with the same image request "
        "(model, prompt, style, quality, size) instead of paying for a new one.",
    )

    def workflow_request(self) -> WorkflowRequest:
        return WorkflowRequest.model_validate(
            self.model_dump(by_alias=True, exclude={"reuse_still"})
        )


def preferred_wait(prefer: str | None) -> int | None:
    """The seconds a `Prefer: wait=N` asks for, capped at WAIT_MAX_S; None when not asked."""
    found = _WAIT_PREFERENCE.search(prefer or "")
    return None if found is None else min(int(found.group(1)), WAIT_MAX_S)


def snapshot(runtime: Runtime, workflow_id: str, viewer: UserView) -> tuple[int, RunDetail]:
    """The seq of the run's newest event, then the run (another user's run is missing). In
    that order: the state read is at least as new as the seq, so waiting or streaming from that
    seq can see an event twice but never miss one."""
    with runtime.db.read() as session:
        seq = run_events.last_seq(session, workflow_id)
        limit = runtime.settings.max_active_runs_per_user
        return seq, run_detail(session, workflow_id, viewer, max_active_per_user=limit)


async def _held(
    runtime: Runtime,
    watcher: RunEventWatcher,
    workflow_id: str,
    viewer: UserView,
    wait_s: int,
    response: Response,
) -> RunDetail:
    """The run once it has ended, or as it is after `wait_s` seconds (the `Prefer: wait`)."""
    seq, detail = await run_in_threadpool(snapshot, runtime, workflow_id, viewer)
    response.headers["Preference-Applied"] = f"wait={wait_s}"
    if detail.view.status.is_active and wait_s > 0:
        await watcher.wait_until_final(workflow_id, seq, wait_s)
        _, detail = await run_in_threadpool(snapshot, runtime, workflow_id, viewer)
    return detail


@router.post(
    "/workflow/start",
    status_code=202,
    response_model=Started,
    dependencies=[Depends(start_rate_limited)],
    responses={
        202: {
            "description": "The run is queued (or, for a repeated Idempotency-Key, the run "
            "that key started).",
            "headers": {
                "Location": {"description": "The run's status.", "schema": {"type": "string"}}
            },
            "links": NEXT_OPERATIONS,
        },
        **problems(402, 403),
    },
)
async def start_workflow(
    body: Annotated[StartRequest, Body(openapi_examples={"a short clip": {"value": EXAMPLE_BODY}})],
    runtime: RuntimeDep,
    watcher: WatcherDep,
    user: CurrentUser,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=idempotency.KEY_MAX_CHARS,
            description=f"Any string of yours, e.g. a UUID. The same key again within "
            f"{idempotency.WINDOW.total_seconds() / 3600:g} h returns the run it started (one "
            "run, one charge); with a different body it is a 422. After that the key may start "
            "a new run.",
            examples=["nightly-2026-11-30"],
        ),
    ] = None,
    prefer: Prefer = None,
) -> Started:
    """Reserve the run's credits and queue it. Retry safely with an `Idempotency-Key`. With
    `Prefer: wait=N` the answer waits for the run to end (or N seconds)."""
    run = body.workflow_request()
    workflow_id, created = await run_in_threadpool(
        runtime.start_workflow,
        user,
        run,
        reuse_still=body.reuse_still,
        idempotency_key=idempotency_key,
    )
    _, detail = await run_in_threadpool(snapshot, runtime, workflow_id, user)
    if not created and detail.view.request != run:
        raise RequestValidationError(
            {"Idempotency-Key": "was already used for a different request"}
        )
    wait_s = preferred_wait(prefer)
    if wait_s is not None:
        detail = await _held(runtime, watcher, workflow_id, user, wait_s, response)
    links = _links(request.app, workflow_id)
    response.headers["Location"] = links.status
    return Started(workflow_id=workflow_id, status=detail.view.status.value, links=links)


@router.get(
    "/workflow/{workflow_id}/status",
    response_model=Run,
    name="run_status",
    responses={200: {"description": "The run as it stands.", "headers": RETRY_AFTER}},
)
async def run_status(
    workflow_id: str,
    runtime: RuntimeDep,
    watcher: WatcherDep,
    user: CurrentUser,
    request: Request,
    response: Response,
    prefer: Prefer = None,
) -> Run:
    """The run and its six steps. While it runs, `Retry-After` says when to ask again; with
    `Prefer: wait=N` the answer waits for the run to end (or N seconds)."""
    wait_s = preferred_wait(prefer)
    if wait_s is None:
        _, detail = await run_in_threadpool(snapshot, runtime, workflow_id, user)
    else:
        detail = await _held(runtime, watcher, workflow_id, user, wait_s, response)
    if detail.view.status.is_active:
        response.headers["Retry-After"] = str(max(1, math.ceil(runtime.settings.poll_interval_s)))
    return status_body(detail, runtime, request.app)


def status_body(detail: RunDetail, runtime: Runtime, app: FastAPI) -> Run:
    """The status endpoint's answer (the stream's `reset` event carries the same)."""
    view, receipt = detail.view, detail.receipt
    return Run(
        workflow_id=view.id,
        status=view.status.value,
        phase=detail.phase.phase.value,
        phase_label=detail.phase.label,
        queue_position=detail.phase.queue_position,
        progress=view.progress,
        cost_credits=view.cost_credits,
        cancel_requested=view.cancel_requested,
        provider_cancel_confirmed=view.provider_cancel_confirmed,
        created_at=view.created_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
        worker=view.worker_id,
        trace_id=view.trace_id,
        steps=[Step.model_validate({**step_payload(s), "worker": s.worker_id}) for s in view.steps],
        error=None
        if receipt is None
        else RunError(
            code=receipt.category,
            message=receipt.reason,
            step=receipt.step.value if receipt.step else None,
        ),
        refund=None
        if receipt is None or receipt.entry is None
        else Refund(credits=receipt.refunded, ledger_entry_id=receipt.entry.id),
        assets=[_asset_link(runtime, app, a) for a in detail.assets],
        deliveries=[_delivery(d) for d in detail.deliveries],
        links=_links(app, view.id),
    )


def _delivery(delivery: DeliveryView) -> Delivery:
    pending = delivery.status == webhooks.DeliveryStatus.PENDING
    return Delivery(
        id=delivery.id,
        event=delivery.event,
        url=delivery.url,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        next_attempt_at=delivery.next_attempt_at if pending else None,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
    )


def _asset_link(runtime: Runtime, app: FastAPI, asset: AssetView) -> AssetLink:
    """The expiring link the pages use when the storage gives one a client can fetch (S3);
    for a local folder, this API's own download, which checks the token."""
    expiry_s = runtime.settings.presign_expiry_s
    url = runtime.providers.storage.url(asset.storage_key, expires_s=expiry_s)
    expires_at: datetime | None = utcnow() + timedelta(seconds=expiry_s)
    if not url.startswith(("http://", "https://")):
        url = app.url_path_for("run_asset", workflow_id=asset.workflow_id, kind=asset.kind)
        expires_at = None
    return AssetLink(
        kind=asset.kind,
        content_type=asset.content_type,
        size_bytes=asset.size_bytes,
        url=url,
        expires_at=expires_at,
    )


@router.get(
    "/workflow/{workflow_id}/assets/{kind}",
    name="run_asset",
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}, "image/png": {}}}},
)
def run_asset(
    workflow_id: str, kind: Literal["image", "video"], runtime: RuntimeDep, user: CurrentUser
) -> Response:
    """The run's still or clip, for its owner (or an admin)."""
    with runtime.db.read() as session:
        load_run(session, workflow_id, user)
        asset = getattr(load_result(session, workflow_id), kind)
    if asset is None:
        raise NotFoundError(f"workflow {workflow_id} has no {kind}")
    return Response(
        runtime.providers.storage.get(asset.storage_key),
        media_type=asset.content_type,
        headers={"Content-Disposition": f'attachment; filename="{download_name(asset)}"'},
    )


@router.post(
    "/workflow/{workflow_id}/cancel",
    status_code=202,
    response_model=Cancelling,
    name="cancel_run",
    responses={
        202: {"description": "Asked to stop: `cancelStage` says how far it got."},
        **problems(409),
    },
)
def cancel_run(
    workflow_id: str, runtime: RuntimeDep, user: CurrentUser, request: Request
) -> Cancelling:
    """A queued run ends at once, refunded; a running one stops at its next check."""
    with runtime.db.read() as session:
        before = load_run(session, workflow_id, user)
    if before.status.is_terminal:
        raise ApiProblem(409, "Run already ended", f"workflow {workflow_id} is {before.status}")
    view = runtime.cancel(workflow_id, user)
    return Cancelling(
        workflow_id=view.id,
        status=view.status.value,
        cancel_stage=live_phase(view).phase.value,
        links=_links(request.app, view.id),
    )


@router.post(
    "/workflow/{workflow_id}/webhooks/{delivery_id}/redeliver",
    status_code=202,
    response_model=Delivery,
)
def redeliver_webhook(
    workflow_id: str, delivery_id: str, runtime: RuntimeDep, user: CurrentUser
) -> Delivery:
    """Send one of the run's webhook messages again, soon, with the same `webhook-id`."""
    with runtime.db.begin() as session:
        load_run(session, workflow_id, user)
        return _delivery(webhooks.redeliver(session, workflow_id, delivery_id, user))


def _iso_8601(value: object) -> object:
    """ISO 8601 only: pydantic alone would also read a number as seconds since 1970."""
    if not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 time, e.g. 2026-11-30T12:00:00Z") from None


IsoTime = Annotated[datetime, BeforeValidator(_iso_8601)]


@router.get("/workflows", response_model=RunList, responses=problems(403))
def list_workflows(
    runtime: RuntimeDep,
    user: CurrentUser,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 25,
    cursor: Annotated[str | None, Query(description="nextCursor of the previous page")] = None,
    status: Annotated[list[WorkflowStatus] | None, Query(description="any of these")] = None,
    project_id: Annotated[int | None, Query(alias="projectId", ge=1)] = None,
    project_name: Annotated[
        str | None, Query(alias="projectName", min_length=1, max_length=PROJECT_NAME_MAX_CHARS)
    ] = None,
    created_after: Annotated[
        IsoTime | None,
        Query(
            alias="createdAfter",
            description="ISO 8601; runs created at or after it (no offset: UTC)",
            examples=["2026-11-30T00:00:00Z"],
        ),
    ] = None,
    created_before: Annotated[
        IsoTime | None,
        Query(
            alias="createdBefore",
            description="ISO 8601; runs created before it (no offset: UTC)",
            examples=["2026-12-01T00:00:00+01:00"],
        ),
    ] = None,
    everyone: Annotated[
        bool, Query(alias="all", description="An admin's token only: every user's runs.")
    ] = False,
    owner: Annotated[
        str | None,
        Query(alias="user", max_length=320, description="An admin's token only: EMAIL's runs."),
    ] = None,
) -> RunList:
    """The caller's runs, newest first, filtered; page on with `nextCursor`."""
    since, until = _utc("createdAfter", created_after), _utc("createdBefore", created_before)
    if since is not None and until is not None and until <= since:
        raise RequestValidationError({"createdBefore": "must be later than createdAfter"})
    if (everyone or owner is not None) and not user.is_admin:
        raise PermissionDeniedError("only an admin's token may read other users' runs")
    flt = RunFilter(
        statuses=tuple(status or ()),
        project_id=project_id,
        project_name=project_name,
        since=since,
        until=until,
        everyone=everyone or owner is not None,
    )
    with runtime.db.read() as session:
        if owner is not None:
            found = find_user(session, owner)
            if found is None:
                raise RequestValidationError({"user": "has no account"})
            flt = replace(flt, owner_id=found.id)
        rows = runs_after(session, user, flt, limit=limit + 1, after=_decode(cursor))
    page = rows[:limit]
    more = len(rows) > limit
    return RunList(
        items=[
            RunSummary(
                workflow_id=r.id,
                status=r.status.value,
                project_id=r.project_id,
                image_prompt=r.image_prompt,
                video_prompt=r.video_prompt,
                cost_credits=r.cost_credits,
                created_at=r.created_at,
                finished_at=r.finished_at,
                links=_links(request.app, r.id),
            )
            for r in page
        ],
        next_cursor=_encode(RunCursor(page[-1].created_at, page[-1].id)) if more else None,
    )


def _utc(field: str, moment: datetime | None) -> datetime | None:
    """A query's time in UTC (a time without an offset is taken as UTC)."""
    if moment is None:
        return None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise RequestValidationError({field: "is out of range"}) from None


def _encode(cursor: RunCursor) -> str:
    raw = json.dumps([cursor.created_at.isoformat(), cursor.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str | None) -> RunCursor | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, workflow_id = json.loads(raw)
        if not isinstance(workflow_id, str) or text_problem(workflow_id):
            raise ValueError("not a run id")
        return RunCursor(datetime.fromisoformat(created_at), workflow_id)
    except (binascii.Error, ValueError, TypeError):
        raise RequestValidationError({"cursor": "is not a cursor this API gave out"}) from None

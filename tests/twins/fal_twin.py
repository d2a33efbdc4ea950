"""A fal.ai twin over TLS: the queue (submit / status / result / cancel) with the real wire shapes
(reference/providers.md §2-3), per-model argument validation, scripted job timelines, faults and
a file route serving a real MP4 at the requested resolution and duration; plus the CDN upload
flow fal-client 1.0.3 uses (a storage token from REST_URL, then the bytes to CDN_URL, with the
SDK's fallback to a signed storage upload). One port serves all three of fal's hosts.

Key checks: every route but the signed PUT and the file downloads wants `Authorization: Key
<key>` (the CDN upload wants the token's Bearer). An unknown request id with a good key is a 404,
and a bad key is a 401 whatever the id: adapters' `check()` relies on that order.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import trustme

from tests.twins.base import Fault, JsonHandler, Recorded, TwinServer
from tests.twins.openai_twin import make_png

Outcome = Literal["completed", "failed", "stuck"]
CONTENT_POLICY_MESSAGE = (
    "The content could not be processed because it contained material flagged by a content checker."
)


@dataclass(frozen=True)
class Arg:
    kind: type | tuple[type, ...]
    choices: tuple[Any, ...] = ()
    required: bool = False


_VEO = {
    "prompt": Arg(str, required=True),
    "image_url": Arg(str, required=True),
    "aspect_ratio": Arg(str, ("auto", "16:9", "9:16")),
    "duration": Arg(str, ("4s", "6s", "8s")),
    "resolution": Arg(str, ("720p", "1080p", "4k")),
    "generate_audio": Arg(bool),
    "negative_prompt": Arg(str),
    "seed": Arg(int),
    "auto_fix": Arg(bool),
    "safety_tolerance": Arg(str, ("1", "2", "3", "4", "5", "6")),
}


@dataclass(frozen=True)
class ModelSchema:
    args: dict[str, Arg]
    default_duration: str
    audio_default: bool = False
    fixed_size: tuple[int, int] | None = None  # models that ignore resolution/aspect inputs


SCHEMAS: dict[str, ModelSchema] = {
    "fal-ai/veo3.1/image-to-video": ModelSchema(_VEO, "8s", audio_default=True),
    "fal-ai/veo3.1/fast/image-to-video": ModelSchema(_VEO, "8s", audio_default=True),
    "fal-ai/veo3.1/lite/image-to-video": ModelSchema(
        {**_VEO, "resolution": Arg(str, ("720p", "1080p"))}, "8s", audio_default=True
    ),
    "fal-ai/kling-video/v2.5-turbo/pro/image-to-video": ModelSchema(
        {
            "prompt": Arg(str, required=True),
            "image_url": Arg(str, required=True),
            "duration": Arg(str, ("5", "10")),
            "negative_prompt": Arg(str),
            "cfg_scale": Arg((int, float)),
            "tail_image_url": Arg(str),
        },
        "5",
        fixed_size=(1920, 1080),
    ),
    "fal-ai/minimax/hailuo-2.3/standard/image-to-video": ModelSchema(
        {
            "prompt": Arg(str, required=True),
            "image_url": Arg(str, required=True),
            "duration": Arg(str, ("6", "10")),
            "prompt_optimizer": Arg(bool),
        },
        "6",
        fixed_size=(1366, 768),
    ),
}
_SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}


@dataclass(frozen=True)
class JobScript:
    """How a job evolves, counted in status polls: `queue_polls` answers IN_QUEUE (positions
    counting down to 0), then `progress_polls` IN_PROGRESS, then COMPLETED (or an error);
    "stuck" stays IN_PROGRESS forever."""

    queue_polls: int = 1
    progress_polls: int = 1
    outcome: Outcome = "completed"
    error: str = "Internal error while generating the video"
    error_type: str = "internal_error"


@dataclass(frozen=True)
class Upload:
    """A file stored through the upload flow; `via` is "cdn" (fal_v3) or "storage" (fallback)."""

    data: bytes
    content_type: str
    file_name: str
    via: str
    lifecycle: dict[str, Any] | None = None


@dataclass
class Job:
    request_id: str
    endpoint: str
    arguments: dict[str, Any]
    script: JobScript
    polls: int = 0
    cancelled: bool = False
    logs: list[dict[str, str]] = field(default_factory=list)

    @property
    def owner_alias(self) -> str:
        return "/".join(self.endpoint.split("/")[:2])


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context whose certificate (from `ca`) names localhost and 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


def trust_bundle(ca: trustme.CA) -> bytes:
    """PEM for SSL_CERT_FILE: the trust already in force (SSL_CERT_FILE or certifi) plus `ca`,
    so pointing httpx at the twin does not cost it the real CAs."""
    current = os.environ.get("SSL_CERT_FILE")
    if current and Path(current).is_file():
        system = Path(current).read_bytes()
    else:
        import certifi

        system = Path(certifi.where()).read_bytes()
    return system + b"\n" + ca.cert_pem.bytes()


class FalTwin(TwinServer):
    def __init__(
        self,
        key: str = "fal-twin-key-id:fal-twin-secret",
        *,
        ssl_context: ssl.SSLContext,
        sock: Any = None,
        blocked_terms: tuple[str, ...] = ("gore", "beheading", "massacre"),
        video_fps: int = 8,  # real frames, fewer of them: keeps MP4 encoding well under a second
    ) -> None:
        super().__init__(_Handler, sock=sock, ssl_context=ssl_context)
        self.key = key
        self.blocked_terms = blocked_terms
        self.video_fps = video_fps
        self.default_script = JobScript()
        self.jobs: dict[str, Job] = {}
        self._scripts: deque[JobScript] = deque()
        self._videos: dict[tuple[int, int, int, bool], bytes] = {}
        self._render_lock = threading.Lock()
        self.uploads: dict[str, Upload] = {}  # by access path, "/files/<id>/<name>"
        self.cdn_tokens: set[str] = set()
        self._pending_puts: dict[str, tuple[str, str]] = {}  # signed PUT id -> (path, name)

    def access_url(self, path: str) -> str:
        return f"{self.origin}{path}"

    def reset(self) -> None:
        super().reset()
        self.default_script = JobScript()
        self.jobs.clear()
        self._scripts.clear()
        self.uploads.clear()
        self.cdn_tokens.clear()
        self._pending_puts.clear()

    def script_next_job(self, **kwargs: Any) -> JobScript:
        script = JobScript(**kwargs)
        self._scripts.append(script)
        return script

    def next_script(self) -> JobScript:
        return self._scripts.popleft() if self._scripts else self.default_script

    def fail_next(
        self,
        # "submit" | "status" | "result" | "cancel" | "file" | "cdn_token" | "cdn_upload"
        # | "storage_upload" (the fallback's initiate)
        operation: str,
        status: int = 500,
        *,
        detail: Any = None,
        error_type: str | None = None,
        retry_after: float | str | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay_s: float = 0.0,
        drop: bool = False,
    ) -> None:
        extra = {"x-fal-request-id": uuid.uuid4().hex, **(headers or {})}
        if retry_after is not None:
            extra["retry-after"] = str(retry_after)
        body: dict[str, Any] = {"detail": detail if detail is not None else _default_detail(status)}
        if error_type:
            body["error_type"] = error_type
            extra["x-fal-error-type"] = error_type
        self.faults.push(
            operation, Fault(status, body, extra, delay_s=delay_s, drop=drop), times=times
        )

    def reject_next_submit_for_content_policy(self) -> None:
        detail = [
            {
                "loc": ["body", "prompt"],
                "msg": CONTENT_POLICY_MESSAGE,
                "type": "content_policy_violation",
                "url": "https://docs.fal.ai/errors#content_policy_violation",
                "ctx": {"extra_info": {"categories": ["violence"]}},
            }
        ]
        self.fail_next("submit", 422, detail=detail)

    @property
    def cancelled(self) -> list[str]:
        return [job.request_id for job in self.jobs.values() if job.cancelled]

    def video(self, job: Job) -> bytes:
        width, height, duration, audio = _render_params(job)
        key = (width, height, duration, audio)
        with self._render_lock:
            if key not in self._videos:
                # Imported here: only the tests that download a clip pay for PyAV's import.
                from core.media import render_clip

                self._videos[key] = render_clip(
                    make_png(width, height, job.arguments.get("prompt", "")),
                    width=width,
                    height=height,
                    duration_s=duration,
                    fps=self.video_fps,
                    with_audio=audio,
                )
            return self._videos[key]


def _default_detail(status: int) -> Any:
    return {
        429: "Rate limit exceeded",
        500: "Internal server error",
        503: "Runner scheduling failure",
        504: "Request timed out",
    }.get(status, f"HTTP {status}")


def _render_params(job: Job) -> tuple[int, int, int, bool]:
    schema = SCHEMAS[job.endpoint]
    args = job.arguments
    duration = int(str(args.get("duration", schema.default_duration)).removesuffix("s"))
    audio = bool(args.get("generate_audio", schema.audio_default))
    if schema.fixed_size:
        return (*schema.fixed_size, duration, audio)
    width, height = _SIZES[args.get("resolution", "720p")]
    if args.get("aspect_ratio") == "9:16":
        width, height = height, width
    return width, height, duration, audio


def validate(schema: ModelSchema, arguments: Any) -> list[dict[str, Any]]:
    """Pydantic-style 422 details, as fal's model endpoints return them; unknown fields pass."""
    if not isinstance(arguments, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    problems = []
    for name, arg in schema.args.items():
        loc = ["body", name]
        if name not in arguments:
            if arg.required:
                problems.append({"loc": loc, "msg": "Field required", "type": "missing"})
            continue
        value = arguments[name]
        kinds = arg.kind if isinstance(arg.kind, tuple) else (arg.kind,)
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            expected = kinds[0].__name__
            problems.append(
                {
                    "loc": loc,
                    "msg": f"Input should be a valid {expected}",
                    "type": f"{expected}_type",
                    "input": value,
                }
            )
        elif arg.choices and value not in arg.choices:
            expected = ", ".join(repr(c) for c in arg.choices[:-1]) + f" or {arg.choices[-1]!r}"
            problems.append(
                {
                    "loc": loc,
                    "msg": f"Input should be {expected}",
                    "type": "literal_error",
                    "input": value,
                    "ctx": {"expected": expected},
                }
            )
    image_url = arguments.get("image_url")
    if isinstance(image_url, str) and not image_url.startswith(("http://", "https://", "data:")):
        problems.append(
            {
                "loc": ["body", "image_url"],
                "msg": "Input should be a valid URL",
                "type": "url_parsing",
                "input": image_url,
            }
        )
    return problems


def _log(message: str) -> dict[str, str]:
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"message": message, "level": "INFO", "source": "USER", "timestamp": stamp}


class _Handler(JsonHandler):
    twin: FalTwin

    def _authorised(self, request: Recorded) -> bool:
        auth = request.headers.get("authorization", "")
        if auth == f"Key {self.twin.key}":
            return True
        detail = "No user found for Key ID and Secret" if auth else "Missing authorization header"
        self.send_body(401, {"detail": detail})
        return False

    def do_POST(self) -> None:
        request = self.read_request()
        if request.path == "/files/upload":
            self._cdn_upload(request)
            return
        if request.path.startswith("/storage/"):
            self._storage(request)
            return
        if not self._authorised(request) or self.apply_fault("submit"):
            return
        endpoint = request.path.strip("/")
        schema = SCHEMAS.get(endpoint)
        if schema is None:
            self.send_body(404, {"detail": f"Application '{endpoint}' not found"})
            return
        problems = validate(schema, request.json)
        if problems:
            self.send_body(422, {"detail": problems})
            return
        script = self.twin.next_script()
        prompt = str(request.json.get("prompt", "")).lower()
        if any(term in prompt for term in self.twin.blocked_terms):
            # VEO's safety filter runs inside the job: the submit succeeds and the job fails.
            script = JobScript(
                script.queue_polls,
                script.progress_polls,
                "failed",
                CONTENT_POLICY_MESSAGE,
                "content_policy_violation",
            )
        job = Job(uuid.uuid4().hex, endpoint, request.json, script)
        self.twin.jobs[job.request_id] = job
        base = f"{self.twin.origin}/{job.owner_alias}/requests/{job.request_id}"
        self.send_body(
            200,
            {
                "request_id": job.request_id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "status": "IN_QUEUE",
                "queue_position": max(0, script.queue_polls - 1),
            },
            {"x-fal-request-id": job.request_id},
        )

    def do_GET(self) -> None:
        request = self.read_request()
        if request.path in self.twin.uploads:
            upload = self.twin.uploads[request.path]
            self.send_body(200, upload.data, content_type=upload.content_type)
            return
        if request.path.startswith("/files/"):
            self._file(request)
            return
        if not self._authorised(request):
            return
        parts = request.path.strip("/").split("/")
        is_status = len(parts) == 5 and parts[4] == "status"
        if self.apply_fault("status" if is_status else "result"):
            return
        job = self._job(parts)
        if job is None:
            return
        if is_status:
            job.polls += 1
            with_logs = request.query.get("logs", "").lower() in ("true", "1")
            self._status(job, with_logs)
        else:
            self._result(job)

    def do_PUT(self) -> None:
        request = self.read_request()
        if request.path.startswith("/storage/upload/put/"):
            self._signed_put(request)
            return
        if not self._authorised(request) or self.apply_fault("cancel"):
            return
        parts = request.path.strip("/").split("/")
        if len(parts) != 5 or parts[4] != "cancel":
            self.send_body(404, {"detail": "Not found"})
            return
        job = self.twin.jobs.get(parts[3])
        if job is None:
            self.send_body(404, {"status": "NOT_FOUND"})
        elif _phase(job) in ("completed", "failed"):
            self.send_body(400, {"status": "ALREADY_COMPLETED"})
        else:
            job.cancelled = True
            self.send_body(202, {"status": "CANCELLATION_REQUESTED"})

    # -- uploads: fal_client.client.CDNTokenManager, _upload_v3 and _upload_via_storage ------

    def _storage(self, request: Recorded) -> None:
        if request.path == "/storage/auth/token":
            if not self._authorised(request) or self.apply_fault("cdn_token"):
                return
            if request.query.get("storage_type") != "fal-cdn-v3":
                self.send_body(400, {"detail": "Unsupported storage_type"})
                return
            token = uuid.uuid4().hex
            self.twin.cdn_tokens.add(token)
            expires = datetime.now(UTC) + timedelta(hours=1)
            self.send_body(
                200,
                {
                    "token": token,
                    "token_type": "Bearer",
                    "base_url": self.twin.origin,
                    "expires_at": expires.isoformat(),
                },
            )
        elif request.path == "/storage/upload/initiate":
            if not self._authorised(request) or self.apply_fault("storage_upload"):
                return
            body = request.json if isinstance(request.json, dict) else {}
            name = str(body.get("file_name") or "upload.bin")
            put_id, path = uuid.uuid4().hex, f"/files/{uuid.uuid4().hex}/{name}"
            self.twin._pending_puts[put_id] = (path, str(body.get("content_type") or ""))
            self.send_body(
                200,
                {
                    "upload_url": f"{self.twin.origin}/storage/upload/put/{put_id}",
                    "file_url": self.twin.access_url(path),
                },
            )
        else:
            self.send_body(404, {"detail": "Not found"})

    def _cdn_upload(self, request: Recorded) -> None:
        auth = request.headers.get("authorization", "")
        if auth.removeprefix("Bearer ") not in self.twin.cdn_tokens:
            self.send_body(401, {"detail": "Invalid or expired upload token"})
            return
        if self.apply_fault("cdn_upload"):
            return
        if not request.body:
            self.send_body(400, {"detail": "Empty upload"})
            return
        name = request.headers.get("x-fal-file-name") or "upload.bin"
        path = f"/files/{uuid.uuid4().hex}/{name}"
        lifecycle = request.headers.get("x-fal-object-lifecycle")
        content_type = request.headers.get("content-type") or "application/octet-stream"
        self.twin.uploads[path] = Upload(
            request.body, content_type, name, "cdn", json.loads(lifecycle) if lifecycle else None
        )
        self.send_body(
            200,
            {
                "access_url": self.twin.access_url(path),
                "content_type": content_type,
                "file_name": name,
                "file_size": len(request.body),
            },
        )

    def _signed_put(self, request: Recorded) -> None:
        pending = self.twin._pending_puts.pop(request.path.rsplit("/", 1)[-1], None)
        if pending is None:
            self.send_body(403, "<Error><Code>SignatureDoesNotMatch</Code></Error>")
            return
        path, declared_type = pending
        content_type = request.headers.get("content-type") or declared_type
        name = path.rsplit("/", 1)[-1]
        self.twin.uploads[path] = Upload(request.body, content_type, name, "storage")
        self.send_body(200, None)

    def _job(self, parts: list[str]) -> Job | None:
        if len(parts) < 4 or parts[2] != "requests" or len(parts) > 5:
            self.send_body(404, {"detail": "Not found"})
            return None
        job = self.twin.jobs.get(parts[3])
        if job is None or job.owner_alias != f"{parts[0]}/{parts[1]}":
            self.send_body(404, {"detail": f"Request {parts[3]} not found"})
            return None
        return job

    def _status(self, job: Job, with_logs: bool) -> None:
        phase = _phase(job)
        base = f"{self.twin.origin}/{job.owner_alias}/requests/{job.request_id}"
        body: dict[str, Any] = {
            "request_id": job.request_id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }
        if phase == "queued":
            position = job.script.queue_polls - job.polls
            body.update(status="IN_QUEUE", queue_position=position, logs=None)
            self.send_body(202, body)
            return
        if phase == "running":
            step = job.polls - job.script.queue_polls
            job.logs.append(_log(f"Generating video: step {step}"))
            body.update(status="IN_PROGRESS", logs=job.logs if with_logs else None)
            self.send_body(202, body)
            return
        body.update(
            status="COMPLETED",
            logs=job.logs if with_logs else None,
            metrics={"inference_time": 1.25},
        )
        if phase == "failed":
            error, error_type = _failure(job)
            body.update(error=error, error_type=error_type)
        self.send_body(200, body)

    def _result(self, job: Job) -> None:
        phase = _phase(job)
        if phase in ("queued", "running"):
            self.send_body(400, {"detail": "Request is still in progress"})
        elif phase == "failed":
            error, error_type = _failure(job)
            if error_type == "content_policy_violation":
                detail = [{"loc": ["body", "prompt"], "msg": error, "type": error_type}]
                self.send_body(422, {"detail": detail})
            else:
                self.send_body(500, {"detail": error, "error_type": error_type})
        else:
            url = f"{self.twin.origin}/files/{job.request_id}.mp4"
            self.send_body(
                200,
                {"video": {"url": url, "content_type": "video/mp4", "file_name": "output.mp4"}},
            )

    def _file(self, request: Recorded) -> None:
        if self.apply_fault("file"):
            return
        job = self.twin.jobs.get(request.path.removeprefix("/files/").removesuffix(".mp4"))
        if job is None or _phase(job) != "completed":
            self.send_body(404, {"detail": "File not found"})
            return
        self.send_body(200, self.twin.video(job), content_type="video/mp4")


def _phase(job: Job) -> str:
    """Where the job is after `job.polls` status polls: polls 1..Q are queued (0 counts as queued
    too, before anyone asked), the next P are running, everything later is finished."""
    queue, progress = job.script.queue_polls, job.script.progress_polls
    if job.cancelled:
        return "failed"
    if queue > 0 and job.polls <= queue:
        return "queued"
    if job.script.outcome == "stuck" or (progress > 0 and job.polls <= queue + progress):
        return "running"
    return "failed" if job.script.outcome == "failed" else "completed"


def _failure(job: Job) -> tuple[str, str]:
    if job.cancelled:
        return "Request was cancelled by the user", "request_cancelled"
    return job.script.error, job.script.error_type

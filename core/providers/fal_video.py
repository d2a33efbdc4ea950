"""Image-to-video on fal.ai's queue through the official `fal-client` SDK. The job id we hand out
is "<endpoint id>::<fal request id>", so a restarted app can poll, fetch or cancel it.

The still reaches fal as a URL: a presigned S3 URL is passed through; a file:// URL (local-folder
storage) is uploaded to fal's CDN first, so local storage with real fal is a supported setup.
"""

from __future__ import annotations

import logging
import mimetypes
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

import httpx

from core.errors import (
    FailureCategory,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    UnknownModelError,
)
from core.providers.base import GeneratedVideo, VideoJobState, VideoJobStatus, VideoSpec
from core.providers.catalog import DEFAULT_VIDEO_MODEL, video_arguments
from core.providers.retry_after import retry_after_s

if TYPE_CHECKING:
    import fal_client

logger = logging.getLogger(__name__)

PROVIDER = "fal"
JOB_ID_SEPARATOR = "::"
MAX_LOG_LINES = 100  # fal resends every log line on each poll; keep the tail only
_NOT_CANCELLABLE = (400, 404)  # already finished, or unknown to fal
# check() asks for the status of this well-formed request id that cannot exist: fal answers 404
# once it has accepted the key, 401/403 when it has not, so no job is ever created or billed.
CHECK_REQUEST_ID = "00000000-0000-4000-8000-000000000000"
CHECK_TIMEOUT_S = 10.0
# Stills uploaded for local-folder storage only need to outlive the job that reads them.
UPLOAD_EXPIRES_IN = "1d"
_T = TypeVar("_T")


def _sdk(queue_host: str | None) -> Any:
    """Import fal_client on first use and align it with our retry policy.

    Imported lazily because fal_client reads FAL_QUEUE_RUN_HOST once, at import: deferring the
    import until the first fal call lets the process (or a test's TLS twin) set the env first,
    and keeps the SDK off the offline path entirely.
    """
    import fal_client
    import fal_client.client as fal_http

    # The SDK retries 408/409/429, transport errors, timeouts and nginx-looking 502-504 up to
    # MAX_ATTEMPTS=10 times inside one call (backoff to 30 s: ~44 s per call when it fails),
    # ignoring Retry-After. Our tenacity policy is the one retry layer: it honours Retry-After,
    # records every attempt in api_calls, checks for cancellation between attempts, and is bounded
    # by settings. Nested, the two would multiply (10 x 4 attempts) and hide 44 s stalls from
    # heartbeats, so the SDK makes exactly one attempt. It is a module global read at call time.
    fal_http.MAX_ATTEMPTS = 1
    # The upload hosts (REST_URL for the CDN token, CDN_URL for the bytes) have no setting of any
    # kind, so uploads always go to fal.ai itself; only tests move them, by patching these
    # globals (tests/twins/fixtures.py).
    if queue_host:
        url = f"https://{queue_host.removeprefix('https://').strip('/')}/"
        if fal_http.QUEUE_URL_FORMAT != url:
            # FAL_QUEUE_RUN_HOST from a .env file or st.secrets never reaches os.environ, so the
            # SDK did not see it at import; apply it the only way left (a module global).
            logger.warning(
                "fal queue host %s overrides the SDK's %s", url, fal_http.QUEUE_URL_FORMAT
            )
            fal_http.QUEUE_URL_FORMAT = url
    return fal_client


def job_id(endpoint: str, request_id: str) -> str:
    return f"{endpoint}{JOB_ID_SEPARATOR}{request_id}"


def parse_job_id(value: str) -> tuple[str, str]:
    endpoint, sep, request_id = value.rpartition(JOB_ID_SEPARATOR)
    if not sep or not endpoint or not request_id:
        raise PermanentProviderError(
            f"not a fal job id: {value!r} (expected '<endpoint>::<request id>')",
            provider=PROVIDER,
            category=FailureCategory.INTERNAL,
        )
    return endpoint, request_id


class FalVideoGenerator:
    name = PROVIDER

    def __init__(
        self,
        key: str | None,
        default_model: str = DEFAULT_VIDEO_MODEL,
        *,
        queue_host: str | None = None,
        request_timeout_s: float = 60.0,
    ) -> None:
        # key=None falls back to the SDK's own lookup (FAL_KEY, FAL_KEY_ID/SECRET, `fal auth`).
        self._key = key or None
        self.default_model = default_model
        self._queue_host = queue_host
        self._request_timeout_s = request_timeout_s
        self._client: fal_client.SyncClient | None = None
        self._lock = threading.Lock()

    def _sync_client(self) -> fal_client.SyncClient:
        with self._lock:
            if self._client is None:
                sdk = _sdk(self._queue_host)
                self._client = sdk.SyncClient(
                    key=self._key, default_timeout=self._request_timeout_s
                )
            return self._client

    def submit(self, spec: VideoSpec) -> str:
        endpoint = spec.model or self.default_model
        try:
            arguments = video_arguments(replace(spec, model=endpoint))
        except UnknownModelError as exc:
            raise PermanentProviderError(
                str(exc), provider=PROVIDER, category=FailureCategory.INVALID_REQUEST
            ) from None
        if "image_url" in arguments:
            arguments["image_url"] = self._reachable_image_url(arguments["image_url"])
        # Submitting is not idempotent and fal takes no idempotency key: a retry after a *read*
        # timeout may leave a second job at fal, billed if it completes. Rare; accepted.
        handle = _call(lambda: self._sync_client().submit(endpoint, arguments=arguments))
        logger.info("fal job %s submitted to %s", handle.request_id, endpoint)
        return job_id(endpoint, handle.request_id)

    def _reachable_image_url(self, url: str) -> str:
        """A URL fal's servers can fetch. http(s) (a presigned S3 GET) and data: URIs pass
        through; a file:// still (local-folder storage) goes to fal's CDN first. Each submit
        attempt uploads again: a retry is rare and the still is small."""
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https", "data"):
            return url
        if parsed.scheme != "file":
            raise PermanentProviderError(
                f"fal.ai cannot fetch a {parsed.scheme or 'scheme-less'} image URL: {url[:100]}",
                provider=PROVIDER,
                category=FailureCategory.INVALID_REQUEST,
            )
        path = Path(unquote(parsed.path))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PermanentProviderError(
                f"cannot read the still to upload to fal.ai: {exc}",
                provider=PROVIDER,
                category=FailureCategory.STORAGE,
            ) from exc
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        from fal_client import StorageSettings

        lifecycle = StorageSettings(expires_in=UPLOAD_EXPIRES_IN)
        cdn_url = _call(
            lambda: self._sync_client().upload(
                data, content_type, file_name=path.name, lifecycle=lifecycle
            )
        )
        logger.info("fal upload of %s (%d bytes) is at %s", path.name, len(data), cdn_url)
        return cdn_url

    def status(self, request_id: str) -> VideoJobStatus:
        endpoint, fal_id = parse_job_id(request_id)
        state = _call(lambda: self._sync_client().status(endpoint, fal_id, with_logs=True))
        return _job_status(state)

    def result(self, request_id: str) -> GeneratedVideo:
        endpoint, fal_id = parse_job_id(request_id)
        handle = _call(lambda: self._sync_client().get_handle(endpoint, fal_id))
        # Check first: the SDK's get() would otherwise poll (every 0.1 s, forever) until done.
        status = _job_status(_call(lambda: handle.status(with_logs=False)))
        if status.state is VideoJobState.FAILED:
            raise PermanentProviderError(
                f"fal job failed: {status.error}",
                provider=PROVIDER,
                category=status.error_category,
            )
        if status.state is not VideoJobState.COMPLETED:
            raise TransientProviderError(
                f"fal job {fal_id} is not finished yet ({status.state})", provider=PROVIDER
            )
        output = _call(handle.get)
        try:
            video = output["video"]
            return GeneratedVideo(
                url=video["url"], content_type=video.get("content_type") or "video/mp4"
            )
        except (KeyError, TypeError):
            raise PermanentProviderError(
                f"fal output has no video URL: {str(output)[:300]}", provider=PROVIDER
            ) from None

    def cancel(self, request_id: str) -> bool:
        endpoint, fal_id = parse_job_id(request_id)
        try:
            _call(lambda: self._sync_client().cancel(endpoint, fal_id))
        except PermanentProviderError as exc:
            if exc.status_code in _NOT_CANCELLABLE:
                logger.info("fal job %s not cancelled: %s", fal_id, exc)
                return False
            raise
        return True

    def check(self) -> str:
        """The status of a request id that cannot exist, on the default endpoint: no job, no
        cost. 404 means fal accepted the key; 401/403 become PROVIDER_AUTH naming FAL_KEY."""
        endpoint = self.default_model

        def probe() -> httpx.Response:
            # The same GET as handle.status(), on the SDK's own authenticated client, but with a
            # short timeout: the SDK's is 120 s and health has to answer.
            handle = self._sync_client().get_handle(endpoint, CHECK_REQUEST_ID)
            return handle.client.get(
                handle.status_url, params={"logs": "false"}, timeout=CHECK_TIMEOUT_S
            )

        response = _call(probe)
        if response.status_code == 404 or response.is_success:
            return f"fal: key accepted ({endpoint})"
        error_type = response.headers.get("x-fal-error-type")
        raise _translate_http(response.status_code, response, response.text[:300], error_type)


def _call(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except ProviderError:
        raise
    except Exception as exc:
        translated = _translate(exc)
        if translated is None:
            raise
        raise translated from exc


def _translate(exc: Exception) -> ProviderError | None:
    from fal_client import FalClientError, FalClientHTTPError
    from fal_client.auth import MissingCredentialsError

    if isinstance(exc, MissingCredentialsError):
        return PermanentProviderError(
            f"no fal.ai credentials: {exc} — check FAL_KEY",
            provider=PROVIDER,
            category=FailureCategory.PROVIDER_AUTH,
        )
    if isinstance(exc, FalClientHTTPError):
        return _translate_http(exc.status_code, exc.response, exc.message, exc.error_type)
    if isinstance(exc, httpx.HTTPStatusError):
        # The CDN token request of an upload calls raise_for_status() itself, outside the
        # SDK's own error wrapping.
        response = exc.response
        error_type = response.headers.get("x-fal-error-type")
        return _translate_http(response.status_code, response, response.text[:300], error_type)
    if isinstance(exc, httpx.TimeoutException):
        return TransientProviderError(f"fal.ai timed out: {type(exc).__name__}", provider=PROVIDER)
    if isinstance(exc, httpx.TransportError):
        return TransientProviderError(f"could not reach fal.ai: {exc!r}", provider=PROVIDER)
    if isinstance(exc, FalClientError | KeyError | ValueError):
        # The SDK parses bodies strictly (KeyError on a missing field, ValueError on an unknown
        # status): a response we cannot read is not going to improve on retry.
        return PermanentProviderError(f"unexpected answer from fal.ai: {exc!r}", provider=PROVIDER)
    return None


def _translate_http(
    status: int, response: httpx.Response, message: Any, error_type: str | None
) -> ProviderError:
    detail = _detail(response, message)
    common: dict[str, Any] = {"provider": PROVIDER, "code": error_type, "status_code": status}
    if status in (401, 403):
        return PermanentProviderError(
            f"fal.ai refused the key (HTTP {status}): {_describe(detail)} — check FAL_KEY",
            category=FailureCategory.PROVIDER_AUTH,
            **common,
        )
    if policy := _content_policy(detail):
        return PermanentProviderError(
            str(policy.get("msg") or "fal.ai's content checker rejected the request"),
            category=FailureCategory.CONTENT_POLICY,
            **{**common, "code": "content_policy_violation"},
        )
    if status in (408, 409, 429) or status >= 500:
        return TransientProviderError(
            f"fal.ai answered HTTP {status}: {_describe(detail)}",
            retry_after_s=retry_after_s(response.headers),
            **common,
        )
    return PermanentProviderError(f"fal.ai answered HTTP {status}: {_describe(detail)}", **common)


def _detail(response: httpx.Response, fallback: Any) -> Any:
    # FalClientHTTPError.message is body["detail"], which for a 422 is a *list* of error objects
    # (str() of it is a Python repr); re-read the body to keep the structure.
    try:
        body = response.json()
    except ValueError:
        return fallback
    return body.get("detail", fallback) if isinstance(body, dict) else fallback


def _content_policy(detail: Any) -> dict[str, Any] | None:
    items = detail if isinstance(detail, list) else []
    return next(
        (d for d in items if isinstance(d, dict) and d.get("type") == "content_policy_violation"),
        None,
    )


def _describe(detail: Any) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "request"
                parts.append(f"{loc}: {item.get('msg', item.get('type', 'invalid'))}")
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)[:500]


def _job_status(state: Any) -> VideoJobStatus:
    from fal_client import Completed, InProgress, Queued

    if isinstance(state, Queued):
        return VideoJobStatus(VideoJobState.QUEUED, queue_position=state.position)
    logs = _messages(state.logs) if isinstance(state, InProgress | Completed) else ()
    if isinstance(state, InProgress):
        return VideoJobStatus(VideoJobState.IN_PROGRESS, logs=logs)
    if isinstance(state, Completed):
        if state.error:
            error = f"{state.error_type}: {state.error}" if state.error_type else state.error
            policy = state.error_type == "content_policy_violation" or error.startswith(
                "content_policy_violation"
            )
            category = (
                FailureCategory.CONTENT_POLICY if policy else FailureCategory.PROVIDER_REJECTED
            )
            return VideoJobStatus(
                VideoJobState.FAILED, logs=logs, error=error, error_category=category
            )
        return VideoJobStatus(VideoJobState.COMPLETED, progress=1.0, logs=logs)
    raise PermanentProviderError(f"unknown fal status {state!r}", provider=PROVIDER)


def _messages(logs: list[dict[str, Any]] | None) -> tuple[str, ...]:
    return tuple(str(entry.get("message", "")) for entry in (logs or ())[-MAX_LOG_LINES:])

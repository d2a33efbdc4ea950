"""OpenAI image generation and moderation through the official `openai` SDK, with every SDK error
translated into our transient/permanent provider errors."""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace

import openai

from core.errors import (
    FailureCategory,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from core.providers.base import GeneratedImage, ImageSpec, ModerationVerdict
from core.providers.catalog import DEFAULT_IMAGE_MODEL, image_request
from core.providers.download import fetch_bytes
from core.providers.retry_after import retry_after_s

logger = logging.getLogger(__name__)

PROVIDER = "openai"
CHECK_TIMEOUT_S = 10.0  # health must answer quickly even when OpenAI does not
_CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked"})
# 429 is usually a rate limit, but an empty prepaid balance is a 429 too and waiting won't fix it.
_PERMANENT_429_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


class _LazyClient:
    """One `openai.OpenAI` per adapter, built on first use (no I/O or env reads in __init__) and
    shared by the worker threads; the SDK client itself is thread-safe."""

    def __init__(self, api_key: str, base_url: str | None, timeout_s: float) -> None:
        self._api_key = api_key
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()

    def get(self) -> openai.OpenAI:
        with self._lock:
            if self._client is None:
                # max_retries=0: our tenacity policy owns retries (it honours Retry-After, records
                # each attempt, and sees cancellation); SDK retries would hide attempts inside one
                # call and multiply with ours. base_url=None lets the SDK read OPENAI_BASE_URL.
                try:
                    self._client = openai.OpenAI(
                        api_key=self._api_key,
                        base_url=self._base_url,
                        max_retries=0,
                        timeout=self._timeout_s,
                    )
                except openai.OpenAIError as exc:  # the SDK refuses an empty key up front
                    raise PermanentProviderError(
                        f"cannot build the OpenAI client: {exc} — check OPENAI_API_KEY",
                        provider=PROVIDER,
                        category=FailureCategory.PROVIDER_AUTH,
                    ) from exc
            return self._client


class OpenAIImageGenerator:
    name = PROVIDER

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        default_model: str = DEFAULT_IMAGE_MODEL,
        download_timeout_s: float = 60.0,
    ) -> None:
        self.default_model = default_model
        self._download_timeout_s = download_timeout_s
        self._client = _LazyClient(api_key, base_url, timeout_s=600.0)

    def generate(self, spec: ImageSpec, *, timeout_s: float) -> GeneratedImage:
        model = spec.model or self.default_model
        try:
            request = image_request(replace(spec, model=model))
        except ValueError as exc:
            raise PermanentProviderError(
                str(exc), provider=PROVIDER, category=FailureCategory.INVALID_REQUEST
            ) from None
        try:
            response = self._client.get().images.generate(**request.arguments, timeout=timeout_s)
        except openai.OpenAIError as exc:
            raise translate_openai_error(exc) from exc
        if not response.data:
            raise PermanentProviderError(f"{model} returned no image", provider=PROVIDER)
        item = response.data[0]
        data = self._image_bytes(item.b64_json, item.url, model)
        return GeneratedImage(
            data=data,
            content_type=sniff_image_type(data),
            model=model,
            revised_prompt=item.revised_prompt,
        )

    def check(self) -> str:
        """GET /v1/models/{default model}: free, and it proves both the key and that the key's
        organisation may use the model (a 404 here would fail every run too)."""
        try:
            client = self._client.get().with_options(timeout=CHECK_TIMEOUT_S)
            client.models.retrieve(self.default_model)
        except openai.NotFoundError as exc:
            raise PermanentProviderError(
                f"OpenAI does not offer {self.default_model} to this key — check IMAGE_MODEL "
                "(and the organisation's access to it)",
                provider=PROVIDER,
                code=exc.code,
                status_code=exc.status_code,
            ) from exc
        except openai.OpenAIError as exc:
            raise translate_openai_error(exc) from exc
        return f"openai: {self.default_model} reachable"

    def _image_bytes(self, b64: str | None, url: str | None, model: str) -> bytes:
        if b64:
            try:
                return base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise PermanentProviderError(
                    f"{model} returned undecodable base64", provider=PROVIDER
                ) from None
        if url:
            # Legacy endpoints may ignore response_format and answer with a short-lived URL.
            return fetch_bytes(url, timeout_s=self._download_timeout_s)
        raise PermanentProviderError(
            f"{model} returned neither b64_json nor url", provider=PROVIDER
        )


class OpenAIModerator:
    name = PROVIDER

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        model: str = "omni-moderation-latest",
        timeout_s: float = 30.0,
    ) -> None:
        self.model = model
        self._client = _LazyClient(api_key, base_url, timeout_s=timeout_s)

    def moderate(self, texts: Sequence[str]) -> list[ModerationVerdict]:
        if not texts:
            return []
        try:
            response = self._client.get().moderations.create(model=self.model, input=list(texts))
        except openai.OpenAIError as exc:
            raise translate_openai_error(exc) from exc
        if len(response.results) != len(texts):
            raise PermanentProviderError(
                f"moderation returned {len(response.results)} results for {len(texts)} texts",
                provider=PROVIDER,
            )
        verdicts = []
        for result in response.results:
            # by_alias gives the API's JSON names ("violence/graphic", "self-harm"), which are the
            # names users and the monitoring page know; the Python attributes use underscores.
            flags = result.categories.model_dump(by_alias=True)
            names = tuple(name for name, hit in flags.items() if hit)
            verdicts.append(ModerationVerdict(flagged=result.flagged, categories=names))
        return verdicts

    def check(self) -> str:
        """A one-word moderation: free, and it exercises the very endpoint runs use."""
        try:
            client = self._client.get().with_options(timeout=CHECK_TIMEOUT_S)
            client.moderations.create(model=self.model, input="ok")
        except openai.OpenAIError as exc:
            raise translate_openai_error(exc) from exc
        return f"openai: {self.model} reachable"


def translate_openai_error(exc: openai.OpenAIError) -> ProviderError:
    """Map an SDK exception onto our two error kinds; messages keep the provider's own words."""
    if isinstance(exc, openai.APITimeoutError):
        return TransientProviderError("OpenAI request timed out", provider=PROVIDER)
    if isinstance(exc, openai.APIConnectionError):
        return TransientProviderError(
            f"could not reach OpenAI: {exc.__cause__ or exc}", provider=PROVIDER
        )
    if not isinstance(exc, openai.APIStatusError):
        return PermanentProviderError(f"OpenAI client error: {exc}", provider=PROVIDER)

    status, code = exc.status_code, exc.code
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message") or exc.message)
    # The server may say explicitly whether a retry can help; the SDK obeys it, so do we.
    should_retry = exc.response.headers.get("x-should-retry")
    transient = status in (408, 409, 429) or status >= 500
    if status == 429 and code in _PERMANENT_429_CODES:
        transient = False
    if should_retry in ("true", "false"):
        transient = should_retry == "true"

    if transient:
        wait = retry_after_s(exc.response.headers)
        return TransientProviderError(
            f"OpenAI answered HTTP {status}: {message}",
            retry_after_s=wait,
            provider=PROVIDER,
            code=code,
            status_code=status,
        )
    if status in (401, 403):
        return PermanentProviderError(
            f"OpenAI refused the credentials (HTTP {status}): {message} "
            "— check OPENAI_API_KEY (and that the organisation may use this model).",
            category=FailureCategory.PROVIDER_AUTH,
            provider=PROVIDER,
            code=code,
            status_code=status,
        )
    if code in _CONTENT_POLICY_CODES:
        return PermanentProviderError(
            message,
            category=FailureCategory.CONTENT_POLICY,
            provider=PROVIDER,
            code=code,
            status_code=status,
        )
    return PermanentProviderError(
        f"OpenAI answered HTTP {status}: {message}",
        provider=PROVIDER,
        code=code,
        status_code=status,
    )


def sniff_image_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"

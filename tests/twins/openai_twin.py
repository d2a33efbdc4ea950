"""An OpenAI API twin: /v1/images/generations and /v1/moderations with the real request rules,
response and error shapes (reference/providers.md §1), GET /v1/models and /v1/models/{id} (what
health's check() calls), Bearer-key checks and scripted faults."""

from __future__ import annotations

import base64
import hashlib
import io
import time
import uuid
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from tests.twins.base import Fault, JsonHandler, Recorded, TwinServer

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
DEFAULT_FLAGGED_TERMS = {
    "gore": "violence/graphic",
    "beheading": "violence/graphic",
    "massacre": "violence",
    "terrorist attack": "violence",
    "nazi": "hate",
}


@dataclass(frozen=True)
class ImageRules:
    sizes: tuple[str, ...]
    qualities: tuple[str, ...]
    prompt_max: int
    n_max: int
    free_size: bool = False  # gpt-image-2: any WxH on a 16 px grid within limits
    dalle: bool = False  # takes style/response_format, answers revised_prompt, no usage


_GPT = {
    "sizes": ("1024x1024", "1536x1024", "1024x1536", "auto"),
    "qualities": ("low", "medium", "high", "auto"),
    "prompt_max": 32_000,
    "n_max": 10,
}
IMAGE_MODELS = {
    "gpt-image-2": ImageRules(**_GPT, free_size=True),
    "gpt-image-1.5": ImageRules(**_GPT),
    "gpt-image-1-mini": ImageRules(**_GPT),
    "dall-e-3": ImageRules(
        sizes=("1024x1024", "1792x1024", "1024x1792"),
        qualities=("standard", "hd"),
        prompt_max=4_000,
        n_max=1,
        dalle=True,
    ),
}
MODERATION_MODELS = ("omni-moderation-latest", "omni-moderation-2024-09-26")
_STATUS_ERRORS = {
    400: ("invalid_request_error", None, "Bad request."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit exceeded for images per minute in organization org-twin. Limit: 5/1min.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
CONTENT_POLICY_DALLE = (
    "Your request was rejected as a result of our safety system. Your prompt may contain text "
    "that is not allowed by our safety system."
)
CONTENT_POLICY_GPT = (
    "Your request was rejected by the safety system. If you believe this is an error, contact "
    "us at help.openai.com."
)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class OpenAITwin(TwinServer):
    def __init__(
        self,
        api_key: str = "sk-twin-test-key",
        flagged_terms: dict[str, str] | None = None,
    ) -> None:
        super().__init__(_Handler)
        self.api_key = api_key
        self._initial_terms = dict(
            DEFAULT_FLAGGED_TERMS if flagged_terms is None else flagged_terms
        )
        self.flagged_terms = dict(self._initial_terms)
        self.retired_models: set[str] = set()
        self.files: dict[str, bytes] = {}

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def reset(self) -> None:
        super().reset()
        self.flagged_terms = dict(self._initial_terms)
        self.retired_models = set()

    def fail_next(
        self,
        endpoint: str,  # "images" | "moderations" | "models"
        status: int = 500,
        *,
        code: str | None = None,
        message: str | None = None,
        type: str | None = None,  # noqa: A002 - the API's field name
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay_s: float = 0.0,
        drop: bool = False,
    ) -> None:
        default_type, default_code, default_message = _STATUS_ERRORS.get(
            status, ("invalid_request_error", None, f"HTTP {status}")
        )
        extra = dict(headers or {})
        if retry_after is not None:
            extra["retry-after"] = str(retry_after)
        if retry_after_ms is not None:
            extra["retry-after-ms"] = str(retry_after_ms)
        body = error_body(message or default_message, type or default_type, code or default_code)
        self.faults.push(
            endpoint, Fault(status, body, extra, delay_s=delay_s, drop=drop), times=times
        )

    def reject_next_for_content_policy(self, model_family: str = "gpt-image") -> None:
        if model_family == "dall-e":
            self.fail_next(
                "images",
                400,
                code="content_policy_violation",
                type="invalid_request_error",
                message=CONTENT_POLICY_DALLE,
            )
        else:
            self.fail_next(
                "images",
                400,
                code="moderation_blocked",
                type="image_generation_user_error",
                message=CONTENT_POLICY_GPT,
            )


class _Handler(JsonHandler):
    twin: OpenAITwin

    def do_GET(self) -> None:
        request = self.read_request()
        if request.path == "/v1/models" or request.path.startswith("/v1/models/"):
            self._models(request)
            return
        name = request.path.removeprefix("/files/")
        if request.path.startswith("/files/") and name in self.twin.files:
            self.send_body(200, self.twin.files[name], content_type="image/png")
        else:
            self.send_body(404, error_body("Not found", "invalid_request_error"))

    def _models(self, request: Recorded) -> None:
        headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
        if not self._authorised(request, headers) or self.apply_fault("models"):
            return
        offered = [m for m in IMAGE_MODELS if m not in self.twin.retired_models]
        listing = [_model_object(m) for m in (*offered, *MODERATION_MODELS)]
        wanted = request.path.removeprefix("/v1/models").strip("/")
        if not wanted:
            self.send_body(200, {"object": "list", "data": listing}, headers)
            return
        found = next((m for m in listing if m["id"] == wanted), None)
        if found is None:
            message = f"The model '{wanted}' does not exist"
            body = error_body(message, "invalid_request_error", "model_not_found", "model")
            self.send_body(404, body, headers)
        else:
            self.send_body(200, found, headers)

    def do_POST(self) -> None:
        request = self.read_request()
        routes = {"/v1/images/generations": "images", "/v1/moderations": "moderations"}
        endpoint = routes.get(request.path)
        headers = {"x-request-id": f"req_{uuid.uuid4().hex}", "openai-version": "2020-10-01"}
        if endpoint is None:
            message = f"Invalid URL (POST {request.path})"
            self.send_body(404, error_body(message, "invalid_request_error"), headers)
            return
        if not self._authorised(request, headers) or self.apply_fault(endpoint):
            return
        body = request.json if isinstance(request.json, dict) else None
        if body is None:
            message = "We could not parse the JSON body of your request."
            self.send_body(400, error_body(message, "invalid_request_error"), headers)
            return
        status, payload = (self._images if endpoint == "images" else self._moderations)(body)
        self.send_body(status, payload, headers)

    def _authorised(self, request: Recorded, headers: dict[str, str]) -> bool:
        auth = request.headers.get("authorization", "")
        if auth == f"Bearer {self.twin.api_key}":
            return True
        if not auth:
            message = "You didn't provide an API key. You need to provide your API key in an "
            message += (
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            code = None
        else:
            shown = auth.removeprefix("Bearer ")
            message = f"Incorrect API key provided: {shown[:3]}***{shown[-4:]}. You can find "
            message += "your API key at https://platform.openai.com/account/api-keys."
            code = "invalid_api_key"
        self.send_body(401, error_body(message, "invalid_request_error", code), headers)
        return False

    def _images(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = body.get("model")
        rules = IMAGE_MODELS.get(model) if isinstance(model, str) else None
        if rules is None or model in self.twin.retired_models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return 404, error_body(message, "invalid_request_error", "model_not_found")
        problem = _check_image_body(body, rules)
        if problem:
            return 400, problem
        prompt: str = body["prompt"]
        hits = _hits(prompt, self.twin.flagged_terms)
        if hits and rules.dalle:
            return 400, error_body(
                CONTENT_POLICY_DALLE, "invalid_request_error", "content_policy_violation"
            )
        if hits:
            return 400, error_body(
                CONTENT_POLICY_GPT, "image_generation_user_error", "moderation_blocked"
            )
        size = body.get("size") or "1024x1024"
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        png = make_png(width, height, prompt)
        n = int(body.get("n") or 1)
        created = int(time.time())
        if rules.dalle:
            revised = f"A {body.get('style', 'vivid')} rendering of: {prompt}"
            if body.get("response_format") == "b64_json":
                item = {"b64_json": base64.b64encode(png).decode(), "revised_prompt": revised}
            else:
                name = f"img-{uuid.uuid4().hex}.png"
                self.twin.files[name] = png
                item = {"url": f"{self.twin.origin}/files/{name}", "revised_prompt": revised}
            return 200, {"created": created, "data": [item] * n}
        text_tokens = max(1, len(prompt) // 4)
        output_tokens = width * height // 1024
        return 200, {
            "created": created,
            "background": "opaque",
            "output_format": "png",
            "quality": body.get("quality", "auto"),
            "size": f"{width}x{height}",
            "data": [{"b64_json": base64.b64encode(png).decode()}] * n,
            "usage": {
                "input_tokens": text_tokens,
                "input_tokens_details": {"image_tokens": 0, "text_tokens": text_tokens},
                "output_tokens": output_tokens,
                "total_tokens": text_tokens + output_tokens,
            },
        }

    def _moderations(self, body: dict[str, Any]) -> tuple[int, Any]:
        raw = body.get("input")
        items = raw if isinstance(raw, list) else [raw]
        if not items or any(not isinstance(i, str | dict) for i in items):
            message = "Invalid type for 'input': expected a string or an array."
            return 400, error_body(message, "invalid_request_error", "invalid_type", "input")
        results = []
        for item in items:
            kind = "image" if isinstance(item, dict) and item.get("type") == "image_url" else "text"
            text = item if isinstance(item, str) else str(item.get("text", ""))
            hits = _hits(text, self.twin.flagged_terms)
            results.append(
                {
                    "flagged": bool(hits),
                    "categories": {c: c in hits for c in MODERATION_CATEGORIES},
                    "category_scores": {
                        c: (0.97 if c in hits else 0.0003) for c in MODERATION_CATEGORIES
                    },
                    "category_applied_input_types": {c: [kind] for c in MODERATION_CATEGORIES},
                }
            )
        model = body.get("model") or "omni-moderation-latest"
        resolved = "omni-moderation-2024-09-26" if model == "omni-moderation-latest" else model
        return 200, {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": resolved, "results": results}


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "system"}


def _check_image_body(body: dict[str, Any], rules: ImageRules) -> dict[str, Any] | None:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return error_body(
            "Missing required parameter: 'prompt'.",
            "invalid_request_error",
            "missing_required_parameter",
            "prompt",
        )
    if len(prompt) > rules.prompt_max:
        message = (
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{rules.prompt_max}, but got a string with length {len(prompt)} instead."
        )
        return error_body(message, "invalid_request_error", "string_above_max_length", "prompt")
    if not rules.dalle:
        for legacy in ("style", "response_format"):
            if legacy in body:
                return error_body(
                    f"Unknown parameter: '{legacy}'.",
                    "invalid_request_error",
                    "unknown_parameter",
                    legacy,
                )
    n = body.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= rules.n_max:
        return _invalid("n", n, [str(i) for i in range(1, rules.n_max + 1)])
    size = body.get("size", "1024x1024")
    if not (size in rules.sizes or (rules.free_size and _free_size_ok(size))):
        return _invalid("size", size, list(rules.sizes))
    if "quality" in body and body["quality"] not in rules.qualities:
        return _invalid("quality", body["quality"], list(rules.qualities))
    if rules.dalle:
        if "style" in body and body["style"] not in ("vivid", "natural"):
            return _invalid("style", body["style"], ["vivid", "natural"])
        if body.get("response_format", "url") not in ("url", "b64_json"):
            return _invalid("response_format", body["response_format"], ["url", "b64_json"])
    return None


def _free_size_ok(size: Any) -> bool:
    try:
        width, height = (int(v) for v in str(size).split("x"))
    except ValueError:
        return False
    long_side, short_side = max(width, height), min(width, height)
    return (
        width % 16 == 0
        and height % 16 == 0
        and short_side > 0
        and long_side <= 3840
        and short_side <= 2160
        and long_side / short_side <= 3
    )


def _invalid(param: str, value: Any, supported: list[str]) -> dict[str, Any]:
    listed = ", ".join(f"'{s}'" for s in supported)
    message = f"Invalid value: '{value}'. Supported values are: {listed}."
    return error_body(message, "invalid_request_error", "invalid_value", param)


def _hits(text: str, terms: dict[str, str]) -> set[str]:
    lowered = text.lower()
    return {category for term, category in terms.items() if term.lower() in lowered}


def make_png(width: int, height: int, seed_text: str) -> bytes:
    """A real PNG of exactly width x height, coloured from the prompt so images differ."""
    digest = hashlib.sha256(seed_text.encode()).digest()
    image = Image.new("RGB", (width, height), tuple(digest[:3]))
    draw = ImageDraw.Draw(image)
    draw.rectangle(
        (width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=tuple(digest[3:6])
    )
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()

"""Fetch a finished file from a provider: https (honouring SSL_CERT_FILE) or, for the offline
provider only, file:// inside the folders we own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from core.errors import FailureCategory, PermanentProviderError, TransientProviderError

MAX_DOWNLOAD_BYTES = 1024 * 1024 * 1024


def fetch_bytes(
    url: str,
    *,
    timeout_s: float,
    allowed_roots: Sequence[Path] = (),
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> bytes:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return _read_local(Path(unquote(parsed.path)), allowed_roots)
    if parsed.scheme not in ("http", "https"):
        raise PermanentProviderError(f"cannot download {parsed.scheme!r} URLs", provider="download")
    return _download(url, timeout_s=timeout_s, max_bytes=max_bytes)


def _read_local(path: Path, allowed_roots: Sequence[Path]) -> bytes:
    # A file:// URL is only trusted inside our own folders: a provider response must not be
    # able to make us read arbitrary local files.
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in allowed_roots):
        raise PermanentProviderError(f"refusing to read {path} outside the data folders")
    try:
        return resolved.read_bytes()
    except FileNotFoundError:
        raise PermanentProviderError(f"{path} does not exist", provider="download") from None


def _download(url: str, *, timeout_s: float, max_bytes: int) -> bytes:
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
            with client.stream("GET", url) as response:
                _raise_for_status(response)
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise PermanentProviderError(
                            f"download larger than {max_bytes} bytes", provider="download"
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.TimeoutException as exc:
        raise TransientProviderError(f"download timed out: {exc}", provider="download") from exc
    except httpx.TransportError as exc:
        raise TransientProviderError(f"download failed: {exc}", provider="download") from exc


def _raise_for_status(response: httpx.Response) -> None:
    code = response.status_code
    if code < 400:
        return
    message = f"download of the provider's file answered HTTP {code}"
    if code in (408, 425, 429) or code >= 500:
        raise TransientProviderError(message, provider="download", status_code=code)
    category = FailureCategory.PROVIDER_AUTH if code in (401, 403) else None
    raise PermanentProviderError(message, provider="download", status_code=code, category=category)

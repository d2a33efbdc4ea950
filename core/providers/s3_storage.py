"""Object storage on S3 or any S3-compatible endpoint (MinIO, R2, ...) through boto3, with
presigned GET URLs for browsers and providers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from core.errors import (
    FailureCategory,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from core.providers.base import StoredObject
from core.providers.retry_after import retry_after_s

logger = logging.getLogger(__name__)

PROVIDER = "s3"
_T = TypeVar("_T")

_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3Storage:
    name = PROVIDER

    def __init__(
        self,
        bucket: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
    ) -> None:
        self.bucket = bucket
        self._region = region
        self._endpoint_url = endpoint_url
        self._timeouts = (connect_timeout_s, read_timeout_s)
        self._client: Any = None
        self._lock = threading.Lock()

    def _s3(self) -> Any:
        # boto3's default session is not thread-safe, so build the (thread-safe) client once
        # under a lock from a session of our own, on first use rather than in __init__.
        with self._lock:
            if self._client is None:
                config = Config(
                    # One attempt: our tenacity policy is the retry layer (it honours Retry-After,
                    # records each attempt and sees cancellation); botocore's standard mode would
                    # add up to 3 hidden attempts per call underneath it.
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=self._timeouts[0],
                    read_timeout=self._timeouts[1],
                    # SigV4 presigning works in every region (SigV2 URLs are refused by newer ones).
                    signature_version="s3v4",
                    # S3-compatible endpoints (MinIO, moto, a LAN host) rarely resolve
                    # <bucket>.<host>; path-style works on all of them.
                    s3={"addressing_style": "path" if self._endpoint_url else "auto"},
                )
                self._client = boto3.session.Session().client(
                    "s3",
                    region_name=self._region,
                    endpoint_url=self._endpoint_url,
                    config=config,
                )
            return self._client

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._call(
            "put",
            key,
            lambda: self._s3().put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            ),
        )

    def get(self, key: str) -> bytes:
        response = self._call(
            "get", key, lambda: self._s3().get_object(Bucket=self.bucket, Key=key)
        )
        return self._call("get", key, response["Body"].read)

    def head(self, key: str) -> StoredObject | None:
        try:
            response = self._s3().head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            # HEAD has no body, so a missing bucket also reads as a bare 404 here; the next put
            # or get names the bucket problem.
            if _code(exc) in _MISSING_KEY_CODES:
                return None
            raise self._translate(exc, "head", key) from exc
        except (BotoCoreError, ValueError) as exc:
            raise self._translate(exc, "head", key) from exc
        return StoredObject(
            key=key,
            size=int(response["ContentLength"]),
            content_type=response.get("ContentType") or "application/octet-stream",
        )

    def copy(self, source_key: str, key: str) -> None:
        # CopyObject keeps the source's metadata, its content type included (MetadataDirective
        # COPY), and copies inside S3: the bytes never leave it.
        self._call(
            "copy",
            key,
            lambda: self._s3().copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source_key}
            ),
        )

    def delete(self, key: str) -> None:
        # S3 answers 204 for a key that is not there, so deleting twice is fine.
        self._call("delete", key, lambda: self._s3().delete_object(Bucket=self.bucket, Key=key))

    def url(self, key: str, *, expires_s: int) -> str:
        # Signing is local (no request), but needs credentials, so it can still fail.
        return self._call(
            "presign",
            key,
            lambda: self._s3().generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            ),
        )

    def check(self) -> str:
        """HEAD on the bucket: the cheapest signed request, proving the credentials, the bucket
        name and that those credentials may use it."""
        try:
            self._s3().head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            # HEAD answers carry no body, so botocore's error code is the bare status.
            code = _code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise PermanentProviderError(
                    f"s3://{self.bucket}: the bucket does not exist — check S3_BUCKET_NAME "
                    "(and S3_REGION / S3_ENDPOINT_URL)",
                    provider=PROVIDER,
                    category=FailureCategory.STORAGE,
                    code=code,
                    status_code=404,
                ) from exc
            if code in ("403", "401") or code in _AUTH_CODES:
                raise PermanentProviderError(
                    f"s3://{self.bucket}: access denied (HTTP {code}) — check the S3 credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance role) and that "
                    "they may use S3_BUCKET_NAME",
                    provider=PROVIDER,
                    category=FailureCategory.PROVIDER_AUTH,
                    code=code,
                    status_code=int(code) if code.isdigit() else 403,
                ) from exc
            raise self._translate(exc, "head bucket", "") from exc
        except (BotoCoreError, ValueError) as exc:
            raise self._translate(exc, "head bucket", "") from exc
        where = self._endpoint_url or (f"region {self._region}" if self._region else "AWS")
        return f"s3: bucket {self.bucket} reachable ({where})"

    def _call(self, operation: str, key: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except (ClientError, BotoCoreError, ValueError) as exc:
            raise self._translate(exc, operation, key) from exc

    def _translate(self, exc: Exception, operation: str, key: str) -> ProviderError:
        where = f"s3://{self.bucket}/{key} ({operation})"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return PermanentProviderError(
                f"{where}: no usable AWS credentials — set AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (or an instance role) for S3_BUCKET_NAME",
                provider=PROVIDER,
                category=FailureCategory.PROVIDER_AUTH,
            )
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return TransientProviderError(f"{where}: could not reach S3: {exc}", provider=PROVIDER)
        if not isinstance(exc, ClientError):
            return PermanentProviderError(
                f"{where}: {exc}", provider=PROVIDER, category=FailureCategory.STORAGE
            )

        code = _code(exc)
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0) or None
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        common: dict[str, Any] = {"provider": PROVIDER, "code": code, "status_code": status}
        if code in _TRANSIENT_CODES or (status is not None and (status == 429 or status >= 500)):
            return TransientProviderError(
                f"{where}: {code}: {message}",
                retry_after_s=retry_after_s(meta.get("HTTPHeaders")),
                **common,
            )
        if code == "NoSuchBucket":
            return PermanentProviderError(
                f"{where}: bucket {self.bucket!r} does not exist — check S3_BUCKET_NAME "
                "(and S3_REGION / S3_ENDPOINT_URL)",
                category=FailureCategory.STORAGE,
                **common,
            )
        if code in _AUTH_CODES:
            return PermanentProviderError(
                f"{where}: {code}: {message} — check the AWS credentials and that they may use "
                "S3_BUCKET_NAME",
                category=FailureCategory.PROVIDER_AUTH,
                **common,
            )
        return PermanentProviderError(
            f"{where}: {code}: {message}", category=FailureCategory.STORAGE, **common
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))

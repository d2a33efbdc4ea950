"""S3Storage, through boto3, against moto's S3 server (plus the twin's expiry and fault layer)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from core.errors import FailureCategory, PermanentProviderError, TransientProviderError
from core.providers.base import StoredObject
from core.providers.s3_storage import S3Storage
from tests.twins.s3_twin import S3Twin


def storage(twin: S3Twin, bucket: str | None = None) -> S3Storage:
    return S3Storage(bucket or twin.bucket, region=twin.region, endpoint_url=twin.endpoint_url)


def test_put_head_get_roundtrip_keeps_the_content_type(s3_twin):
    store = storage(s3_twin)
    store.put("runs/1/still.png", b"\x89PNG fake", "image/png")

    assert store.head("runs/1/still.png") == StoredObject("runs/1/still.png", 9, "image/png")
    assert store.get("runs/1/still.png") == b"\x89PNG fake"
    stored = s3_twin.client().head_object(Bucket=s3_twin.bucket, Key="runs/1/still.png")
    assert stored["ContentType"] == "image/png"


def test_a_copy_inside_the_bucket_keeps_the_bytes_and_the_content_type(s3_twin):
    store = storage(s3_twin)
    store.put("runs/1/staging/still.png", b"\x89PNG fake", "image/png")

    store.copy("runs/1/staging/still.png", "runs/1/still.png")
    store.delete("runs/1/staging/still.png")

    assert store.head("runs/1/still.png") == StoredObject("runs/1/still.png", 9, "image/png")
    assert store.get("runs/1/still.png") == b"\x89PNG fake"


def test_a_copy_of_a_missing_key_is_a_permanent_storage_error(s3_twin):
    with pytest.raises(PermanentProviderError) as caught:
        storage(s3_twin).copy("runs/1/staging/none.png", "runs/1/still.png")
    assert caught.value.category is FailureCategory.STORAGE


def test_head_of_a_missing_key_is_none_and_get_is_a_permanent_storage_error(s3_twin):
    store = storage(s3_twin)
    assert store.head("nope.mp4") is None
    with pytest.raises(PermanentProviderError) as caught:
        store.get("nope.mp4")
    assert caught.value.category is FailureCategory.STORAGE
    assert caught.value.code == "NoSuchKey"


def test_delete_removes_and_is_idempotent(s3_twin):
    store = storage(s3_twin)
    store.put("a.txt", b"a", "text/plain")
    store.delete("a.txt")
    store.delete("a.txt")
    assert store.head("a.txt") is None


def test_a_presigned_url_serves_the_object_and_is_refused_once_expired(s3_twin):
    store = storage(s3_twin)
    store.put("runs/2/clip.mp4", b"not really a clip", "video/mp4")

    url = store.url("runs/2/clip.mp4", expires_s=1)

    fresh = httpx.get(url)
    assert (fresh.status_code, fresh.content) == (200, b"not really a clip")
    assert fresh.headers["content-type"] == "video/mp4"
    assert "X-Amz-Expires=1" in url and "X-Amz-Signature=" in url
    # S3 checks expiry at one-second resolution; poll until it refuses (at most ~2 s).
    deadline = time.monotonic() + 5
    while (stale := httpx.get(url)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stale.status_code == 403
    assert "Request has expired" in stale.text


def test_a_missing_bucket_is_permanent_and_names_s3_bucket_name(s3_twin):
    with pytest.raises(PermanentProviderError) as caught:
        storage(s3_twin, bucket="reelforge-no-such-bucket").put("k", b"x", "text/plain")
    assert caught.value.category is FailureCategory.STORAGE
    assert caught.value.code == "NoSuchBucket"
    assert "S3_BUCKET_NAME" in caught.value.message


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_refused_credentials_are_permanent_auth_failures(s3_twin, code):
    s3_twin.fail_next(403, code, "Access Denied")
    with pytest.raises(PermanentProviderError) as caught:
        storage(s3_twin).put("k", b"x", "text/plain")
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert "credentials" in caught.value.message and "S3_BUCKET_NAME" in caught.value.message


def test_no_credentials_at_all_is_an_auth_failure(s3_twin, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(PermanentProviderError) as caught:
        storage(s3_twin).put("k", b"x", "text/plain")
    assert caught.value.category is FailureCategory.PROVIDER_AUTH


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_throttling_and_server_errors_are_transient_after_one_attempt(s3_twin, status, code):
    s3_twin.fail_next(status, code, "try again", retry_after=3, times=5)
    with pytest.raises(TransientProviderError) as caught:
        storage(s3_twin).put("k", b"x", "text/plain")
    assert (caught.value.status_code, caught.value.code) == (status, code)
    assert caught.value.retry_after_s == 3.0
    # botocore's own retries are off: exactly one request reached the server.
    assert len([r for r in s3_twin.requests if r.method == "PUT"]) == 1


def test_an_unreachable_endpoint_is_transient(s3_twin):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again on exit: nothing listens there
    store = S3Storage("bucket-x", region="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TransientProviderError, match="could not reach S3"):
        store.put("k", b"x", "text/plain")


def test_constructing_the_adapter_does_no_io(s3_twin):
    storage(s3_twin)
    assert s3_twin.requests == []


def test_check_is_a_head_bucket_naming_the_bucket(s3_twin):
    assert storage(s3_twin).check() == (
        f"s3: bucket {s3_twin.bucket} reachable ({s3_twin.endpoint_url})"
    )
    (request,) = s3_twin.requests
    assert (request.method, request.path) == ("HEAD", f"/{s3_twin.bucket}")


def test_check_of_a_missing_bucket_names_s3_bucket_name(s3_twin):
    with pytest.raises(PermanentProviderError) as caught:
        storage(s3_twin, bucket="no-such-bucket").check()
    assert caught.value.category is FailureCategory.STORAGE
    assert "check S3_BUCKET_NAME" in caught.value.message


def test_check_with_refused_credentials_is_an_auth_failure(s3_twin):
    # HEAD answers have no body: botocore sees a bare 403, not InvalidAccessKeyId.
    s3_twin.fail_next(403, "InvalidAccessKeyId", "The AWS Access Key Id does not exist.")
    with pytest.raises(PermanentProviderError) as caught:
        storage(s3_twin).check()
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert "S3 credentials" in caught.value.message
    assert "S3_BUCKET_NAME" in caught.value.message


def test_check_when_s3_is_down_is_transient(s3_twin):
    s3_twin.fail_next(503, "SlowDown")
    with pytest.raises(TransientProviderError):
        storage(s3_twin).check()

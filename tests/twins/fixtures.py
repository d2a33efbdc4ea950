"""pytest fixtures for the three API twins, loaded by a conftest with
`from tests.twins.fixtures import *` (the hooks below must come along).

fal_client reads FAL_QUEUE_RUN_HOST once, when it is first imported, and always speaks https.
So `pytest_configure` (run when the conftest loads, before any test module is imported) makes a
trustme CA, reserves the fal twin's port by binding a listening socket, and imports fal_client
with FAL_QUEUE_RUN_HOST=127.0.0.1:<port>, then restores the variable: the SDK is bound to the
twin for this process while no other test sees the variable. SSL_CERT_FILE (system trust + the
twin's CA) is set per fal test with monkeypatch, since httpx reads it when a client is built.

The SDK's upload hosts (REST_URL for the CDN token, CDN_URL for the bytes) are plain module
constants with no environment variable or argument behind them: the one place fal-client cannot
be pointed at a local server by configuration. `fal_twin` therefore monkeypatches those two
globals to the twin for each test, so no upload can ever leave for fal.ai.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.twins.base import listening_socket
from tests.twins.fal_twin import FalTwin, tls_context, trust_bundle
from tests.twins.openai_twin import OpenAITwin
from tests.twins.s3_twin import S3Twin

__all__ = [
    "FalTls",
    "fal_tls",
    "fal_twin",
    "fal_twin_server",
    "openai_twin",
    "openai_twin_server",
    "pytest_configure",
    "pytest_unconfigure",
    "s3_twin",
    "s3_twin_server",
]


@dataclass
class FalTls:
    ca: trustme.CA
    workdir: Path
    ca_bundle: Path  # use as SSL_CERT_FILE: the usual trust store plus the twin's CA
    sock: socket.socket  # already listening; the fal twin serves on it
    host: str  # what FAL_QUEUE_RUN_HOST was at fal_client's import
    problem: str | None = None  # why the SDK could not be bound to the twin, if it could not


_fal_tls: FalTls | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _fal_tls
    if _fal_tls is not None:  # imported into more than one conftest
        return
    workdir = Path(tempfile.mkdtemp(prefix="fal-twin-"))
    ca = trustme.CA()
    ca_bundle = workdir / "ca-bundle.pem"
    ca_bundle.write_bytes(trust_bundle(ca))
    sock = listening_socket()
    host = f"127.0.0.1:{sock.getsockname()[1]}"
    problem = None
    if "fal_client" in sys.modules:
        problem = (
            "fal_client was imported before tests/twins/fixtures.py could set "
            "FAL_QUEUE_RUN_HOST, so it points at the real queue host. Import fal_client lazily "
            "(core/providers/fal_video.py does) and not at the top of a conftest or test module."
        )
    else:
        previous = os.environ.get("FAL_QUEUE_RUN_HOST")
        os.environ["FAL_QUEUE_RUN_HOST"] = host
        try:
            import fal_client.client
        finally:
            if previous is None:
                del os.environ["FAL_QUEUE_RUN_HOST"]
            else:
                os.environ["FAL_QUEUE_RUN_HOST"] = previous
        assert fal_client.client.QUEUE_URL_FORMAT == f"https://{host}/"
    _fal_tls = FalTls(ca, workdir, ca_bundle, sock, host, problem)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _fal_tls
    if _fal_tls is not None:
        _fal_tls.sock.close()
        shutil.rmtree(_fal_tls.workdir, ignore_errors=True)
        _fal_tls = None


@pytest.fixture(scope="session")
def fal_tls() -> FalTls:
    if _fal_tls is None:
        pytest.fail("tests.twins.fixtures.pytest_configure did not run; import it in a conftest")
    if _fal_tls.problem:
        pytest.fail(_fal_tls.problem)
    return _fal_tls


@pytest.fixture(scope="session")
def fal_twin_server(fal_tls: FalTls) -> Iterator[FalTwin]:
    twin = FalTwin(ssl_context=tls_context(fal_tls.ca), sock=fal_tls.sock).start()
    yield twin
    twin.stop()


@pytest.fixture
def fal_twin(fal_twin_server: FalTwin, fal_tls: FalTls, monkeypatch: pytest.MonkeyPatch) -> FalTwin:
    """The fal twin, reset, with SSL_CERT_FILE trusting it, the SDK's upload hosts pointed at
    it, and no ambient fal credentials."""
    import fal_client.client as fal_http  # already imported (and bound) by pytest_configure

    monkeypatch.setenv("SSL_CERT_FILE", str(fal_tls.ca_bundle))
    monkeypatch.setattr(fal_http, "REST_URL", fal_twin_server.origin)
    monkeypatch.setattr(fal_http, "CDN_URL", fal_twin_server.origin)
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    fal_twin_server.reset()
    return fal_twin_server


@pytest.fixture(scope="session")
def openai_twin_server() -> Iterator[OpenAITwin]:
    twin = OpenAITwin().start()
    yield twin
    twin.stop()


@pytest.fixture
def openai_twin(openai_twin_server: OpenAITwin) -> OpenAITwin:
    openai_twin_server.reset()
    return openai_twin_server


@pytest.fixture(scope="session")
def s3_twin_server() -> Iterator[S3Twin]:
    twin = S3Twin().start()
    yield twin
    twin.stop()


@pytest.fixture
def s3_twin(s3_twin_server: S3Twin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Twin:
    """The S3 twin with an empty bucket, and an AWS environment isolated from the host's."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "twin-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "twin-secret-key")
    # No ~/.aws files, profiles or instance metadata: credentials come from the two vars above.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    s3_twin_server.reset()
    return s3_twin_server

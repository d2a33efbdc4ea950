"""`python -m tests.twins`: the OpenAI, fal.ai (TLS) and S3 twins on free ports, for running the
real clients (`python -m core run`, `python -m core health`, the app) without internet or keys.

Prints the `export ...` lines that point the app at them, then serves until Ctrl-C or SIGTERM.
The fal twin finishes each job after a few status polls, so a real run completes. With
`--env-file PATH` the same lines are also written to PATH once every twin is listening.

One limit: fal-client's upload hosts cannot be moved by environment (see fixtures.py), so the
exports choose S3 storage and the still reaches fal by a presigned URL, never by an upload.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import trustme

from tests.twins.fal_twin import FalTwin, JobScript, tls_context, trust_bundle
from tests.twins.openai_twin import OpenAITwin
from tests.twins.s3_twin import ACCESS_KEY, SECRET_KEY, S3Twin

# Queued once, then two polls "generating": at the default POLL_INTERVAL_S of 3 s a run's video
# step takes about ten seconds, long enough to watch it move.
SERVE_SCRIPT = JobScript(queue_polls=1, progress_polls=2)


def exports(openai: OpenAITwin, fal: FalTwin, s3: S3Twin, ca_bundle: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": openai.api_key,
        "OPENAI_BASE_URL": openai.base_url,
        "FAL_KEY": fal.key,
        "FAL_QUEUE_RUN_HOST": fal.host,
        "SSL_CERT_FILE": str(ca_bundle),
        "S3_BUCKET_NAME": s3.bucket,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_REGION": s3.region,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.twins", description=__doc__)
    parser.add_argument("--env-file", type=Path, help="also write the export lines here")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workdir = Path(tempfile.mkdtemp(prefix="reelforge-twins-"))
    ca = trustme.CA()
    ca_bundle = workdir / "ca-bundle.pem"
    ca_bundle.write_bytes(trust_bundle(ca))

    openai = OpenAITwin().start()
    fal = FalTwin(ssl_context=tls_context(ca)).start()
    fal.default_script = SERVE_SCRIPT
    s3 = S3Twin().start()
    try:
        lines = [
            f"export {k}={shlex.quote(v)}" for k, v in exports(openai, fal, s3, ca_bundle).items()
        ]
        text = "\n".join(lines) + "\n"
        if args.env_file is not None:
            partial = args.env_file.with_name(args.env_file.name + ".partial")
            partial.write_text(text)
            partial.replace(args.env_file)  # appears whole: a reader never sees half of it
        sys.stdout.write(text)
        sys.stdout.flush()
        print(
            f"# twins up: openai {openai.origin}, fal {fal.origin}, s3 {s3.endpoint_url}"
            " - Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for twin in (openai, fal, s3):
            twin.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

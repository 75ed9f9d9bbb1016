"""A loopback S3-compatible server (moto_server from this environment) for the object-store benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def loopback_s3() -> Iterator[str]:
    """Start moto_server on a free loopback port, point this process's environment (and its children's) at it,
    create a bucket; yields ``s3://<bucket>``. The server is stopped by its PID afterwards."""
    exe = str(Path(sys.executable).parent / "moto_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.2)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing-secret-not-real",
                "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        import pyarrow.fs as pafs

        bucket = f"m1-bench-{uuid.uuid4().hex[:8]}"
        pafs.S3FileSystem(
            endpoint_override=endpoint,
            access_key="testing",
            secret_key="testing-secret-not-real",
            region="us-east-1",
            allow_bucket_creation=True,
        ).create_dir(bucket)
        yield f"s3://{bucket}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()

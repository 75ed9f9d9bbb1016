"""A real S3-compatible server on loopback (moto_server from this environment), for tests and benchmarks.

Started by PID and stopped by PID: only this server is touched. Its environment leaves out AWS_* (the server
needs none) and any pytest variables.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-not-real",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(extra_env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Run moto_server on a free loopback port; yields the environment a client needs (endpoint, credentials)."""
    # This environment's moto first: a moto_server elsewhere on PATH (a pyenv shim) may be another version.
    exe = str(Path(sys.executable).parent / "moto_server")
    exe = exe if os.path.exists(exe) else (shutil.which("moto_server") or exe)
    if not os.path.exists(exe):
        raise RuntimeError(
            "moto_server not found: install the dev extra (pip install -e '.[dev]') for moto[server]"
        )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "AWS_"))}
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**env, **(extra_env or {})},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:  # it answers (403 when it checks credentials): it is up
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.2)
        yield {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def create_bucket(env: dict[str, str], prefix: str = "m1") -> str:
    """A fresh bucket on the server ``env`` points at; returns ``s3://<bucket>``."""
    import pyarrow.fs as pafs

    bucket = f"{prefix}-{uuid.uuid4().hex[:10]}"
    pafs.S3FileSystem(
        endpoint_override=env["AWS_ENDPOINT_URL"],
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env["AWS_REGION"],
        allow_bucket_creation=True,
    ).create_dir(bucket)
    return f"s3://{bucket}"

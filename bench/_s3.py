"""A loopback S3-compatible server (moto_server from this environment) for the object-store benchmarks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from curation.devtools.loopback_s3 import create_bucket, moto_server


@contextlib.contextmanager
def loopback_s3() -> Iterator[str]:
    """Start moto_server, point this process's environment (and its children's) at it, create a bucket; yields
    ``s3://<bucket>``. The server is stopped by its PID afterwards."""
    with moto_server() as env:
        os.environ.update(env)
        yield create_bucket(env, "m1-bench")

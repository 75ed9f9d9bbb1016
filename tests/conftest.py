"""Shared fixtures. Ray here is a real local cluster, started and stopped by the tests themselves only."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from curation.jobenv import local_ray_env

# No hub access here, no telemetry, and no Ray token auth for local test clusters. Ray's workers inherit these
# from the process that starts the cluster: the session's Ray gets no runtime_env, with which Ray would start every
# worker through setup_worker.py, a second Python start-up (20 actors: 22-25 -> 13-14 busy CPU-s; a suite run
# starts ~240 workers in its session clusters).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Ray's log monitor lists the session's log folder every 0.1 s while it holds under 1,000 files, and a session
# cluster gathers hundreds of worker logs: threshold 0 lists it every 0.5 s (with 207 files: 1.38 -> 0.60 CPU-s a
# minute; the session clusters' monitors took ~35 CPU-s of a suite run).
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
# What a local Ray of the pipeline gets (workers at nice 0, Ray Train polled every 0.25 s), for every cluster the
# tests start: the session's, the CLIs' in subprocesses, and `ray start` nodes.
local_ray_env()

FIXTURES = Path(__file__).parent / "fixtures"

# The heaviest modules first, by their measured seconds under two workers (pytest --junitxml, stop 26; an order by
# stop 27's durations ran no faster). `make test` runs `--dist loadscope --no-loadscope-reorder`: xdist hands out
# whole modules in this order, so each module's fixtures (clusters, SFT runs, servers, engines) are built once, and
# no heavy module starts last while the other worker idles. The modules with clusters of their own (OWN_CLUSTERS,
# among the heaviest) come before every module that uses the session's Ray: each worker then starts its session
# Ray once, instead of stopping and restarting it (~10 CPU-s each time, its Ray Data actors included) whenever it
# moves on to one of them. The order only changes wall time; a module missing here runs after these, in collection
# order.
HEAVIEST_FIRST = (
    "test_cluster",
    "test_demo",
    "test_object_store",
    "test_teacher_kill",
    "test_sft_train",
    "test_vllm_engine",
    "test_pay_once",
    "test_vllm_serve",
    "test_eval_sweep",
    "test_llm_stages",
    "test_openai_engine",
    "test_classify",
    "test_bad_inputs",
    "test_catalog",
    "test_ratelimit",
    "test_engine_dispatch",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: tests keep their module order


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Modules that run clusters of their own for minutes (`ray start` nodes, CLI processes each with its own Ray): the
# session's cluster is stopped when one of them begins, rather than idling beside them (a local Ray with its idle
# workers takes ~0.06 CPU-s a second), and started again by the next module that asks for it (~5 CPU-s).
OWN_CLUSTERS = frozenset({"test_cluster", "test_object_store", "test_demo", "test_teacher_kill"})
assert set(HEAVIEST_FIRST[: len(OWN_CLUSTERS)]) == OWN_CLUSTERS, "modules with their own clusters run first"


def _session_ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """The session's local Ray cluster, in its own temp dir: started on first use and kept for the modules that
    follow (see OWN_CLUSTERS); ray.shutdown() stops only its processes."""
    import ray

    if not ray.is_initialized():
        # A short temp dir: Ray's socket paths must stay under the 107-byte limit.
        temp_dir = tempfile.mkdtemp(prefix="m1ray-", dir="/tmp")
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=temp_dir,
            log_to_driver=False,
        )
    yield


@pytest.fixture(scope="module", autouse=True)
def _no_idle_session_ray(request: pytest.FixtureRequest) -> None:
    if request.path.stem in OWN_CLUSTERS and _session_ray_running():
        import ray

        ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _stop_session_ray() -> Iterator[None]:
    yield
    if _session_ray_running():
        import ray

        ray.shutdown()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-init Qwen2 model (HF format), built once per session with no network."""
    from curation.devtools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3-compatible server (moto_server) on loopback for the session; yields the environment a process
    needs to reach it (endpoint and dummy credentials). Stopped by PID; only this server is touched."""
    from curation.devtools.loopback_s3 import moto_server

    with moto_server() as env:
        yield env


@pytest.fixture
def s3_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment points at the session's S3 server (endpoint and dummy credentials) for one
    test; subprocesses get the same environment through os.environ."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def s3_bucket(s3_server: dict[str, str], s3_env: None) -> str:
    """A fresh bucket on the session's S3 server, with this process's environment pointing at it (`s3_env`);
    returns ``s3://<bucket>``."""
    from curation.devtools.loopback_s3 import create_bucket

    return create_bucket(s3_server, "m1-test")

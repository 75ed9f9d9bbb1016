"""The main job on its embedded default (`m1 demo`): the whole chain on the sample pool; a rerun pays nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
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
    out = m1("demo", "--run-dir", run_dir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = RunStore(run_dir, create=False)
    stages = store.manifest["stages"]
    ingest = stages["ingest"]
    assert (ingest["rows_in"], ingest["rows_out"], ingest["rows_rejected"]) == (341, 311, 30)
    for name in ("score", "teacher", "curate"):
        assert stages[name]["status"] == "complete"
    con = duckdb.connect(str(tmp_path / "demo" / "catalog.duckdb"), read_only=True)
    n_pool = con.execute("SELECT count(*) FROM questions").fetchall()[0][0]
    scored = stages["score"]["rows_in"]
    assert (
        con.execute("SELECT count(*) FROM scores").fetchall()[0][0] == 2 * scored
    )  # two scorers, one sample
    assert stages["teacher"]["rows_in"] == stages["score"]["rows_out"]
    assert stages["curate"]["rows_out"] == stages["teacher"]["rows_out"] > 0
    # The curated set ends in m23k (decontaminated again) and m1k (m1's sampler, size above the set: all rows)
    n_m23k = con.execute("SELECT count(*) FROM m23k").fetchall()[0][0]
    assert 0 < n_m23k <= stages["curate"]["rows_out"]
    ranks = con.execute("SELECT sample_rank FROM m1k ORDER BY sample_rank").fetchall()
    assert [r for (r,) in ranks] == list(range(len(ranks))) and len(ranks) == n_m23k
    assert f"[sample] sample of {n_m23k}: by source " in out.stdout
    assert con.execute("SELECT count(*) FROM lineage").fetchall()[0][0] == n_pool
    engines = {r[0] for r in con.execute("SELECT DISTINCT engine FROM ledger").fetchall()}
    assert "vllm" in engines and any(e.startswith("openai:127.0.0.1") for e in engines)
    answered = len(Ledger(store.ledger_uri).answered_ids())
    assert "REHEARSED" in out.stdout and "TINY-MODEL DEMONSTRATION" in out.stdout
    # The SFT leg: 8 optimizer steps on 2 workers, one metrics row per step, a loss curve.
    steps = con.execute("SELECT step FROM sft_metrics WHERE sft_run = 'demo-tiny' ORDER BY step").fetchall()
    assert [s for (s,) in steps] == list(range(1, 9))
    assert (tmp_path / "demo" / "sft" / "demo-tiny" / "loss.png").is_file()
    # The evaluation leg: the fine-tuned model, 3 budgets x 1 forcing count on the held-out PubMedQA half.
    cells = con.execute(
        "SELECT model, benchmark, budget, forcing, samples FROM eval_scores ORDER BY budget"
    ).fetchall()
    assert cells == [("tiny-sft", "pubmedqa-heldout", b, 1, 20) for b in (64, 128, 256)]
    assert con.execute("SELECT count(*) FROM eval_responses").fetchall()[0][0] == 3 * 20
    report = (tmp_path / "demo" / "report.html").read_text(encoding="utf-8")
    assert "tiny-model demonstration" in report.lower() and report.count("data:image/png;base64,") >= 3
    con.close()

    again = m1("demo", "--run-dir", run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    # Every stage is skipped, naming the config hash the manifest (and `m1 runs`) records.
    config_hash = RunStore(run_dir, create=False).manifest["config_hash"]
    assert again.stdout.count(f"complete for config hash {config_hash} ") == len(stages) == 9
    assert len(Ledger(store.ledger_uri).answered_ids()) == answered
    assert "already finished 8 steps: reusing" in again.stdout
    assert "cells finished; nothing to run" in again.stdout


@pytest.mark.slow
def test_demo_dry_run_sends_nothing(tmp_path):
    run_dir = str(tmp_path / "demo")
    out = m1("demo", "--run-dir", run_dir, "--dry-run")
    assert out.returncode == 0, out.stderr[-3000:]
    # Two scorers, one sample each, over the candidates that dedup and decontamination leave.
    n = RunStore(run_dir, create=False).tables()["candidates"]["rows"]
    assert 0 < n < 311
    assert (
        f"[score] dry run: tiny-greedy, tiny-sampled on engine tiny: {2 * n} requests, {2 * n} to send"
        in out.stdout
    )
    assert "[teacher] dry run: " in out.stdout and "assuming m1's hard share" in out.stdout
    assert "expected $" in out.stdout
    assert Ledger(RunStore(run_dir, create=False).ledger_uri).read().num_rows == 0

"""The main job on its embedded default (`m1 demo`): the whole chain on the sample pool; a rerun pays nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curation.engines.ledger import Ledger
from curation.store.catalog import open_catalog
from curation.store.runstore import RunStore

# Keys planted in the environment of every demo command (issue 21): none may reach a file the run writes.
PLANTED = {
    "OPENAI_API_KEY": "sk-live-PLANTEDdemo0123456789abcdefXYZ",
    "DEEPSEEK_API_KEY": "sk-PLANTEDdeepseek0123456789abcdef",
    "HF_TOKEN": "hf_PLANTEDhuggingface0123456789abcdefgh",
    "AWS_SECRET_ACCESS_KEY": "PLANTEDaws/secret0123456789abcdefghijKLMN",
}


def m1(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", **PLANTED)
    return subprocess.run(
        [sys.executable, "-m", "curation.cli", *args], capture_output=True, text=True, timeout=900, env=env
    )


def readme_queries() -> list[str]:
    """The README's example queries over the demo run (`m1 sql runs/demo "..."` lines)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    return re.findall(r'^m1 sql runs/demo "(.+)"$', readme, flags=re.M)


def check_common_readers(store: RunStore) -> None:
    """Issue 22: one table of each schema the run wrote reads in pyarrow, polars, `datasets` and DuckDB 1.x."""
    import datasets
    import polars as pl
    import pyarrow.parquet as pq
    from duckdb_clients import install, query_python

    import schemas

    folder = install("python-1.4")
    # Per schema, its largest table: `datasets` has no empty split (a 0-row Parquet file "corresponds to no
    # data" whoever wrote it), and every schema of the demo run has a non-empty table.
    largest: dict[str, tuple[str, dict]] = {}
    for name, entry in store.tables().items():
        key = schemas.get(name).name
        if key not in largest or entry["rows"] > largest[key][1]["rows"]:
            largest[key] = (name, entry)
    for name, entry in sorted(largest.values()):
        assert entry["rows"] > 0, name
        files = sorted(Path(store.path(entry["path"])).glob("*.parquet"))
        rows = entry["rows"]
        assert pq.read_table(files).num_rows == rows, name
        assert pl.read_parquet(files).height == rows, name
        loaded = datasets.Dataset.from_parquet([str(f) for f in files], keep_in_memory=True)
        assert loaded.num_rows == rows, name
        glob = store.path(entry["path"]) + "/*.parquet"
        assert query_python(folder, ":memory:", f"SELECT count(*) FROM read_parquet('{glob}')", cwd="/") == [
            [rows]
        ]
    assert {"questions", "rejects", "scores", "traces", "m23k", "m1k", "eval_scores", "sft_metrics"} <= set(
        largest
    )


def check_duckdb_1x_clients(run_dir: str, answers: dict[str, list], tmp_path: Path) -> None:
    """Issue 22: catalog.duckdb opens read-only in DuckDB 1.x clients, answers the README's queries as the
    project's DuckDB does, and keeps doing so after the run directory is copied elsewhere."""
    from duckdb_clients import install, query_cli, query_python

    python_1x, cli = install("python-1.4"), install("cli-1.5")
    assert len(answers) >= 3
    m23k_rows = RunStore(run_dir, create=False).tables()["m23k"]["rows"]
    copy = str(tmp_path / "copied" / "demo")
    shutil.copytree(run_dir, copy)
    for run in (run_dir, copy):
        for sql, rows in answers.items():
            got = query_python(python_1x, f"{run}/catalog.duckdb", sql, cwd=run)
            assert _close(sorted(map(tuple, got), key=str), sorted(map(tuple, rows), key=str)), (
                run,
                sql,
                got,
            )
        n = query_cli(cli, f"{run}/catalog.duckdb", "SELECT count(*) AS n FROM m23k", cwd=run)
        assert n == [{"n": m23k_rows}]


def assert_no_planted_key(run_dir: str, output: str) -> None:
    """Every file the demo wrote (manifest, tables, ledger, checkpoints, SFT and eval outputs, report, catalog)
    and what it printed, scanned for the keys in its environment: curate, SFT, eval and report all ran."""
    secrets = [v.encode() for v in PLANTED.values()]
    files = [p for p in Path(run_dir).rglob("*") if p.is_file()]
    assert len(files) > 50
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{path} holds a planted key"
    for secret in PLANTED.values():
        assert secret not in output


def _close(got: list, want: list) -> bool:
    """Float sums may differ in the last digits between DuckDB versions."""
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=True):
        for x, y in zip(a, b, strict=True):
            if isinstance(y, float):
                if x is None or abs(float(x) - y) > 1e-9 * max(1.0, abs(y)):
                    return False
            elif x != y and str(x) != str(y):
                return False
    return True


def check_dry_run(run_dir: str) -> None:
    """`m1 demo --dry-run`: the free stages run, the LLM stages print their plan and cost and send nothing."""
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
    assert "score" not in RunStore(run_dir, create=False).manifest["stages"]


@pytest.mark.slow
def test_demo_dry_run_then_end_to_end_and_rerun_pays_nothing(tmp_path):
    """A dry run first (its free stages are then reused: `m1 curate` runs those from scratch in one process in
    test_object_store's demo chain and as jobs in test_cluster), then the whole chain, then a rerun."""
    run_dir = str(tmp_path / "demo")
    check_dry_run(run_dir)
    out = m1("demo", "--run-dir", run_dir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = RunStore(run_dir, create=False)
    stages = store.manifest["stages"]
    ingest = stages["ingest"]
    assert (ingest["rows_in"], ingest["rows_out"], ingest["rows_rejected"]) == (341, 311, 30)
    for name in ("score", "teacher", "curate"):
        assert stages[name]["status"] == "complete"
    con = open_catalog(run_dir)  # catalog.duckdb, told where the run is (its views read run-relative paths)
    n_pool = con.execute("SELECT count(*) FROM questions").fetchall()[0][0]
    scored = stages["score"]["rows_in"]
    assert (
        con.execute("SELECT count(*) FROM scores").fetchall()[0][0] == 2 * scored
    )  # two scorers, one sample
    assert stages["teacher"]["rows_in"] == stages["score"]["rows_out"]
    assert stages["curate"]["rows_out"] == stages["teacher"]["rows_out"] > 0
    # The curated set ends in m23k (decontaminated again) and m1k (m1's sampler draws 100 of its rows)
    n_m23k = con.execute("SELECT count(*) FROM m23k").fetchall()[0][0]
    assert 0 < n_m23k <= stages["curate"]["rows_out"]
    ranks = con.execute("SELECT sample_rank FROM m1k ORDER BY sample_rank").fetchall()
    assert n_m23k > 100, "the demo's sample must choose: its size (100) is below m23k"
    assert [r for (r,) in ranks] == list(range(100))
    assert "[sample] sample of 100: by source " in out.stdout
    assert con.execute("SELECT count(*) FROM lineage").fetchall()[0][0] == n_pool
    engines = {r[0] for r in con.execute("SELECT DISTINCT engine FROM ledger").fetchall()}
    assert "vllm" in engines and any(e.startswith("openai:127.0.0.1") for e in engines)
    answered = len(Ledger(store.ledger_uri).answered_ids())
    assert "REHEARSED" in out.stdout and "TINY-MODEL DEMONSTRATION" in out.stdout
    # The SFT leg: 8 optimizer steps on 2 workers, one metrics row per step, a loss curve.
    steps = con.execute("SELECT step FROM sft_metrics WHERE sft_run = 'demo-tiny' ORDER BY step").fetchall()
    assert [s for (s,) in steps] == list(range(1, 9))
    assert (tmp_path / "demo" / "sft" / "demo-tiny" / "loss.png").is_file()
    # `m1 demo`'s fine-tune (sft.demo.run_demo_sft) leaves an HF checkpoint at its last step.
    final = sorted((tmp_path / "demo" / "sft" / "demo-tiny" / "train").glob("checkpoint_*/checkpoint"))[-1]
    assert (final / "model.safetensors").is_file()
    assert json.loads((final / "trainer_state.json").read_text())["global_step"] == 8
    # The evaluation leg: the fine-tuned model, 3 budgets x 1 forcing count on the held-out PubMedQA half.
    cells = con.execute(
        "SELECT model, benchmark, budget, forcing, samples FROM eval_scores ORDER BY budget"
    ).fetchall()
    assert cells == [("tiny-sft", "pubmedqa-heldout", b, 1, 20) for b in (64, 128, 256)]
    # vLLM served the HF checkpoint as it was written: every response generated tokens from it.
    n_responses, least_generated = con.execute(
        "SELECT count(*), min(generated_tokens) FROM eval_responses"
    ).fetchall()[0]
    assert n_responses == 3 * 20 and least_generated > 0
    report = (tmp_path / "demo" / "report.html").read_text(encoding="utf-8")
    assert "tiny-model demonstration" in report.lower() and report.count("data:image/png;base64,") >= 3
    readme_answers = {sql: con.execute(sql).fetchall() for sql in readme_queries()}
    con.close()
    check_common_readers(store)
    check_duckdb_1x_clients(run_dir, readme_answers, tmp_path)
    assert_no_planted_key(run_dir, out.stdout + out.stderr)

    again = m1("demo", "--run-dir", run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    # Every stage is skipped, naming the config hash the manifest (and `m1 runs`) records.
    config_hash = RunStore(run_dir, create=False).manifest["config_hash"]
    assert again.stdout.count(f"complete for config hash {config_hash} ") == len(stages) == 9
    assert len(Ledger(store.ledger_uri).answered_ids()) == answered
    assert "already finished 8 steps: reusing" in again.stdout
    assert "cells finished; nothing to run" in again.stdout
    # Nothing left to run, so the rerun starts no Ray (curate, SFT and eval each start it only for work).
    assert "Started a local Ray instance" not in again.stdout + again.stderr
    assert "Started a local Ray instance" in out.stdout + out.stderr

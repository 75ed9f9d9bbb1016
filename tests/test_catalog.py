"""SQL over a run: through `m1 sql` (a real subprocess) and through catalog.duckdb in a plain DuckDB client."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pyarrow as pa
import pytest
from test_runstore import question_rows

import schemas
from curation.engines.ledger import Ledger
from curation.engines.request import make_request, response_row, responses_table
from curation.store.catalog import write_catalog
from curation.store.runstore import RunStore


def m1(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curation.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def run_dir(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    rejects = pa.Table.from_pylist(
        [
            {
                "stage": "ingest",
                "source": "medqa",
                "source_ref": "a.jsonl:3",
                "reason": "missing_question",
                "detail": "question is empty",
                "raw": "{}",
            },
            {
                "stage": "ingest",
                "source": "medqa",
                "source_ref": "a.jsonl:9",
                "reason": "too_few_options",
                "detail": "1 option",
                "raw": "{}",
            },
        ],
        schema=schemas.get("rejects").schema,
    )
    store.commit(
        [store.write_table("questions", question_rows(4)), store.write_table("rejects/ingest", rejects)],
        stage={"name": "ingest", "status": "complete", "rows_in": 6, "rows_out": 4, "rows_rejected": 2},
    )
    ledger = Ledger(store.ledger_uri)
    reqs = [
        make_request(f"q{i}", "teacher", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)
    ]
    ledger.append(
        responses_table(
            [
                response_row(
                    r, engine="openai:x", text="A", prompt_tokens=10, completion_tokens=100, cost_usd=0.5
                )
                for r in reqs
            ]
        )
    )
    return str(tmp_path / "run")


def test_m1_sql_formats(run_dir):
    out = m1("sql", run_dir, "SELECT count(*) AS n FROM questions", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip()) == {"n": 4}
    out = m1(
        "sql",
        run_dir,
        "SELECT reason, count(*) AS n FROM rejects GROUP BY reason ORDER BY reason",
        "--format",
        "csv",
    )
    assert out.stdout.splitlines() == ['"reason","n"', '"missing_question",1', '"too_few_options",1']
    out = m1(
        "sql",
        run_dir,
        "SELECT model, sum(completion_tokens) AS tok, sum(cost_usd) AS usd FROM ledger GROUP BY model",
    )
    assert out.returncode == 0 and "teacher" in out.stdout and "300" in out.stdout and "1.5" in out.stdout
    out = m1("sql", run_dir, "SELECT stage, rows_in, rows_out FROM stages", "--format", "json")
    assert json.loads(out.stdout) == {"stage": "ingest", "rows_in": 6, "rows_out": 4}


def test_m1_sql_errors_are_clear(run_dir, tmp_path):
    out = m1("sql", run_dir, "SELECT nope FROM questions")
    assert out.returncode != 0 and "nope" in out.stderr and "Traceback" not in out.stderr
    out = m1("sql", str(tmp_path / "missing"), "SELECT 1")
    assert out.returncode != 0 and "does not exist" in out.stderr


def test_catalog_file_opens_in_plain_duckdb(run_dir):
    path = write_catalog(RunStore(run_dir, create=False))
    con = duckdb.connect(path, read_only=True)
    names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert {"questions", "rejects_ingest", "rejects", "ledger"} <= names
    assert con.execute("SELECT count(*) FROM questions").fetchone() == (4,)
    assert con.execute("SELECT options[1].text FROM questions LIMIT 1").fetchone() == ("yes",)
    assert con.execute("SELECT count(*) FROM ledger").fetchone() == (3,)


def test_m1_runs_lists_counts(run_dir, tmp_path):
    out = m1("runs", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "questions=4" in out.stdout and "ingest:complete" in out.stdout


def test_ledger_compaction_keeps_first_answer_per_request(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger"))
    reqs = [make_request(f"k{i}", "m", prompt=f"p{i}") for i in range(5)]
    for i, r in enumerate(reqs):
        ledger.append(responses_table([response_row(r, engine="e", text=f"first{i}")]))
    ledger.append(responses_table([response_row(reqs[0], engine="e", text="later duplicate")]))
    assert ledger.compact(min_shards=100) == 0 and ledger.shard_count() == 6
    assert ledger.compact(min_shards=2) == 6
    assert ledger.shard_count() == 1
    table = ledger.read()
    assert table.num_rows == 5
    assert (
        dict(zip(table.column("key").to_pylist(), table.column("text").to_pylist(), strict=True))["k0"]
        == "first0"
    )
    assert sorted(ledger.answered_ids().to_pylist()) == sorted(r["request_id"] for r in reqs)


def test_catalog_skips_tables_whose_files_are_gone(run_dir):
    import shutil

    store = RunStore(run_dir, create=False)
    shutil.rmtree(store.path(store.tables()["rejects/ingest"]["path"]))
    missing = store.missing_tables()
    assert list(missing) == ["rejects/ingest"]
    con = duckdb.connect(write_catalog(store, skip=set(missing)), read_only=True)
    assert con.execute("SELECT count(*) FROM questions").fetchone() == (4,)
    assert con.execute("SELECT count(*) FROM rejects").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM lineage").fetchone() == (4,)


def test_m1_runs_flags_a_corrupt_run_and_lists_the_rest(run_dir, tmp_path):
    bad = tmp_path / "broken-run"
    bad.mkdir()
    (bad / "manifest.json").write_text("{")
    out = m1("runs", str(tmp_path), "--format", "json")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["stages"] for r in rows] == ["CORRUPT", "ingest:complete"]
    assert "not valid JSON" in rows[0]["tables"] and rows[1]["tables"] == "questions=4, rejects/ingest=2"

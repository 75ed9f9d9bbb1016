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
    return build_run(str(tmp_path / "run"))


def build_run(uri: str) -> str:
    """A small run at ``uri`` (any pyarrow filesystem URI): 4 questions, 2 ingest rejects, 3 ledger rows."""
    store = RunStore(uri)
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
    return uri


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
    con.execute("SET file_search_path = ?", [run_dir])  # views read paths relative to the run directory
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
    con.execute("SET file_search_path = ?", [run_dir])
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


# ---------------------------------------------------------------------------- m1 sql is read-only (issue 21)
def _snapshot(root) -> dict[str, bytes]:
    from pathlib import Path

    return {str(p): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_m1_sql_cannot_write_or_read_outside_the_run(run_dir, tmp_path, capsys):
    from curation.cli import main

    store = RunStore(run_dir, create=False)
    part = store.path(store.tables()["questions"]["path"]) + "/part-00000.parquet"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for m1 sql")
    main(["sql", run_dir, "SELECT 1"])  # the catalog is rebuilt by m1 sql itself: snapshot after that
    capsys.readouterr()
    before = _snapshot(tmp_path)
    statements = {
        "copy over a committed table file": f"COPY (SELECT 42 AS x) TO '{part}' (FORMAT parquet)",
        "copy elsewhere": f"COPY (SELECT * FROM questions) TO '{outside}/copy.csv'",
        "copy into the run": f"COPY questions TO '{run_dir}/extra.parquet' (FORMAT parquet)",
        "export database": f"EXPORT DATABASE '{outside}/export'",
        "attach a new file": f"ATTACH '{outside}/new.duckdb' AS other",
        "install an extension": "INSTALL httpfs",
        "load an extension": "LOAD httpfs",
        "read a file outside the run": f"SELECT * FROM read_text('{outside}/secret.txt')",
        "read csv outside the run": f"SELECT * FROM read_csv('{outside}/secret.txt')",
        "glob the filesystem": "SELECT * FROM glob('/etc/*')",
        "turn file access back on": "SET enable_external_access = true",
        "write through a view": "INSERT INTO questions SELECT * FROM questions",
        "delete through a view": "DELETE FROM rejects_ingest",
        "update the ledger": "UPDATE ledger SET text = 'x'",
    }
    for what, sql in statements.items():
        code = main(["sql", run_dir, sql])
        err = capsys.readouterr().err
        assert code == 2, f"{what}: exit {code}"
        assert "Traceback" not in err
        assert any(w in err for w in ("read-only", "not a", "Cannot", "does not exist", "base table")), (
            f"{what}: {err}"
        )
        if "extension" in what or "file" in what or "copy" in what or "export" in what or "attach" in what:
            assert "read-only" in err, f"{what}: {err}"
    assert _snapshot(tmp_path) == before, "a statement changed or created a file"
    assert not (outside / "copy.csv").exists() and not (outside / "export").exists()
    # The run still answers, unchanged.
    assert main(["sql", run_dir, "SELECT count(*) AS n FROM questions", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 4}


def test_m1_sql_output_writes_results_outside_runs_only(run_dir, tmp_path, capsys):
    import polars as pl
    import pyarrow.parquet as pq

    from curation.cli import main

    sql = "SELECT reason, count(*) AS n FROM rejects GROUP BY reason ORDER BY reason"
    for name in ("out.csv", "out.jsonl", "out.parquet"):
        assert main(["sql", run_dir, sql, "--output", str(tmp_path / name)]) == 0
        assert "2 rows written" in capsys.readouterr().err
    assert pl.read_csv(tmp_path / "out.csv")["n"].to_list() == [1, 1]
    assert [json.loads(x)["reason"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == [
        "missing_question",
        "too_few_options",
    ]
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 2
    before = _snapshot(run_dir)
    for inside in (
        f"{run_dir}/out.csv",
        f"{run_dir}/tables/questions/x.parquet",
        f"{run_dir}/ledger/y.parquet",
    ):
        assert main(["sql", run_dir, sql, "--output", inside]) == 2
        err = capsys.readouterr().err
        assert "inside the run directory" in err and "never writes into a run" in err, err
    assert main(["sql", run_dir, sql, "--output", str(tmp_path / "out.xlsx")]) == 2
    assert "unknown file type" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


# ------------------------------------------------------------------- corrupt tables: m1 runs and m1 sql
def test_wrong_schema_and_truncated_files_are_reported_as_corrupt(run_dir, tmp_path, capsys):
    import pyarrow.parquet as pq

    from curation.cli import main

    store = RunStore(run_dir, create=False)
    questions = store.path(store.tables()["questions"]["path"]) + "/part-00000.parquet"
    pq.write_table(pa.table({"x": [42]}), questions)  # what a stray `COPY ... TO` once did
    rejects = store.path(store.tables()["rejects/ingest"]["path"]) + "/part-00000.parquet"
    data = open(rejects, "rb").read()
    open(rejects, "wb").write(data[: len(data) // 2])

    assert main(["runs", str(tmp_path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    (row,) = [json.loads(line) for line in captured.out.splitlines()]
    assert row["stages"] == "CORRUPT"
    assert "questions=4 (CORRUPT: schema differs from questions" in row["tables"]
    assert "missing columns ['qid', 'source'" in row["tables"] and "unexpected columns ['x']" in row["tables"]
    assert "rejects/ingest=2 (CORRUPT: not a readable Parquet file" in row["tables"]
    assert "flagged CORRUPT" in captured.err

    assert main(["sql", run_dir, "SELECT count(*) AS n FROM ledger", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"n": 3}  # the healthy tables still answer
    assert (
        "table 'questions' (tables/questions/" in captured.err
        and "is CORRUPT: schema differs" in captured.err
    )
    assert "table 'rejects/ingest'" in captured.err and "left out" in captured.err
    assert "Traceback" not in captured.err
    assert main(["sql", run_dir, "SELECT count(*) FROM questions"]) == 2
    err = capsys.readouterr().err
    assert "questions" in err and "was left out" in err and "Traceback" not in err


def test_row_count_that_disagrees_with_the_manifest_is_corrupt(run_dir):
    from curation.store.health import check_run

    store = RunStore(run_dir, create=False)
    store.manifest["tables"]["questions"]["rows"] = 5
    problems = check_run(store)
    assert list(problems) == ["questions"]
    assert problems["questions"].detail == "4 rows in its files, 5 in the manifest"
    assert check_run(RunStore(run_dir, create=False)) == {}


# --------------------------------------------------- catalog.duckdb in DuckDB 1.x clients (issue 22)
@pytest.fixture(scope="module")
def duckdb_1x():
    from duckdb_clients import install

    return {name: install(name) for name in ("python-1.4", "cli-1.5")}


def test_catalog_opens_in_duckdb_1x_clients_and_survives_a_move(run_dir, tmp_path, duckdb_1x, capsys):
    import shutil

    from duckdb_clients import query_cli, query_python

    from curation.cli import main

    assert main(["sql", run_dir, "SELECT 1"]) == 0  # (re)writes catalog.duckdb
    queries = {
        "SELECT count(*) FROM questions": [[4]],
        "SELECT reason, count(*) FROM rejects GROUP BY reason ORDER BY reason": [
            ["missing_question", 1],
            ["too_few_options", 1],
        ],
        "SELECT model, sum(completion_tokens), sum(cost_usd) FROM ledger GROUP BY model": [
            ["teacher", 300, 1.5]
        ],
        "SELECT status, count(*) FROM lineage GROUP BY ALL ORDER BY ALL": [["pending", 4]],
        "SELECT stage, rows_in, rows_out FROM stages": [["ingest", 6, 4]],
    }

    def check(run: str, cwd: str, search_path: str | None = None) -> None:
        catalog = f"{run}/catalog.duckdb"
        for sql, rows in queries.items():
            got = query_python(duckdb_1x["python-1.4"], catalog, sql, cwd=cwd, search_path=search_path)
            assert got == rows, sql
        cli = query_cli(duckdb_1x["cli-1.5"], catalog, "SELECT count(*) AS n FROM questions", cwd=run)
        assert cli == [{"n": 4}]

    check(run_dir, cwd=run_dir)
    check(run_dir, cwd=str(tmp_path), search_path=run_dir)
    moved = str(tmp_path / "elsewhere" / "moved-run")
    shutil.copytree(run_dir, moved)
    shutil.rmtree(run_dir)
    check(moved, cwd=moved)  # the copied catalog was not rebuilt: relative paths still hold
    # Opened from elsewhere without the search path, the views cannot find the files; the catalog says why.
    from duckdb_clients import query_python as q

    help_rows = q(
        duckdb_1x["python-1.4"], f"{moved}/catalog.duckdb", "SELECT how_to_open FROM m1_catalog", cwd="/"
    )
    assert "cd RUN" in help_rows[0][0] and "m1 catalog RUN" in help_rows[0][0]
    with pytest.raises(AssertionError, match="No files found"):
        q(duckdb_1x["python-1.4"], f"{moved}/catalog.duckdb", "SELECT count(*) FROM questions", cwd="/")
    # m1 catalog --absolute: opens from anywhere.
    assert main(["catalog", moved, "--absolute"]) == 0
    assert "absolute paths" in capsys.readouterr().out
    assert q(
        duckdb_1x["python-1.4"], f"{moved}/catalog.duckdb", "SELECT count(*) FROM questions", cwd="/"
    ) == [[4]]
    # m1 sql works from anywhere and puts the catalog back to relative paths.
    assert main(["sql", moved, "SELECT count(*) AS n FROM questions", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 4}
    check(moved, cwd=moved)


# ------------------------------------------------------ SQL over an object-store run (issue 17, loopback S3)
def test_m1_sql_runs_and_report_over_an_s3_run_without_extensions(s3_bucket, tmp_path):
    """The run lives on a real S3-compatible server; m1 sql reads it through pyarrow (no httpfs download: the
    machine is offline), m1 runs lists and checks it, and a wrong-schema file is reported with its cause."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    uri = build_run(f"{s3_bucket}/runs/x")
    out = m1("sql", uri, "SELECT count(*) AS n FROM questions", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"n": 4}
    out = m1(
        "sql",
        uri,
        "SELECT model, sum(completion_tokens) AS tok FROM ledger GROUP BY model",
        "--format",
        "json",
    )
    row = json.loads(out.stdout)
    assert row["model"] == "teacher" and int(row["tok"]) == 300
    out = m1("sql", uri, "SELECT status, count(*) AS n FROM lineage GROUP BY ALL", "--format", "json")
    assert json.loads(out.stdout) == {"status": "pending", "n": 4}
    out = m1("sql", uri, "COPY questions TO 's3://bucket/stolen.parquet'")
    assert out.returncode == 2 and "read-only" in out.stderr
    out = m1("runs", f"{s3_bucket}/runs", "--format", "json")
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["run"] == uri and row["tables"] == "questions=4, rejects/ingest=2"
    out = m1("report", uri, "--out", str(tmp_path / "report.html"))
    assert out.returncode == 0, out.stderr
    assert "questions" in (tmp_path / "report.html").read_text(encoding="utf-8")

    store = RunStore(uri, create=False)
    with store.fs.open_output_stream(
        store.path(store.tables()["questions"]["path"]) + "/part-00000.parquet"
    ) as f:
        pq.write_table(pa.table({"x": [1]}), f)
    out = m1("runs", uri, "--format", "json")
    assert "questions=4 (CORRUPT: schema differs" in json.loads(out.stdout)["tables"]
    # The store cannot be reached: the cause is named, and nobody is told to rerun with --force.
    import os

    from conftest import free_port

    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    bad = subprocess.run(
        [sys.executable, "-m", "curation.cli", "sql", uri, "SELECT 1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "--force" not in bad.stderr and "damaged" not in bad.stderr
    assert "cannot" in bad.stderr and uri in bad.stderr
    assert isinstance(store.fs, pafs.S3FileSystem)

"""Run store: versions, atomic commits, crash safety, garbage collection."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pyarrow as pa
import pytest

import schemas
from curation.store.runstore import RunStore


def question_rows(n: int, prefix: str = "q") -> pa.Table:
    now = datetime.now(UTC)
    return pa.Table.from_pylist(
        [
            {
                "qid": f"{prefix}{i}",
                "source": "s",
                "source_id": str(i),
                "split": "train",
                "question": f"Question {i}?",
                "options": [{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}],
                "answer_label": "A",
                "answer_text": "yes",
                "context": None,
                "prompt": f"Question {i}?\nA. yes\nB. no",
                "metadata": "{}",
                "ingested_at": now,
            }
            for i in range(n)
        ]
    )


def test_write_commit_read_roundtrip(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    v = store.write_table("questions", question_rows(5), rows_per_file=2)
    assert v.rows == 5 and v.schema_tag == "questions/v1"
    assert not store.has_table("questions"), "a written but uncommitted version is invisible"
    store.commit([v], stage={"name": "ingest", "status": "complete"})
    reopened = RunStore(str(tmp_path / "run"), create=False)
    table = reopened.read_table("questions")
    assert table.num_rows == 5
    assert table.schema.equals(schemas.get("questions").schema)
    assert len(os.listdir(reopened.path(v.path))) == 3  # 2 + 2 + 1 rows per file
    assert reopened.manifest["stages"]["ingest"]["status"] == "complete"


def test_crash_before_commit_keeps_old_state(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    old = store.write_table("questions", question_rows(3, "old"))
    store.commit([old])
    # A second stage run writes a new version and "crashes" before its commit.
    store.write_table("questions", question_rows(7, "new"))
    after_crash = RunStore(str(tmp_path / "run"), create=False)
    assert after_crash.read_table("questions").column("qid").to_pylist() == ["old0", "old1", "old2"]
    removed = after_crash.gc()
    assert len([r for r in removed if r.startswith("tables/questions/")]) == 1
    assert after_crash.read_table("questions").num_rows == 3


def test_manifest_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    store.commit([store.write_table("questions", question_rows(1))])
    names = os.listdir(tmp_path / "run")
    assert "manifest.json" in names and not [n for n in names if n.endswith(".tmp")]
    data = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert data["tables"]["questions"]["rows"] == 1


def test_empty_table_keeps_its_schema(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    v = store.write_table("rejects/ingest", schemas.get("rejects").schema.empty_table())
    store.commit([v])
    t = store.read_table("rejects/ingest")
    assert t.num_rows == 0 and t.schema.names == schemas.get("rejects").schema.names


def test_conform_rejects_bad_tables(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    bad = question_rows(2).drop_columns(["prompt"])
    with pytest.raises(schemas.SchemaError, match="missing columns \\['prompt'\\]"):
        store.write_table("questions", bad)
    nulls = question_rows(2).set_column(0, "qid", pa.array([None, "x"], pa.string()))
    with pytest.raises(schemas.SchemaError, match="'qid' is NOT NULL but has 1 nulls"):
        store.write_table("questions", nulls)
    with pytest.raises(KeyError, match="unknown table 'no_such_table'"):
        store.write_table("no_such_table", question_rows(1))


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunStore(str(tmp_path / "nope"), create=False)
    with pytest.raises(KeyError, match="has no table 'questions'"):
        RunStore(str(tmp_path / "run")).read_table("questions")


def test_run_dir_problems_are_user_errors(tmp_path):
    from curation.errors import RunDirError

    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        RunStore(str(tmp_path / "file"))
    with pytest.raises(RunDirError, match="unknown filesystem scheme 'foo://'"):
        RunStore("foo://bucket/run")
    store = RunStore(str(tmp_path / "run"))
    store.commit([store.write_table("questions", question_rows(2))])
    text = (tmp_path / "run" / "manifest.json").read_text()
    (tmp_path / "run" / "manifest.json").write_text(text[:40])
    with pytest.raises(RunDirError, match=r"manifest.json:\d+: the manifest is not valid JSON"):
        RunStore(str(tmp_path / "run"), create=False).tables()
    (tmp_path / "run" / "manifest.json").write_text('{"format": 99, "tables": {}}')
    with pytest.raises(RunDirError, match="manifest format 99 not supported"):
        RunStore(str(tmp_path / "run"), create=False).tables()


def test_missing_table_files_are_reported(tmp_path):
    import shutil

    from curation.errors import RunDirError

    store = RunStore(str(tmp_path / "run"))
    v = store.write_table("questions", question_rows(2))
    store.commit([v])
    assert store.missing_tables() == {}
    shutil.rmtree(store.path(v.path))
    assert store.missing_tables() == {"questions": v.path}
    with pytest.raises(RunDirError, match="the files of table 'questions'"):
        RunStore(str(tmp_path / "run")).read_table("questions")


def test_store_hint_tells_a_dead_endpoint_from_refused_credentials() -> None:
    from curation.store.runstore import store_hint, store_unreachable

    # A real message from CI: the proxy's port 40369 holds "403", which once read as refused credentials.
    dead = OSError(
        "When getting information for key 'runs/x/scratch/ingest-staged-0aa6cfdf' in bucket 'm1-test': AWS Error "
        "NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect to server; Details: "
        "Failed to connect to 127.0.0.1:40369 after 0 ms: Could not connect to server"
    )
    assert "AWS_ENDPOINT_URL" in store_hint(dead) and "credentials" not in store_hint(dead)
    denied = OSError(
        "When reading information for key 'a' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject"
    )
    assert "AWS_ACCESS_KEY_ID" in store_hint(denied)
    assert "AWS_ACCESS_KEY_ID" in store_hint(OSError("HTTP response code: 403 on key 'runs/x'"))
    assert store_hint(OSError("key 'runs/a403b/x' is not a directory")) == ""
    assert "create the bucket" in store_hint(OSError("Bucket 'b' not found"))
    # Only a store that does not answer skips the clean-up after a failed stage (it would wait out the retries).
    assert store_unreachable(dead) and not store_unreachable(denied)
    assert not store_unreachable(ValueError("connect to the dots"))  # not an OSError: a bug, not the store

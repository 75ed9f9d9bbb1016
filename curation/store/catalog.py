"""DuckDB views over a run: one view per table, so every curated table answers SQL.

Views (names are table names with '/' -> '_'):
  questions, rejects_<stage>, ...   the current version of each committed table
  rejects                           all stages' rejects together
  ledger                            the pay-once LLM response ledger (all shards)
  stages                            the funnel: one row per stage record in the manifest
  lineage                           one row per pool question: dropped by which stage and why, kept, or pending

``RUN_DIR/catalog.duckdb`` holds the same views (absolute paths), rebuilt after every commit and every
``m1 sql``, so any DuckDB client can open it.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import duckdb
import pyarrow as pa

import schemas
from curation.errors import RunDirError
from curation.store.runstore import RunStore

CATALOG_FILE = "catalog.duckdb"


def view_name(table: str) -> str:
    return table.replace("/", "_").replace("-", "_")


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _empty_table(con: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema) -> None:
    """A real empty table with ``schema`` (a view over no files would have no columns)."""
    tmp = f"_empty_{uuid.uuid4().hex[:8]}"
    con.register(tmp, schema.empty_table())
    con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM "{tmp}"')
    con.unregister(tmp)


def _stages_table(store: RunStore) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for name, rec in store.manifest.get("stages", {}).items():
        rows.append(
            {
                "stage": name,
                "status": rec.get("status"),
                "rows_in": rec.get("rows_in"),
                "rows_out": rec.get("rows_out"),
                "rows_rejected": rec.get("rows_rejected"),
                "wall_s": rec.get("wall_s"),
                "started_at": rec.get("started_at"),
                "finished_at": rec.get("finished_at"),
                "input_hash": rec.get("input_hash"),
            }
        )
    schema = pa.schema(
        [
            ("stage", pa.string()),
            ("status", pa.string()),
            ("rows_in", pa.int64()),
            ("rows_out", pa.int64()),
            ("rows_rejected", pa.int64()),
            ("wall_s", pa.float64()),
            ("started_at", pa.string()),
            ("finished_at", pa.string()),
            ("input_hash", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def create_views(
    con: duckdb.DuckDBPyConnection, store: RunStore, skip: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """Create (or replace) every catalog view of ``store`` on ``con``; returns the view names.

    Tables in ``skip`` (committed, but their files are gone) get no view, so the rest stay queryable.
    """
    names = []
    rejects = []
    tables = {t: e for t, e in store.tables().items() if t not in skip}
    for table, entry in sorted(tables.items()):
        glob = store.location(entry["path"]) + "/*.parquet"
        view = view_name(table)
        try:
            con.execute(f'CREATE OR REPLACE VIEW "{view}" AS SELECT * FROM read_parquet({_quote(glob)})')
        except duckdb.Error as exc:
            raise RunDirError(
                f"run {store.uri!r}: table {table!r} ({entry['path']}) cannot be read ({exc}); its files were "
                "damaged or removed by hand: rerun the stage that writes it with m1 curate --force"
            ) from None
        names.append(view)
        if table.startswith("rejects/"):
            rejects.append(view)
    if rejects:
        union = " UNION ALL BY NAME ".join(f'SELECT * FROM "{v}"' for v in rejects)
        con.execute(f"CREATE OR REPLACE VIEW rejects AS {union}")
    else:
        _empty_table(con, "rejects", schemas.get("rejects").schema)
    names.append("rejects")

    from curation.engines.ledger import Ledger

    ledger = Ledger(store.ledger_uri)
    if ledger.dataset() is not None:
        glob = store.location("ledger") + "/*.parquet"
        con.execute(f"CREATE OR REPLACE VIEW ledger AS SELECT * FROM read_parquet({_quote(glob)})")
    else:
        _empty_table(con, "ledger", schemas.get("responses").schema)
    names.append("ledger")

    if "questions" in tables and store.has_table("questions"):
        con.execute(lineage_sql(set(tables)))
        names.append("lineage")

    tmp = f"_stages_{uuid.uuid4().hex[:8]}"
    con.register(tmp, _stages_table(store))
    con.execute(f'CREATE OR REPLACE TABLE stages AS SELECT * FROM "{tmp}"')
    con.unregister(tmp)
    names.append("stages")
    return names


def lineage_sql(tables: set[str]) -> str:
    """The `lineage` view: one row per pool question, with the stage that dropped it and why, or how far it got.

    Stages after ingest reject a question with ``source_ref`` = its qid, so the rejects of every stage join back
    to the pool; a question that reached the last table of the run (m23k, else curated) is ``kept``; one that no
    stage has decided about yet (a later stage not run) is ``pending``. The counts add up to the pool.
    """
    final = next((t for t in ("m23k", "curated") if t in tables), None)
    dropped = [view_name(t) for t in sorted(tables) if t.startswith("rejects/") and t != "rejects/ingest"]
    drops = (
        " UNION ALL BY NAME ".join(
            f'SELECT stage, source, source_ref, reason, detail FROM "{v}"' for v in dropped
        )
        if dropped
        else "SELECT NULL::VARCHAR AS stage, NULL::VARCHAR AS source, NULL::VARCHAR AS source_ref, "
        "NULL::VARCHAR AS reason, NULL::VARCHAR AS detail WHERE false"
    )
    kept = f'LEFT JOIN (SELECT DISTINCT source, qid FROM "{final}") k USING (source, qid)' if final else ""
    kept_test = "k.qid IS NOT NULL" if final else "false"
    return f"""
CREATE OR REPLACE VIEW lineage AS
SELECT q.source, q.qid,
       CASE WHEN d.stage IS NOT NULL THEN 'dropped' WHEN {kept_test} THEN 'kept' ELSE 'pending' END AS status,
       coalesce(d.stage, {_quote(final or "")}) AS stage,
       d.reason, d.detail
FROM questions q
LEFT JOIN (
    SELECT stage, source, source_ref AS qid, reason, detail FROM ({drops})
    QUALIFY row_number() OVER (PARTITION BY source, source_ref ORDER BY stage) = 1
) d USING (source, qid)
{kept}
"""


def connect(store: RunStore, skip: set[str] | frozenset[str] = frozenset()) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with every view of the run (but those in ``skip``)."""
    con = duckdb.connect()
    create_views(con, store, skip)
    return con


def write_catalog(store: RunStore, skip: set[str] | frozenset[str] = frozenset()) -> str | None:
    """(Re)build RUN_DIR/catalog.duckdb atomically; returns its path (None for non-local runs)."""
    if not store.is_local:
        return None
    final = store.path(CATALOG_FILE)
    tmp = store.path(f".{CATALOG_FILE}.{uuid.uuid4().hex[:8]}.tmp")
    con = duckdb.connect(tmp)
    try:
        create_views(con, store, skip)
    except BaseException:
        con.close()
        for leftover in (tmp, tmp + ".wal"):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise
    con.close()
    os.replace(tmp, final)
    return final

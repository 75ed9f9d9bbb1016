"""DuckDB views over a run: one view per table, so every curated table answers SQL.

Views (names are table names with '/' -> '_'):
  questions, rejects_<stage>, ...   the current version of each committed table
  rejects                           all stages' rejects together
  ledger                            the pay-once LLM response ledger (all shards)
  stages                            the funnel: one row per stage record in the manifest
  lineage                           one row per pool question: dropped by which stage and why, kept, or pending

Two ways in:
- :func:`connect` (``m1 sql``, ``m1 report``): an in-memory DuckDB whose views scan Arrow datasets opened through
  the run store's own filesystem, so any run directory pyarrow reaches (local, ``s3://`` with the pipeline's
  endpoint and credentials, ...) answers SQL with no DuckDB extension download. DuckDB's external access is then
  switched off and the configuration locked: a query cannot write, copy, export, attach, install or read any file.
- ``RUN_DIR/catalog.duckdb`` (:func:`write_catalog`, local runs): the same views for any DuckDB client, written in
  storage version v1.0.0 so DuckDB 1.x clients open it, with paths relative to the run directory so a copied or
  moved run keeps working: ``cd RUN && duckdb -readonly catalog.duckdb``, or from elsewhere
  ``SET file_search_path = 'RUN'`` first. ``m1 catalog RUN --absolute`` rewrites it for clients that can do neither.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Literal

import duckdb
import pyarrow as pa

import schemas
from curation.engines.ledger import Ledger
from curation.errors import RunDirError
from curation.store.runstore import RunStore

CATALOG_FILE = "catalog.duckdb"
# The oldest storage format whose readers understand every view here (DuckDB >= 1.0 opens it).
CATALOG_STORAGE_VERSION = "v1.0.0"
HELP_TABLE = "m1_catalog"
Source = Literal["arrow", "relative", "absolute"]


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
                "position": rec.get("position"),
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
            ("position", pa.int64()),  # the stage's place in the pipeline's order
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
    con: duckdb.DuckDBPyConnection,
    store: RunStore,
    skip: set[str] | frozenset[str] = frozenset(),
    *,
    source: Source = "arrow",
) -> list[str]:
    """Create (or replace) every catalog view of ``store`` on ``con``; returns the view names.

    ``source``: ``arrow`` registers Arrow datasets read through the store's filesystem (in-memory connections);
    ``relative`` / ``absolute`` write ``read_parquet`` views with paths relative to the run directory or absolute
    (catalog files). Tables in ``skip`` (files gone, or corrupt) get no view, so the rest stay queryable.
    """
    names = []
    rejects = []
    tables = {t: e for t, e in store.tables().items() if t not in skip}

    def scan(view: str, rel: str, dataset: Any) -> None:
        if source == "arrow":
            con.register(view, dataset())
            return
        where = store.location(rel) if source == "absolute" else rel
        con.execute(
            f'CREATE OR REPLACE VIEW "{view}" AS SELECT * FROM read_parquet({_quote(where + "/*.parquet")})'
        )

    for table, entry in sorted(tables.items()):
        view = view_name(table)
        try:
            scan(view, entry["path"], lambda path=entry["path"]: store.dataset_at(path))
        except (duckdb.Error, OSError, pa.ArrowInvalid) as exc:
            raise RunDirError(
                f"run {store.uri!r}: table {table!r} ({entry['path']}) cannot be read: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
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

    ledger = Ledger(store.ledger_uri)
    ledger_data = ledger.dataset()
    if ledger_data is not None:
        scan("ledger", "ledger", lambda: ledger_data)
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
    """A read-only, in-memory DuckDB connection with every view of the run (but those in ``skip``).

    The views scan Arrow datasets through the run store's filesystem; then DuckDB's external access is switched
    off and its configuration locked, so no statement on this connection can touch a file (COPY ... TO, EXPORT
    DATABASE, ATTACH, INSTALL/LOAD, read_text and friends all fail with DuckDB's permission error)."""
    con = duckdb.connect()
    create_views(con, store, skip, source="arrow")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def open_catalog(run_dir: str) -> duckdb.DuckDBPyConnection:
    """RUN_DIR/catalog.duckdb opened read-only from Python, wherever the caller's working directory is (its views
    read paths relative to the run directory: DuckDB is told where that is)."""
    root = os.path.abspath(run_dir)
    con = duckdb.connect(os.path.join(root, CATALOG_FILE), read_only=True)
    con.execute("SET file_search_path = ?", [root])
    return con


def _help_rows(store: RunStore, source: Source) -> pa.Table:
    run = store.location("")
    if source == "relative":
        how = (
            "views read paths relative to the run directory: open this file from there "
            f"(cd RUN && duckdb -readonly {CATALOG_FILE}) or SET file_search_path = 'RUN' first; "
            "if files are reported missing, the run moved or changed: rebuild with m1 catalog RUN"
        )
    else:
        how = (
            f"views read absolute paths under {run}: if the run moved, rebuild with m1 catalog RUN "
            "(relative paths) or m1 catalog RUN --absolute"
        )
    return pa.table({"written_for": [run], "paths": [source], "how_to_open": [how]})


def write_catalog(
    store: RunStore, skip: set[str] | frozenset[str] = frozenset(), *, absolute: bool = False
) -> str | None:
    """(Re)build RUN_DIR/catalog.duckdb atomically; returns its path (None for non-local runs).

    Written in storage version :data:`CATALOG_STORAGE_VERSION` (DuckDB 1.x clients read it) with views whose
    paths are relative to the run directory (``absolute=True``: absolute paths)."""
    if not store.is_local:
        return None
    source: Source = "absolute" if absolute else "relative"
    final = store.path(CATALOG_FILE)
    tmp = store.path(f".{CATALOG_FILE}.{uuid.uuid4().hex[:8]}.tmp")
    con = duckdb.connect()
    try:
        # Relative view paths are bound while the views are created: resolve them against the run directory.
        con.execute("SET file_search_path = ?", [store.root])
        con.execute(f"ATTACH {_quote(tmp)} AS m1cat (STORAGE_VERSION {_quote(CATALOG_STORAGE_VERSION)})")
        con.execute("USE m1cat")
        create_views(con, store, skip, source=source)
        help_tmp = f"_help_{uuid.uuid4().hex[:8]}"
        con.register(help_tmp, _help_rows(store, source))
        con.execute(f'CREATE OR REPLACE TABLE {HELP_TABLE} AS SELECT * FROM "{help_tmp}"')
        con.unregister(help_tmp)
        con.execute("USE memory")
        con.execute("DETACH m1cat")
    except BaseException:
        con.close()
        for leftover in (tmp, tmp + ".wal"):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise
    con.close()
    os.replace(tmp, final)
    return final

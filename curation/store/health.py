"""Is every committed table of a run readable, and does it hold what its schema says?

`m1 runs` and `m1 sql` ask this before they open a run: for each table the manifest points at, every Parquet
footer is read (no data pages) and its schema compared with the table's schema in ``schemas/``; the row count is
compared with the manifest's. A problem is reported as the table, the file and the mismatch, with the real cause
when a file cannot be read (permission, network, credentials), never a guess that it was "damaged".
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from curation.store.runstore import RunStore


@dataclass(frozen=True)
class TableProblem:
    table: str
    path: str  # the version folder (or the file) the problem is in, relative to the run
    kind: str  # "missing" | "unreadable" | "corrupt"
    detail: str

    def message(self, run: str) -> str:
        fix = {
            "missing": "its files are gone (deleted by hand?): rerun the stage that writes it with m1 curate --force",
            "unreadable": "check access to the run directory (permissions, network, credentials) and retry",
            "corrupt": "its files were changed after the run wrote them: rerun the stage that writes it with "
            "m1 curate --force (LLM stages answer from the pay-once ledger)",
        }[self.kind]
        return f"run {run!r}: table {self.table!r} ({self.path}) is {self.kind.upper()}: {self.detail}; {fix}"


def schema_mismatch(found: pa.Schema, expected: pa.Schema) -> str | None:
    """What differs between a file's schema and the declared one (None when they agree), in a user's words."""
    if found.equals(expected, check_metadata=False):
        return None
    missing = [f.name for f in expected if found.get_field_index(f.name) < 0]
    extra = [f.name for f in found if expected.get_field_index(f.name) < 0]
    parts = []
    if missing:
        parts.append(f"missing columns {missing}")
    if extra:
        parts.append(f"unexpected columns {extra}")
    for field in expected:
        idx = found.get_field_index(field.name)
        if idx >= 0 and not found.field(idx).type.equals(field.type):
            parts.append(f"column {field.name!r} is {found.field(idx).type}, not {field.type}")
    if not parts:
        order = [f.name for f in found]
        parts.append(f"columns in another order ({', '.join(order[:8])}{', ...' if len(order) > 8 else ''})")
    return "; ".join(parts)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return f"permission denied ({exc.strerror or exc})"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def check_table(store: RunStore, name: str, entry: dict) -> TableProblem | None:
    """The first problem of one committed table, or None when every file's footer and schema are as declared."""
    rel = entry["path"]
    try:
        expected = schemas.get(name).schema
    except KeyError:
        return TableProblem(name, rel, "corrupt", "the manifest names a table that has no schema in schemas/")
    try:
        infos = store.fs.get_file_info(pafs.FileSelector(store.path(rel), allow_not_found=True))
    except OSError as exc:
        return TableProblem(name, rel, "unreadable", f"cannot list its folder: {_cause(exc)}")
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        return TableProblem(name, rel, "missing", "no Parquet file in its folder")
    rows = 0
    for path in files:
        where = path[len(store.root) :].lstrip("/")
        try:
            with store.fs.open_input_file(path) as handle:
                meta = pq.ParquetFile(handle).metadata
                schema = meta.schema.to_arrow_schema()
        except (PermissionError, FileNotFoundError) as exc:
            return TableProblem(name, where, "unreadable", _cause(exc))
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            text = str(exc)
            if isinstance(exc, pa.ArrowInvalid) or "Parquet" in text or "footer" in text or "magic" in text:
                return TableProblem(name, where, "corrupt", f"not a readable Parquet file: {_cause(exc)}")
            return TableProblem(name, where, "unreadable", _cause(exc))
        mismatch = schema_mismatch(schema, expected)
        if mismatch:
            return TableProblem(
                name, where, "corrupt", f"schema differs from {schemas.get(name).tag}: {mismatch}"
            )
        rows += meta.num_rows
    if "rows" in entry and entry["rows"] != rows:
        return TableProblem(
            name, rel, "corrupt", f"{rows:,} rows in its files, {entry['rows']:,} in the manifest"
        )
    return None


def check_run(store: RunStore) -> dict[str, TableProblem]:
    """Every committed table's problem, by table name (empty: the run is healthy)."""
    problems = {}
    for name, entry in sorted(store.tables().items()):
        problem = check_table(store, name, entry)
        if problem is not None:
            problems[name] = problem
    return problems

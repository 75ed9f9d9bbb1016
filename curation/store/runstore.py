"""The run store: the one place that knows where a run's tables live.

A run is a directory (a local path or any pyarrow filesystem URI such as s3://bucket/run) holding

    manifest.json                      what the run is: config, hashes, tables, stage records
    tables/<name>/<version>/*.parquet  one Parquet dataset per table version
    ledger/shard-*.parquet             the pay-once LLM response ledger (append-only)
    catalog.duckdb                     DuckDB views over the current tables (local runs)

Writes are atomic: a stage writes its outputs into fresh version directories that nothing points to yet,
then one write of manifest.json (temporary name, then rename) switches every output at once. A crash
before that rename leaves the old state; after it, the new one. Unreferenced versions are garbage.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from curation.errors import RunDirError
from curation.jobenv import provenance

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class RunDirNotFoundError(RunDirError, FileNotFoundError):
    """The run directory does not exist."""


class RunDirNotADirectoryError(RunDirError, NotADirectoryError):
    """The run directory is a file."""


class MissingTableError(RunDirError, KeyError):
    """The run has no committed table of that name (an earlier stage has not run)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and root path for a local path or a filesystem URI.

    An unknown scheme or an unreachable store is a :class:`RunDirError` that says what to check.
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme = uri.split("://", 1)[0]
    try:
        return pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid as exc:
        raise RunDirError(
            f"{uri!r}: unknown filesystem scheme {scheme + '://'!r} ({exc}); use a local path or a pyarrow "
            "filesystem URI such as s3://bucket/run, gs://bucket/run or hdfs://host/run"
        ) from None
    except OSError as exc:
        raise RunDirError(
            f"{uri!r}: cannot reach the {scheme} store ({exc}); check the network, the bucket name and the "
            "credentials in the environment"
        ) from None


NETWORK_ERRORS = ("NETWORK_CONNECTION", "curlCode", "Couldn't connect", "connect to", "timed out")


def store_unreachable(exc: BaseException) -> bool:
    """Whether an error is an object store that does not answer (pyarrow's message names the network failure).

    Cleaning up after such a failure would only wait out the store's own retries (~6 s per file operation)
    before failing the same way; the next run's :meth:`RunStore.gc` removes what was left."""
    return isinstance(exc, OSError) and any(code in str(exc) for code in NETWORK_ERRORS)


def store_hint(exc: BaseException) -> str:
    """What to check for an object-store error, from pyarrow's message ('' when nothing specific applies)."""
    text = str(exc)
    if "not found" in text and "Bucket" in text:
        return "; create the bucket first (m1 never creates buckets), or fix its name"
    # Network first: a failed connection's message names host:port, and a port such as 40369 holds "403".
    if any(code in text for code in NETWORK_ERRORS):
        return (
            "; the object store does not answer: check AWS_ENDPOINT_URL (or the default endpoint), the network, "
            "and retry (committed stages are kept; a rerun resumes after them)"
        )
    if any(
        code in text
        for code in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
    ) or re.search(r"\b403\b", text):
        return (
            "; the store refused these credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE) and that they may read and write this bucket"
        )
    return ""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TableVersion:
    """A written (possibly not yet committed) version of a table."""

    name: str
    path: str  # relative to the run root
    rows: int
    schema_tag: str


# A reader holds a whole row group of the columns it reads: groups of at most this many bytes keep every scan of
# a run's tables (DuckDB, pyarrow datasets, Ray Data) at a memory that does not grow with the table.
ROW_GROUP_BYTES = 32 * 2**20
ROW_GROUP_MAX_ROWS = 128 * 1024


def row_group_rows(table: pa.Table) -> int:
    """Rows per Parquet row group for rows like ``table``'s: ~ROW_GROUP_BYTES of them, 1,024 to 131,072."""
    if table.num_rows == 0:
        return ROW_GROUP_MAX_ROWS
    per_row = max(1, table.nbytes // table.num_rows)
    return max(1024, min(ROW_GROUP_MAX_ROWS, ROW_GROUP_BYTES // per_row))


class RunStore:
    """Tables, manifest and ledger of one run."""

    def __init__(self, uri: str, *, create: bool = True) -> None:
        self.uri = uri
        self.fs, self.root = resolve(uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        try:
            info = self.fs.get_file_info(self.root)
            if info.type == pafs.FileType.NotFound:
                if not create:
                    raise RunDirNotFoundError(f"run directory {uri!r} does not exist")
                self.fs.create_dir(self.root, recursive=True)
            elif info.type != pafs.FileType.Directory:
                raise RunDirNotADirectoryError(f"run directory {uri!r} is a file, not a directory")
        except (OSError, pa.ArrowException) as exc:
            if isinstance(exc, RunDirError):
                raise
            raise RunDirError(
                f"run directory {uri!r}: cannot open or create it ({exc}){store_hint(exc)}"
            ) from None
        self._manifest: dict[str, Any] | None = None

    # ---- paths -------------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` inside the run."""
        return f"{self.root}/{rel}"

    def location(self, rel: str) -> str:
        """A location other tools can open (absolute local path, or a URI on remote filesystems)."""
        if self.is_local:
            return self.path(rel)
        return f"{self.fs.type_name}://{self.path(rel)}"

    @property
    def ledger_uri(self) -> str:
        return self.location("ledger")

    # ---- manifest ----------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path(MANIFEST)).type == pafs.FileType.File

    def _read_manifest(self) -> dict[str, Any]:
        if not self.exists():
            return {
                "format": MANIFEST_FORMAT,
                "run_id": uuid.uuid4().hex[:12],
                "created_at": utc_now(),
                "tables": {},
                "stages": {},
            }
        where = self.location(MANIFEST)
        try:
            with self.fs.open_input_stream(self.path(MANIFEST)) as f:
                data = json.loads(f.read().decode("utf-8"))
        except (OSError, pa.ArrowException) as exc:
            raise RunDirError(f"{where}: cannot read the manifest ({exc})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            line = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise RunDirError(
                f"{where}{line}: the manifest is not valid JSON ({exc}); it was truncated or edited by hand. "
                "The run cannot be trusted: start a new --run-dir (its tables are under tables/)"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("tables", {}), dict):
            raise RunDirError(f"{where}: not an m1 run manifest (no 'tables' mapping)")
        if data.get("format") != MANIFEST_FORMAT:
            raise RunDirError(f"{where}: manifest format {data.get('format')!r} not supported")
        return data

    def save_manifest(self) -> None:
        """Write manifest.json atomically (temporary name, then rename)."""
        manifest = self.manifest
        manifest["updated_at"] = utc_now()
        tmp = self.path(f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode("utf-8"))
        self.fs.move(tmp, self.path(MANIFEST))

    # ---- tables ------------------------------------------------------------------------------------
    def tables(self) -> dict[str, dict[str, Any]]:
        """Committed tables: name -> {path, rows, schema, written_at}."""
        return dict(self.manifest.get("tables", {}))

    def has_table(self, name: str) -> bool:
        """Whether ``name`` is committed and its files are there (an empty table still has one file)."""
        entry = self.manifest.get("tables", {}).get(name)
        return entry is not None and self._has_parquet(entry["path"])

    def _has_parquet(self, rel: str) -> bool:
        selector = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return any(i.path.endswith(".parquet") for i in self.fs.get_file_info(selector))

    def missing_tables(self) -> dict[str, str]:
        """Committed tables whose Parquet files are gone (deleted by hand): name -> version path."""
        return {name: e["path"] for name, e in self.tables().items() if not self._has_parquet(e["path"])}

    def new_table_dir(self, name: str) -> str:
        """A fresh, empty version directory for ``name`` (relative path); writers fill it, commit switches to it."""
        version = f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        rel = f"tables/{name}/{version}"
        self.fs.create_dir(self.path(rel), recursive=True)
        return rel

    def scratch_dir(self, purpose: str) -> str:
        """A fresh scratch directory (relative path) for intermediate files; removed by :meth:`gc`."""
        rel = f"scratch/{purpose}-{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(self.path(rel), recursive=True)
        return rel

    def write_table(
        self,
        name: str,
        data: pa.Table | Iterable[pa.Table | pa.RecordBatch],
        *,
        rows_per_file: int = 1_000_000,
    ) -> TableVersion:
        """Write ``data`` (conformed to the schema of ``name``) into a new, uncommitted version."""
        ts = schemas.get(name)
        rel = self.new_table_dir(name)
        chunks: Iterable[pa.Table | pa.RecordBatch] = [data] if isinstance(data, pa.Table) else data
        rows = 0
        part = 0
        writer: pq.ParquetWriter | None = None
        sink: Any = None
        rows_in_file = 0

        def close_file() -> None:
            # The writer does not own the stream: close it ourselves, so a failed upload (an object store
            # refusing the last part) raises here instead of being ignored when the stream is collected.
            nonlocal writer, sink
            if writer is not None:
                writer.close()
                writer = None
            if sink is not None:
                stream, sink = sink, None
                stream.close()

        try:
            for chunk in chunks:
                table = chunk if isinstance(chunk, pa.Table) else pa.Table.from_batches([chunk])
                table = schemas.conform(table, name)
                offset = 0
                while offset < table.num_rows:
                    if writer is None or rows_in_file >= rows_per_file:
                        close_file()
                        sink = self.fs.open_output_stream(self.path(f"{rel}/part-{part:05d}.parquet"))
                        writer = pq.ParquetWriter(sink, ts.schema, compression="zstd")
                        part += 1
                        rows_in_file = 0
                    piece = table.slice(offset, rows_per_file - rows_in_file)
                    writer.write_table(piece, row_group_size=row_group_rows(table))
                    offset += piece.num_rows
                    rows += piece.num_rows
                    rows_in_file += piece.num_rows
            close_file()
        except BaseException:
            with contextlib.suppress(Exception):
                close_file()
            raise
        if rows == 0:
            # An empty table is still a table: one file with the schema, so readers see the columns.
            with self.fs.open_output_stream(self.path(f"{rel}/part-00000.parquet")) as sink:
                pq.write_table(ts.schema.empty_table(), sink)
        return TableVersion(name=name, path=rel, rows=rows, schema_tag=ts.tag)

    def adopt_table_dir(self, name: str, rel: str) -> TableVersion:
        """Check a version directory filled by another writer (e.g. Ray's write_parquet) and describe it."""
        ts = schemas.get(name)
        ds = self.dataset_at(rel)
        if not ds.schema.equals(ts.schema, check_metadata=False):
            raise schemas.SchemaError(f"table {name!r} at {rel}: schema {ds.schema} is not {ts.tag}")
        return TableVersion(name=name, path=rel, rows=ds.count_rows(), schema_tag=ts.tag)

    def commit(self, versions: Iterable[TableVersion], *, stage: dict[str, Any] | None = None) -> None:
        """Point the manifest at ``versions`` (and record ``stage``) in one atomic manifest write."""

        tables = self.manifest.setdefault("tables", {})
        written_by = provenance()  # `m1 sft` and `m1 eval` commit tables too: each says which code wrote it
        for v in versions:
            tables[v.name] = {
                "path": v.path,
                "rows": v.rows,
                "schema": v.schema_tag,
                "written_at": utc_now(),
                "written_by": written_by,
            }
        if stage is not None:
            self.manifest.setdefault("stages", {})[stage["name"]] = stage
        self.save_manifest()

    def dataset_at(self, rel: str) -> pads.Dataset:
        return pads.dataset(self.path(rel), filesystem=self.fs, format="parquet")

    def dataset(self, name: str) -> pads.Dataset:
        entry = self._entry(name)
        try:
            return self.dataset_at(entry["path"])
        except FileNotFoundError:
            raise RunDirError(
                f"run {self.uri!r}: the files of table {name!r} ({entry['path']}) are gone; the run directory "
                "was modified by hand: rerun the stage that writes it with m1 curate --force"
            ) from None

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return self.dataset(name).to_table(columns=columns)

    def iter_batches(self, name: str, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        yield from self.dataset(name).to_batches(batch_size=batch_size)

    def table_location(self, name: str) -> str:
        """Where table ``name``'s current Parquet files are (for DuckDB or Ray)."""
        return self.location(self._entry(name)["path"])

    def _entry(self, name: str) -> dict[str, Any]:
        entry = self.manifest.get("tables", {}).get(name)
        if entry is None:
            raise MissingTableError(
                f"run {self.uri!r} has no table {name!r} (it has {', '.join(sorted(self.tables())) or 'none'}); "
                "run the stage that writes it first (m1 curate CONFIG --run-dir ...)"
            )
        return entry

    def gc(self) -> list[str]:
        """Delete table versions the manifest does not point to, and scratch space; returns what was removed."""
        live = {e["path"] for e in self.manifest.get("tables", {}).values()}
        removed: list[str] = []
        selector = pafs.FileSelector(self.path("tables"), recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.Directory:
                continue
            rel = info.path[len(self.root) + 1 :]
            if os.path.basename(rel).startswith("v-") and rel not in live:
                self.fs.delete_dir(info.path)
                removed.append(rel)
        if self.fs.get_file_info(self.path("scratch")).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path("scratch"))
            removed.append("scratch")
        return removed

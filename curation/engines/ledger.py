"""The pay-once ledger: successful responses as append-only Parquet shards, keyed by request_id.

Each append writes one shard under a temporary name and renames it into place, so a crash (even kill -9)
leaves whole shards only. A rerun reads the request ids already answered and never sends them again.
Works on any pyarrow filesystem (local path, s3://, gs://, ...).

On a local filesystem, engine workers also keep write-ahead segments under ``wal/`` (see
`curation.engines.wal`): every answer is on disk within milliseconds of arriving, long before it is folded
into a Parquet shard. Readers here count those segments as part of the ledger, and `compact` folds the
segments of dead writers into Parquet.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from curation.engines import wal
from curation.store.runstore import resolve

SHARD_GLOB_SUFFIX = ".parquet"
WAL_DIR = "wal"
# Row groups small enough that a lookup of a few ids reads a few MB, not a whole shard.
ROW_GROUP_ROWS = 2048


class Ledger:
    """Append-only store of successful responses under one directory."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = resolve(uri)
        self.fs.create_dir(self.root, recursive=True)
        # Appending needs a POSIX file; object stores get Parquet shards only.
        local = isinstance(self.fs, pafs.LocalFileSystem)
        self.wal_dir: str | None = os.path.join(self.root, WAL_DIR) if local else None

    def _shards(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False, allow_not_found=True))
        return sorted(
            i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(SHARD_GLOB_SUFFIX)
        )

    def append(self, responses: pa.Table) -> int:
        """Write the successful rows of ``responses`` as one new shard; returns how many were written."""
        ok = responses.filter(pc.is_null(responses.column("error")))
        if ok.num_rows == 0:
            return 0
        self._write_shard(schemas.conform(ok, "responses"))
        return ok.num_rows

    def _write_shard(self, table: pa.Table) -> None:
        """One new shard, written under a temporary name and renamed into place (whole or absent)."""
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = f"{self.root}/.{name}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            pq.write_table(table, out, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        if self.wal_dir is not None:  # the shard may replace a write-ahead segment: it must be on disk first
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.fs.move(tmp, f"{self.root}/{name}{SHARD_GLOB_SUFFIX}")

    # ---- write-ahead segments ------------------------------------------------------------------------------
    def open_segment(self, *, fsync: bool = True) -> wal.SegmentWriter | None:
        """A new write-ahead segment for one writer, or None where the filesystem cannot append."""
        if self.wal_dir is None:
            return None
        return wal.SegmentWriter(self.wal_dir, f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}", fsync=fsync)

    def _segment_table(self, columns: list[str] | None = None) -> pa.Table | None:
        """Rows of every write-ahead segment (live or orphaned), in segment order; None when there are none."""
        if self.wal_dir is None:
            return None
        tables = [t for path in wal.segments(self.wal_dir) for t in wal.read_segment(path)[0]]
        if not tables:
            return None
        table = pa.concat_tables(tables)
        return table.select(columns) if columns else table

    def absorb_segments(self) -> int:
        """Fold the segments of dead writers into one Parquet shard and delete them; returns the rows folded.

        Segments still locked by a live writer are left alone (their writer folds them itself).
        """
        if self.wal_dir is None:
            return 0
        paths = wal.segments(self.wal_dir)
        if not paths:
            return 0
        rows = 0
        with contextlib.ExitStack() as held:
            owned = [p for p in paths if held.enter_context(wal.orphaned(p))]
            tables = [t for p in owned for t in wal.read_segment(p)[0]]
            table = pa.concat_tables(tables) if tables else None
            if table is not None and table.num_rows:
                self._write_shard(schemas.conform(self._first_per_request(table), "responses"))
                rows = table.num_rows
            for path in owned:  # still locked by us: no writer can be appending
                os.unlink(path)
        return rows

    def _dataset_of(self, shards: list[str]) -> pads.Dataset:
        return pads.dataset(
            shards, filesystem=self.fs, format="parquet", schema=schemas.get("responses").schema
        )

    @staticmethod
    def _first_per_request(table: pa.Table) -> pa.Table:
        """One row per request id: the first in table order (shards sort by time, so the earliest wins)."""
        first = pc.unique(table.column("request_id"))
        return table.take(pc.index_in(first, table.column("request_id")))

    def dataset(self) -> pads.Dataset | None:
        shards = self._shards()
        return self._dataset_of(shards) if shards else None

    def answered_ids(self) -> pa.Array:
        """Distinct request ids that already have a successful response (Parquet shards and segments)."""
        ds = self.dataset()
        parts = [] if ds is None else [ds.to_table(columns=["request_id"]).column("request_id")]
        pending = self._segment_table(["request_id"])
        if pending is not None:
            parts.append(pending.column("request_id"))
        if not parts:
            return pa.array([], pa.string())
        return pc.unique(pa.chunked_array([c for p in parts for c in p.chunks], pa.string()).combine_chunks())

    def lookup(self, ids: pa.Array) -> pa.Table:
        """Ledger rows for ``ids`` (the first recorded response per id), marked ``cached``."""
        empty = schemas.get("responses").schema.empty_table()
        if len(ids) == 0:
            return empty
        ds = self.dataset()
        parts = [] if ds is None else [ds.to_table(filter=pc.field("request_id").isin(ids))]
        pending = self._segment_table()
        if pending is not None:
            parts.append(
                schemas.conform(pending.filter(pc.is_in(pending.column("request_id"), ids)), "responses")
            )
        table = pa.concat_tables(parts) if parts else empty
        if table.num_rows == 0:
            return empty
        table = self._first_per_request(table)
        return table.set_column(
            table.schema.get_field_index("cached"), "cached", pa.array([True] * table.num_rows, pa.bool_())
        )

    def read(self) -> pa.Table:
        """The whole ledger (Parquet shards, then write-ahead segments not yet folded)."""
        ds = self.dataset()
        parts = [ds.to_table()] if ds is not None else []
        pending = self._segment_table()
        if pending is not None:
            parts.append(schemas.conform(pending, "responses"))
        return pa.concat_tables(parts) if parts else schemas.get("responses").schema.empty_table()

    def shard_count(self) -> int:
        return len(self._shards())

    def compact(self, *, min_shards: int = 64) -> int:
        """Merge all shards into one (first response per request id wins); returns the shards removed.

        Safe against crashes and concurrent appends: the merged shard is written (atomically) before any old
        shard is deleted, only the shards read are deleted, and readers already keep the first row per id.
        """
        self.absorb_segments()
        shards = self._shards()
        if len(shards) < min_shards:
            return 0
        self._write_shard(self._first_per_request(self._dataset_of(shards).to_table()))
        for path in shards:
            self.fs.delete_file(path)
        return len(shards)

"""The pay-once ledger: successful responses as append-only Parquet shards, keyed by request_id.

Each append writes one shard under a temporary name and renames it into place, so a crash (even kill -9)
leaves whole shards only. A rerun reads the request ids already answered and never sends them again.
Works on any pyarrow filesystem (local path, s3://, gs://, ...).
"""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from curation.store.runstore import resolve

SHARD_GLOB_SUFFIX = ".parquet"


class Ledger:
    """Append-only store of successful responses under one directory."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = resolve(uri)
        self.fs.create_dir(self.root, recursive=True)

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
            pq.write_table(table, out, compression="zstd")
        self.fs.move(tmp, f"{self.root}/{name}{SHARD_GLOB_SUFFIX}")

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
        """Distinct request ids that already have a successful response."""
        ds = self.dataset()
        if ds is None:
            return pa.array([], pa.string())
        return pc.unique(ds.to_table(columns=["request_id"]).column("request_id").combine_chunks())

    def lookup(self, ids: pa.Array) -> pa.Table:
        """Ledger rows for ``ids`` (the first recorded response per id), marked ``cached``."""
        ds = self.dataset()
        empty = schemas.get("responses").schema.empty_table()
        if ds is None or len(ids) == 0:
            return empty
        table = ds.to_table(filter=pc.field("request_id").isin(ids))
        if table.num_rows == 0:
            return empty
        table = self._first_per_request(table)
        return table.set_column(
            table.schema.get_field_index("cached"), "cached", pa.array([True] * table.num_rows, pa.bool_())
        )

    def read(self) -> pa.Table:
        """The whole ledger."""
        ds = self.dataset()
        return ds.to_table() if ds is not None else schemas.get("responses").schema.empty_table()

    def shard_count(self) -> int:
        return len(self._shards())

    def compact(self, *, min_shards: int = 64) -> int:
        """Merge all shards into one (first response per request id wins); returns the shards removed.

        Safe against crashes and concurrent appends: the merged shard is written (atomically) before any old
        shard is deleted, only the shards read are deleted, and readers already keep the first row per id.
        """
        shards = self._shards()
        if len(shards) < min_shards:
            return 0
        self._write_shard(self._first_per_request(self._dataset_of(shards).to_table()))
        for path in shards:
            self.fs.delete_file(path)
        return len(shards)

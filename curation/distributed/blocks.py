"""The pool cut into blocks for Ray tasks: row ranges of a table's Parquet row groups, in pool order, found from
the files' footers alone (the driver never reads a row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Block:
    """Rows ``start .. start + rows`` of the pool: ``rows`` rows of row group ``group`` of ``file`` from
    ``offset`` on."""

    file: str
    group: int
    offset: int
    start: int
    rows: int


def pool_blocks(fs: Any, files: list[str], max_rows: int) -> list[Block]:
    """The pool's blocks in order, at most ``max_rows`` rows each (from Parquet footers only)."""
    blocks: list[Block] = []
    start = 0
    for file in files:
        with fs.open_input_file(file) as f:
            meta = pq.ParquetFile(f).metadata
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            for offset in range(0, rows, max_rows):
                take = min(max_rows, rows - offset)
                blocks.append(Block(file, group, offset, start, take))
                start += take
    return blocks


def read_block(fs: Any, block: Block, columns: list[str]) -> pa.Table:
    with fs.open_input_file(block.file) as f:
        table = pq.ParquetFile(f).read_row_group(block.group, columns=columns)
    return table.slice(block.offset, block.rows)

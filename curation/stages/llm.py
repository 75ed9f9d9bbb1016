"""What the LLM stages share: which engine a stage's setting names, and how a question becomes a chat request."""

from __future__ import annotations

import tempfile
from typing import Any

import pyarrow as pa

from curation.config import ConfigError, CurationConfig
from curation.engines import block_rows


def engine_for(cfg: CurationConfig, engine_name: str, model: str | None, *, where: str) -> tuple[Any, str]:
    """The validated engine named ``engine_name`` and the model name its requests carry."""
    if engine_name not in cfg.engines:
        raise ConfigError(
            f"{where}: no engine named {engine_name!r} in `engines`; defined: {sorted(cfg.engines)}"
        )
    engine = cfg.engine(engine_name)
    request_model = getattr(engine, "model", None) or model
    if not request_model:
        raise ConfigError(
            f"{where}: engine {engine_name!r} names no model; set `model:` on the engine or in {where}"
        )
    return engine, request_model


def chat_messages(prompt: str, *, prefix: str, suffix: str, system: str | None) -> list[dict[str, str]]:
    """m1's request shape: a user message with the instruction prefix and the rendered question."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{prefix}{prompt}{suffix}"})
    return messages


def options_of(options: list[dict[str, str]]) -> dict[str, str]:
    """The questions table's options list as a label -> text mapping (what curation.answers takes)."""
    return {o["label"]: o["text"] for o in options}


def question_source_table(store: Any) -> str:
    """The table a scoring or teacher stage reads: dedup's `candidates` when the run has it, else `questions`."""
    return "candidates" if store.has_table("candidates") else "questions"


def iter_question_batches(store: Any, columns: list[str], batch_size: int = 8192) -> Any:
    """Batches of the stage's question table with ``columns`` (streamed; never the whole table at once)."""
    dataset = store.dataset(question_source_table(store))
    for batch in dataset.to_batches(columns=columns, batch_size=batch_size):
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def question_dataset(
    store: Any, columns: list[str], *, engine: Any, requests_per_row: int, rel: str | None = None
) -> tuple[Any, int]:
    """A Ray dataset of the stage's question rows (or of the Parquet files at ``rel``) and its row count, in
    blocks sized so that the requests made from them feed every engine worker.

    The driver reads Parquet footers only. Ray tasks read the rows, one task per row group, each returning the
    group's blocks as separate objects: the rows go from disk to the object store without passing through the
    driver. (``ray.data.read_parquet`` followed by ``repartition`` costs ~1 s more before the first request
    can leave: its listing and read operators, then the repartition barrier; see BENCHMARKS.md.)"""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    import ray
    import ray.data

    path = (
        store.path(rel)
        if rel is not None
        else store.path(store.tables()[question_source_table(store)]["path"])
    )
    dataset = pads.dataset(path, filesystem=store.fs, format="parquet")
    groups: list[tuple[str, int, int]] = []  # (file, row group, rows)
    for file in dataset.files:
        with store.fs.open_input_file(file) as f:
            meta = pq.ParquetFile(f).metadata
        groups += [(file, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    n_rows = sum(rows for _, _, rows in groups)
    per_block = max(1, block_rows(engine, n_rows * requests_per_row) // max(1, requests_per_row))
    read = ray.remote(num_cpus=0.25, max_retries=3)(_read_row_group)
    refs: list[Any] = []
    for file, group, rows in groups:
        if not rows:
            continue
        blocks = -(-rows // per_block)
        out = read.options(num_returns=blocks).remote(store.fs, file, group, columns, per_block)
        refs += out if blocks > 1 else [out]
    if not refs:
        return ray.data.from_arrow(dataset.schema.empty_table().select(columns)), 0
    return ray.data.from_arrow_refs(refs), n_rows


def _read_row_group(fs: Any, file: str, group: int, columns: list[str], per_block: int) -> Any:
    """One row group of ``file`` as blocks of at most ``per_block`` rows (a tuple when there are several)."""
    import pyarrow.parquet as pq

    with fs.open_input_file(file) as f:
        table = pq.ParquetFile(f).read_row_group(group, columns=columns)
    blocks = [table.slice(i, per_block) for i in range(0, table.num_rows, per_block)]
    return tuple(blocks) if len(blocks) > 1 else blocks[0]


def write_rows(store: Any, rel: str, batches: Any) -> int:
    """Stream Arrow batches into one Parquet file at ``rel`` of the run (scratch inputs of a Ray dataset)."""
    import pyarrow.parquet as pq

    writer = None
    rows = 0
    store.fs.create_dir(store.path(rel), recursive=True)
    try:
        for batch in batches:
            if writer is None:
                writer = pq.ParquetWriter(
                    store.fs.open_output_stream(store.path(f"{rel}/part-0.parquet")), batch.schema
                )
            writer.write_table(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]))
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


# What a stage's own DuckDB joins may hold in memory before they spill to disk: the joins of the LLM stages sort
# every response of the pool, and DuckDB's default is 80% of RAM. (Measured: this cap did not change the teacher
# stage's driver peak, see BENCHMARKS.md; it bounds DuckDB's share, not the rest of the driver.)
STAGE_DUCKDB_MEMORY = "256MB"


def bounded_duckdb(store: Any, purpose: str) -> Any:
    """A DuckDB connection whose memory is capped, spilling to the run's scratch space (removed with it; a
    local temporary folder for remote runs)."""
    import duckdb

    spill = store.path(store.scratch_dir(f"{purpose}-duckdb")) if store.is_local else tempfile.mkdtemp()
    # preserve_insertion_order off: results stream out as pipelines produce them instead of being buffered to
    # keep the input's order (the stages say ORDER BY where order matters).
    return duckdb.connect(
        config={
            "memory_limit": STAGE_DUCKDB_MEMORY,
            "temp_directory": spill,
            "preserve_insertion_order": False,
        }
    )


def attach(con: Any, name: str, data: Any) -> None:
    """Make ``data`` (a pyarrow dataset of the run, or an Arrow table) the view ``name`` of ``con``.

    Local Parquet goes through DuckDB's own reader, which reads a row group at a time within the connection's
    memory cap; a registered pyarrow dataset would be scanned in batches of up to a million rows with
    read-ahead, which holds a whole pool's prompts on the driver. Remote files and in-memory tables are
    registered as they are."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    if (
        isinstance(data, pads.FileSystemDataset)
        and isinstance(data.filesystem, pafs.LocalFileSystem)
        and data.files
    ):
        files = ", ".join("'" + f.replace("'", "''") + "'" for f in data.files)
        con.unregister(name)  # a name attached before as a registered table (no-op otherwise)
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet([{files}])')
    else:
        con.execute(f'DROP VIEW IF EXISTS "{name}"')
        con.register(name, data)

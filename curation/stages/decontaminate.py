"""Decontaminate: questions (+ dedup decisions) and evaluation sets -> ``contamination``, ``candidates`` and
``rejects/decontaminate``.

The evaluation sets named in ``decontaminate.eval_sets`` are ingested like any source (any format, file or hub
path) and indexed once (:func:`curation.rules.decontam.build_index`). The pool is then cut into blocks in pool
order (:func:`decontaminate_block`): rows dedup dropped are skipped, every other row is matched
(:func:`curation.rules.decontam.find_matches`), and survivors go to ``candidates`` with their ``pool_index``.
A row's matches depend on that row and the indexes only, so any cut gives the same tables.

Pools of ``ray_min_rows`` rows or more (questions) run as Ray work: the indexes go to the object store once
(``ray.put``), one task per block (a row range of one row group of ``questions``, at most ``batch_rows`` rows)
reads its rows and its rows' ``kept`` flags from ``dedup``, matches them and writes its Parquet part of each
of the three tables; the driver holds block descriptions and counts, never rows. Smaller pools stream through
the driver in batches (the same function, the same tables: a Ray round costs a few seconds of task start and
index transfer that a small pool does not win back). The stage prints, and records, how many pool rows each
evaluation set removed.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

import schemas
from curation.config import CurationConfig, DecontaminateOptions, IngestOptions
from curation.distributed.blocks import Block, pool_blocks
from curation.errors import UserError
from curation.pipeline import Resources, Stage, StageContext, StageResult
from curation.readers import fingerprint
from curation.rules import minhash as mh
from curation.rules.decontam import EvalIndex, Matches, build_index, find_matches
from curation.stages.dedup import scan

STAGE = "decontaminate"
REASON = "contaminated"


def load_eval_indexes(opts: DecontaminateOptions, log: Any = None) -> list[EvalIndex]:
    """Ingest and index every configured evaluation set (nothing to do without any)."""
    from curation.stages.ingest import ingest_in_process

    indexes = []
    if log and opts.eval_sets:
        checks = []
        if opts.ngram:
            checks.append(f"{opts.ngram}-gram overlap >= {opts.ngram_overlap:g}")
        if opts.minhash_threshold is not None:
            b, r = opts.minhash.banding()
            checks.append(
                f"MinHash Jaccard >= {opts.minhash_threshold:g} ({opts.minhash.shingle} {opts.minhash.k}-shingles, "
                f"{b} bands x {r} rows; P(candidate): {mh.detection_curve(b, r)})"
            )
        if opts.ratio_threshold is not None:
            b, r = opts.ratio_minhash.banding()
            checks.append(
                f"fuzz.ratio >= {opts.ratio_threshold:g} ({opts.ratio_minhash.shingle} {opts.ratio_minhash.k}-shingle "
                f"candidates, {b} bands x {r} rows)"
            )
        log(f"[{STAGE}] checks: " + "; ".join(checks))
    for source in opts.eval_sets:
        tables = ingest_in_process([source], IngestOptions(m1_shuffle=False))
        if tables.questions.num_rows == 0:
            raise UserError(
                f"decontaminate: evaluation set {source.name!r} ({source.path}) has no readable questions "
                f"({tables.rejects.num_rows} rows rejected)"
            )
        indexes.append(build_index(source.name, tables.questions, opts))
        if log:
            log(f"[{STAGE}] eval set {source.name}: {tables.questions.num_rows:,} questions indexed")
    return indexes


def contamination_rows(batch: pa.Table, pool_index: np.ndarray | None, m: Matches) -> pa.Table:
    """Contamination table rows for matches ``m`` of ``batch`` (pool_index per batch row, or None)."""
    rows = pa.array(m.row, pa.int64())
    return schemas.conform(
        pa.table(
            {
                "pool_index": pa.array(pool_index[m.row], pa.int64())
                if pool_index is not None
                else pa.nulls(len(m.row), pa.int64()),
                "source": batch.column("source").take(rows),
                "qid": batch.column("qid").take(rows),
                "eval_set": pa.array(m.eval_set, pa.string()),
                "eval_ref": pa.array(m.eval_ref, pa.string()),
                "method": pa.array(m.method, pa.string()),
                "similarity": pa.array(m.similarity, pa.float64()),
            }
        ),
        "contamination",
    )


def reject_table(stage: str, batch: pa.Table, m: Matches, ref_column: str, raw_column: str) -> pa.Table:
    """One reject per contaminated row (its first match, which sorts first); ``ref_column`` is the qid, as every
    stage after ingest identifies a question (the lineage view joins on it)."""
    first = np.unique(m.row, return_index=True)[1]
    rows = pa.array(m.row[first], pa.int64())
    detail = [
        f"matches eval set {m.eval_set[i]} row {m.eval_ref[i]} by {m.method[i]} (similarity {m.similarity[i]:g})"
        for i in first
    ]
    return schemas.conform(
        pa.table(
            {
                "stage": pa.array([stage] * len(first), pa.string()),
                "source": batch.column("source").take(rows),
                "source_ref": batch.column(ref_column).take(rows),
                "reason": pa.array([REASON] * len(first), pa.string()),
                "detail": pa.array(detail, pa.string()),
                "raw": batch.column(raw_column).take(rows),
            }
        ),
        "rejects",
    )


def decontaminate_block(
    table: pa.Table,
    pool_index: np.ndarray,
    kept: np.ndarray | None,
    indexes: list[EvalIndex],
    opts: DecontaminateOptions,
) -> tuple[pa.Table, pa.Table | None, pa.Table | None]:
    """One block of the pool (``pool_index`` per row; ``kept``: dedup's flags, None without dedup) ->
    (candidates rows, contamination rows or None, reject rows or None). Rows dedup dropped are neither."""
    if kept is not None:
        table, pool_index = table.filter(pa.array(kept)), pool_index[kept]
    survivors = np.ones(table.num_rows, dtype=bool)
    cont = rej = None
    if indexes and table.num_rows:
        m = find_matches(table, indexes, opts)
        if len(m.row):
            cont = contamination_rows(table, pool_index, m)
            rej = reject_table(STAGE, table, m, "qid", "metadata")
            survivors[m.row] = False
    cand = table.filter(pa.array(survivors)).append_column(
        "pool_index", pa.array(pool_index[survivors], pa.int64())
    )
    return cand, cont, rej


# ---------------------------------------------------------------------------------------------- Ray work


def _kept_of(fs: Any, dedup_path: str, block: Block) -> np.ndarray:
    """dedup's ``kept`` flags of the block's rows, in pool order (row groups pruned by pool_index statistics)."""
    ds = pads.dataset(dedup_path, filesystem=fs, format="parquet")
    lo, hi = block.start, block.start + block.rows
    t = ds.to_table(
        columns=["pool_index", "kept"], filter=(pc.field("pool_index") >= lo) & (pc.field("pool_index") < hi)
    )
    t = t.sort_by("pool_index")
    got = t.column("pool_index").to_numpy()
    if len(got) != block.rows or (block.rows and (got[0] != lo or got[-1] != hi - 1)):
        raise UserError(
            f"{STAGE}: the dedup table has {len(got)} rows for pool rows {lo}..{hi - 1} of `questions` "
            f"({block.rows} expected); the run's tables are inconsistent: rerun dedup with --force"
        )
    return t.column("kept").to_numpy(zero_copy_only=False)


def _write_part(fs: Any, path: str, table: pa.Table, name: str) -> None:
    from curation.store.runstore import row_group_rows

    schema = schemas.get(name).schema
    stream = fs.open_output_stream(path)
    try:
        with pq.ParquetWriter(stream, schema, compression="zstd") as writer:
            writer.write_table(schemas.conform(table, name), row_group_size=row_group_rows(table))
    finally:
        stream.close()  # the writer does not own the stream: a failed upload must raise here


def block_task(
    fs: Any,
    block: Block,
    part: int,
    dedup_path: str | None,
    indexes: list[EvalIndex],
    opts: DecontaminateOptions,
    dirs: dict[str, str],
    cpus: float,
) -> tuple[int, int, int, dict[str, int], dict[str, float]]:
    """Ray task: one block -> its Parquet part of each table (none where it has no rows; ``indexes`` arrive
    from the object store). Returns (rows in, candidates, rejects, pool rows removed per eval set, seconds per phase)."""
    t0 = time.perf_counter()
    mh.set_threads(max(1, math.ceil(cpus)))
    with fs.open_input_file(block.file) as f:
        table = pq.ParquetFile(f).read_row_group(block.group).slice(block.offset, block.rows)
    kept = _kept_of(fs, dedup_path, block) if dedup_path is not None else None
    t1 = time.perf_counter()
    pool_index = np.arange(block.start, block.start + block.rows, dtype=np.int64)
    cand, cont, rej = decontaminate_block(table, pool_index, kept, indexes, opts)
    t2 = time.perf_counter()
    rows_in = block.rows if kept is None else int(kept.sum())
    for name, t in (("candidates", cand), ("contamination", cont), ("rejects/decontaminate", rej)):
        if t is not None and t.num_rows:
            _write_part(fs, f"{dirs[name]}/part-{part:05d}.parquet", t, name)
    per_set = removed_per_set([cont] if cont is not None else [])
    seconds = {"read": t1 - t0, "match": t2 - t1, "write": time.perf_counter() - t2}
    return rows_in, cand.num_rows, rej.num_rows if rej is not None else 0, per_set, seconds


def run_blocks(
    store: Any, indexes: list[EvalIndex], opts: DecontaminateOptions, resources: Resources
) -> tuple[dict[str, Any], int, int, int, Counter[str], dict[str, Any]]:
    """The pool as Ray tasks, one per block; returns (versions by table, rows in, out, rejected, removed per
    set, {blocks, seconds per phase summed over the tasks})."""
    import ray

    fs = store.fs
    blocks = pool_blocks(fs, sorted(store.dataset("questions").files), opts.batch_rows)
    dedup_path = store.path(store.tables()["dedup"]["path"]) if store.has_table("dedup") else None
    names = ("candidates", "contamination", "rejects/decontaminate")
    rel = {name: store.new_table_dir(name) for name in names}
    dirs = {name: store.path(rel[name]) for name in names}
    shared = ray.put(indexes)  # once; every task maps the same copy
    task = ray.remote(**resources.ray_options(), max_retries=3)(block_task).options(
        name="decontaminate.block"
    )
    refs = [
        task.remote(fs, b, i, dedup_path, shared, opts, dirs, resources.cpus) for i, b in enumerate(blocks)
    ]
    rows_in = rows_out = rejected = 0
    per_set: Counter[str] = Counter()
    written: Counter[str] = Counter()
    task_seconds: Counter[str] = Counter()
    for n_in, n_out, n_rej, removed, seconds in ray.get(refs):
        rows_in, rows_out, rejected = rows_in + n_in, rows_out + n_out, rejected + n_rej
        task_seconds.update(seconds)
        per_set.update(removed)
        written.update(
            {"candidates": n_out, "rejects/decontaminate": n_rej, "contamination": sum(removed.values())}
        )
    versions = {}
    for name in names:
        if not written[name]:  # an empty table is still a table: one file with the schema
            _write_part(fs, f"{dirs[name]}/part-00000.parquet", schemas.get(name).schema.empty_table(), name)
        versions[name] = store.adopt_table_dir(name, rel[name])
    info = {"blocks": len(blocks), "task_seconds": {k: round(v, 2) for k, v in task_seconds.items()}}
    return versions, rows_in, rows_out, rejected, per_set, info


class DecontaminateStage(Stage):
    """questions + dedup -> contamination, candidates (survivors + pool_index), rejects/decontaminate."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = ("questions", "dedup")
    outputs: ClassVar[tuple[str, ...]] = ("contamination", "candidates", "rejects/decontaminate")
    # Per Ray task (one block): the eval indexes (mapped from the object store), one block of questions rows and
    # its matching state; threads = cpus (the n-gram and MinHash kernels). One CPU, so that a task fits any node
    # (2 left every task waiting forever on a cluster of 1-CPU nodes); resources.decontaminate raises it.
    resources: ClassVar[Resources] = Resources(cpus=1.0, memory_gib=2.0)
    # Pools (questions rows) from this size on run as Ray tasks, smaller ones in the driver (same tables): the
    # Ray round's fixed cost (task start, index transfer: a few seconds) pays off from a few blocks up.
    ray_min_rows: ClassVar[int] = 262_144

    def enabled(self, cfg: CurationConfig) -> bool:
        # Runs whenever dedup does too: `candidates` is what the later stages read.
        return bool({"dedup", "decontaminate"} & cfg.model_fields_set)

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        opts = cfg.decontaminate
        return {
            "decontaminate": opts.model_dump(mode="json", exclude={"threads", "batch_rows", "second_pass"}),
            "files": {f"eval:{s.name}": fingerprint(s.path) for s in opts.eval_sets},
        }

    def run(self, ctx: StageContext) -> StageResult:
        cfg, store = ctx.config, ctx.store
        opts = cfg.decontaminate
        indexes = load_eval_indexes(opts, log=print)
        pool_rows = store.tables()["questions"]["rows"]
        executor = "ray" if pool_rows >= self.ray_min_rows else "driver"
        if executor == "ray":
            resources = ctx.resources or self.resources
            print(
                f"[{STAGE}] as Ray work: {pool_rows:,} pool rows in blocks of <= {opts.batch_rows:,}; {resources}"
            )
            versions, rows_in, rows_out, rejected, per_set, info = run_blocks(store, indexes, opts, resources)
            cand, cont, rej = (
                versions["candidates"],
                versions["contamination"],
                versions["rejects/decontaminate"],
            )
        else:
            mh.set_threads(opts.threads or cfg.ray.num_cpus)
            cand, cont, rej, rows_in, rows_out, per_set = self._run_in_driver(store, indexes, opts)
            rejected, info = rej.rows, {}
        for s in opts.eval_sets:
            print(f"[{STAGE}] {s.name}: {per_set.get(s.name, 0):,} pool rows removed")
        return StageResult(
            outputs=[cont, cand, rej],
            rows_in=rows_in,
            rows_out=rows_out,
            rows_rejected=rejected,
            rejected_by_reason={REASON: rejected} if rejected else {},
            details={
                "decontaminate": {
                    "removed_per_eval_set": {s.name: per_set.get(s.name, 0) for s in opts.eval_sets},
                    "executor": executor,
                    **info,
                }
            },
        )

    @staticmethod
    def _run_in_driver(
        store: Any, indexes: list[EvalIndex], opts: DecontaminateOptions
    ) -> tuple[Any, Any, Any, int, int, Counter[str]]:
        kept = (
            store.read_table("dedup", columns=["kept"]).column("kept").to_numpy(zero_copy_only=False)
            if store.has_table("dedup")
            else None
        )
        contamination: list[pa.Table] = []
        rejects: list[pa.Table] = []
        counts = {"in": 0, "out": 0}

        def candidates() -> Iterator[pa.Table]:
            offset = 0
            for batch in scan(store.dataset("questions"), None, opts.batch_rows):
                table = pa.Table.from_batches([batch])
                index = np.arange(offset, offset + table.num_rows, dtype=np.int64)
                offset += table.num_rows
                block_kept = kept[index] if kept is not None else None
                counts["in"] += table.num_rows if block_kept is None else int(block_kept.sum())
                out, cont, rej = decontaminate_block(table, index, block_kept, indexes, opts)
                if cont is not None:
                    contamination.append(cont)
                    rejects.append(rej)
                counts["out"] += out.num_rows
                yield out

        cand = store.write_table("candidates", candidates())
        cont = store.write_table("contamination", contamination or [])
        rej = store.write_table("rejects/decontaminate", rejects or [])
        return cand, cont, rej, counts["in"], counts["out"], Counter(removed_per_set(contamination))


def removed_per_set(tables: list[pa.Table]) -> dict[str, int]:
    """Distinct pool rows matched, per eval set (a row matching two sets counts in both)."""
    c: Counter[str] = Counter()
    for t in tables:
        c.update(t.column("eval_set").to_pylist())
    return dict(c)

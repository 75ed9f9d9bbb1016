"""Decontaminate: questions (+ dedup decisions) and evaluation sets -> ``contamination``, ``candidates`` and
``rejects/decontaminate``.

The evaluation sets named in ``decontaminate.eval_sets`` are ingested like any source (any format, file or hub
path) and indexed once (:func:`curation.rules.decontam.build_index`). The pool then streams in batches, in pool
order: rows dedup dropped are skipped, every other row is matched (:func:`curation.rules.decontam.find_matches`),
and survivors go to ``candidates`` with their ``pool_index``. The stage prints, and records, how many pool rows
each evaluation set removed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

import schemas
from curation.config import CurationConfig, DecontaminateOptions, IngestOptions
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


class DecontaminateStage(Stage):
    """questions + dedup -> contamination, candidates (survivors + pool_index), rejects/decontaminate."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = ("questions", "dedup")
    outputs: ClassVar[tuple[str, ...]] = ("contamination", "candidates", "rejects/decontaminate")
    resources: ClassVar[Resources] = Resources(cpus=2.0, memory_gib=2.0)

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
        mh.set_threads(opts.threads or cfg.ray.num_cpus)
        indexes = load_eval_indexes(opts, log=print)
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
                if kept is not None:
                    mask = kept[index]
                    table, index = table.filter(pa.array(mask)), index[mask]
                counts["in"] += table.num_rows
                if not table.num_rows:
                    continue
                survivors = np.ones(table.num_rows, dtype=bool)
                if indexes:
                    m = find_matches(table, indexes, opts)
                    if len(m.row):
                        contamination.append(contamination_rows(table, index, m))
                        rejects.append(reject_table(STAGE, table, m, "qid", "metadata"))
                        survivors[m.row] = False
                out = table.filter(pa.array(survivors)).append_column(
                    "pool_index", pa.array(index[survivors], pa.int64())
                )
                counts["out"] += out.num_rows
                yield out

        cand = store.write_table("candidates", candidates())
        cont = store.write_table("contamination", contamination or [])
        rej = store.write_table("rejects/decontaminate", rejects or [])
        per_set = removed_per_set(contamination)
        for s in opts.eval_sets:
            print(f"[{STAGE}] {s.name}: {per_set.get(s.name, 0):,} pool rows removed")
        return StageResult(
            outputs=[cont, cand, rej],
            rows_in=counts["in"],
            rows_out=counts["out"],
            rows_rejected=rej.rows,
            rejected_by_reason={REASON: rej.rows} if rej.rows else {},
            details={
                "decontaminate": {
                    "removed_per_eval_set": {s.name: per_set.get(s.name, 0) for s in opts.eval_sets}
                }
            },
        )


def removed_per_set(tables: list[pa.Table]) -> dict[str, int]:
    """Distinct pool rows matched, per eval set (a row matching two sets counts in both)."""
    c: Counter[str] = Counter()
    for t in tables:
        c.update(t.column("eval_set").to_pylist())
    return dict(c)

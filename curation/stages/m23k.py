"""m23k: curated (+ the evaluation sets again) -> ``m23k``, ``contamination/m23k`` and ``rejects/m23k``.

m1 decontaminated twice: the pool, and again the validated set (PubMedQA 39 -> 28). With
``decontaminate.second_pass`` (the default) the curated rows are matched against the same evaluation sets with the
same rules; the question and options come from ``candidates`` (the curated table holds the rendered prompt only).
m23k is every remaining row in m1's released schema plus ``qid`` and ``pool_index``, in pool order.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa

import schemas
from curation.config import CurationConfig
from curation.errors import UserError
from curation.pipeline import Stage, StageContext, StageResult
from curation.readers import fingerprint
from curation.rules import minhash as mh
from curation.rules.decontam import find_matches
from curation.stages.decontaminate import REASON, contamination_rows, load_eval_indexes, reject_table

STAGE = "m23k"


class M23kStage(Stage):
    """curated -> m23k (second decontamination), contamination/m23k, rejects/m23k."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = ("curated", "candidates")
    outputs: ClassVar[tuple[str, ...]] = ("m23k", "contamination/m23k", "rejects/m23k")

    def enabled(self, cfg: CurationConfig) -> bool:
        return cfg.teacher.engine is not None  # as curate: there is a curated table to finish

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        opts = cfg.decontaminate
        if not opts.second_pass:
            return {"second_pass": False}
        return {
            "decontaminate": opts.model_dump(mode="json", exclude={"threads", "batch_rows"}),
            "files": {f"eval:{s.name}": fingerprint(s.path) for s in opts.eval_sets},
        }

    def run(self, ctx: StageContext) -> StageResult:
        cfg, store = ctx.config, ctx.store
        opts = cfg.decontaminate
        curated = store.read_table("curated")
        if curated.num_rows and curated.column("pool_index").null_count:
            raise UserError(
                f"{STAGE}: {curated.column('pool_index').null_count} curated rows have no pool_index; the run "
                "needs the dedup/decontaminate stages (they write `candidates` with pool_index) before scoring"
            )
        curated = curated.sort_by("pool_index") if curated.num_rows else curated
        survivors = np.ones(curated.num_rows, dtype=bool)
        cont: list[pa.Table] = []
        rej: list[pa.Table] = []
        per_set: dict[str, int] = {}
        if opts.second_pass and opts.eval_sets and curated.num_rows:
            mh.set_threads(opts.threads or cfg.ray.num_cpus)
            indexes = load_eval_indexes(opts, log=print)
            source = "candidates" if store.has_table("candidates") else "questions"
            q = pl.from_arrow(store.read_table(source, columns=["source", "qid", "question", "options"]))
            cur = pl.from_arrow(curated.select(["source", "qid"]))
            assert isinstance(q, pl.DataFrame) and isinstance(cur, pl.DataFrame)
            joined = cur.with_row_index("_row").join(q, on=["source", "qid"], how="left").sort("_row")
            missing = joined.filter(pl.col("question").is_null())
            if missing.height:
                raise UserError(
                    f"{STAGE}: curated row {missing['source'][0]}:{missing['qid'][0]} is not in `{source}` "
                    f"({missing.height} such rows); the run's tables are inconsistent: rerun with --force"
                )
            batch = pa.table(
                {
                    "source": curated.column("source"),
                    "qid": curated.column("qid"),
                    "question": joined["question"].to_arrow().cast(pa.string()),
                    "options": joined["options"]
                    .to_arrow()
                    .cast(schemas.get("questions").schema.field("options").type),
                    "prompt": curated.column("prompt"),
                    "metadata": curated.column("metadata"),
                }
            )
            pool_index = curated.column("pool_index").to_numpy(zero_copy_only=False)
            for lo in range(0, batch.num_rows, opts.batch_rows):  # in batches, as the pool pass
                part = batch.slice(lo, opts.batch_rows)
                m = find_matches(part, indexes, opts)
                if len(m.row):
                    cont.append(contamination_rows(part, pool_index[lo : lo + part.num_rows], m))
                    rej.append(reject_table(STAGE, part, m, "qid", "metadata"))
                    survivors[lo + m.row] = False
                    for name in m.eval_set:
                        per_set[name] = per_set.get(name, 0) + 1
            for s in opts.eval_sets:
                print(f"[{STAGE}] second pass, {s.name}: {per_set.get(s.name, 0):,} curated rows removed")
        m23k = curated.filter(pa.array(survivors)).select(schemas.get("m23k").schema.names)
        out = store.write_table("m23k", m23k)
        c = store.write_table("contamination/m23k", cont)
        r = store.write_table("rejects/m23k", rej)
        return StageResult(
            outputs=[out, c, r],
            rows_in=curated.num_rows,
            rows_out=out.rows,
            rows_rejected=r.rows,
            rejected_by_reason={REASON: r.rows} if r.rows else {},
            details={"m23k": {"second_pass": opts.second_pass, "removed_per_eval_set": per_set}},
        )

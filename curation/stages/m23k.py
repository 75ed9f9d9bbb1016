"""m23k: curated (+ the evaluation sets again) -> ``m23k``, ``contamination/m23k`` and ``rejects/m23k``.

m1 decontaminated twice: the pool, and again the validated set (PubMedQA 39 -> 28). With
``decontaminate.second_pass`` (the default) the curated rows are matched against the same evaluation sets with the
same rules; the question and options come from ``candidates`` (the curated table holds the rendered prompt only).
m23k is every remaining row in m1's released schema plus ``qid`` and ``pool_index``, in pool order. The pass
streams: DuckDB (memory capped, spilling) sorts curated by pool_index and joins the questions; batches of
``decontaminate.batch_rows`` rows are matched and written one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

import schemas
from curation.config import CurationConfig
from curation.errors import UserError
from curation.pipeline import Stage, StageContext, StageResult
from curation.readers import fingerprint
from curation.rules import minhash as mh
from curation.rules.decontam import find_matches
from curation.stages.decontaminate import REASON, contamination_rows, load_eval_indexes, reject_table
from curation.stages.llm import attach, bounded_duckdb

M23K_DUCKDB_MEMORY = "1GB"

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
        # DuckDB streams curated in pool order (sorting within its memory cap, spilling past it) and joins each
        # row's question and options; the driver holds one batch at a time, never the table.
        con = bounded_duckdb(store, STAGE)
        # The ORDER BY sorts whole curated rows (reasoning, prompt, options): with the LLM stages' 256 MB cap
        # DuckDB could not pin its sort blocks on a 196K-row pool (OutOfMemoryException, bench_cpu_stages.py),
        # so this pass gets 1 GB; it still spills beyond that.
        con.execute(f"SET memory_limit='{M23K_DUCKDB_MEMORY}'")
        attach(con, "curated", store.dataset("curated"))
        n_rows, no_index = con.execute(
            "SELECT count(*), count(*) - count(pool_index) FROM curated"
        ).fetchall()[0]
        if no_index:
            raise UserError(
                f"{STAGE}: {no_index} curated rows have no pool_index; the run "
                "needs the dedup/decontaminate stages (they write `candidates` with pool_index) before scoring"
            )
        check = bool(opts.second_pass and opts.eval_sets and n_rows)
        per_set: dict[str, int] = {}
        cont: list[pa.Table] = []
        rej: list[pa.Table] = []
        counts = {"in": 0, "out": 0}
        if check:
            mh.set_threads(opts.threads or cfg.ray.num_cpus)
            indexes = load_eval_indexes(opts, log=print)
            source = "candidates" if store.has_table("candidates") else "questions"
            attach(con, "pool", store.dataset(source))
            # one row per question (a pool without dedup may hold a question twice: the same qid is the same
            # normalised question and options)
            con.execute(
                "CREATE VIEW q AS SELECT source, qid, question, options FROM pool "
                "QUALIFY row_number() OVER (PARTITION BY source, qid) = 1"
            )
            missing = con.execute(
                "SELECT count(*), any_value(source), any_value(qid) FROM curated ANTI JOIN q USING (source, qid)"
            ).fetchall()[0]
            if missing[0]:
                raise UserError(
                    f"{STAGE}: curated row {missing[1]}:{missing[2]} is not in `{source}` "
                    f"({missing[0]} such rows); the run's tables are inconsistent: rerun with --force"
                )
            sql = (
                "SELECT c.*, q.question AS _question, q.options AS _options FROM curated c "
                "JOIN q USING (source, qid) ORDER BY c.pool_index"
            )
        else:
            sql = "SELECT * FROM curated ORDER BY pool_index"
        options_type = schemas.get("questions").schema.field("options").type
        names = schemas.get("m23k").schema.names

        def rows() -> Iterator[pa.Table]:
            for batch in con.sql(sql).to_arrow_reader(opts.batch_rows):
                table = pa.Table.from_batches([batch])
                counts["in"] += table.num_rows
                if check and table.num_rows:
                    part = pa.table(
                        {
                            "source": table.column("source"),
                            "qid": table.column("qid"),
                            "question": table.column("_question").cast(pa.string()),
                            "options": table.column("_options").cast(options_type),
                            "prompt": table.column("prompt").cast(pa.string()),
                            "metadata": table.column("metadata"),
                        }
                    )
                    m = find_matches(part, indexes, opts)
                    if len(m.row):
                        pool_index = table.column("pool_index").to_numpy()
                        cont.append(contamination_rows(part, pool_index, m))
                        rej.append(reject_table(STAGE, part, m, "qid", "metadata"))
                        survivors = np.ones(table.num_rows, dtype=bool)
                        survivors[m.row] = False
                        table = table.filter(pa.array(survivors))
                        for name in m.eval_set:
                            per_set[name] = per_set.get(name, 0) + 1
                counts["out"] += table.num_rows
                yield table.select(names)

        try:
            out = store.write_table("m23k", rows())
        finally:
            con.close()
        if check:
            for s in opts.eval_sets:
                print(f"[{STAGE}] second pass, {s.name}: {per_set.get(s.name, 0):,} curated rows removed")
        c = store.write_table("contamination/m23k", cont)
        r = store.write_table("rejects/m23k", rej)
        return StageResult(
            outputs=[out, c, r],
            rows_in=counts["in"],
            rows_out=out.rows,
            rows_rejected=r.rows,
            rejected_by_reason={REASON: r.rows} if r.rows else {},
            details={"m23k": {"second_pass": opts.second_pass, "removed_per_eval_set": per_set}},
        )

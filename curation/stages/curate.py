"""The curated table: validated questions -> m1's released m23K records (plus qid, attempt, model, pool order).

For every question with an accepted teacher trace, the first accepted attempt becomes one record:
``prompt``, ``answer_idx`` / ``answer_letter`` / ``answer_string`` (the key), ``reasoning`` and
``distilled_answer_string`` (the teacher's), ``source``, ``metadata`` (the raw source row) and ``text``,
the SFT example in m1's format (:func:`curation.rules.traces.sft_text`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curation.config import CurationConfig
from curation.pipeline import Stage, StageContext, StageResult
from curation.rules.traces import sft_text
from curation.stages.llm import attach, bounded_duckdb, question_source_table

STAGE = "curate"

_CURATED_SQL = """
SELECT q.answer_label AS answer_idx, q.source, q.metadata, q.prompt, q.answer_label AS answer_letter,
       q.answer_text AS answer_string, t.reasoning, t.answer AS distilled_answer_string,
       q.qid, q.pool_index, t.attempt, t.model, t.request_id
FROM q JOIN (
    SELECT * FROM traces WHERE accepted QUALIFY row_number() OVER (PARTITION BY source, qid ORDER BY attempt) = 1
) t USING (source, qid)
ORDER BY q.pool_index
"""


def with_text(batch: pa.Table) -> pa.Table:
    texts = [
        sft_text(prompt, reasoning or "", answer or "")
        for prompt, reasoning, answer in zip(
            batch.column("prompt").to_pylist(),
            batch.column("reasoning").to_pylist(),
            batch.column("distilled_answer_string").to_pylist(),
            strict=True,
        )
    ]
    return batch.append_column("text", pa.array(texts, pa.string()))


class CurateStage(Stage):
    """traces (accepted attempts) + questions -> curated."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = ("questions", "candidates", "traces")
    outputs: ClassVar[tuple[str, ...]] = ("curated",)
    batch_rows: ClassVar[int] = 8192

    def enabled(self, cfg: CurationConfig) -> bool:
        return cfg.teacher.engine is not None

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        return {}

    def run(self, ctx: StageContext) -> StageResult:

        store = ctx.store
        con = bounded_duckdb(store, "curate")
        source = store.dataset(question_source_table(store))
        if "pool_index" in source.schema.names:  # dedup/decontaminate's candidates carry it
            attach(con, "q", source)
        else:  # no dedup: the questions table is the pool, in pool order (sources in config order, file order)
            keys = source.to_table(columns=["source", "qid"])
            keys = keys.append_column("pool_index", pa.array(np.arange(keys.num_rows, dtype=np.int64)))
            attach(con, "questions", source)
            attach(con, "pool", keys)
            con.execute("CREATE VIEW q AS SELECT * FROM questions JOIN pool USING (source, qid)")
        attach(con, "traces", store.dataset("traces"))

        validated = con.execute("SELECT count(DISTINCT (source, qid)) FROM traces WHERE accepted").fetchall()[
            0
        ][0]

        def records() -> Iterator[pa.Table]:
            for batch in con.sql(_CURATED_SQL).to_arrow_reader(self.batch_rows):
                yield with_text(pa.Table.from_batches([batch]))

        curated = store.write_table("curated", records())
        con.close()
        return StageResult(outputs=[curated], rows_in=validated, rows_out=curated.rows)

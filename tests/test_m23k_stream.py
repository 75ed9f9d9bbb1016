"""m23k's second decontamination pass streams (issue 16): curated in any order and any files, in small batches,
gives the same m23k, contamination/m23k and rejects/m23k as matching the whole table sorted by pool_index."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa

import schemas
from curation.config import CurationConfig, IngestOptions, SourceConfig
from curation.pipeline import StageContext
from curation.rules.decontam import find_matches
from curation.stages.decontaminate import contamination_rows, load_eval_indexes
from curation.stages.ingest import ingest_in_process
from curation.stages.m23k import M23kStage
from curation.store.runstore import RunStore

SAMPLE_POOL = Path(__file__).resolve().parents[1] / "curation" / "sample_pool"


def test_m23k_streams_and_matches_the_whole_table(tmp_path: Path) -> None:
    sources = [
        SourceConfig(name="medqa", format="medqa", path=str(SAMPLE_POOL / "medqa.jsonl")),
        SourceConfig(name="pubmedqa", format="pubmedqa", path=str(SAMPLE_POOL / "pubmedqa.jsonl")),
    ]
    q = ingest_in_process(sources, IngestOptions(m1_shuffle=True)).questions
    seen: set[tuple[str, str]] = set()
    first = []  # one curated row per question (the pool holds an exact copy of one)
    for i, key in enumerate(zip(q.column("source").to_pylist(), q.column("qid").to_pylist(), strict=True)):
        if key not in seen:
            seen.add(key)
            first.append(i)
    n = len(first)
    base = q.take(pa.array(first))
    curated = schemas.conform(
        pa.table(
            {
                "answer_idx": base.column("answer_label"),
                "source": base.column("source"),
                "metadata": base.column("metadata"),
                "prompt": base.column("prompt"),
                "answer_letter": base.column("answer_label"),
                "answer_string": base.column("answer_text"),
                "reasoning": [f"r{i}" for i in range(n)],
                "distilled_answer_string": ["x"] * n,
                "text": ["t"] * n,
                "qid": base.column("qid"),
                "pool_index": pa.array(first, pa.int64()),
                "attempt": [1] * n,
                "model": ["m"] * n,
                "request_id": [f"r{i}" for i in range(n)],
            }
        ),
        "curated",
    )
    order = list(range(n))
    random.Random(4).shuffle(order)
    shuffled = curated.take(pa.array(order))
    store = RunStore(str(tmp_path / "run"))
    store.commit([store.write_table("questions", q)])
    store.commit(
        [store.write_table("curated", [shuffled.slice(i, 9) for i in range(0, n, 9)], rows_per_file=40)]
    )
    cfg = CurationConfig(
        sources=[s.model_dump() for s in sources],
        decontaminate={
            "eval_sets": [
                {"name": "medqa_test", "format": "medqa", "path": str(SAMPLE_POOL / "eval_medqa_test.jsonl")},
                {
                    "name": "pubmedqa_test",
                    "format": "pubmedqa",
                    "path": str(SAMPLE_POOL / "pubmedqa.jsonl"),
                    "split": "test",
                },
            ],
            "ratio_threshold": 95,
            "batch_rows": 8,
        },
        teacher={"engine": "t"},
        engines={"t": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
    )
    result = M23kStage().run(StageContext(store=store, config=cfg, input_hash="h"))
    result.check_accounting("m23k")
    store.commit(result.outputs)

    # The whole table at once, in pool order (as the stage did before issue 16).
    whole = curated.sort_by("pool_index")
    part = pa.table(
        {
            "source": whole.column("source"),
            "qid": whole.column("qid"),
            "question": q.take(whole.column("pool_index")).column("question"),
            "options": q.take(whole.column("pool_index")).column("options"),
            "prompt": whole.column("prompt"),
            "metadata": whole.column("metadata"),
        }
    )
    m = find_matches(part, load_eval_indexes(cfg.decontaminate), cfg.decontaminate)
    assert len(m.row) >= 5  # the planted copies
    survivors = np.ones(n, dtype=bool)
    survivors[m.row] = False
    want = whole.filter(pa.array(survivors)).select(schemas.get("m23k").schema.names)
    assert store.read_table("m23k").equals(schemas.conform(want, "m23k"))
    pool_index = whole.column("pool_index").to_numpy()
    assert store.read_table("contamination/m23k").equals(contamination_rows(part, pool_index, m))
    assert result.rows_in == n and result.rows_rejected == len(np.unique(m.row))
    assert (
        store.read_table("rejects/m23k").column("source_ref").to_pylist()
        == part.column("qid").take(pa.array(np.unique(m.row))).to_pylist()
    )

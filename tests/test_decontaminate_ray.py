"""Decontamination as Ray work (issue 16): the same three tables and counts as the driver path."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa

from curation.config import CurationConfig, IngestOptions, SourceConfig
from curation.pipeline import Resources, StageContext
from curation.stages.decontaminate import DecontaminateStage
from curation.stages.dedup import DedupStage
from curation.stages.ingest import ingest_in_process
from curation.store.runstore import RunStore

SAMPLE_POOL = Path(__file__).resolve().parents[1] / "curation" / "sample_pool"
TABLES = ("candidates", "contamination", "rejects/decontaminate")


def _run(store: RunStore, cfg: CurationConfig, stage: DecontaminateStage) -> tuple[dict, dict[str, pa.Table]]:
    result = stage.run(
        StageContext(store=store, config=cfg, input_hash="h", resources=Resources(cpus=1.0, memory_gib=1.0))
    )
    result.check_accounting(stage.name)
    store.commit(result.outputs)
    counts = {
        "in": result.rows_in,
        "out": result.rows_out,
        "rejected": result.rows_rejected,
        "by_reason": result.rejected_by_reason,
        "removed": result.details["decontaminate"]["removed_per_eval_set"],
        "executor": result.details["decontaminate"]["executor"],
    }
    return counts, {name: store.read_table(name) for name in TABLES}


def _compare(store: RunStore, cfg: CurationConfig) -> dict:
    driver, driver_tables = _run(store, cfg, DecontaminateStage())
    ray_stage = DecontaminateStage()
    ray_stage.ray_min_rows = 0  # type: ignore[misc]  # this instance only
    ray, ray_tables = _run(store, cfg, ray_stage)
    assert driver.pop("executor") == "driver" and ray.pop("executor") == "ray"
    assert ray == driver
    for name in TABLES:
        assert ray_tables[name].equals(driver_tables[name]), name
    return driver


def test_ray_blocks_match_the_driver_on_the_sample_pool(ray_local: None, tmp_path: Path) -> None:
    sources = [
        SourceConfig(name="medqa", format="medqa", path=str(SAMPLE_POOL / "medqa.jsonl")),
        SourceConfig(name="medmcqa", format="medmcqa", path=str(SAMPLE_POOL / "medmcqa.parquet")),
        SourceConfig(name="pubmedqa", format="pubmedqa", path=str(SAMPLE_POOL / "pubmedqa.jsonl")),
    ]
    q = ingest_in_process(sources, IngestOptions(m1_shuffle=True)).questions
    store = RunStore(str(tmp_path / "run"))
    # row groups of 37 rows, blocks of 16: blocks are cut inside row groups and end at their edges
    store.commit([store.write_table("questions", (q.slice(i, 37) for i in range(0, q.num_rows, 37)))])
    cfg = CurationConfig(
        sources=[s.model_dump() for s in sources],
        dedup={},
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
            "batch_rows": 16,
        },
    )
    result = DedupStage().run(StageContext(store=store, config=cfg, input_hash="h"))
    store.commit(result.outputs)
    counts = _compare(store, cfg)
    assert counts["removed"] == {"medqa_test": 3, "pubmedqa_test": 3}
    assert counts["rejected"] == 6


def test_ray_blocks_match_the_driver_on_a_synthetic_pool(ray_local: None, tmp_path: Path) -> None:
    from curation.devtools.synth import generate_pool, medqa_row

    generate_pool(tmp_path / "pool", 4000, format="medmcqa", seed=3)
    src = SourceConfig(name="medmcqa", format="medmcqa", path=str(tmp_path / "pool" / "medmcqa.jsonl"))
    q = ingest_in_process([src], IngestOptions()).questions
    store = RunStore(str(tmp_path / "run"))
    store.commit([store.write_table("questions", q)])
    rng = random.Random(5)
    with (tmp_path / "eval.jsonl").open("w") as f:  # fresh questions, and pool rows with options rotated
        for _ in range(200):
            f.write(json.dumps(medqa_row(rng, 4)) + "\n")
        for i in rng.sample(range(q.num_rows), 60):
            opts = [o["text"] for o in q.column("options")[i].as_py()]
            opts = opts[1:] + opts[:1]
            answer = q.column("answer_text")[i].as_py()
            f.write(
                json.dumps(
                    {
                        "question": q.column("question")[i].as_py(),
                        "options": dict(zip("ABCD", opts, strict=True)),
                        "answer": answer,
                        "answer_idx": "ABCD"[opts.index(answer)],
                        "meta_info": "x",
                    }
                )
                + "\n"
            )
    cfg = CurationConfig(
        sources=[src.model_dump()],
        dedup={"text": "question_options"},
        decontaminate={
            "eval_sets": [
                {"name": "eval", "format": "medqa", "path": str(tmp_path / "eval.jsonl"), "split": "test"}
            ],
            "batch_rows": 700,
        },
    )
    result = DedupStage().run(StageContext(store=store, config=cfg, input_hash="h"))
    store.commit(result.outputs)
    counts = _compare(store, cfg)
    assert counts["removed"]["eval"] >= 60


def test_ray_blocks_without_dedup_and_without_matches(ray_local: None, tmp_path: Path) -> None:
    q = ingest_in_process(
        [SourceConfig(name="medqa", format="medqa", path=str(SAMPLE_POOL / "medqa.jsonl"))], IngestOptions()
    ).questions
    store = RunStore(str(tmp_path / "run"))
    store.commit([store.write_table("questions", q)])
    cfg = CurationConfig(
        sources=[{"name": "medqa", "format": "medqa", "path": str(SAMPLE_POOL / "medqa.jsonl")}],
        decontaminate={"eval_sets": [], "batch_rows": 50},
    )
    counts = _compare(store, cfg)
    assert counts["in"] == counts["out"] == q.num_rows and counts["rejected"] == 0

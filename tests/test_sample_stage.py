"""The sample stage on a real run store: m23k + labels -> samples and m1k, and clear errors when labels are missing."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest

import schemas
from curation.config import CurationConfig
from curation.pipeline import StageContext
from curation.rules.sampler import m1_sample
from curation.stages.sample import SampleError, SampleStage
from curation.store.runstore import RunStore


def m23k_table(n: int) -> pa.Table:
    rng = random.Random(1)
    sources = [rng.choice(["medqa", "medmcqa", "headqa", "pubmedqa"]) for _ in range(n)]
    return schemas.conform(
        pa.table(
            {
                "answer_idx": ["A"] * n,
                "source": sources,
                "metadata": ["{}"] * n,
                "prompt": [f"question {i}\nA. x\nB. y" for i in range(n)],
                "answer_letter": ["A"] * n,
                "answer_string": ["x"] * n,
                "reasoning": [" ".join(["w"] * rng.randint(1, 50)) for _ in range(n)],
                "distilled_answer_string": ["x"] * n,
                "text": ["t"] * n,
                "qid": [f"q{i:04d}" for i in range(n)],
                "pool_index": [3 * i + 1 for i in range(n)],
            }
        ),
        "m23k",
    )


def labels_for(m23k: pa.Table) -> pa.Table:
    rng = random.Random(2)
    n = m23k.num_rows
    codes = [f"{rng.randrange(12):02d}" for _ in range(n)]
    return pa.table(
        {
            "source": m23k.column("source"),
            "qid": m23k.column("qid"),
            "domain_code": codes,
            "domain_name": [f"Qualifier {c}" for c in codes],
        }
    )


def store_with(tmp_path: Path, m23k: pa.Table, labels: pa.Table | None) -> RunStore:
    store = RunStore(str(tmp_path / "run"))
    # m23k written out of pool order in two parts: the stage sorts by pool_index.
    store.commit([store.write_table("m23k", [m23k.slice(90), m23k.slice(0, 90)])])
    if labels is not None:
        full = schemas.get("labels").schema
        cols = {f.name: labels.column(f.name) if f.name in labels.column_names else None for f in full}
        n = labels.num_rows
        filler = {
            "classifier": pa.array(["offline"] * n),
            "rule": pa.array(["test"] * n),
            "cue": pa.nulls(n, pa.string()),
            "descriptors": pa.array([[]] * n, pa.list_(pa.string())),
            "descriptor_uis": pa.array([[]] * n, pa.list_(pa.string())),
            "categories": pa.array([[]] * n, pa.list_(pa.string())),
            "category_names": pa.array([[]] * n, pa.list_(pa.string())),
            "gold_meshes": pa.nulls(n, pa.list_(pa.string())),
            "request_id": pa.nulls(n, pa.string()),
            "raw_output": pa.nulls(n, pa.string()),
            "attempts": pa.array([0] * n, pa.int32()),
            "error": pa.nulls(n, pa.string()),
            "vocabulary": pa.array(["test"] * n),
        }
        table = pa.table({k: (v if v is not None else filler[k]) for k, v in cols.items()})
        store.commit([store.write_table("labels", table)])
    return store


def cfg(**sample: object) -> CurationConfig:
    return CurationConfig(sources=[{"name": "x", "format": "medqa", "path": "x"}], sample=sample)


def test_m1k_is_m1s_selection_in_m1s_schema(tmp_path: Path) -> None:
    m23k = m23k_table(300)
    labels = labels_for(m23k)
    store = store_with(tmp_path, m23k, labels)
    result = SampleStage().run(StageContext(store=store, config=cfg(size=100), input_hash="h"))
    result.check_accounting("sample")
    store.commit(result.outputs)
    m1k = store.read_table("m1k")
    assert m1k.schema.names[:9] == [
        "answer_idx",
        "source",
        "metadata",
        "prompt",
        "answer_letter",
        "answer_string",
        "reasoning",
        "distilled_answer_string",
        "text",
    ]
    assert {"domain_code", "domain_name", "sample_rank", "pool_index", "qid"} <= set(m1k.schema.names)
    # By hand: the sampler over m23k in pool order with the labels' domains.
    want = m1_sample(labels.column("domain_code").to_pylist(), m23k.column("source").to_pylist(), 100, 42)
    assert m1k.column("qid").to_pylist() == [m23k.column("qid")[i].as_py() for i in want]
    assert m1k.column("sample_rank").to_pylist() == list(range(100))
    samples = store.read_table("samples")
    assert samples.column("pool_index").to_pylist() == m1k.column("pool_index").to_pylist()
    assert set(samples.column("method").to_pylist()) == {"m1"}
    assert result.rows_out == 100 and result.rejected_by_reason == {"not_sampled": 200}


def test_s1_and_quota_methods(tmp_path: Path) -> None:
    m23k = m23k_table(200)
    store = store_with(tmp_path, m23k, labels_for(m23k))
    r = SampleStage().run(StageContext(store=store, config=cfg(method="s1", size=50, seed=7), input_hash="h"))
    store.commit(r.outputs)
    words = store.read_table("samples").column("reasoning_words").to_pylist()
    assert len(words) == 50 and sum(words) / 50 > 30  # longer reasoning preferred (the mean is ~25)
    r = SampleStage().run(
        StageContext(store=store, config=cfg(method="quota", quotas={"00": 3, "01": 2}), input_hash="h")
    )
    store.commit(r.outputs)
    assert sorted(store.read_table("m1k").column("domain_code").to_pylist()) == ["00"] * 3 + ["01"] * 2


def test_missing_labels_table_names_the_classify_stage(tmp_path: Path) -> None:
    store = store_with(tmp_path, m23k_table(20), None)
    with pytest.raises(SampleError, match=r"no `labels` table.*classify stage"):
        SampleStage().run(StageContext(store=store, config=cfg(), input_hash="h"))


def test_unlabelled_rows_are_named(tmp_path: Path) -> None:
    m23k = m23k_table(120)
    store = store_with(tmp_path, m23k, labels_for(m23k).slice(0, 110))
    with pytest.raises(SampleError, match=r"10 m23k rows have no label, e\.g\. \w+:q01"):
        SampleStage().run(StageContext(store=store, config=cfg(), input_hash="h"))

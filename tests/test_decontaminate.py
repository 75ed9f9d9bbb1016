"""Decontamination: reordered, edited and question-only copies are caught; generic stems are not; the stage writes
candidates with pool_index and reports rows removed per eval set; m23k runs the second pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.config import CurationConfig, DecontaminateOptions, IngestOptions, SourceConfig
from curation.pipeline import StageContext
from curation.rules import minhash as mh
from curation.rules.decontam import best_ngram_overlap, build_index, find_matches
from curation.stages.decontaminate import DecontaminateStage
from curation.stages.dedup import DedupStage
from curation.stages.ingest import ingest_in_process
from curation.stages.m23k import M23kStage
from curation.store.runstore import RunStore

SAMPLE_POOL = Path(__file__).resolve().parents[1] / "curation" / "sample_pool"
VIGNETTE = (
    "A 54-year-old man comes to the emergency department because of crushing substernal chest pain for two hours. "
    "He has hypertension and smokes one pack of cigarettes daily. An ECG shows ST-segment elevations in leads II, "
    "III and aVF. Which of the following is the most appropriate next step in management?"
)
OPTIONS = ["Aspirin", "Metoprolol", "Heparin", "Nitroglycerin"]


def questions(rows: list[tuple[str, list[str]]], source: str, tmp: Path) -> pa.Table:
    path = tmp / f"{source}.jsonl"
    with path.open("w") as f:
        for q, opts in rows:
            labels = "ABCDE"[: len(opts)]
            f.write(
                json.dumps(
                    {
                        "question": q,
                        "options": dict(zip(labels, opts, strict=True)),
                        "answer_idx": "A",
                        "answer": opts[0],
                        "meta_info": "x",
                    }
                )
                + "\n"
            )
    return ingest_in_process(
        [SourceConfig(name=source, format="medqa", path=str(path))], IngestOptions()
    ).questions


@pytest.fixture()
def eval_and_pool(tmp_path: Path) -> tuple[pa.Table, pa.Table]:
    ev = questions(
        [
            (VIGNETTE, OPTIONS),
            ("Which of the following is true?", ["x", "y", "z", "w"]),
            (
                "Deficiency of which vitamin causes scurvy in sailors on long voyages without fresh fruit?",
                ["Vitamin C", "Vitamin D", "Vitamin A", "Vitamin K"],
            ),
        ],
        "evalset",
        tmp_path,
    )
    pool = questions(
        [
            (VIGNETTE, OPTIONS[::-1]),  # 0: options reordered
            (
                VIGNETTE.replace("two hours", "three hours"),
                ["Aspirin", "Clopidogrel", "Heparin", "Alteplase"],
            ),  # 1
            ("Which of the following is true?", ["a", "b", "c", "d"]),  # 2: same generic stem, other options
            (
                "Which vitamin deficiency causes scurvy?",
                ["Vitamin C", "Vitamin D", "Vitamin A", "Vitamin K"],
            ),  # 3
            (
                "A 30-year-old woman has a painless thyroid nodule found on routine examination by her doctor.",
                ["Fine-needle aspiration", "Observation", "Surgery", "Radioiodine"],
            ),  # 4: unrelated
        ],
        "pool",
        tmp_path,
    )
    return ev, pool


def test_copies_with_reordered_or_edited_options_are_caught(eval_and_pool: tuple[pa.Table, pa.Table]) -> None:
    ev, pool = eval_and_pool
    for opts in (
        DecontaminateOptions(ngram=13, minhash_threshold=None),
        DecontaminateOptions(ngram=None, minhash_threshold=0.8),
        DecontaminateOptions(ngram=None, minhash_threshold=None, ratio_threshold=95),
    ):
        m = find_matches(pool, [build_index("evalset", ev, opts)], opts)
        assert m.row.tolist() == [0, 1], opts  # not the generic stem (2), not a reworded question (3), not 4
        assert set(m.eval_set) == {"evalset"} and m.eval_ref[0] == ev.column("source_id")[0].as_py()
    m = find_matches(pool, [build_index("evalset", ev, DecontaminateOptions())], DecontaminateOptions())
    assert m.method[0] == "ngram13_question" and m.similarity[0] == 1.0


def test_question_only_match_needs_min_words(eval_and_pool: tuple[pa.Table, pa.Table]) -> None:
    ev, pool = eval_and_pool
    opts = DecontaminateOptions(ngram=13, min_question_words=100)
    m = find_matches(pool, [build_index("e", ev, opts)], opts)
    assert 0 in m.row.tolist()  # question + sorted options still matches the reordered copy
    assert "question_options" in m.method[m.row.tolist().index(0)]


@pytest.mark.parametrize("overlap", [0.0, 0.3, 0.5, 1.0])
def test_best_ngram_overlap_equals_a_literal_set_count(overlap: float) -> None:
    """The n-gram kernel against plain Python sets: per pool text the eval text sharing the largest share of its
    n-grams (ties: the lowest eval row), kept at share >= overlap and > 0; question-only rows may be masked."""
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(4)]  # a small vocabulary: many texts share 3-grams, ties are common
    pool = [" ".join(rng.choice(vocab, int(rng.integers(0, 9)))) for _ in range(300)]
    evals = [" ".join(rng.choice(vocab, int(rng.integers(1, 9)))) for _ in range(40)]
    h = mh.MinHasher("word", 3)
    ps, es = h.shingle_sets(pool), h.shingle_sets(evals)
    e_sets = [set(es.values[es.offsets[i] : es.offsets[i] + es.sizes[i]].tolist()) for i in range(len(evals))]
    rows = np.repeat(np.arange(len(evals)), es.sizes)
    vals = np.concatenate([es.values[es.offsets[i] : es.offsets[i] + es.sizes[i]] for i in range(len(evals))])
    order = np.argsort(vals, kind="stable")
    ok = rng.random(len(pool)) < 0.8
    got = best_ngram_overlap(ps, vals[order], rows[order], n_eval=len(evals), rows_ok=ok, overlap=overlap)
    want: list[tuple[int, int, float]] = []
    for d in range(len(pool)):
        mine = set(ps.values[ps.offsets[d] : ps.offsets[d] + ps.sizes[d]].tolist())
        if not ok[d] or not mine:
            continue
        shared = [len(mine & e) for e in e_sets]
        top = max(shared)
        if top and top / len(mine) >= overlap:
            want.append((d, shared.index(top), top / len(mine)))
    assert len(want) > 20  # the case is not vacuous
    assert list(zip(got[0].tolist(), got[1].tolist(), got[2].tolist(), strict=True)) == want


def _demo_cfg(**decon: object) -> CurationConfig:
    return CurationConfig(
        sources=[{"name": "x", "format": "medqa", "path": "x"}],
        dedup={"text": "question_options"},
        decontaminate={
            "eval_sets": [
                {
                    "name": "medqa_test",
                    "format": "medqa",
                    "path": str(SAMPLE_POOL / "eval_medqa_test.jsonl"),
                    "split": "test",
                },
                {
                    "name": "pubmedqa_test",
                    "format": "pubmedqa",
                    "path": str(SAMPLE_POOL / "pubmedqa.jsonl"),
                    "split": "test",
                },
            ],
            **decon,
        },
        teacher={"engine": "t"},
        engines={"t": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
    )


def test_stage_on_demo_pool_removes_the_planted_copies(tmp_path: Path) -> None:
    sources = [
        SourceConfig(name="medqa", format="medqa", path=str(SAMPLE_POOL / "medqa.jsonl")),
        SourceConfig(name="medmcqa", format="medmcqa", path=str(SAMPLE_POOL / "medmcqa.parquet")),
        SourceConfig(name="pubmedqa", format="pubmedqa", path=str(SAMPLE_POOL / "pubmedqa.jsonl")),
    ]
    q = ingest_in_process(sources, IngestOptions(m1_shuffle=True)).questions
    store = RunStore(str(tmp_path / "run"))
    store.commit([store.write_table("questions", q)])
    cfg = _demo_cfg(ratio_threshold=95, batch_rows=4)  # small batches: boundaries are exercised
    for stage in (DedupStage(), DecontaminateStage()):
        result = stage.run(StageContext(store=store, config=cfg, input_hash="h"))
        result.check_accounting(stage.name)
        store.commit(result.outputs)
    removed = result.details["decontaminate"]["removed_per_eval_set"]
    # The three planted MedQA-test copies, and three PubMedQA train-half questions whose question text recurs
    # in the held-out half (the synthetic PubMedQA questions come from a few templates).
    assert removed == {"medqa_test": 3, "pubmedqa_test": 3}
    cont = store.read_table("contamination").to_pylist()
    ids = q.column("source_id").to_pylist()
    planted = sorted(ids[r["pool_index"]] for r in cont if r["eval_set"] == "medqa_test")
    assert planted == ["c95c7b2e-0005", "medqa.jsonl:21", "medqa.jsonl:5"]
    cand = store.read_table("candidates")
    kept = store.read_table("dedup", columns=["kept"]).column("kept").to_pylist()
    assert cand.num_rows == sum(kept) - 6
    pi = cand.column("pool_index").to_numpy()
    assert (np.diff(pi) > 0).all()  # pool order
    assert cand.column("qid").to_pylist() == [q.column("qid")[int(i)].as_py() for i in pi]
    assert store.read_table("rejects/decontaminate").column("reason").to_pylist() == ["contaminated"] * 6

    # The second pass (m23k) on a curated table that still holds a contaminated row.
    cand_rows = cand.slice(0, 5)
    bad = q.take([4])
    curated = pa.table(
        {
            "answer_idx": pa.concat_arrays(
                [
                    cand_rows.column("answer_label").combine_chunks(),
                    bad.column("answer_label").combine_chunks(),
                ]
            ),
            "source": pa.concat_arrays(
                [cand_rows.column("source").combine_chunks(), bad.column("source").combine_chunks()]
            ),
            "metadata": pa.concat_arrays(
                [cand_rows.column("metadata").combine_chunks(), bad.column("metadata").combine_chunks()]
            ),
            "prompt": pa.concat_arrays(
                [cand_rows.column("prompt").combine_chunks(), bad.column("prompt").combine_chunks()]
            ),
            "answer_letter": ["A"] * 6,
            "answer_string": ["x"] * 6,
            "reasoning": ["r"] * 6,
            "distilled_answer_string": ["x"] * 6,
            "text": ["t"] * 6,
            "qid": pa.concat_arrays(
                [cand_rows.column("qid").combine_chunks(), bad.column("qid").combine_chunks()]
            ),
            "pool_index": [*cand_rows.column("pool_index").to_pylist(), 4],
            "attempt": [1] * 6,
            "model": ["m"] * 6,
            "request_id": [f"r{i}" for i in range(6)],
        }
    )
    # The contaminated row is not a candidate: join question and options from `questions` instead.
    store.commit([store.write_table("curated", curated)])
    store.manifest["tables"].pop("candidates")
    result = M23kStage().run(StageContext(store=store, config=cfg, input_hash="h"))
    result.check_accounting("m23k")
    store.commit(result.outputs)
    m23k = store.read_table("m23k")
    assert m23k.num_rows == 5 and 4 not in m23k.column("pool_index").to_pylist()
    assert result.rejected_by_reason == {"contaminated": 1}
    assert store.read_table("contamination/m23k").column("eval_set").to_pylist() == ["medqa_test"]


@pytest.mark.slow  # starts a local Ray (the runner connects before each stage it runs)
def test_runner_resumes_and_reruns_when_an_eval_set_changes(tmp_path: Path, ray_local: None) -> None:
    from curation.pipeline import run_stages

    q = ingest_in_process(
        [SourceConfig(name="medqa", format="medqa", path=str(SAMPLE_POOL / "medqa.jsonl"))], IngestOptions()
    ).questions
    store = RunStore(str(tmp_path / "run"))
    store.commit([store.write_table("questions", q)])
    eval_copy = tmp_path / "eval.jsonl"
    eval_copy.write_text((SAMPLE_POOL / "eval_medqa_test.jsonl").read_text())
    cfg = CurationConfig(
        sources=[{"name": "medqa", "format": "medqa", "path": str(SAMPLE_POOL / "medqa.jsonl")}],
        dedup={},
        decontaminate={
            "eval_sets": [{"name": "t", "format": "medqa", "path": str(eval_copy), "split": "test"}]
        },
    )
    stages = [DedupStage(), DecontaminateStage()]
    first = run_stages(stages, cfg, store, log=lambda *a: None)
    assert [r["skipped"] for r in first] == [False, False]
    assert first[1]["decontaminate"]["removed_per_eval_set"] == {"t": 2}  # the two MedQA copies
    again = run_stages(stages, cfg, store, log=lambda *a: None)
    assert [r["skipped"] for r in again] == [True, True]
    eval_copy.write_text("\n".join(eval_copy.read_text().splitlines()[2:]) + "\n")  # drop the MedQA copies
    from curation.errors import RunConflictError

    with pytest.raises(RunConflictError, match="decontaminate: changed files"):
        run_stages(stages, cfg, store, log=lambda *a: None)
    third = run_stages([DecontaminateStage()], cfg, store, force=True, log=lambda *a: None)
    assert third[0]["skipped"] is False and third[0]["rows_rejected"] == 0
    assert store.read_table("candidates").num_rows == first[1]["rows_in"]

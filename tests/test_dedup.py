"""Dedup: the rules on hand-made cases, m1's rule against brute force, and the stage on a real run store."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from rapidfuzz import fuzz, process

from curation.config import CurationConfig, DedupOptions, IngestOptions, SourceConfig, preset_section
from curation.pipeline import StageContext
from curation.rules.dedup import EXACT, NEAR, decide, exact_representatives
from curation.stages.dedup import DedupStage, comparison_texts, dedup_decisions
from curation.stages.ingest import ingest_in_process
from curation.store.runstore import RunStore

SAMPLE_POOL = Path(__file__).resolve().parents[1] / "curation" / "sample_pool"
M1_DEDUP = preset_section("m1", "dedup")  # curation/configs/m1.yaml, as users run it


def test_earlier_rule_is_not_transitive_and_cluster_rule_is() -> None:
    # A~B, B~C, not A~C; D is an exact copy of B.
    rep = exact_representatives(np.array([[1, 1], [2, 2], [3, 3], [2, 2]], dtype=np.uint64))
    assert rep.tolist() == [0, 1, 2, 1]
    pairs = np.array([[0, 1], [1, 2]])
    sims = np.array([96.0, 97.0])
    m1 = decide(4, rep, pairs, sims, rule="earlier")
    assert m1.duplicate_of.tolist() == [-1, 0, 1, 1]
    assert m1.rule.tolist() == [0, NEAR, NEAR, EXACT]
    assert m1.similarity[1:].tolist() == [96.0, 97.0, 1.0]
    cl = decide(4, rep, pairs, sims, rule="cluster")
    assert cl.kept.tolist() == [True, False, False, False]
    assert cl.cluster.tolist() == [0, 0, 0, 0]
    assert cl.duplicate_of.tolist() == [-1, 0, 1, 1]  # the lowest row each was verified against


def test_cluster_rule_keeps_lowest_and_records_lowest_neighbour() -> None:
    rep = np.arange(5)
    pairs = np.array([[1, 3], [2, 3], [0, 4]])
    d = decide(5, rep, pairs, np.array([0.9, 0.95, 0.85]), rule="cluster")
    assert d.kept.tolist() == [True, True, False, False, False]
    assert d.duplicate_of.tolist() == [-1, -1, 3, 1, 0]
    assert d.cluster.tolist() == [0, 1, 1, 1, 0]


def _m1_pool(seed: int = 5) -> list[str]:
    """Sample-pool prompts plus near copies at ratio ~95-99 (spread edits: the hard case for the candidate step),
    chains (A~B~C) and exact copies."""
    q = ingest_in_process(
        [
            SourceConfig(name="medqa", format="medqa", path=str(SAMPLE_POOL / "medqa.jsonl")),
            SourceConfig(name="medmcqa", format="medmcqa", path=str(SAMPLE_POOL / "medmcqa.parquet")),
        ],
        IngestOptions(m1_shuffle=True),
    ).questions
    prompts = q.column("prompt").to_pylist()
    rng = random.Random(seed)
    out = list(prompts)
    for p in rng.sample(prompts, 60):
        s = list(p)
        frac = rng.uniform(0.005, 0.05)
        for i in np.linspace(0, len(s) - 1, max(1, int(frac * len(s)))).astype(int):
            s[i] = chr(97 + rng.randrange(26))
        b = "".join(s)
        out.insert(rng.randrange(len(out) + 1), b)
        if rng.random() < 0.3:  # a chain: a copy of the copy, edited again
            c = list(b)
            for i in rng.sample(range(len(c)), max(1, len(c) // 60)):
                c[i] = "#"
            out.insert(rng.randrange(len(out) + 1), "".join(c))
    for p in rng.sample(out, 10):
        out.insert(rng.randrange(len(out) + 1), p)
    return out


def test_m1_preset_equals_brute_force_ratio_rule() -> None:
    prompts = _m1_pool()
    scores = process.cdist(prompts, prompts, scorer=fuzz.ratio, workers=-1, score_cutoff=95)
    n = len(prompts)
    want = np.full(n, -1)
    for i in range(n):
        earlier = np.flatnonzero(scores[i, :i] >= 95)
        if len(earlier):
            want[i] = earlier[0]
    assert (want >= 0).sum() > 50  # the pool really has m1 duplicates
    table = pa.table({"prompt": pa.array(prompts, pa.string())})
    d, details = dedup_decisions(pads.dataset(table), DedupOptions(**M1_DEDUP), log=None)
    assert (d.duplicate_of >= 0).tolist() == (want >= 0).tolist()  # exactly the rows m1's rule drops
    dropped = np.flatnonzero(want >= 0)
    # Each records an earlier row it matches (an exact copy records its first copy, which m1's lowest match
    # may precede), with the true ratio.
    got = d.duplicate_of[dropped]
    assert (got < dropped).all()
    ratios = [fuzz.ratio(prompts[i], prompts[j]) for i, j in zip(dropped, got, strict=True)]
    assert min(ratios) >= 95
    np.testing.assert_allclose(d.similarity[dropped], ratios)
    assert (got == want[dropped]).mean() > 0.95
    assert details["candidate_pairs"] >= details["verified_pairs"]


def test_question_options_text_ignores_option_order() -> None:
    opt = pa.list_(pa.struct([("label", pa.string()), ("text", pa.string())]))
    t = pa.table(
        {
            "question": ["Q?", "Q?"],
            "options": pa.array(
                [
                    [{"label": "A", "text": "b"}, {"label": "B", "text": "a"}],
                    [{"label": "A", "text": "a"}, {"label": "B", "text": "b"}],
                ],
                opt,
            ),
        }
    )
    assert comparison_texts(t, "question_options").to_pylist() == ["Q?\na\nb", "Q?\na\nb"]


def _store_with_questions(tmp_path: Path) -> tuple[RunStore, pa.Table]:
    sources = [
        SourceConfig(name="medqa", format="medqa", path=str(SAMPLE_POOL / "medqa.jsonl")),
        SourceConfig(name="medmcqa", format="medmcqa", path=str(SAMPLE_POOL / "medmcqa.parquet")),
        SourceConfig(name="headqa", format="headqa", path=str(SAMPLE_POOL / "headqa.json")),
    ]
    q = ingest_in_process(sources, IngestOptions(m1_shuffle=False)).questions
    store = RunStore(str(tmp_path / "run"))
    store.commit([store.write_table("questions", q)])
    return store, q


@pytest.mark.parametrize("opts", [dict(text="question_options"), M1_DEDUP])
def test_stage_drops_cross_source_copies_and_accounts_for_every_row(tmp_path: Path, opts: dict) -> None:
    store, q = _store_with_questions(tmp_path)
    cfg = CurationConfig(sources=[{"name": "x", "format": "medqa", "path": "x"}], dedup=DedupOptions(**opts))
    result = DedupStage().run(StageContext(store=store, config=cfg, input_hash="h"))
    result.check_accounting("dedup")
    store.commit(result.outputs)
    dedup = store.read_table("dedup").to_pylist()
    assert len(dedup) == q.num_rows and [r["pool_index"] for r in dedup] == list(range(q.num_rows))
    dropped = [r for r in dedup if not r["kept"]]
    # The sample pool's cross-source copies: MedMCQA crossdup-0090/0101 repeat MedQA rows, HEAD-QA repeats MedMCQA.
    ids = q.column("source_id").to_pylist()
    dropped_ids = {ids[r["pool_index"]] for r in dropped}
    assert {"crossdup-0090", "crossdup-0101"} <= dropped_ids
    for r in dropped:
        assert r["duplicate_of"] < r["pool_index"] and r["rule"] in ("exact", "near_jaccard", "near_ratio")
        assert r["duplicate_of_qid"] == dedup[r["duplicate_of"]]["qid"]
    rejects = store.read_table("rejects/dedup").to_pylist()
    assert len(rejects) == len(dropped) == result.rows_rejected
    assert {r["reason"] for r in rejects} <= {"exact_duplicate", "near_duplicate"}
    assert "duplicates pool_index" in rejects[0]["detail"]
    # By qid, as every stage after ingest: the lineage view joins rejects back to the pool on it.
    assert sorted(r["source_ref"] for r in rejects) == sorted(r["qid"] for r in dropped)
    assert result.details["dedup"]["detection_curve"].startswith("J=0.50")


def test_stages_run_only_when_configured() -> None:
    from curation.stages.decontaminate import DecontaminateStage

    bare = CurationConfig(sources=[{"name": "x", "format": "medqa", "path": "x"}])
    assert not DedupStage().enabled(bare) and not DecontaminateStage().enabled(bare)
    with_dedup = CurationConfig(sources=[{"name": "x", "format": "medqa", "path": "x"}], dedup={})
    # decontaminate runs with dedup even without eval sets: it writes the candidates the later stages read.
    assert DedupStage().enabled(with_dedup) and DecontaminateStage().enabled(with_dedup)
    with pytest.raises(ValueError, match="0-100 scale"):
        DedupOptions(measure="ratio", threshold=0.95)

"""Dedup as Ray work (curation/distributed/dedup.py) gives the single-process path's tables row for row."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.config import CurationConfig, DedupOptions, IngestOptions, SourceConfig, preset_section
from curation.distributed.dedup import KILL_ONCE_ENV
from curation.pipeline import Resources, StageContext
from curation.rules import minhash as mh
from curation.stages.dedup import DedupStage, use_ray
from curation.stages.ingest import ingest_in_process
from curation.store.runstore import RunStore

SAMPLE_POOL = Path(__file__).resolve().parents[1] / "curation" / "sample_pool"
M1_DEDUP = preset_section("m1", "dedup")
DEFAULT_DEDUP = {"text": "question_options"}  # curation/configs/default.yaml's choice of text


def _edit(text: str, rng: random.Random, frac: float) -> str:
    s = list(text)
    for i in rng.sample(range(len(s)), max(1, int(frac * len(s)))):
        s[i] = rng.choice("abcdefghijklmnopqrstuvwxyzéßж")
    return "".join(s)


def _hard_pool(seed: int = 3) -> pa.Table:
    """The sample pool plus exact copies (case and spacing changed), near copies and chains, templated stems
    that share most shingles, and non-ASCII texts with near copies, shuffled."""
    sources = [
        SourceConfig(name="medqa", format="medqa", path=str(SAMPLE_POOL / "medqa.jsonl")),
        SourceConfig(name="medmcqa", format="medmcqa", path=str(SAMPLE_POOL / "medmcqa.parquet")),
        SourceConfig(name="headqa", format="headqa", path=str(SAMPLE_POOL / "headqa.json")),
    ]
    q = ingest_in_process(sources, IngestOptions(m1_shuffle=False)).questions
    rows = q.to_pylist()
    rng = random.Random(seed)
    extra = []

    def variant(base: dict, question: str, tag: str) -> dict:
        row = dict(base)
        row["question"] = question
        row["prompt"] = question + "\n" + "\n".join(f"{o['label']}. {o['text']}" for o in row["options"])
        row["qid"] = f"{row['qid']}-{tag}-{len(extra)}"
        row["source_id"] = f"{row['source_id']}-{tag}-{len(extra)}"
        return row

    for r in rng.sample(rows, 40):  # exact copies, up to case and spacing
        extra.append(variant(r, "  " + r["question"].upper().replace(" ", "   "), "copy"))
    for r in rng.sample(rows, 60):  # near copies, some chained
        b = variant(r, _edit(r["question"], rng, rng.uniform(0.005, 0.04)), "near")
        extra.append(b)
        if rng.random() < 0.3:
            extra.append(variant(b, _edit(b["question"], rng, 0.01), "chain"))
    template = (
        "A {age}-year-old {who} presents to the emergency department with {sym} for {days} days. Vital signs "
        "are within normal limits. Physical examination is unremarkable. Which of the following is the most "
        "likely diagnosis?"
    )
    syms = ["fever", "chest pain", "dyspnea", "a cough", "headache", "abdominal pain", "nausea", "back pain"]
    for i in range(150):  # templated stems: buckets of many rows, few of them true matches
        r = rows[i % len(rows)]
        text = template.format(
            age=20 + i % 60, who=rng.choice(["man", "woman", "boy"]), sym=syms[i % 8], days=1 + i % 9
        )
        extra.append(variant(r, text, "tmpl"))
    greek = "Ποια είναι η πιο πιθανή διάγνωση σε ασθενή με πυρετό, βήχα και δύσπνοια για τρεις ημέρες; 肺炎 или грипп"
    for i in range(30):  # non-ASCII, with near copies
        r = rows[i]
        text = f"{greek} {i} " + " ".join(rng.sample(greek.split(), 8))
        extra.append(variant(r, text, "utf8"))
        extra.append(variant(r, _edit(text, rng, 0.02), "utf8near"))
    extra.append(variant(rows[0], "", "empty"))  # no shingles: never pairs
    extra.append(variant(rows[1], "", "empty"))
    out = rows + extra
    rng.shuffle(out)
    return pa.Table.from_pylist(out, schema=q.schema)


def _run(tmp_path: Path, name: str, q: pa.Table, opts: dict, resources: Resources | None = None) -> tuple:
    store = RunStore(str(tmp_path / name))
    store.commit([store.write_table("questions", q)])
    cfg = CurationConfig(sources=[{"name": "x", "format": "medqa", "path": "x"}], dedup=DedupOptions(**opts))
    result = DedupStage().run(StageContext(store, cfg, "h", resources or DedupStage.resources))
    result.check_accounting("dedup")
    store.commit(result.outputs)
    return store.read_table("dedup"), store.read_table("rejects/dedup"), result


# Small blocks and partitions, so that every shuffle has several of each (a real pool gets them by size).
SPLIT = {"batch_rows": 61, "partition_records": 300}


@pytest.mark.parametrize(
    "opts",
    [
        pytest.param(DEFAULT_DEDUP, id="default"),
        pytest.param(M1_DEDUP, id="m1"),
        pytest.param(
            {**DEFAULT_DEDUP, "rule": "earlier", "minhash": {"bands": 21, "rows": 6, "max_bucket": 3}},
            id="capped",
        ),
        pytest.param({**M1_DEDUP, "rule": "cluster", "exact": False}, id="m1-cluster-no-exact"),
        pytest.param({"text": "question", "near": False}, id="exact-only"),
    ],
)
def test_ray_path_writes_the_driver_paths_tables(tmp_path: Path, ray_local: None, opts: dict) -> None:
    q = _hard_pool()
    want_dedup, want_rejects, want = _run(tmp_path, "driver", q, {**opts, "executor": "driver"})
    got_dedup, got_rejects, got = _run(tmp_path, "ray", q, {**opts, **SPLIT, "executor": "ray"})
    assert got.details["dedup"]["executor"] == "ray" and want.details["dedup"]["executor"] == "driver"
    assert got.details["dedup"]["blocks"] > 10
    if opts.get("near", True):
        assert min(got.details["dedup"]["partitions"].values()) > 1
    assert got_dedup.equals(want_dedup)  # every row: kept, rule, duplicate_of, similarity, cluster
    assert got_rejects.equals(want_rejects)
    for key in (
        "rows",
        "exact_duplicates",
        "near_duplicates",
        "candidate_pairs",
        "verified_pairs",
        "oversized_buckets",
    ):
        assert got.details["dedup"][key] == want.details["dedup"][key], key
    assert (got.rows_out, got.rows_rejected, got.rejected_by_reason) == (
        want.rows_out,
        want.rows_rejected,
        want.rejected_by_reason,
    )
    dropped = want_dedup.num_rows - sum(want_dedup.column("kept").to_pylist())
    assert dropped > (40 if opts.get("near", True) else 30)  # the pool really has duplicates of each kind
    if opts.get("minhash", {}).get("max_bucket") == 3:
        assert got.details["dedup"]["oversized_buckets"] > 0


def test_ray_path_survives_a_worker_killed_mid_shuffle(tmp_path: Path, ray_local: None, monkeypatch) -> None:
    q = _hard_pool()
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    got_dedup, got_rejects, _ = _run(tmp_path, "ray", q, {**M1_DEDUP, **SPLIT, "executor": "ray"})
    assert marker.exists()  # a buckets task's worker died (os._exit), and Ray ran the task again
    monkeypatch.delenv(KILL_ONCE_ENV)
    want_dedup, want_rejects, _ = _run(tmp_path, "driver", q, {**M1_DEDUP, "executor": "driver"})
    assert got_dedup.equals(want_dedup) and got_rejects.equals(want_rejects)


def test_ray_path_on_an_empty_pool_writes_empty_tables(tmp_path: Path, ray_local: None) -> None:
    q = _hard_pool().slice(0, 0)
    dedup, rejects, result = _run(tmp_path, "ray", q, {**M1_DEDUP, "executor": "ray"})
    assert dedup.num_rows == rejects.num_rows == result.rows_in == 0


def test_auto_picks_the_ray_path_by_pool_size() -> None:
    opts = DedupOptions()
    assert opts.executor == "auto" and opts.ray_min_rows == 200_000
    assert not use_ray(opts, 199_999) and use_ray(opts, 200_000)
    assert use_ray(DedupOptions(executor="ray"), 1) and not use_ray(DedupOptions(executor="driver"), 10**9)


def test_bucket_pairs_equal_candidate_pairs_before_the_histogram_bound() -> None:
    rng = np.random.default_rng(0)
    n, bands = 3_000, 4
    band_hashes = rng.integers(0, 40, size=(n, bands)).astype(np.uint64)  # many large buckets
    valid = rng.random(n) > 0.1
    want, want_capped = mh.candidate_pairs(band_hashes, valid=valid, max_bucket=7)
    rows = np.flatnonzero(valid)
    hashes = band_hashes[rows].T.ravel()
    keys = (np.repeat(np.arange(bands, dtype=np.uint64), len(rows)) << np.uint64(mh.BAND_SHIFT)) | np.tile(
        rows.astype(np.uint64), bands
    )
    # Split into two partitions by hash, as the shuffle does; the union, made unique, is the same set.
    parts = [mh.bucket_pairs(hashes[hashes % 2 == p], keys[hashes % 2 == p], max_bucket=7) for p in (0, 1)]
    got = np.unique(np.concatenate([p[0] for p in parts]), axis=0)
    assert got.tolist() == want.tolist() and sum(p[1] for p in parts) == want_capped > 0

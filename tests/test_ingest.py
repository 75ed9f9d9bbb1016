"""The ingest stage over the fixtures: exact row accounting, m1's shuffle and prompt, Ray == in-process, errors."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import schemas
from curation import source_plan
from curation.config import CurationConfig, IngestOptions, SourceConfig, load_config
from curation.formats import get_parser, pubmedqa_split_indices
from curation.pipeline import StageContext, run_stages
from curation.prompt import qid, render_m1_prompt
from curation.stages.ingest import IngestError, IngestStage, ingest_in_process
from curation.store.runstore import RunStore

INGESTED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
PACKAGE = Path(__file__).resolve().parents[1] / "curation"


def fixture_sources(f: Path) -> list[SourceConfig]:
    return [
        SourceConfig(name="medqa", format="medqa", path=str(f / "medqa.jsonl")),
        SourceConfig(name="medmcqa_csv", format="medmcqa", path=str(f / "medmcqa.csv")),
        SourceConfig(name="medmcqa_pq", format="medmcqa", path=str(f / "medmcqa.parquet")),
        SourceConfig(name="headqa", format="headqa", path=str(f / "headqa.json")),
        SourceConfig(name="pubmedqa", format="pubmedqa", path=str(f / "pubmedqa.jsonl")),
        SourceConfig(
            name="mcq_choices",
            format="mcq",
            path=str(f / "mcq_choices.parquet"),
            mapping={
                "question": "stem",
                "options": "choices",
                "answer": "key",
                "id": "uid",
                "context": "passage",
            },
        ),
        SourceConfig(
            name="mcq_columns",
            format="mcq",
            path=str(f / "mcq_columns.csv"),
            mapping={
                "question": "stem",
                "options": ["o1", "o2", "o3", "o4", "o5"],
                "answer": "correct",
                "answer_type": "index1",
                "id": "qid",
            },
        ),
        SourceConfig(
            name="mcq_rows",
            format="mcq",
            path=str(f / "mcq_rows.json"),
            mapping={"question": "item.stem", "options": "choices", "answer": "key", "answer_type": "text"},
        ),
        SourceConfig(name="parts", format="medmcqa", path=str(f / "medmcqa_parts")),
        SourceConfig(name="hf", format="pubmedqa", path=f"hf:{f / 'hf_pubmedqa'}/train"),
    ]


EXPECTED_PER_SOURCE = {
    "medqa": {"in": 12, "out": 3, "rejected": 9},
    "medmcqa_csv": {"in": 10, "out": 4, "rejected": 6},
    "medmcqa_pq": {"in": 7, "out": 6, "rejected": 1},
    "headqa": {"in": 7, "out": 3, "rejected": 4},
    "pubmedqa": {"in": 10, "out": 5, "rejected": 5},
    "mcq_choices": {"in": 5, "out": 2, "rejected": 3},
    "mcq_columns": {"in": 4, "out": 2, "rejected": 2},
    "mcq_rows": {"in": 4, "out": 1, "rejected": 3},
    "parts": {"in": 6, "out": 6, "rejected": 0},
    "hf": {"in": 20, "out": 10, "rejected": 10},
}
EXPECTED_REASONS = {
    "not_in_split": 13,
    "answer_not_in_options": 11,
    "bad_field": 5,
    "missing_question": 4,
    "duplicate_label": 3,
    "bad_utf8": 3,
    "too_few_options": 2,
    "duplicate_qid": 1,
    "question_too_long": 1,
}


@pytest.fixture(scope="module")
def shuffled(fixtures_dir: Path):
    return ingest_in_process(
        fixture_sources(fixtures_dir), IngestOptions(m1_shuffle=True), ingested_at=INGESTED_AT
    )


def test_fixture_row_accounting(shuffled) -> None:
    counts = shuffled.counts
    assert counts.per_source == EXPECTED_PER_SOURCE
    assert dict(counts.by_reason) == EXPECTED_REASONS
    assert (counts.rows_in, counts.rows_out, counts.rows_rejected) == (85, 42, 43)
    assert shuffled.questions.num_rows == 42 and shuffled.rejects.num_rows == 43
    assert shuffled.questions.schema.equals(schemas.get("questions").schema)
    assert shuffled.rejects.schema.equals(schemas.get("rejects").schema)
    assert set(shuffled.rejects.column("stage").to_pylist()) == {"ingest"}


def test_every_reject_kind_at_its_line(shuffled) -> None:
    rejects = [r for r in shuffled.rejects.to_pylist() if r["source"] == "medqa"]
    assert {r["source_ref"]: r["reason"] for r in rejects} == {
        "medqa.jsonl:4": "missing_question",
        "medqa.jsonl:5": "bad_field",
        "medqa.jsonl:6": "answer_not_in_options",
        "medqa.jsonl:7": "answer_not_in_options",
        "medqa.jsonl:8": "too_few_options",
        "medqa.jsonl:9": "duplicate_label",
        "medqa.jsonl:10": "bad_utf8",
        "medqa.jsonl:11": "duplicate_qid",
        "medqa.jsonl:12": "question_too_long",
    }
    by_ref = {r["source_ref"]: r for r in rejects}
    assert "medqa.jsonl:1" in by_ref["medqa.jsonl:11"]["detail"]  # names the row it duplicates
    assert "options" in by_ref["medqa.jsonl:5"]["detail"]
    assert "\\xe9" in by_ref["medqa.jsonl:10"]["raw"]  # the undecodable byte, escaped
    assert json.loads(by_ref["medqa.jsonl:4"]["raw"])["question"] == ""
    csv_rejects = {
        r["source_ref"]: r["reason"] for r in shuffled.rejects.to_pylist() if r["source"] == "medmcqa_csv"
    }
    assert csv_rejects == {
        "medmcqa.csv:5": "answer_not_in_options",
        "medmcqa.csv:6": "bad_field",
        "medmcqa.csv:7": "missing_question",
        "medmcqa.csv:8": "answer_not_in_options",
        "medmcqa.csv:9": "too_few_options",
        "medmcqa.csv:10": "bad_utf8",
    }


def test_m1_shuffle_in_the_pipeline_matches_a_literal_reimplementation(shuffled) -> None:
    # medqa candidates in source order: lines 1 (4 options), 2 (5), 11 (4, a duplicate), 12 (4, too long),
    # 13 (4). The generator advances for each of them, duplicates and too-long rows included.
    rng = np.random.default_rng(42)
    perms = [rng.permutation(n).tolist() for n in (4, 5, 4, 4, 4)]
    rows = [r for r in shuffled.questions.to_pylist() if r["source"] == "medqa"]
    assert [r["source_id"] for r in rows] == ["medqa.jsonl:1", "medqa.jsonl:2", "medqa.jsonl:13"]
    source_options = [
        ["Methimazole", "Levothyroxine", "Propranolol", "Radioactive iodine"],
        ["Phenytoin", "Carbamazepine", "Ethosuximide", "Gabapentin", "Vigabatrin"],
        ["Vitamin A", "Vitamin C", "Vitamin D", "Vitamin K"],
    ]
    answers = ["Levothyroxine", "Ethosuximide", "Vitamin C"]
    for row, texts, perm, answer in zip(
        rows, source_options, [perms[0], perms[1], perms[4]], answers, strict=True
    ):
        shuffled_texts = [texts[i] for i in perm]
        assert [o["text"] for o in row["options"]] == shuffled_texts
        assert [o["label"] for o in row["options"]] == list("ABCDE"[: len(texts)])
        assert row["answer_text"] == answer
        assert row["answer_label"] == "ABCDE"[shuffled_texts.index(answer)]
    # Hand-checked literal values.
    assert (rows[0]["answer_label"], rows[1]["answer_label"], rows[2]["answer_label"]) == ("C", "C", "A")


def test_without_shuffle_options_keep_source_order(fixtures_dir: Path) -> None:
    plain = ingest_in_process(fixture_sources(fixtures_dir)[:1], IngestOptions(m1_shuffle=False))
    first = plain.questions.to_pylist()[0]
    assert [o["text"] for o in first["options"]] == [
        "Methimazole",
        "Levothyroxine",
        "Propranolol",
        "Radioactive iodine",
    ]
    assert first["answer_label"] == "B"


def test_prompt_is_m1s_rendering_byte_for_byte(shuffled) -> None:
    for row in shuffled.questions.to_pylist():
        options = [(o["label"], o["text"]) for o in row["options"]]
        assert row["prompt"] == render_m1_prompt(row["question"], options, row["context"])
        assert row["qid"] == qid(row["question"], [t for _, t in options], row["context"])
    first = shuffled.questions.to_pylist()[0]
    assert first["prompt"] == (
        "A 34-year-old woman has fatigue, cold intolerance and constipation for 4 months. Serum TSH is elevated "
        "and free T4 is low. Which of the following is the most appropriate pharmacotherapy?\n"
        "A. Radioactive iodine\nB. Propranolol\nC. Levothyroxine\nD. Methimazole"
    )
    pub = next(r for r in shuffled.questions.to_pylist() if r["source"] == "pubmedqa")
    assert pub["prompt"].startswith(pub["context"] + "\n" + pub["question"] + "\nA. ")
    heparin = next(r for r in shuffled.questions.to_pylist() if r["source_id"] == "m-009")
    assert any(o["text"] == "" for o in heparin["options"])  # an empty option stays, as m1 renders it


def test_pubmedqa_keeps_m1s_train_half_in_permutation_order(shuffled) -> None:
    train, _ = pubmedqa_split_indices(20)
    ids = [r["source_id"] for r in shuffled.questions.to_pylist() if r["source"] == "hf"]
    assert ids == [str(8_000_000 + i) for i in train]
    train10, test10 = pubmedqa_split_indices(10)
    ids = [r["source_id"] for r in shuffled.questions.to_pylist() if r["source"] == "pubmedqa"]
    assert ids == [str(9_000_000 + i) for i in train10 if i not in (2, 7)]  # rows 2 and 7 are bad rows
    refs = {
        r["source_ref"]
        for r in shuffled.rejects.to_pylist()
        if r["reason"] == "not_in_split" and r["source"] == "pubmedqa"
    }
    assert refs == {f"pubmedqa.jsonl:{i + 1}" for i in test10 if i not in (2, 7)}
    meta = json.loads(next(r for r in shuffled.questions.to_pylist() if r["source"] == "hf")["metadata"])
    assert meta["context"]["meshes"] == ["Humans", "Early Ambulation", "Length of Stay"]


def test_cross_source_exact_duplicates_are_kept(shuffled) -> None:
    rows = shuffled.questions.to_pylist()
    medqa_first = next(r for r in rows if r["source_id"] == "medqa.jsonl:1")
    twin = next(r for r in rows if r["source_id"] == "m-010")
    assert medqa_first["qid"] == twin["qid"] and twin["source"] == "medmcqa_csv"


def test_metadata_is_the_raw_row(shuffled, fixtures_dir: Path) -> None:
    first_line = (fixtures_dir / "medqa.jsonl").read_bytes().splitlines()[0].decode()
    assert shuffled.questions.column("metadata")[0].as_py() == first_line
    assert set(shuffled.questions.column("ingested_at").to_pylist()) == {INGESTED_AT}
    assert set(shuffled.questions.column("split").to_pylist()) == {"train"}


def test_max_question_chars_is_configurable(fixtures_dir: Path) -> None:
    tables = ingest_in_process(fixture_sources(fixtures_dir)[:1], IngestOptions(max_question_chars=60))
    # Lines 1, 2, 11 and 12 are over 60 characters; line 11 is then too long rather than a duplicate.
    assert tables.counts.by_reason["question_too_long"] == 4
    assert "duplicate_qid" not in tables.counts.by_reason
    assert [r["source_id"] for r in tables.questions.to_pylist()] == ["medqa.jsonl:13"]


def test_pubmedqa_other_split_and_no_split(fixtures_dir: Path) -> None:
    base = fixture_sources(fixtures_dir)[-1]
    test_half = ingest_in_process([base.model_copy(update={"split": "test"})], IngestOptions())
    _, test = pubmedqa_split_indices(20)
    assert [r["source_id"] for r in test_half.questions.to_pylist()] == [str(8_000_000 + i) for i in test]
    everything = ingest_in_process([base.model_copy(update={"split": "all"})], IngestOptions())
    assert everything.counts.rows_out == 20 and everything.questions.column("split")[0].as_py() == "all"


def test_sample_pool_and_demo_config() -> None:
    cfg = load_config(PACKAGE / "configs" / "demo.yaml")
    assert cfg.ingest.m1_shuffle is True
    tables = ingest_in_process(cfg.sources, cfg.ingest)
    counts = tables.counts
    assert (counts.rows_in, counts.rows_out, counts.rows_rejected) == (341, 311, 30)
    assert dict(counts.by_reason) == {
        "not_in_split": 20,
        "answer_not_in_options": 3,
        "missing_question": 2,
        "bad_utf8": 1,
        "duplicate_qid": 1,
        "too_few_options": 1,
        "duplicate_label": 1,
        "bad_field": 1,
    }
    sources_by_qid: dict[str, set[str]] = {}
    for row in tables.questions.to_pylist():
        sources_by_qid.setdefault(row["qid"], set()).add(row["source"])
    assert sorted(sorted(s) for s in sources_by_qid.values() if len(s) > 1) == [
        ["headqa", "medmcqa"],
        ["medmcqa", "medqa"],
        ["medmcqa", "medqa"],
    ]
    five = [r for r in tables.questions.to_pylist() if r["source"] == "medqa" and len(r["options"]) == 5]
    assert len(five) > 20


# ------------------------------------------------------------------------------------------ synth


def test_synth_pool_counts_and_known_duplicates(tmp_path: Path) -> None:
    from curation.cli import main

    assert main(["synth", str(tmp_path / "pool"), "--rows", "3000", "--seed", "3", "--format", "mixed"]) == 0
    dups = json.loads((tmp_path / "pool" / "duplicates.json").read_text())
    assert set(dups) == {"medqa.jsonl", "medmcqa.jsonl", "headqa.jsonl", "pubmedqa.jsonl"}
    total = {"exact": 0, "near": 0}
    for name, fmt in (("medqa.jsonl", "medqa"), ("medmcqa.jsonl", "medmcqa"), ("headqa.jsonl", "headqa")):
        parser = get_parser(fmt)
        rows = [json.loads(line) for line in (tmp_path / "pool" / name).read_text().splitlines()]
        cands = [parser(r) for r in rows]
        ids = [qid(c.question, [t for _, t in c.options], c.context) for c in cands]  # type: ignore[union-attr]
        for dup, original in dups[name]["exact"]:
            assert ids[dup] == ids[original]
        for dup, first in dups[name]["accidental_exact"]:  # template collisions, recorded too
            assert ids[dup] == ids[first]
        # Every repeated qid is a recorded exact duplicate (designed or accidental), and vice versa.
        repeats = sum(n - 1 for n in Counter(ids).values())
        assert repeats == len(dups[name]["exact"]) + len(dups[name]["accidental_exact"])
        for dup, original, _kind in dups[name]["near"]:
            assert ids[dup] != ids[original]
            assert sorted(t for _, t in cands[dup].options) == sorted(t for _, t in cands[original].options)  # type: ignore[union-attr]
        total["exact"] += len(dups[name]["exact"])
        total["near"] += len(dups[name]["near"])
    assert 30 <= total["exact"] <= 90 and 50 <= total["near"] <= 130  # 2% and 3% of ~3,000
    lengths = [
        len(json.loads(line)["question"].split())
        for line in (tmp_path / "pool" / "medqa.jsonl").read_text().splitlines()
    ]
    assert 90 <= float(np.median(lengths)) <= 250
    mm = [
        len(json.loads(line)["question"].split())
        for line in (tmp_path / "pool" / "medmcqa.jsonl").read_text().splitlines()
    ]
    assert 4 <= min(mm) and max(mm) <= 45


def test_synth_parquet_and_determinism(tmp_path: Path) -> None:
    from curation.devtools.synth import generate_pool

    a = generate_pool(tmp_path / "a", 1200, seed=5, parquet=True)
    b = generate_pool(tmp_path / "b", 1200, seed=5, parquet=True, workers=2)
    assert a["files"] == b["files"] and a["rows"] == 1200
    assert (tmp_path / "a" / "medmcqa.parquet").read_bytes() == (
        tmp_path / "b" / "medmcqa.parquet"
    ).read_bytes()


# ------------------------------------------------------------------------------------------ Ray


def ray_stage_run(
    sources: list[SourceConfig], options: IngestOptions, run_dir: Path
) -> tuple[RunStore, list[dict]]:
    cfg = CurationConfig(sources=sources, ingest=options)
    store = RunStore(str(run_dir))
    records = run_stages([IngestStage(ingested_at=INGESTED_AT)], cfg, store, log=lambda *_: None)
    return store, records


def test_ray_pipeline_matches_in_process(
    ray_local: None, fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shuffled
) -> None:
    monkeypatch.setattr(source_plan, "MIN_CHUNK_BYTES", 1)  # many chunks: line numbers must survive the cuts
    options = IngestOptions(m1_shuffle=True, rows_per_chunk=2)
    store, records = ray_stage_run(fixture_sources(fixtures_dir), options, tmp_path / "run")
    questions = store.read_table("questions")
    rejects = store.read_table("rejects/ingest")
    assert questions.equals(shuffled.questions)
    assert rejects.equals(shuffled.rejects)
    record = records[0]
    assert (record["rows_in"], record["rows_out"], record["rows_rejected"]) == (85, 42, 43)
    assert record["rejected_by_reason"] == dict(sorted(EXPECTED_REASONS.items()))
    assert record["ingest_sources"] == EXPECTED_PER_SOURCE
    assert record["ingest_chunks"] > 15
    assert not (tmp_path / "run" / "scratch").exists()
    # Rerunning the same config skips the stage (the input hash covers config and file contents).
    _, again = ray_stage_run(fixture_sources(fixtures_dir), options, tmp_path / "run")
    assert again[0]["skipped"] is True


def test_hash_inputs_follow_config_and_content(fixtures_dir: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes((fixtures_dir / "medqa.jsonl").read_bytes())
    cfg = CurationConfig(sources=[SourceConfig(name="medqa", format="medqa", path=str(pool))])
    stage = IngestStage()
    first = stage.hash_inputs(cfg)
    assert stage.hash_inputs(cfg.model_copy(update={"ingest": IngestOptions(rows_per_chunk=7)})) == first
    assert stage.hash_inputs(cfg.model_copy(update={"ingest": IngestOptions(m1_shuffle=True)})) != first
    pool.write_bytes(pool.read_bytes() + b"\n")
    assert stage.hash_inputs(cfg) != first


@pytest.mark.parametrize(
    ("fmt", "name", "where"),
    [
        ("medqa", "not_json.jsonl", "not_json.jsonl:3"),
        ("headqa", "truncated.json", "truncated.json:"),
        ("medmcqa", "ragged.csv", "ragged.csv:4"),
        ("medmcqa", "corrupt.parquet", "corrupt.parquet"),
        ("medqa", "missing.jsonl", "missing.jsonl: no such file"),
    ],
)
def test_unparseable_file_stops_the_stage_and_writes_nothing(
    ray_local: None, fixtures_dir: Path, tmp_path: Path, fmt: str, name: str, where: str
) -> None:
    sources = [
        SourceConfig(name="good", format="medqa", path=str(fixtures_dir / "medqa.jsonl")),
        SourceConfig(name="broken", format=fmt, path=str(fixtures_dir / "broken" / name)),
    ]
    cfg = CurationConfig(sources=sources)
    store = RunStore(str(tmp_path / "run"))
    with pytest.raises(IngestError) as info:
        IngestStage().run(StageContext(store=store, config=cfg, input_hash="x"))
    assert where in str(info.value)
    leftovers = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert leftovers == []
    assert not (tmp_path / "run" / "tables").exists() or not any(
        (tmp_path / "run" / "tables").rglob("*.parquet")
    )
    assert store.tables() == {}


def test_render_handles_an_empty_pool(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    tables = ingest_in_process([SourceConfig(name="e", format="medqa", path=str(empty))], IngestOptions())
    assert tables.questions.num_rows == 0 and tables.rejects.num_rows == 0
    assert isinstance(tables.questions, pa.Table)
    assert Counter(tables.counts.by_reason) == Counter()

"""Source planning and readers: chunk planning with exact line numbers, every file layout, hf: datasets, and unreadable files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from curation import source_plan
from curation.readers import RawRecord, read_chunk
from curation.source_plan import IngestError, fingerprint, list_files, parse_hf_path, plan_source
from curation.strict_json import locate_repeated_key


def read_all(source: str, path: str | Path, rows_per_chunk: int = 50_000) -> list[RawRecord]:
    return [r for spec in plan_source(source, str(path), rows_per_chunk) for r in read_chunk(spec)]


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let line files split into chunks of a few bytes, so small fixtures cross many chunk boundaries."""
    monkeypatch.setattr(source_plan, "MIN_CHUNK_BYTES", 1)


def test_jsonl_records_lines_and_bad_utf8(fixtures_dir: Path) -> None:
    records = read_all("medqa", fixtures_dir / "medqa.jsonl")
    assert [r.pos for r in records] == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]  # line 3 is blank
    assert records[0].ref == "medqa.jsonl:1"
    assert json.loads(records[0].raw) == records[0].row  # raw is the line as written
    bad = records[8]
    assert (bad.pos, bad.row) == (10, None)
    assert bad.bad_utf8 and "\\xe9" in bad.raw and "Caf\\xe9 workers" in bad.raw


def test_jsonl_chunks_keep_line_numbers(fixtures_dir: Path, tiny_chunks: None) -> None:
    specs = plan_source("medqa", str(fixtures_dir / "medqa.jsonl"), rows_per_chunk=1)
    assert len(specs) >= 3  # one line is 23 KB, the others ~300 bytes
    assert [s.start for s in specs] == sorted(s.start for s in specs)
    assert all(a.stop == b.start for a, b in zip(specs, specs[1:], strict=False))
    chunked = [(r.pos, r.ref, r.raw, r.bad_utf8) for s in specs for r in read_chunk(s)]
    whole = [(r.pos, r.ref, r.raw, r.bad_utf8) for r in read_all("medqa", fixtures_dir / "medqa.jsonl")]
    assert chunked == whole


def test_many_chunks_with_blank_lines_and_crlf(tmp_path: Path, tiny_chunks: None) -> None:
    lines = []
    for i in range(60):
        lines.append(json.dumps({"question": f"q{i}", "pad": "x" * (i % 7)}))
        if i % 11 == 0:
            lines.append("")  # blank lines shift line numbers but are not records
    path = tmp_path / "pool.jsonl"
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    specs = plan_source("p", str(path), rows_per_chunk=3)
    assert len(specs) >= 15
    records = [r for s in specs for r in read_chunk(s)]
    assert [r.row["question"] for r in records] == [f"q{i}" for i in range(60)]
    expected_lines = [n + 1 for n, line in enumerate(lines) if line]
    assert [r.pos for r in records] == expected_lines


def test_csv_multiline_field_and_chunk_cut_outside_quotes(fixtures_dir: Path, tiny_chunks: None) -> None:
    whole = read_all("medmcqa", fixtures_dir / "medmcqa.csv")
    assert [r.pos for r in whole] == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12]  # record 2 spans lines 3-4
    assert whole[1].row["exp"] == 'Classic teaching: "appendix",\nnewer series: ileum.'
    assert whole[7].bad_utf8 == "invalid UTF-8 in column 'question'" and whole[7].row is None
    specs = plan_source("medmcqa", str(fixtures_dir / "medmcqa.csv"), rows_per_chunk=1)
    assert len(specs) > 3 and all(s.header and s.header[0] == "id" for s in specs)
    assert [(r.pos, r.raw) for s in specs for r in read_chunk(s)] == [(r.pos, r.raw) for r in whole]


def test_parquet_row_groups_as_chunks(fixtures_dir: Path) -> None:
    specs = plan_source("pq", str(fixtures_dir / "medmcqa.parquet"), rows_per_chunk=2)
    assert [(s.start, s.stop, s.first_pos) for s in specs] == [(0, 1, 0), (1, 2, 2), (2, 3, 4), (3, 4, 6)]
    records = [r for s in specs for r in read_chunk(s)]
    assert [r.pos for r in records] == list(range(7))
    assert records[4].ref == "medmcqa.parquet:4" and records[4].row["cop"] is None


def test_parquet_invalid_utf8_text_and_binary_columns(fixtures_dir: Path) -> None:
    records = read_all("mcq", fixtures_dir / "mcq_choices.parquet")
    assert records[0].row["stem"] == "Which option is correct in a ten-choice item?"
    assert records[0].row["figure"] == "<10 bytes of binary data>"  # binary data is not a defect
    assert records[1].row["figure"] == "caption text"  # UTF-8 bytes in a binary column read as text
    assert records[2].row is None and records[2].bad_utf8.startswith("invalid UTF-8 in column 'stem'")
    assert "Broken \\\\xff bytes?" in records[2].raw
    assert [r.bad_utf8 is None for r in records] == [True, True, False, True, True]


def test_json_layouts(fixtures_dir: Path, tmp_path: Path) -> None:
    data = read_all("headqa", fixtures_dir / "headqa.json")  # {"data": [...]}
    assert [r.ref for r in data][:2] == ["headqa.json:0", "headqa.json:1"] and len(data) == 7
    by_id = read_all("rows", fixtures_dir / "mcq_rows.json")  # {id: row}
    assert [r.ref for r in by_id] == [
        "mcq_rows.json:r1",
        "mcq_rows.json:r2",
        "mcq_rows.json:r3",
        "mcq_rows.json:r4",
    ]
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"question": "a"}, {"question": "b"}]))
    assert [r.row["question"] for r in read_all("a", array)] == ["a", "b"]


def test_folder_is_sorted_and_skips_other_files(fixtures_dir: Path) -> None:
    files = list_files(str(fixtures_dir / "medmcqa_parts"))
    assert [display for _, display, _ in files] == [
        "medmcqa_parts/part-0001.jsonl",
        "medmcqa_parts/part-0002.jsonl",
    ]
    records = read_all("parts", fixtures_dir / "medmcqa_parts")
    assert [r.row["id"] for r in records] == [f"f-{i}" for i in range(6)]
    assert records[3].ref == "medmcqa_parts/part-0002.jsonl:1"


def test_hf_save_to_disk_folder(fixtures_dir: Path) -> None:
    path = f"hf:{fixtures_dir / 'hf_pubmedqa'}/train"
    assert parse_hf_path(path) == (str(fixtures_dir / "hf_pubmedqa"), None, "train")
    specs = plan_source("hf", path, rows_per_chunk=8)
    assert [(s.start, s.stop) for s in specs] == [(0, 8), (8, 16), (16, 20)]
    records = [r for s in specs for r in read_chunk(s)]
    assert len(records) == 20 and records[5].ref == "hf:hf_pubmedqa/train:5"
    assert records[0].row["context"]["contexts"] == [
        "Background for cohort 0.",
        "We followed 40 patients after surgery.",
    ]
    assert records[0].row["pubid"] == 8_000_000
    # Keyed by the display name, not the absolute folder: the same data elsewhere fingerprints the same.
    assert fingerprint(path)["hf:hf_pubmedqa/train"].startswith("datasets-fingerprint:")


def test_hf_load_dataset_on_local_data_files(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "pool"
    folder.mkdir()
    shutil.copy(fixtures_dir / "medmcqa_parts" / "part-0001.jsonl", folder / "train.jsonl")
    source_plan.load_hf.cache_clear()
    records = read_all("hf", f"hf:{folder}/train")
    assert [r.row["id"] for r in records] == ["f-0", "f-1", "f-2"]


def test_hf_hub_id_parsing() -> None:
    assert parse_hf_path("hf:qiaojin/PubMedQA:pqa_labeled/train") == (
        "qiaojin/PubMedQA",
        "pqa_labeled",
        "train",
    )
    assert parse_hf_path("hf:GBaker/MedQA-USMLE-4-options/train") == (
        "GBaker/MedQA-USMLE-4-options",
        None,
        "train",
    )
    with pytest.raises(IngestError, match="expected hf:"):
        parse_hf_path("hf:nosplit")


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("not_json.jsonl", "not_json.jsonl:3: not valid JSON"),
        ("truncated.json", "truncated.json:"),
        ("ragged.csv", "ragged.csv:4: 12 fields where the header has 11"),
        ("corrupt.parquet", "corrupt.parquet: not a readable Parquet file"),
    ],
)
def test_unparseable_files_name_file_and_line(fixtures_dir: Path, name: str, where: str) -> None:
    with pytest.raises(IngestError) as info:
        read_all("broken", fixtures_dir / "broken" / name)
    assert where in str(info.value)
    if name == "truncated.json":
        line = int(str(info.value).split("truncated.json:")[1].split(":")[0])
        assert line > 1  # a line number inside the file, not just the file


def test_missing_and_unknown_paths(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file or folder"):
        plan_source("x", str(tmp_path / "missing.jsonl"), 10)
    (tmp_path / "pool.xlsx").write_bytes(b"x")
    with pytest.raises(IngestError, match="unknown file type"):
        plan_source("x", str(tmp_path / "pool.xlsx"), 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="holds no"):
        plan_source("x", str(tmp_path / "empty"), 10)


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text('{"question": "a"}\n')
    first = fingerprint(str(f))
    assert list(first) == ["a.jsonl"] and first["a.jsonl"].startswith("sha256:")
    f.write_text('{"question": "b"}\n')
    assert fingerprint(str(f)) != first


def test_repeated_keys_name_file_line_and_key(tmp_path: Path) -> None:
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text('{"question": "a"}\n\n{"question": "b", "options": {"A": "x", "A": "y"}}\n')
    with pytest.raises(IngestError, match=r"pool.jsonl:3: key 'A' appears twice in one JSON object"):
        read_all("p", jsonl)
    rows = tmp_path / "rows.json"
    rows.write_text(
        '{\n  "r1": {"question": "a"},\n  "r2": {"question": "b"},\n  "r1": {"question": "c"}\n}\n'
    )
    with pytest.raises(IngestError, match=r"rows.json:4: key 'r1' appears twice .*\(first at line 2\)"):
        read_all("p", rows)


def test_locate_repeated_key_skips_strings_and_nested_objects() -> None:
    text = '{"a": "{\\"b\\": 1, \\"b\\": 2}", "n": {"a": 1}, "m": [{"a": 1}, {"a": 2}],\n "a": 3}'
    assert locate_repeated_key(text) == ("a", 2, 1)
    assert locate_repeated_key('[{"a": 1}, {"a": 2}]') is None


def test_csv_quotes_that_never_close_are_named(tmp_path: Path) -> None:
    path = tmp_path / "pool.csv"
    path.write_text('id,question\n1,"fine, quoted"\n2,"never closed\n3,next\n4,last\n')
    with pytest.raises(IngestError, match=r"pool.csv:3: unbalanced double quote"):
        read_all("p", path)
    stray = tmp_path / "stray.csv"
    stray.write_text('id,question\n1,ok\n2,a 5" stick\n3,ok\n')
    with pytest.raises(IngestError, match=r"stray.csv:3: unbalanced double quote"):
        read_all("p", stray)


def test_too_deep_json_and_repeated_parquet_columns(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(IngestError, match="deep.json: the JSON is nested too deeply"):
        read_all("p", deep)
    import pyarrow as pa
    import pyarrow.parquet as pq

    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["q", "q"]), dup)
    with pytest.raises(IngestError, match=r"dup.parquet: column\(s\) \['q'\] appear more than once"):
        read_all("p", dup)


def test_unreadable_file_is_an_ingest_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"question": "a"}\n')

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(source_plan, "_sha256_cached", denied)
    with pytest.raises(IngestError, match=r"pool.jsonl: cannot read \(Permission denied\)"):
        fingerprint(str(path))
    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(IngestError, match=r"pool.jsonl: cannot read \(Permission denied\)"):
        plan_source("p", str(path), 10)

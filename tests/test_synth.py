"""`m1 synth` in Ray tasks (issue 16): the same rows as the in-process path, copies across shards."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.devtools import synth


def test_rows_depend_only_on_their_index() -> None:
    a = synth.render_row("medmcqa", 3, 777, 0.2, 0.3)
    b = synth.render_row("medmcqa", 3, 777, 0.2, 0.3)
    assert a == b
    assert synth.render_row("medmcqa", 4, 777, 0.2, 0.3) != a


def test_ray_parts_match_in_process_file(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synth, "SHARD_ROWS", 250)  # 1,200 rows -> 5 shards, so copies cross shard edges
    kwargs = {"format": "medmcqa", "seed": 7, "dup_exact_frac": 0.1, "dup_near_frac": 0.1}
    one = synth.generate_pool(tmp_path / "one", 1200, **kwargs)
    procs = synth.generate_pool(tmp_path / "procs", 1200, workers=2, **kwargs)
    parts = synth.generate_pool(tmp_path / "parts", 1200, ray=True, **kwargs)
    assert one["files"]["medmcqa.jsonl"] == procs["files"]["medmcqa.jsonl"]
    assert parts["files"]["medmcqa"] == {**one["files"]["medmcqa.jsonl"], "parts": 5}
    files = sorted((tmp_path / "parts" / "medmcqa").iterdir())
    assert [f.name for f in files] == [f"part-{i:05d}.jsonl" for i in range(5)]  # no temporary file left
    single = (tmp_path / "one" / "medmcqa.jsonl").read_bytes()
    assert b"".join(f.read_bytes() for f in files) == single
    assert (tmp_path / "procs" / "medmcqa.jsonl").read_bytes() == single
    dups = json.loads((tmp_path / "one" / "duplicates.json").read_text())["medmcqa.jsonl"]
    assert json.loads((tmp_path / "parts" / "duplicates.json").read_text())["medmcqa"] == dups
    crossing = [(d, o) for d, o, *_ in dups["exact"] + dups["near"] if d // 250 != o // 250]
    assert len(crossing) > 100  # most copies have their original in another shard
    rows = [json.loads(line) for line in single.decode().splitlines()]
    for dup, original in dups["exact"]:
        assert {k: v for k, v in rows[dup].items() if k != "id"} == {
            k: v for k, v in rows[original].items() if k != "id"
        }

    # Parquet parts: one schema, the same rows as the single Parquet file.
    one_pq = synth.generate_pool(tmp_path / "one-pq", 600, parquet=True, **kwargs)
    parts_pq = synth.generate_pool(tmp_path / "parts-pq", 600, parquet=True, ray=True, **kwargs)
    assert parts_pq["files"]["medmcqa"]["rows"] == one_pq["files"]["medmcqa.parquet"]["rows"] == 600
    table = pq.read_table(tmp_path / "one-pq" / "medmcqa.parquet")
    assert pq.read_table(tmp_path / "parts-pq" / "medmcqa").equals(table)


def test_accidental_copies_skip_designed_ones() -> None:
    import numpy as np

    keys = np.array([5, 6, 5, 7, 6, 5], dtype=np.uint64)
    assert synth.accidental_copies(keys, [[2, 0]]) == [[4, 1], [5, 0]]
    assert synth.accidental_copies(np.zeros(0, np.uint64), []) == []

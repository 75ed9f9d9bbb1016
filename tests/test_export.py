"""`m1 export --format hf`: a folder that `datasets.load_dataset` reads as what was exported, every time."""

from __future__ import annotations

from pathlib import Path

from test_runstore import question_rows

from curation.store.export import export_table
from curation.store.runstore import RunStore


def _run_with_questions(folder: Path, n: int) -> str:
    store = RunStore(str(folder))
    store.commit([store.write_table("questions", question_rows(n))])
    return str(folder)


def test_two_hf_exports_of_the_same_name_load_as_themselves_from_one_cache(tmp_path: Path) -> None:
    """`datasets` caches a local folder under a hash of its card: with a card that names only the data files,
    the second export came back as the first (one machine, one cache). The card's split size tells them apart."""
    import datasets

    cache = str(tmp_path / "hf-cache")
    loaded = []
    for n in (5, 7):
        run = _run_with_questions(tmp_path / f"run{n}", n)
        path, rows = export_table(run, "questions", "hf", str(tmp_path / f"out{n}" / "questions_hf"))
        assert rows == n
        ds = datasets.load_dataset(str(path), split="train", cache_dir=cache)
        loaded.append((ds.num_rows, sorted(ds["qid"])))
    assert loaded == [(5, [f"q{i}" for i in range(5)]), (7, [f"q{i}" for i in range(7)])]
    card = (tmp_path / "out7" / "questions_hf" / "README.md").read_text(encoding="utf-8")
    assert "num_examples: 7" in card and "path: data/train-*.parquet" in card

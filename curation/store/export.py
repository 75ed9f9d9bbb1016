"""`m1 export RUN --table curated --format jsonl|parquet|hf --out PATH`: a copy of a run's table for other tools.

Every format is one that ``datasets.load_dataset`` reads: ``parquet`` (one file), ``jsonl`` (one JSON object per
line, UTF-8), ``hf`` (a dataset folder: ``data/train-00000-of-00001.parquet`` plus a README card, loadable with
``load_dataset(PATH)``). The copy is written under a temporary name and renamed, so a crash leaves no half file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from curation.errors import UserError
from curation.jobenv import nonempty_path
from curation.store.runstore import RunStore

FORMATS = ("parquet", "jsonl", "hf")


class ExportError(UserError, ValueError):
    """The export cannot be done as asked (no such run or table, output exists)."""


def _write_jsonl(batches: Any, path: Path) -> int:
    rows = 0
    with open(path, "w", encoding="utf-8") as f:
        for batch in batches:
            for row in batch.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                rows += 1
    return rows


def _write_parquet(batches: Any, schema: pa.Schema, path: Path) -> int:
    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _card(table: str, run: str, schema: pa.Schema, rows: int, size: int) -> str:
    """The folder's README: its data files and split size for `datasets`, then the columns documented.

    `datasets` caches a local folder under a hash of this card's metadata, not of the data: with only the data
    files' pattern there, every export loaded on one machine came back as the first one ever cached (seen: 13
    rows for an 18-row export). The split's row count and the file's size make the card, and so the cache,
    differ between exports (and `datasets` checks the row count when it reads the files)."""
    docs = schemas.get(table).column_docs if table in schemas.REGISTRY else {}
    lines = [
        "---",
        "dataset_info:",
        "  config_name: default",
        "  splits:",
        "  - name: train",
        f"    num_bytes: {size}",
        f"    num_examples: {rows}",
        f"  download_size: {size}",
        f"  dataset_size: {size}",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*.parquet",
        "---",
        f"# {table} (m1-curation)",
        "",
        f"Exported from run `{run}`: {rows} rows.",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| {f.name} | {f.type} | {docs.get(f.name, '')} |" for f in schema]
    return "\n".join(lines) + "\n"


def export_table(
    run_dir: str, table: str, fmt: str, out: str, *, overwrite: bool = False
) -> tuple[Path, int]:
    """Write ``table`` of run ``run_dir`` to ``out`` in ``fmt``; returns (path, rows)."""

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    try:
        store = RunStore(run_dir, create=False)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ExportError(f"{exc}") from None
    if not store.has_table(table):
        raise ExportError(f"run {run_dir!r} has no table {table!r}; it has {sorted(store.tables())}")
    target = Path(out)
    if target.exists() and not overwrite:
        raise ExportError(f"{str(target)!r} exists; remove it or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    dataset = store.dataset(table)
    batches = dataset.to_batches(batch_size=8192)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if fmt == "jsonl":
            rows = _write_jsonl(batches, staging / "out.jsonl")
            produced = staging / "out.jsonl"
        elif fmt == "parquet":
            rows = _write_parquet(batches, dataset.schema, staging / "out.parquet")
            produced = staging / "out.parquet"
        else:
            (staging / "data").mkdir()
            data = staging / "data" / "train-00000-of-00001.parquet"
            rows = _write_parquet(batches, dataset.schema, data)
            card = _card(table, run_dir, dataset.schema, rows, data.stat().st_size)
            (staging / "README.md").write_text(card, encoding="utf-8")
            produced = staging
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(produced, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, rows


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="copy a run's table to Parquet, JSONL or an HF dataset folder")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--table", default="curated", help="which table (default: curated)")
    p.add_argument("--format", default="jsonl", choices=FORMATS)
    p.add_argument(
        "--out", required=True, type=nonempty_path, help="output file (parquet, jsonl) or folder (hf)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    def run(args: argparse.Namespace) -> int:
        path, rows = export_table(args.run_dir, args.table, args.format, args.out, overwrite=args.overwrite)
        print(f"{rows} rows of {args.table} -> {path} ({args.format})")
        return 0

    p.set_defaults(func=run)
    return p

"""Per-step SFT metrics: Parquet parts written by rank 0 while training, the sft_metrics table, the loss curve."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from curation.store.catalog import write_catalog
from curation.store.runstore import RunStore

TABLE = "sft_metrics"


def write_metric_rows(folder: str, rows: list[dict[str, Any]], part: str) -> None:
    """One Parquet part of metric rows, written atomically (temporary name, then rename)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schemas.get(TABLE).schema)
    tmp = Path(folder) / f".{part}.{uuid.uuid4().hex[:6]}.tmp"
    pq.write_table(table, tmp)
    tmp.rename(Path(folder) / f"part-{part}.parquet")


def read_metric_parts(folder: str) -> pa.Table:
    """Every logged row, one per step: after a restart, the row of the attempt that logged that step last."""
    parts = sorted(Path(folder).glob("part-*.parquet"))
    schema = schemas.get(TABLE).schema
    if not parts:
        return schema.empty_table()
    table = pa.concat_tables([pq.read_table(p, schema=schema) for p in parts])
    table = table.sort_by([("step", "ascending"), ("logged_at", "ascending")])
    steps = table.column("step").to_pylist()
    keep = [i for i in range(len(steps)) if i + 1 == len(steps) or steps[i + 1] != steps[i]]
    return table.take(pa.array(keep, pa.int64()))


def commit_metrics(store: RunStore, sft_run: str, folder: str) -> int:
    """Write this run's steps into the run's sft_metrics table (other SFT runs' rows are kept); returns rows."""
    mine = read_metric_parts(folder)
    tables = [mine]
    if store.has_table(TABLE):
        old = store.read_table(TABLE)
        tables.insert(0, old.filter(pc.not_equal(old.column("sft_run"), sft_run)))
    version = store.write_table(TABLE, pa.concat_tables(tables))
    store.commit([version])
    try:  # refresh the DuckDB catalog so `m1 sql` and catalog.duckdb see the table at once
        write_catalog(store)
    except Exception as exc:  # the table is committed either way; the catalog is rebuilt by `m1 sql`
        print(f"[sft] catalog not refreshed: {exc}")
    return mine.num_rows


def plot_loss(store: RunStore, sft_run: str, out: Path) -> Path | None:
    """A PNG of loss (and learning rate) per step of one SFT run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = store.read_table(TABLE)
    table = table.filter(pc.equal(table.column("sft_run"), sft_run))
    if table.num_rows == 0:
        return None
    steps = table.column("step").to_pylist()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, table.column("loss").to_pylist(), color="tab:blue", label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(f"m1 sft: {sft_run}")
    lr = ax.twinx()
    lr.plot(steps, table.column("learning_rate").to_pylist(), color="tab:orange", alpha=0.6, label="lr")
    lr.set_ylabel("learning rate")
    fig.legend(loc="upper right", bbox_to_anchor=(0.86, 0.88))
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.rename(out)
    return out

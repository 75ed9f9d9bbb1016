"""Benchmark: `m1 curate` (ingest -> dedup -> decontaminate) on large synthetic pools, as users run it, with each
process's own peak memory.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_scale.py --rows 120000 1200000 --executor driver ray
    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_scale.py --rows 10000000 --executor ray

The pool: bench/zipf_pool.py (MedMCQA layout, Zipf vocabulary, 2% exact and 3% near copies with known true
Jaccard), made once per size under --workdir. Each run is a fresh `m1 curate` process on a fresh run dir, starting
its own local Ray with 2 CPUs: dedup on the question (the text the truth's Jaccard is measured on) (Jaccard >= 0.8, cluster rule, 21 x 6 bands),
decontamination (13-gram and MinHash) against a 5,000-question eval set holding 500 pool questions with rotated
options. ``--executor driver`` is the single-process dedup (today's code before the Ray path: the baseline);
``ray`` the Ray path.

Memory: every 0.5 s the bench reads ``VmHWM`` (the kernel's peak resident set of that very process, never a
child's ``ru_maxrss``, which inherits the parent's) from /proc/PID/status for the `m1 curate` process and every
process below it (Ray's GCS, raylet, workers), keeping each process's last value. It reports the driver's, the
largest worker's, and the largest of any process. Recall and precision come from the dedup table against the
pool's truth: recall over injected copies with true Jaccard >= 0.8 (exact copies included), precision over the
rows dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from zipf_pool import make_pool  # noqa: E402


def vmhwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


class PeakWatcher(threading.Thread):
    """Each process's last VmHWM (a peak already), for a process and everything below it."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in [self.root, *descendants(self.root)]:
                v = vmhwm_kib(pid)
                if v is not None:
                    self.peaks[pid] = max(v, self.peaks.get(pid, 0))
                    if pid not in self.names:
                        self.names[pid] = cmdline(pid)
            self.stop.wait(0.5)


def write_config(path: Path, pool: Path, executor: str) -> None:
    path.write_text(
        json.dumps(
            {
                "name": "scale",
                "sources": [
                    {"name": "medmcqa", "format": "medmcqa", "path": str(pool / "rows"), "split": "train"}
                ],
                "ray": {"num_cpus": 2},
                "dedup": {"text": "question", "executor": executor},
                "decontaminate": {
                    "eval_sets": [
                        {"name": "eval", "format": "medqa", "path": str(pool / "eval.jsonl"), "split": "test"}
                    ]
                },
            }
        )
    )


def quality(run: Path, pool: Path) -> dict:
    import duckdb

    con = duckdb.connect()
    manifest = json.loads((run / "manifest.json").read_text())
    qpath = run / manifest["tables"]["questions"]["path"]
    dpath = run / manifest["tables"]["dedup"]["path"]
    row = con.execute(
        f"""
        WITH pool AS (
            SELECT q.source_id AS id, d.kept
            FROM read_parquet('{dpath}/*.parquet') d
            JOIN read_parquet('{qpath}/*.parquet') q USING (qid)
        ), truth AS (SELECT * FROM read_parquet('{pool}/truth.parquet'))
        SELECT
            count(*) FILTER (WHERE t.jaccard >= 0.8) AS copies,
            count(*) FILTER (WHERE t.jaccard >= 0.8 AND NOT p.kept) AS found,
            (SELECT count(*) FROM pool WHERE NOT kept) AS dropped,
            (SELECT count(*) FROM pool p2 JOIN truth t2 USING (id) WHERE NOT p2.kept) AS dropped_copies
        FROM truth t JOIN pool p USING (id)
        """
    ).fetchone()
    copies, found, dropped, dropped_copies = row
    return {
        "recall_j08": round(found / copies, 5) if copies else None,
        "precision": round(dropped_copies / dropped, 5) if dropped else None,
        "copies_j08": copies,
        "dropped": dropped,
    }


def run_once(rows: int, executor: str, workdir: Path) -> dict:
    pool = make_pool(rows, workdir / f"pool-{rows}")
    cfg = workdir / f"cfg-{rows}-{executor}.json"
    write_config(cfg, pool, executor)
    run = Path(tempfile.mkdtemp(prefix=f"run-{rows}-{executor}-", dir=workdir))
    ray_tmp = tempfile.mkdtemp(prefix="m1s-", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(REPO / ".venv/bin/m1"),
            "curate",
            str(cfg),
            "--run-dir",
            str(run),
            "--stages",
            "ingest,dedup,decontaminate",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watch = PeakWatcher(proc.pid)
    watch.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    watch.stop.set()
    watch.join()
    if proc.returncode:
        print(out[-4000:])
        raise SystemExit(f"m1 curate failed ({proc.returncode})")
    manifest = json.loads((run / "manifest.json").read_text())
    stages = {name: round(rec["wall_s"], 1) for name, rec in manifest["stages"].items()}
    driver = watch.peaks.get(proc.pid, 0)
    others = {pid: kib for pid, kib in watch.peaks.items() if pid != proc.pid}
    workers = {
        pid: kib
        for pid, kib in others.items()
        if "ray::" in watch.names.get(pid, "") or "default_worker" in watch.names.get(pid, "")
    }
    biggest = max(others, key=others.get) if others else None
    res = {
        "rows": rows,
        "executor": executor,
        "wall_s": round(wall, 1),
        "stages_s": stages,
        "driver_vmhwm_mib": round(driver / 1024),
        "max_worker_vmhwm_mib": round(max(workers.values()) / 1024) if workers else None,
        "max_other_vmhwm_mib": round(others[biggest] / 1024) if biggest else None,
        "max_other": watch.names.get(biggest, "") if biggest else None,
        **quality(run, pool),
    }
    print("RESULT " + json.dumps(res), flush=True)
    subprocess.run(["rm", "-rf", str(run), ray_tmp], check=False)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[120_000, 1_200_000])
    ap.add_argument("--executor", nargs="+", default=["driver", "ray"], choices=["driver", "ray"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/m1-scale"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = [run_once(rows, ex, args.workdir) for rows in args.rows for ex in args.executor]
    print(
        f"{'rows':>11} {'executor':>8} {'wall s':>7} {'driver MiB':>10} {'worker MiB':>10} {'recall':>7} {'prec':>7}"
    )
    for r in results:
        print(
            f"{r['rows']:>11,} {r['executor']:>8} {r['wall_s']:>7} {r['driver_vmhwm_mib']:>10} "
            f"{r['max_worker_vmhwm_mib']!s:>10} {r['recall_j08']!s:>7} {r['precision']!s:>7}"
        )
    for ex in args.executor:
        mine = [r for r in results if r["executor"] == ex]
        if len(mine) >= 2:
            lo, hi = mine[0], mine[-1]
            print(
                f"{ex}: driver VmHWM at {hi['rows']:,} rows / at {lo['rows']:,} rows = "
                f"{hi['driver_vmhwm_mib'] / lo['driver_vmhwm_mib']:.2f}x"
            )


if __name__ == "__main__":
    main()

"""Benchmark: ingest + validate + write of synthetic pools, Ray Data stage vs a single-process polars run.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_ingest.py [--sizes 196157,2000000] [--workdir /tmp/m1-bench]

For each size, a synthetic pool in the m1 mix (MedQA, MedMCQA, HeadQA, PubMedQA as JSONL; written by
curation.devtools.synth into --workdir, never into the repository) is ingested twice, each in a fresh process:

- ray:    IngestStage through the pipeline runner on a local Ray (2 CPUs): parallel parse/validate in
          Ray Data tasks, staged Parquet, the ordered DuckDB pass, questions + rejects written via the run store.
- polars: ingest_in_process (the same parse/validate functions, in one process; polars for the ordered
          pass) and the same two tables written through the same run store.

Wall time covers the stage itself (Ray start-up is reported separately). The Ray stage runs twice in the
same cluster: "ray" is the first Ray Data job of a fresh cluster (cold: Ray Data starts its own actors and
the workers import the package, ~2-4 s here), "ray warm" the same stage again, as every later stage of a
run or a rerun with --force finds it. Peak memory is sampled from /proc
every 50 ms over the whole process tree (the driver plus, for Ray, the GCS, raylet and every worker), and
reported as the peak and as the peak above the tree's size just before the stage started. Prints a table and
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = pages * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakSampler:
    """Samples the process tree's RSS in a thread; ``peak`` is the largest sum seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak = tree_rss_bytes(os.getpid())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes(os.getpid()))


def sources_for(pool: Path) -> list[Any]:
    from curation.config import SourceConfig

    return [
        SourceConfig(name=fmt, format=fmt, path=str(pool / f"{fmt}.jsonl"))
        for fmt in ("medqa", "medmcqa", "headqa", "pubmedqa")
        if (pool / f"{fmt}.jsonl").exists()
    ]


def run_one(mode: str, pool: Path, run_dir: Path) -> dict[str, Any]:
    """One measured run in this (fresh) process."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from curation.config import CurationConfig, IngestOptions
    from curation.store.runstore import RunStore

    cfg = CurationConfig(sources=sources_for(pool), ingest=IngestOptions(m1_shuffle=True))
    shutil.rmtree(run_dir, ignore_errors=True)
    store = RunStore(str(run_dir))
    result: dict[str, Any] = {"mode": mode}
    if mode == "ray":
        import ray

        from curation.pipeline import run_stages
        from curation.stages.ingest import IngestStage

        t0 = time.perf_counter()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            _temp_dir=tempfile.mkdtemp(prefix="m1ray-", dir="/tmp"),
        )
        result["ray_init_s"] = round(time.perf_counter() - t0, 2)
        time.sleep(2)  # let the prestarted workers settle before taking the baseline
        baseline = tree_rss_bytes(os.getpid())
        with PeakSampler() as sampler:
            t0 = time.perf_counter()
            records = run_stages([IngestStage()], cfg, store, log=lambda *_: None)
            result["wall_s"] = round(time.perf_counter() - t0, 2)
        # Again on the now warm cluster (Ray Data's actors and worker imports already there), as any
        # stage after the first one of a run, or a rerun with --force, finds it.
        t0 = time.perf_counter()
        warm = run_stages([IngestStage()], cfg, RunStore(str(run_dir) + "-warm"), log=lambda *_: None)[0]
        result["warm_wall_s"] = round(time.perf_counter() - t0, 2)
        result["warm_phases_s"] = warm["ingest_seconds"]
        shutil.rmtree(str(run_dir) + "-warm", ignore_errors=True)
        record = records[0]
        result.update(
            rows_in=record["rows_in"], rows_out=record["rows_out"], rows_rejected=record["rows_rejected"]
        )
        result["rejected_by_reason"] = record["rejected_by_reason"]
        result["phases_s"] = record["ingest_seconds"]
        result["chunks"] = record["ingest_chunks"]
        ray.shutdown()
    else:
        from curation.stages.ingest import ingest_in_process

        baseline = tree_rss_bytes(os.getpid())
        with PeakSampler() as sampler:
            t0 = time.perf_counter()
            tables = ingest_in_process(cfg.sources, cfg.ingest)
            store.write_table("questions", tables.questions)
            store.write_table("rejects/ingest", tables.rejects)
            result["wall_s"] = round(time.perf_counter() - t0, 2)
        counts = tables.counts
        result.update(rows_in=counts.rows_in, rows_out=counts.rows_out, rows_rejected=counts.rows_rejected)
        result["rejected_by_reason"] = dict(sorted(counts.by_reason.items()))
    result["peak_rss_mib"] = round(sampler.peak / 2**20)
    result["peak_above_baseline_mib"] = round((sampler.peak - baseline) / 2**20)
    result["driver_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def measure(mode: str, pool: Path, run_dir: Path) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter so peaks and caches do not carry over."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", mode, "--pool", str(pool), "--run-dir", str(run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} run on {pool} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="196157,2000000", help="pool sizes (rows), comma-separated")
    parser.add_argument(
        "--workdir", default="/tmp/m1-bench-ingest", help="where pools and runs go (not the repo)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-pools", action="store_true", help="reuse and keep generated pools")
    parser.add_argument("--one", choices=["ray", "polars"], help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.pool), Path(args.run_dir))))
        return 0

    from curation.devtools.synth import generate_pool

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        pool = work / f"pool-{size}"
        if not (args.keep_pools and (pool / "duplicates.json").exists()):
            shutil.rmtree(pool, ignore_errors=True)
            synth = generate_pool(pool, size, format="mixed", seed=args.seed, workers=2)
            print(f"pool {size:,} rows generated in {synth['seconds']} s -> {pool}", flush=True)
        pool_mib = sum(f.stat().st_size for f in pool.glob("*.jsonl")) / 2**20
        polars_run = measure("polars", pool, work / "run-polars")
        ray_run = measure("ray", pool, work / "run-ray")
        for run in (polars_run, ray_run):
            if run["rows_in"] != size or run["rows_in"] != run["rows_out"] + run["rows_rejected"]:
                raise SystemExit(f"row accounting broken: {run}")
        if (polars_run["rows_out"], polars_run["rejected_by_reason"]) != (
            ray_run["rows_out"],
            ray_run["rejected_by_reason"],
        ):
            raise SystemExit(f"ray and polars runs disagree: {ray_run} vs {polars_run}")
        results.append(
            {
                "rows": size,
                "pool_mib": round(pool_mib, 1),
                "rows_out": ray_run["rows_out"],
                "rejected_by_reason": ray_run["rejected_by_reason"],
                "ray": {k: v for k, v in ray_run.items() if k not in ("mode", "rejected_by_reason")},
                "polars": {k: v for k, v in polars_run.items() if k not in ("mode", "rejected_by_reason")},
                "ray_over_polars_wall": round(ray_run["wall_s"] / polars_run["wall_s"], 2),
                "ray_warm_over_polars_wall": round(ray_run["warm_wall_s"] / polars_run["wall_s"], 2),
            }
        )
        if not args.keep_pools:
            shutil.rmtree(pool, ignore_errors=True)

    header = f"{'rows':>10} {'pool MiB':>9} {'mode':>9} {'wall s':>8} {'rows/s':>10} {'peak MiB':>9} {'+base MiB':>10}"
    print("\n" + header)
    print("-" * len(header))
    for r in results:
        for mode, key in (("ray", "wall_s"), ("ray warm", "warm_wall_s"), ("polars", "wall_s")):
            m = r[mode.split()[0]]
            peak = (
                "" if mode == "ray warm" else f"{m['peak_rss_mib']:>9,} {m['peak_above_baseline_mib']:>10,}"
            )
            print(
                f"{r['rows']:>10,} {r['pool_mib']:>9.0f} {mode:>9} {m[key]:>8.2f} {r['rows'] / m[key]:>10,.0f} {peak}"
            )
        print(
            f"{'':>10} ray/polars wall: {r['ray_over_polars_wall']:.2f}x cold (first Ray Data job of the cluster), "
            f"{r['ray_warm_over_polars_wall']:.2f}x warm; Ray start-up {r['ray']['ray_init_s']} s not counted"
        )
    print(
        json.dumps(
            {
                "bench": "ingest",
                "cpus": os.cpu_count(),
                "results": results,
                "command": "flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_ingest.py --sizes "
                + args.sizes,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

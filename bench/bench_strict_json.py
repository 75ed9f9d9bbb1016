"""Benchmark: the cost of refusing repeated JSON keys when staging rows.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_strict_json.py [--rows 100000] [--repeats 3]

A synthetic MedQA pool (curation.devtools.synth, written to a temp folder, never into the repository) is staged
chunk by chunk with :func:`curation.stages.ingest.stage_chunk`, the body of one ingest Ray task (read, JSON
decode, format checks, Arrow build), in one process:

- strict:   the readers' ``loads_strict`` (``json.loads`` with an ``object_pairs_hook`` that refuses a repeated
            key in any object), as ingestion runs;
- baseline: plain ``json.loads``, which silently keeps the last of two equal keys.

The two run alternately, ``--repeats`` times each; the best of each is compared, in CPU seconds of this process
(``time.process_time``: on a shared machine, wall time mostly measures the neighbours) and in wall seconds.
Prints a table and one JSON line with the ratios strict / baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from curation import readers
from curation.devtools.synth import generate_pool
from curation.formats import get_parser
from curation.stages.ingest import stage_chunk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="m1-bench-strict-"))
    try:
        generate_pool(str(work), args.rows, format="medqa", seed=0, dup_exact_frac=0.0, dup_near_frac=0.0)
        files = sorted(str(p) for p in work.rglob("*.jsonl"))
        specs = [s for f in files for s in readers.plan_source("medqa", f, 50_000)]
        parser = get_parser("medqa")
        strict = readers.loads_strict
        times: dict[str, list[float]] = {"strict": [], "baseline": []}
        cpu: dict[str, list[float]] = {"strict": [], "baseline": []}
        rows = 0
        for _ in range(args.repeats):
            for mode in ("baseline", "strict"):
                readers.loads_strict = json.loads if mode == "baseline" else strict
                started, cpu_started = time.perf_counter(), time.process_time()
                rows = sum(stage_chunk(spec, parser).num_rows for spec in specs)
                times[mode].append(time.perf_counter() - started)
                cpu[mode].append(time.process_time() - cpu_started)
        readers.loads_strict = strict
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {mode: min(values) for mode, values in times.items()}
    best_cpu = {mode: min(values) for mode, values in cpu.items()}
    print(f"{'mode':<10}{'rows':>10}{'best cpu s':>12}{'best wall s':>13}{'rows/cpu s':>12}  wall runs")
    for mode in ("baseline", "strict"):
        runs = ", ".join(f"{t:.2f}" for t in times[mode])
        print(
            f"{mode:<10}{rows:>10,}{best_cpu[mode]:>12.2f}{best[mode]:>13.2f}{rows / best_cpu[mode]:>12,.0f}  {runs}"
        )
    ratio_cpu = best_cpu["strict"] / best_cpu["baseline"]
    ratio = best["strict"] / best["baseline"]
    print(f"strict / baseline: cpu {ratio_cpu:.3f}, wall {ratio:.3f}")
    print(
        json.dumps(
            {
                "rows": rows,
                "best_cpu_s": best_cpu,
                "best_wall_s": best,
                "ratio_cpu": round(ratio_cpu, 3),
                "ratio_wall": round(ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()

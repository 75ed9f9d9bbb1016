"""Benchmark: `m1 synth` pools in Ray tasks against the single-process loop it replaces (issue 16).

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_synth.py [--rows 200000] [--base cbc73cf] \
        [--big 10000000] [--workdir /tmp/m1-bench-synth]

The same `--format mixed` pool (2% exact and 3% near copies, JSONL) is written three ways, each in a fresh
process: the baseline, `generate_pool` as it was at git revision BASE (one Python loop, `m1 synth`'s default),
then the current code in one process and as Ray tasks (one per 50,000-row shard, each writing its own part
file; a local Ray with every core, started before the clock). Prints rows/s and the ratio to the baseline in
the same run, and each process's peak memory (VmHWM of /proc/self/status). ``--big N`` then writes an N-row
pool with the Ray path alone (its wall time and driver peak memory). Pools go under --workdir, deleted after.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def vmhwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, rows: int, out: str, base: str) -> None:
    sys.path.insert(0, str(REPO))
    if mode == "base":
        source = subprocess.run(
            ["git", "show", f"{base}:curation/devtools/synth.py"], cwd=REPO, capture_output=True, check=True
        ).stdout
        path = Path(tempfile.mkdtemp()) / "synth_base.py"
        path.write_bytes(source)
        spec = importlib.util.spec_from_file_location("synth_base", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["synth_base"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        generate_pool = module.generate_pool
    else:
        from curation.devtools.synth import generate_pool
    kwargs = {}
    if mode == "ray":
        import ray

        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="m1ray-"))
        kwargs["ray"] = True
    t = time.perf_counter()
    summary = generate_pool(out, rows, format="mixed", seed=0, **kwargs)
    seconds = time.perf_counter() - t
    res = {
        "mode": mode,
        "rows": summary["rows"],
        "seconds": round(seconds, 2),
        "rows_per_s": round(summary["rows"] / seconds),
        "exact": summary["exact_duplicates"],
        "near": summary["near_duplicates"],
        "accidental": summary["accidental_exact_duplicates"],
        "peak_mib": round(vmhwm_mib()),
    }
    print("RESULT " + json.dumps(res), flush=True)


def run(mode: str, rows: int, workdir: Path, base: str) -> dict:
    out = workdir / f"{mode}-{rows}"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--rows", str(rows), "--out", str(out), "--base", base],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode or not lines:
        raise SystemExit(f"{mode} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(lines[0][7:])
    print(
        f"{mode:>8}: {res['rows']:,} rows in {res['seconds']} s = {res['rows_per_s']:,} rows/s, "
        f"peak {res['peak_mib']} MiB (copies {res['exact']:,} exact, {res['near']:,} near, "
        f"{res['accidental']:,} accidental)",
        flush=True,
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument(
        "--base", default="cbc73cf", help="git revision of the baseline (the loop before issue 16)"
    )
    ap.add_argument(
        "--big", type=int, default=0, help="also write a pool of this many rows with the Ray path"
    )
    ap.add_argument("--workdir", default="/tmp/m1-bench-synth")
    ap.add_argument("--child", choices=["base", "inproc", "ray"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rows, args.out, args.base)
        return 0
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; {args.rows:,} rows, --format mixed; baseline: {args.base}", flush=True)
    base = run("base", args.rows, workdir, args.base)
    inproc = run("inproc", args.rows, workdir, args.base)
    ray = run("ray", args.rows, workdir, args.base)
    out = {"base": base, "inproc": inproc, "ray": ray}
    print(
        f"ratio to baseline (rows/s): in-process {inproc['rows_per_s'] / base['rows_per_s']:.2f}x, "
        f"Ray tasks {ray['rows_per_s'] / base['rows_per_s']:.2f}x"
    )
    if args.big:
        out["big"] = run("ray", args.big, workdir, args.base)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

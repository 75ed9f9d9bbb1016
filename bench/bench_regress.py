"""Benchmark: the 196K CPU stages (bench/bench_cpu_stages.py) of this tree against an earlier commit, same day,
same script, rounds alternating between the two trees.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_regress.py --base 6137471 [--preset default m1]
        [--rounds 1]

The base commit is checked out into a temporary git worktree; each round runs that tree's bench_cpu_stages.py
and then this tree's (each imports its own tree's code first: the script puts its repository on sys.path),
with the same venv, the same pool and eval set (cached in --workdir). Prints each run's stage seconds and the
ratio this tree / base of the summed stage times (ingest through sample; Ray start-up apart).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(tree: Path, preset: str, workdir: str) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            str(tree / "bench" / "bench_cpu_stages.py"),
            "--preset",
            preset,
            "--workdir",
            workdir,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"{tree}: bench_cpu_stages failed ({proc.returncode})")
    return json.loads(lines[-1])


def stage_total(res: dict) -> float:
    return float(res["total_s"])  # ingest, dedup, decontaminate, m23k, classify, sample (not Ray's start)


def stage_seconds(res: dict) -> dict:
    return {name: s["s"] for name, s in res["stages"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--preset", nargs="+", default=["default", "m1"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/m1-bench")
    args = ap.parse_args()
    base_tree = Path(tempfile.mkdtemp(prefix="m1-base-"))
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.base], check=True
    )
    try:
        for preset in args.preset:
            base_t, head_t = [], []
            for _ in range(args.rounds):
                b = run(base_tree, preset, args.workdir)
                h = run(REPO, preset, args.workdir)
                base_t.append(stage_total(b))
                head_t.append(stage_total(h))
                print(f"{preset}: base {json.dumps(stage_seconds(b))}")
                print(f"{preset}: this {json.dumps(stage_seconds(h))}")
            ratio = min(head_t) / min(base_t)
            print(
                f"{preset}: stages {min(head_t):.1f} s (this tree) vs {min(base_t):.1f} s ({args.base}): "
                f"{ratio:.2f}x (goal <= 1.2x)"
            )
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False)


if __name__ == "__main__":
    main()

"""Where the test suite's CPU goes: each test module run alone, its wall time and the machine's busy CPU.

    python bench/bench_suite_cpu.py                      # the heaviest modules, then the rest together
    python bench/bench_suite_cpu.py test_sft_train test_demo
    python bench/bench_suite_cpu.py --base 1a3d9ba test_sft_train   # also at REV (a git worktree), with ratios

Busy CPU is read from /proc/stat (user + nice + system + irq + softirq, all cores) before and after the module's
pytest, so it counts every process the tests start: Ray clusters and their workers, vLLM engines, Ray Train
workers, CLI subprocesses (a per-process sum misses those that are reaped without being waited for). Run it on an
otherwise idle machine. On two cores, the suite under `make test` cannot finish in less than the sum of the busy
CPU divided by two: the figure to cut to make the suite faster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "test_sft_train",
    "test_demo",
    "test_cluster",
    "test_teacher_kill",
    "test_vllm_engine",
    "test_pay_once",
    "test_object_store",
    "test_eval_sweep",
    "test_llm_stages",
    "test_vllm_serve",
    "test_openai_engine",
    "test_catalog",
    "test_bad_inputs",
    "test_classify",
)


def busy_and_idle() -> tuple[float, float]:
    """The machine's busy and idle CPU seconds since boot, all cores."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / hz, v[3] / hz


def run_module(root: Path, files: list[str], label: str) -> dict[str, float | int | str]:
    # PYTHONPATH first: the venv's editable install points at this checkout, a --base worktree must import its own.
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    cmd = [str(REPO / ".venv" / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", *files]
    t0, (b0, i0) = time.monotonic(), busy_and_idle()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    (b1, i1), wall = busy_and_idle(), time.monotonic() - t0
    tail = (proc.stdout.strip().splitlines() or ["?"])[-1]
    return {
        "module": label,
        "rc": proc.returncode,
        "wall": wall,
        "busy": b1 - b0,
        "idle": i1 - i0,
        "tail": tail,
    }


def profile(root: Path, modules: list[str], rest: bool) -> list[dict]:
    rows = []
    for m in modules:
        rows.append(run_module(root, [f"tests/{m}.py"], m))
        print(fmt(rows[-1]), flush=True)
    if rest:
        others = sorted(
            str(p.relative_to(root)) for p in (root / "tests").glob("test_*.py") if p.stem not in set(HEAVY)
        )
        rows.append(run_module(root, others, "(the other modules)"))
        print(fmt(rows[-1]), flush=True)
    return rows


def fmt(r: dict) -> str:
    return f"{r['module']:<28} wall {r['wall']:6.0f} s  busy CPU {r['busy']:6.0f} s  idle {r['idle']:5.0f} s  {r['tail']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help="test modules (default: the heaviest, then the rest together)")
    ap.add_argument("--base", help="a git revision to measure the same modules at, first (the baseline)")
    args = ap.parse_args()
    modules = args.modules or list(HEAVY)
    rest = not args.modules
    base_rows = None
    if args.base:
        with tempfile.TemporaryDirectory(prefix="m1-base-") as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.base], cwd=REPO, check=True)
            try:
                print(f"== baseline: {args.base}", flush=True)
                base_rows = profile(tree, modules, rest)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
    print("== this checkout", flush=True)
    rows = profile(REPO, modules, rest)
    total_busy, total_wall = sum(r["busy"] for r in rows), sum(r["wall"] for r in rows)
    print(
        f"total: wall {total_wall:.0f} s, busy CPU {total_busy:.0f} s (two cores: >= {total_busy / 2:.0f} s)"
    )
    if base_rows:
        base_busy = sum(r["busy"] for r in base_rows)
        for b, r in zip(base_rows, rows, strict=True):
            print(
                f"{r['module']:<28} busy CPU {b['busy']:6.0f} -> {r['busy']:6.0f} s  ratio {r['busy'] / b['busy']:.2f}"
            )
        print(f"total busy CPU {base_busy:.0f} -> {total_busy:.0f} s, ratio {total_busy / base_busy:.2f}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

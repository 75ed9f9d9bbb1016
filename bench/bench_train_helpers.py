"""Benchmark: the busy CPU of one `m1 sft` fit with Ray Train's per-fit helper actors that a local Ray has no use
for (the preemption watcher: a local machine is not drained by a cloud provider; the Train metrics callbacks: a
local Ray started without a dashboard has nobody to read them) against Ray's defaults (the baseline).

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_train_helpers.py [--rounds 2] [--steps 8]

The same child as bench/bench_train_poll.py (a fresh process with its own local Ray, the tiny random-init Qwen2 on
40 synthetic curated rows, 2 CPU workers); the two settings alternate, so the machine's drift falls on both. Busy
CPU is the whole machine's (/proc/stat) around each run, so every process the fit starts counts. Printed: each
run's `fit()` seconds and busy CPU-seconds, the medians, and the ratios against the defaults; one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_poll import CHILD  # noqa: E402 - the same fit as the polling benchmark

SETTINGS = {
    "defaults": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1", "RAY_TRAIN_METRICS_ENABLED": "1"},
    "local": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"},
}


def busy_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def run_once(setting: str, model: str, steps: int) -> dict[str, float]:
    env = dict(
        os.environ,
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.25",
        RAY_AUTH_MODE="disabled",
        HF_HUB_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        **SETTINGS[setting],
    )
    with tempfile.TemporaryDirectory(prefix="m1-helpers-") as tmp:
        busy = busy_seconds()
        out = subprocess.run(
            [sys.executable, "-c", CHILD.format(root=str(ROOT)), tmp, model, str(steps)],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        time.sleep(2)  # the cluster's processes wind down
        busy = busy_seconds() - busy
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"run with {setting} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return {**json.loads(line.removeprefix("RESULT ")), "busy_s": busy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from curation.devtools.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="m1-helpers-model-") as tmp:
        model = str(build_tiny_model(Path(tmp) / "tiny"))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
        for r in range(args.rounds):
            for setting in runs:
                result = run_once(setting, model, args.steps)
                runs[setting].append(result)
                print(
                    f"round {r + 1}, {setting:>8}: fit() {result['fit_s']:.1f} s, run {result['run_s']:.1f} s, "
                    f"busy {result['busy_s']:.1f} CPU-s",
                    flush=True,
                )
    keys = ("fit_s", "run_s", "busy_s")
    med = {k: {m: statistics.median(x[m] for x in v) for m in keys} for k, v in runs.items()}
    ratios = {m: round(med["local"][m] / med["defaults"][m], 3) for m in keys}
    print(
        f"median busy CPU: {med['defaults']['busy_s']:.1f} s with Ray's defaults (baseline), "
        f"{med['local']['busy_s']:.1f} s without the helpers; ratio {ratios['busy_s']:.2f}; "
        f"fit() ratio {ratios['fit_s']:.2f}"
    )
    print(json.dumps({"bench": "train_helpers", "steps": args.steps, "median": med, "ratios": ratios}))


if __name__ == "__main__":
    main()

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

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_poll import alternate, medians  # noqa: E402 - the same fit and rounds as the polling benchmark

# Both poll Ray Train's workers every 0.25 s, as a local Ray does (curation.jobenv.LOCAL_RAY_ENV).
SETTINGS = {
    "defaults": {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1",
        "RAY_TRAIN_METRICS_ENABLED": "1",
    },
    "local": {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_METRICS_ENABLED": "0",
    },
}


def main() -> None:
    args, runs = alternate(__doc__, SETTINGS)
    med = medians(runs)
    ratios = {m: round(med["local"][m] / med["defaults"][m], 3) for m in ("fit_s", "run_s", "busy_s")}
    print(
        f"median busy CPU: {med['defaults']['busy_s']:.1f} s with Ray's defaults (baseline), "
        f"{med['local']['busy_s']:.1f} s without the helpers; ratio {ratios['busy_s']:.2f}; "
        f"fit() ratio {ratios['fit_s']:.2f}"
    )
    print(json.dumps({"bench": "train_helpers", "steps": args.steps, "median": med, "ratios": ratios}))


if __name__ == "__main__":
    main()

"""Benchmark: how long `m1 sft`'s `fit()` takes with Ray Train's controller polling its workers every 2 s (Ray's
default) against every 0.25 s (what a local Ray gets from curation.jobenv.LOCAL_RAY_ENV).

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_train_poll.py [--rounds 2] [--steps 8]

Each run is a fresh process with its own local Ray (the controller reads RAY_TRAIN_HEALTH_CHECK_INTERVAL_S when
it starts), training the tiny random-init Qwen2 on 40 synthetic curated rows with 2 CPU workers; the two
settings alternate, so the machine's drift falls on both. Printed: each run's `fit()` and whole-run seconds, the
medians, and the ratio of the 0.25 s median to the 2 s median (the baseline). One JSON line at the end.
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

from proc_cpu import busy_seconds  # the machine's busy CPU (/proc/stat): every process a run starts counts

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
import yaml
from ray.train.torch import TorchTrainer
import sft.train as st
from curation.store.runstore import RunStore
from sft.config import load_sft_config
from sft.demo import synthetic_curated

root, model, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store = RunStore(str(root))
store.commit([store.write_table("curated", synthetic_curated(40, seed=1))])
raw = {{"name": "poll", "run_dir": str(root), "data": {{"table": "curated"}}, "model": {{"path": model}},
       "train": {{"max_steps": steps, "global_batch_size": 4, "per_device_batch_size": 2, "save_every_epochs": 0}},
       "resources": {{"num_workers": 2, "cpus_per_worker": 0.5}}}}
(root / "sft.yaml").write_text(yaml.safe_dump(raw))
fit_s = []
fit = TorchTrainer.fit
def timed_fit(self):
    t = time.perf_counter(); out = fit(self); fit_s.append(time.perf_counter() - t); return out
TorchTrainer.fit = timed_fit
t = time.perf_counter()
st.run_sft(load_sft_config(root / "sft.yaml"))
print("RESULT", json.dumps({{"fit_s": fit_s[0], "run_s": time.perf_counter() - t}}))
"""


def run_child(env_overrides: dict[str, str], model: str, steps: int) -> dict[str, float]:
    """One fit in a fresh process with its own local Ray: `fit()` and whole-run seconds, and the machine's busy
    CPU-seconds around it (its Ray processes included)."""
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        HF_HUB_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        **env_overrides,
    )
    with tempfile.TemporaryDirectory(prefix="m1-poll-") as tmp:
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
        raise SystemExit(f"run with {env_overrides} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return {**json.loads(line.removeprefix("RESULT ")), "busy_s": busy}


def alternate(
    doc: str, settings: dict[str, dict[str, str]]
) -> tuple[argparse.Namespace, dict[str, list[dict[str, float]]]]:
    """Parse --rounds/--steps, build the tiny model once, and run each setting once per round, in turn (the
    machine's drift falls on all of them); returns the arguments and each setting's results."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from curation.devtools.tiny_model import build_tiny_model

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="m1-train-model-") as tmp:
        model = str(build_tiny_model(Path(tmp) / "tiny"))
        for r in range(args.rounds):
            for name, env in settings.items():
                result = run_child(env, model, args.steps)
                runs[name].append(result)
                print(
                    f"round {r + 1}, {name:>8}: fit() {result['fit_s']:.1f} s, run {result['run_s']:.1f} s, "
                    f"busy {result['busy_s']:.1f} CPU-s",
                    flush=True,
                )
    return args, runs


def medians(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        k: {m: statistics.median(x[m] for x in v) for m in ("fit_s", "run_s", "busy_s")}
        for k, v in runs.items()
    }


def main() -> None:
    args, runs = alternate(
        __doc__,
        {
            "2.0": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0"},
            "0.25": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"},
        },
    )
    med = medians(runs)
    ratio = med["0.25"]["fit_s"] / med["2.0"]["fit_s"]
    print(
        f"median fit(): {med['2.0']['fit_s']:.1f} s at 2 s (baseline), {med['0.25']['fit_s']:.1f} s at 0.25 s; "
        f"ratio {ratio:.2f}"
    )
    print(
        json.dumps({"bench": "train_poll", "steps": args.steps, "median": med, "fit_ratio": round(ratio, 3)})
    )


if __name__ == "__main__":
    main()

"""What a Ray worker process costs to start, with and without a job-level runtime_env.

    python bench/bench_worker_start.py [--actors 20] [--rounds 2]

Each round starts a fresh local Ray (2 CPUs, in a subprocess) once with ``runtime_env={"env_vars": {...}}`` on
``ray.init`` (the baseline: what the test suite's session cluster had until stop 30) and once without, then
creates and kills ``--actors`` trivial actors (one new worker process each) and reads the machine's busy CPU
(/proc/stat) over that. With a runtime_env Ray starts every worker through ``setup_worker.py``, which sets the
environment up and then execs the real worker: a second Python start-up per process. Prints busy CPU-seconds per
mode and the ratio without/with (below 1: cheaper without).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import os, sys, tempfile, time
import ray

def busy():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")

mode, n = sys.argv[1], int(sys.argv[2])
kw = {"runtime_env": {"env_vars": {"M1_BENCH": "1"}}} if mode == "runtime_env" else {}
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
         _temp_dir=tempfile.mkdtemp(prefix="m1w", dir="/tmp"), **kw)

@ray.remote(num_cpus=0)
class Probe:
    def pid(self):
        return os.getpid()

ray.get(Probe.remote().pid.remote())  # the cluster's first worker and Ray's own start-up, not measured
time.sleep(3)
b0, t0 = busy(), time.monotonic()
pids = set()
for start in range(0, n, 5):
    actors = [Probe.remote() for _ in range(min(5, n - start))]
    pids |= set(ray.get([a.pid.remote() for a in actors]))
    for a in actors:
        ray.kill(a)
time.sleep(2)
print(f"RESULT {busy() - b0:.2f} {time.monotonic() - t0:.2f} {len(pids)}")
ray.shutdown()
"""


def run(mode: str, actors: int) -> tuple[float, float, int]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CHILD)
    try:
        out = subprocess.run(
            [sys.executable, f.name, mode, str(actors)], capture_output=True, text=True, env=env, check=True
        ).stdout
    finally:
        os.unlink(f.name)
    busy, wall, pids = next(line for line in out.splitlines() if line.startswith("RESULT")).split()[1:]
    return float(busy), float(wall), int(pids)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--actors", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    totals = {"runtime_env": 0.0, "none": 0.0}
    for r in range(args.rounds):
        for mode in ("runtime_env", "none"):  # alternating: the machine's load drifts
            busy, wall, pids = run(mode, args.actors)
            totals[mode] += busy
            print(
                f"round {r + 1} {mode:<12} {pids} worker processes: busy {busy:5.1f} CPU-s, wall {wall:4.1f} s"
            )
    base, new = totals["runtime_env"], totals["none"]
    per = (base - new) / (args.rounds * args.actors)
    print(
        f"busy CPU without / with a runtime_env: {new:.1f} / {base:.1f} = {new / base:.2f} "
        f"({per:.2f} CPU-s saved per worker start)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

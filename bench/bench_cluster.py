"""Benchmark: the same ingest on one node and on a two-node local cluster, and a job submission against a local run.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_cluster.py [--rows 196157] [--repeats 2]

A synthetic pool in m1's source mix (`m1 synth`, JSONL; written under --workdir, never into the repository) is
ingested (`m1 curate CONFIG --stages ingest`) in three ways, each into a fresh run dir:

- local:    `python -m curation curate ...` in a fresh process that starts its own local Ray (2 CPUs): what a user
            runs on one machine. Baseline for the submission overhead.
- 1 node:   cluster/submit.sh (`ray job submit` of the same command) to a one-node cluster of 2 CPUs started by
            cluster/start-node.sh. Baseline for the two-node figure.
- 2 nodes:  the same submission to a head plus one `--address` node, 1 CPU each (the same 2 CPUs in total).

Both clusters run on this one machine (loopback), so "two nodes" measures Ray's cross-node costs (object
transfers between two object stores, scheduling over two raylets), not more hardware. Figures: the stage's own
wall time (from the run's manifest) and the command's wall time (process start to exit: Ray start-up or job
submission, working-dir upload, driver start). Ratios: 2 nodes / 1 node (stage), job / local (command). Medians of
--repeats; the modes alternate (local, 1 node, 2 nodes, local, ...) with both clusters up throughout, so load
changes on this shared machine spread over all modes. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.devtools.local_cluster import LocalCluster  # noqa: E402

BIN = Path(sys.executable).parent


def write_pool(workdir: Path, rows: int) -> Path:
    """The synthetic pool and its config (absolute paths: every node of this host reads them)."""
    from curation.devtools.synth import generate_pool

    data = workdir / "data"
    if not (data / "duplicates.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        summary = generate_pool(data, rows, format="mixed", seed=0, workers=2)
    else:
        summary = json.loads((workdir / "summary.json").read_text())
    (workdir / "summary.json").write_text(json.dumps(summary))
    sources = []
    for name, info in summary["files"].items():
        src = {"name": info["format"], "format": info["format"], "path": str(data / name)}
        if info["format"] == "pubmedqa":
            src["split"] = "all"
        sources.append(src)
    cfg = {"name": "bench-cluster", "sources": sources, "ingest": {"m1_shuffle": True}}
    path = workdir / "pool.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def ingest_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]["ingest"]


def run_local(config: Path, run_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    # The local Ray gets the same 2 CPUs as each cluster.
    cfg = yaml.safe_load(config.read_text())
    cfg["ray"] = {"num_cpus": 2}
    local_cfg = run_dir.parent / f"{run_dir.name}.yaml"
    local_cfg.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "curation",
            "curate",
            str(local_cfg),
            "--stages",
            "ingest",
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    return {"command_s": time.perf_counter() - t0, **ingest_record(run_dir)}


def run_job(cluster: LocalCluster, config: Path, run_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            str(REPO / "cluster" / "submit.sh"),
            "--address",
            cluster.address,
            "--",
            "curate",
            str(config),
            "--stages",
            "ingest",
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-3000:] + out.stderr[-3000:])
    return {"command_s": time.perf_counter() - t0, **ingest_record(run_dir)}


def report(mode: str, r: dict[str, Any]) -> None:
    print(
        f"{mode}: stage {r['wall_s']:.2f} s, command {r['command_s']:.2f} s, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=196_157, help="pool rows (m1's pool: 196,157)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/m1-bench-cluster")
    args = parser.parse_args()
    workdir = Path(args.workdir) / f"rows-{args.rows}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_pool(workdir, args.rows)
    runs = workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    results: dict[str, list[dict[str, Any]]] = {"local": [], "1 node": [], "2 nodes": []}

    # Both clusters stay up for the whole benchmark and the three modes alternate, so a change in the machine's
    # load (it is shared) hits every mode alike instead of the one that happened to run then.
    with LocalCluster(workers=0, cpus=2) as one, LocalCluster(workers=1, cpus=1) as two:
        for i in range(args.repeats):
            results["local"].append(run_local(config, runs / f"local-{i}"))
            report("local", results["local"][-1])
            results["1 node"].append(run_job(one, config, runs / f"one-{i}"))
            report("1 node", results["1 node"][-1])
            results["2 nodes"].append(run_job(two, config, runs / f"two-{i}"))
            report("2 nodes", results["2 nodes"][-1])

    # Every way gives the same counts (the ingest is deterministic).
    counts = {(r["rows_in"], r["rows_out"], r["rows_rejected"]) for rs in results.values() for r in rs}
    assert len(counts) == 1, counts
    med = {
        mode: {
            "stage_s": statistics.median(r["wall_s"] for r in rs),
            "command_s": statistics.median(r["command_s"] for r in rs),
        }
        for mode, rs in results.items()
    }
    ratios = {
        "two_nodes_over_one_node_stage": med["2 nodes"]["stage_s"] / med["1 node"]["stage_s"],
        "two_nodes_over_one_node_command": med["2 nodes"]["command_s"] / med["1 node"]["command_s"],
        "job_over_local_command": med["1 node"]["command_s"] / med["local"]["command_s"],
        "job_over_local_stage": med["1 node"]["stage_s"] / med["local"]["stage_s"],
    }
    rows_in = next(iter(counts))[0]
    print(f"\ningest of {rows_in:,} rows, medians of {args.repeats}")
    print(f"{'mode':<10}{'stage s':>10}{'command s':>12}")
    for mode, m in med.items():
        print(f"{mode:<10}{m['stage_s']:>10.2f}{m['command_s']:>12.2f}")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(
        json.dumps(
            {
                "rows": rows_in,
                "repeats": args.repeats,
                "medians": med,
                "ratios": {k: round(v, 3) for k, v in ratios.items()},
                "runs": {
                    k: [(round(r["wall_s"], 2), round(r["command_s"], 2)) for r in rs]
                    for k, rs in results.items()
                },
                "load_avg": os.getloadavg(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

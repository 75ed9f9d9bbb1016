"""Benchmark: bench_scale.py's pipeline (ingest -> dedup on Ray -> decontaminate) as a `ray job submit` job on a
two-node local cluster, checked against a single-node run of the same config, with where the dedup tasks ran.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_scale_cluster.py --rows 2000000

The pool: bench/zipf_pool.py (made once per size under --workdir; a local path both nodes read, as they run on
this machine). One config for both runs (bench_scale.py's: dedup on the question with ``executor: ray``,
decontamination against the pool's 5,000-question eval set; ``ray.num_cpus: 2`` applies to the local Ray only):

- **1 node**: `m1 curate CONFIG --stages ingest,dedup,decontaminate` in a fresh process with its own local Ray
  (2 CPUs);
- **2 nodes**: the same command submitted with cluster/submit.sh (`ray job submit`) to a head plus one worker node
  started by cluster/start-node.sh (curation/devtools/local_cluster.py), --cpus-per-node CPUs each (1 by
  default), into a run dir under --workdir that both nodes reach. With 1 CPU a node, decontamination's Ray tasks
  (2 CPUs each) never get a node and the job waits forever (seen at 1M rows): use ``--cpus-per-node 2`` for the
  whole pipeline. ``--one-node-run DIR`` compares against a finished single-node run instead of making one.

Checks: the ``dedup``, ``rejects/dedup``, ``contamination`` and ``candidates`` tables of the two runs hold the same
rows: per table the row count and the sum of DuckDB's ``hash`` of each row rendered as text (order-free, so
the files' split into parts does not matter; ``candidates`` without ``ingested_at``, the ingest's clock).
Placement: after the job, Ray's state API (``ray.util.state.list_tasks(detail=True)``) lists the job's tasks; the
``dedup.*`` and ``decontaminate.*`` ones are counted per node (head / worker). Both nodes must get a share of
the dedup tasks. Prints a table and one JSON line; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from zipf_pool import make_pool  # noqa: E402

from curation.devtools.local_cluster import LocalCluster  # noqa: E402

BIN = Path(sys.executable).parent
STAGES = "ingest,dedup,decontaminate"
TABLES = ("dedup", "rejects/dedup", "contamination", "candidates")
# Columns that depend on when a run happened, not on what it decided.
CLOCK_COLUMNS = {"candidates": ["ingested_at"]}
# The Ray task names of curation/distributed/dedup.py and curation/stages/decontaminate.py.
TASK_NAMES = [
    f"dedup.{n}" for n in ("signatures", "exact", "buckets", "pairs", "texts", "verify", "targets", "write")
] + ["decontaminate.block"]


def write_config(path: Path, pool: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "name": "scale-cluster",
                "sources": [{"name": "medmcqa", "format": "medmcqa", "path": str(pool), "split": "train"}],
                "ray": {"num_cpus": 2},
                "dedup": {"text": "question", "executor": "ray"},
                "decontaminate": {
                    "eval_sets": [
                        {"name": "eval", "format": "medqa", "path": str(pool / "eval.jsonl"), "split": "test"}
                    ]
                },
            }
        )
    )


def stage_walls(run: Path) -> dict[str, float]:
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    return {name: round(rec["wall_s"], 1) for name, rec in stages.items()}


def run_local(cfg: Path, run: Path) -> dict:
    ray_tmp = tempfile.mkdtemp(prefix="m1c-", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(BIN / "m1"), "curate", str(cfg), "--run-dir", str(run), "--stages", STAGES],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    subprocess.run(["rm", "-rf", ray_tmp], check=False)
    if out.returncode:
        raise SystemExit(f"local m1 curate failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return {"command_s": round(wall, 1), "stages_s": stage_walls(run)}


def run_job(cluster: LocalCluster, cfg: Path, run: Path) -> dict:
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
            str(cfg),
            "--run-dir",
            str(run),
            "--stages",
            STAGES,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"job failed:\n{out.stdout[-4000:]}\n{out.stderr[-3000:]}")
    return {"command_s": round(wall, 1), "stages_s": stage_walls(run)}


def placement(cluster: LocalCluster) -> dict[str, dict[str, int]]:
    """Finished task attempts per task name and node role, from Ray's state API."""
    from ray.util.state import list_nodes, list_tasks

    time.sleep(5)  # task events reach the GCS every second or so
    nodes = list_nodes(address=cluster.address, limit=100)
    role = {n.node_id: ("head" if n.is_head_node else "worker") for n in nodes}
    counts: dict[str, Counter] = {}
    for name in TASK_NAMES:
        tasks = list_tasks(
            address=cluster.address,
            filters=[("name", "=", name)],
            detail=True,
            limit=10_000,
            raise_on_missing_output=False,
        )
        for t in tasks:
            if t.state == "FINISHED":
                counts.setdefault(name, Counter())[role.get(t.node_id, t.node_id or "?")] += 1
    return {name: dict(c) for name, c in sorted(counts.items())}


def table_digests(run: Path) -> dict[str, tuple[int, int]]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    tables = json.loads((run / "manifest.json").read_text())["tables"]
    out = {}
    for name in TABLES:
        path = run / tables[name]["path"]
        exclude = CLOCK_COLUMNS.get(name)
        cols = f"* EXCLUDE ({', '.join(exclude)})" if exclude else "*"
        n, digest = con.execute(
            f"SELECT count(*), sum(hash(CAST(t AS VARCHAR))::HUGEINT) "
            f"FROM (SELECT {cols} FROM read_parquet('{path}/*.parquet')) t"
        ).fetchone()
        out[name] = (n, int(digest or 0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/m1-scale"))
    ap.add_argument("--keep", action="store_true", help="keep both run dirs")
    ap.add_argument(
        "--cpus-per-node",
        type=int,
        default=1,
        help="CPUs of each node (decontaminate's Ray tasks ask for 2: with 1 they never get a node)",
    )
    ap.add_argument(
        "--one-node-run", type=Path, help="compare with this finished single-node run, not a fresh one"
    )
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    pool = make_pool(args.rows, args.workdir / f"pool-{args.rows}")
    cfg = args.workdir / f"cfg-cluster-{args.rows}.json"
    write_config(cfg, pool)
    runs = Path(tempfile.mkdtemp(prefix=f"cluster-{args.rows}-", dir=args.workdir))
    one, two = runs / "one-node", runs / "two-nodes"

    if args.one_node_run:
        one = args.one_node_run
        local = {"command_s": None, "stages_s": stage_walls(one)}
    else:
        local = run_local(cfg, one)
    print("1 node  " + json.dumps(local), flush=True)
    with LocalCluster(workers=1, cpus=args.cpus_per_node) as cluster:
        job = run_job(cluster, cfg, two)
        print("2 nodes " + json.dumps(job), flush=True)
        tasks = placement(cluster)

    d_one, d_two = table_digests(one), table_digests(two)
    same = {name: d_one[name] == d_two[name] for name in TABLES}
    dedup_tasks = Counter()
    for name, per_node in tasks.items():
        if name.startswith("dedup."):
            dedup_tasks.update(per_node)
    shared = dedup_tasks.get("head", 0) > 0 and dedup_tasks.get("worker", 0) > 0

    print(
        f"\n{args.rows:,} rows; stage seconds (1 node: local Ray, 2 CPUs; 2 nodes: job, {args.cpus_per_node} CPU(s) each)"
    )
    for stage in ("ingest", "dedup", "decontaminate"):
        print(f"  {stage:<14}{local['stages_s'][stage]:>8}{job['stages_s'][stage]:>8}")
    print(f"  {'command':<14}{local['command_s']!s:>8}{job['command_s']:>8}")
    print("tables (rows, sum of row hashes): " + ("identical" if all(same.values()) else "DIFFERENT"))
    for name in TABLES:
        print(
            f"  {name:<22}{d_one[name][0]:>10,}  {'same' if same[name] else f'{d_one[name]} != {d_two[name]}'}"
        )
    print("finished tasks per node (state API):")
    for name, per_node in tasks.items():
        print(f"  {name:<24} head {per_node.get('head', 0):>4}  worker {per_node.get('worker', 0):>4}")
    print(f"dedup tasks: head {dedup_tasks.get('head', 0)}, worker {dedup_tasks.get('worker', 0)}")
    print(
        "RESULT "
        + json.dumps(
            {
                "rows": args.rows,
                "one_node": local,
                "two_nodes": job,
                "tables": {k: {"rows": d_one[k][0], "same": same[k]} for k in TABLES},
                "tasks": tasks,
                "dedup_tasks_per_node": dict(dedup_tasks),
                "load_avg": os.getloadavg(),
            }
        )
    )
    if not args.keep:
        subprocess.run(["rm", "-rf", str(two if args.one_node_run else runs)], check=False)
    return 0 if all(same.values()) and shared else 1


if __name__ == "__main__":
    raise SystemExit(main())

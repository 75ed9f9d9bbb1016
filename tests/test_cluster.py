"""`ray job submit` on a real two-node Ray cluster on this machine, as the README's cluster guide says it.

The nodes are started by cluster/start-node.sh (head plus a `--address` node, 2 CPUs each, own temp dirs, free
loopback ports, a PATH without the venv) and stopped by the PIDs of their process groups. Jobs go through
cluster/submit.sh. Checked:
- the demo pipeline (the stages before the first LLM stage) as a job writing its run to an S3-compatible store
  (moto_server on loopback): its tables, exact accounting, and which code ran (commit from the job metadata,
  code hash);
- a resubmission with `ray job submit` itself (entrypoint `m1`), from a working dir that Ray unpacks elsewhere,
  resumes that run instead of recomputing;
- `m1 sft` and `m1 eval` as jobs, on shared storage;
- last (one cluster serves the module): the worker node's raylet SIGKILLed in the middle of an ingest: exact
  counts, and tables identical to the in-process reference ingest's (`ingest_in_process`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from curation.devtools.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SYNTH_ROWS = 120_000
# Not copied into a moved working dir (what Ray skips anyway, plus caches).
COPY_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "out"
)


def free_stages() -> list[str]:
    """The pipeline's stages before the first one that sends LLM requests (no vLLM in these tests)."""
    from curation.stages import stage_registry

    names = []
    for name, cls in stage_registry().items():
        if getattr(cls, "sends_requests", False):
            break
        names.append(name)
    return names


@pytest.fixture(scope="module")
def cluster(s3_server: dict[str, str]):
    """Two nodes of 2 logical CPUs, for every test here: Ray Train's workers plus Ray Data's read and tokenizing
    tasks (1 CPU each) do not fit two 1-CPU nodes (the job would wait forever: "Cluster resources are not
    enough"). Both nodes get the loopback S3 server's endpoint and keys, as a cluster's nodes get their object
    store's. The raylet-kill test runs last: it leaves the cluster one node."""
    with LocalCluster(workers=1, cpus=2, env=s3_server) as c:
        yield c


def submit(
    cluster: LocalCluster, *m1_args: str, root: Path = REPO, flags: tuple[str, ...] = ()
) -> tuple[str, str]:
    """cluster/submit.sh from ``root`` with the caller's shell having the venv on PATH; returns (job id, output)."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [str(root / "cluster" / "submit.sh"), "--address", cluster.address, *flags, "--", *m1_args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = out.stdout + out.stderr
    job_id = submitted_job_id(text)
    if "--no-wait" not in flags:
        assert out.returncode == 0, text[-4000:]
    return job_id, text


def submitted_job_id(text: str) -> str:
    """The job id `ray job submit` printed."""
    match = re.search(r"Job '(raysubmit_\w+)' submitted", text)
    assert match, text[-3000:]
    return match.group(1)


def job_info(cluster: LocalCluster, job_id: str) -> dict[str, Any]:
    return cluster.api(f"/api/jobs/{job_id}")


def job_logs(cluster: LocalCluster, job_id: str) -> str:
    return cluster.api(f"/api/jobs/{job_id}/logs")["logs"]


def wait_job(cluster: LocalCluster, job_id: str, timeout: float = 400) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(cluster, job_id)
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {info['status']} after {timeout} s")


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


def table(run_dir: Path, name: str) -> Any:
    """A committed table, canonical (see `canonical`)."""
    entry = manifest(run_dir)["tables"][name]
    return canonical(pq.read_table(run_dir / entry["path"]))


def check_accounting(m: dict[str, Any], stages: list[str]) -> None:
    for name in stages:
        rec = m["stages"].get(name)
        if rec is None:  # a stage the demo config does not configure
            continue
        assert rec["status"] == "complete"
        assert rec["rows_in"] == rec["rows_out"] + rec["rows_rejected"]
        assert sum(rec["rejected_by_reason"].values()) == rec["rows_rejected"]
        for out_table, rows in rec["outputs"].items():
            assert m["tables"][out_table]["rows"] == rows


# ---- the README's way: the demo pipeline as a job ------------------------------------------------------------


def git_head() -> str | None:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


@pytest.fixture(scope="module")
def demo_run(cluster: LocalCluster, s3_server: dict[str, str]) -> tuple[str, str, str, set[str]]:
    """The demo pipeline's free stages as a job (cluster/submit.sh), its run on the loopback S3 store."""
    from curation.devtools.loopback_s3 import create_bucket

    run = f"{create_bucket(s3_server, 'm1-jobs')}/runs/demo"
    stages = ",".join(free_stages())
    before = git_head()
    job_id, out = submit(
        cluster, "curate", "curation/configs/demo.yaml", "--stages", stages, "--run-dir", run
    )
    return run, job_id, out, {h for h in (before, git_head()) if h}


def test_demo_pipeline_as_a_job(
    cluster: LocalCluster, demo_run: tuple[str, str, str, set[str]], s3_env: None
) -> None:
    from curation.store.runstore import RunStore

    run, job_id, out, heads = demo_run
    assert f"Job '{job_id}' succeeded" in out
    store = RunStore(run, create=False)
    m = store.manifest
    check_accounting(m, free_stages())
    ingest = m["stages"]["ingest"]
    assert (
        ingest["rows_in"] == 341 and ingest["rows_out"] > 300
    )  # the sample pool: 341 rows, bad rows included
    # The tables answer SQL with the counts the manifest recorded.
    sql = subprocess.run(
        [str(BIN / "m1"), "sql", run, "SELECT count(*) AS n FROM questions", "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert sql.returncode == 0, sql.stderr
    assert json.loads(sql.stdout)["n"] == ingest["rows_out"] == store.read_table("questions").num_rows
    # Which code ran, although Ray ships no .git: the submitter's commit and the hash of the code itself.
    assert m["ray_job"] == job_id
    if heads:  # (others may commit to this checkout while the job runs: HEAD at submission time)
        assert m["git_commit"].removesuffix("-dirty") in heads
    assert re.fullmatch(r"[0-9a-f]{16}", m["code_hash"])
    # The job ran on the cluster's two nodes, and the stage really executed (was not skipped).
    assert cluster.alive_nodes() == 2
    assert "[ingest] running" in out


def test_relative_run_dir_is_refused_as_a_job(cluster: LocalCluster) -> None:
    job_id, out = submit(
        cluster,
        "curate",
        "curation/configs/demo.yaml",
        "--stages",
        "ingest",
        "--run-dir",
        "runs/x",
        flags=("--no-wait",),
    )
    info = wait_job(cluster, job_id, timeout=120)
    assert info["status"] == "FAILED"
    logs = job_logs(cluster, job_id)
    assert "--run-dir 'runs/x' is relative" in logs and "s3://" in logs
    assert "Traceback" not in logs


def test_raw_ray_job_submit_from_a_moved_working_dir_resumes_the_s3_run(
    cluster: LocalCluster, demo_run: tuple[str, str, str, set[str]], s3_env: None, tmp_path: Path
) -> None:
    """The README's command without the wrapper, entrypoint `m1`: the console script resolves because
    cluster/start-node.sh put the venv on the nodes' PATH (the nodes here start with a PATH that lacks it). It runs
    from a copy of the checkout, which Ray unpacks under another _ray_pkg_<hash> folder, and resumes the demo job's
    run on the object store: every stage is skipped, nothing is rewritten."""
    from curation.store.runstore import RunStore

    run, first_job, _, _ = demo_run
    before = RunStore(run, create=False).manifest
    copy = tmp_path / "checkout"
    shutil.copytree(REPO, copy, ignore=COPY_IGNORE)
    (copy / "NOTES.txt").write_text("a file that changes the working dir's package hash\n")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "job", "submit", "--address", cluster.address, "--working-dir", "."]
    cmd += ["--runtime-env", "cluster/runtime_env.yaml", "--"]
    cmd += [
        "m1",
        "curate",
        "curation/configs/demo.yaml",
        "--stages",
        ",".join(free_stages()),
        "--run-dir",
        run,
    ]
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    job_id = submitted_job_id(out)
    first_pkg = job_info(cluster, first_job)["runtime_env"]["working_dir"]
    second_pkg = job_info(cluster, job_id)["runtime_env"]["working_dir"]
    assert first_pkg != second_pkg  # really unpacked elsewhere
    assert re.search(r"\[ingest\] complete for config hash \w+ \(stage input hash \w+\); skipping", out), out[
        -3000:
    ]
    assert "[ingest] running" not in out
    after = RunStore(run, create=False).manifest
    assert after["stages"]["ingest"] == before["stages"]["ingest"]
    assert after["tables"] == before["tables"]
    assert cluster.alive_nodes() == 2
    sql = subprocess.run(
        [str(BIN / "m1"), "sql", run, "SELECT count(*) AS n FROM candidates", "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert sql.returncode == 0 and json.loads(sql.stdout)["n"] == after["tables"]["candidates"]["rows"], (
        sql.stderr
    )


# ---- m1 sft and m1 eval as jobs, the same way ------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model on 'shared storage' (a path every node of this local cluster sees)."""
    from curation.devtools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("shared-model") / "tiny")


def test_sft_as_a_job_with_the_packaged_config(
    cluster: LocalCluster, shared_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`m1 sft` submitted like curate: the packaged demo config (resolved inside Ray's copy of the working
    dir), run_dir and model on shared storage; the metrics table records which job wrote it."""
    from curation.store.runstore import RunStore
    from sft.demo import synthetic_curated

    run_dir = tmp_path_factory.mktemp("shared-sft") / "run"
    store = RunStore(str(run_dir))
    store.commit([store.write_table("curated", synthetic_curated(24, seed=3))])
    args = (
        "sft",
        "curation/configs/sft_demo.yaml",
        "--set",
        f"run_dir={run_dir}",
        "--set",
        f"model.path={shared_model}",
        "--set",
        "train.max_steps=3",
    )
    job_id, out = submit(cluster, *args)
    assert f"Job '{job_id}' succeeded" in out, out[-3000:]
    assert "[sft] demo-tiny: 3 optimizer steps" in out
    m = manifest(run_dir)
    metrics = RunStore(str(run_dir), create=False).read_table("sft_metrics").to_pylist()
    logged = [{k: r[k] for k in ("step", "attempt", "logged_at", "loss")} for r in metrics]
    assert m["tables"]["sft_metrics"]["rows"] == 3, (
        logged,
        out[-4000:],
    )  # once seen 4 under load: why, if so
    # An unpacked DDP fit's rows (test_sft_train's runs are sharded and packed): 4 examples a step, in batches
    # of 2 that are padded, with a gradient.
    assert [r["step"] for r in metrics] == [1, 2, 3]
    assert all(r["examples"] == 4 and r["tokens"] > r["label_tokens"] > 0 for r in metrics)
    assert all(0 < r["padding_share"] < 1 and r["grad_norm"] > 0 for r in metrics)
    assert m["tables"]["sft_metrics"]["written_by"]["ray_job"] == job_id  # which job (and code) wrote it
    assert re.fullmatch(r"[0-9a-f]{16}", m["tables"]["sft_metrics"]["written_by"]["code_hash"])
    checkpoints = sorted(
        (run_dir / "sft" / "demo-tiny" / "train").glob("checkpoint_*/checkpoint/model.safetensors")
    )
    assert checkpoints
    # The same run dir given relative to the job's working dir is refused before anything starts: a real job
    # shows it for curate (test_relative_run_dir_is_refused_as_a_job), test_cluster_files for the SFT config.


def test_eval_as_a_job_then_a_resubmission_keeps_every_cell(
    cluster: LocalCluster, shared_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shared = tmp_path_factory.mktemp("shared-eval")
    config = shared / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "tiny",
                        "model": str(shared_model),
                        "max_model_len": 1024,
                        "dtype": "float32",
                        "engine_kwargs": {"enforce_eager": True},
                    }
                ],
                "benchmarks": [
                    {
                        "name": "pubmedqa-heldout",
                        "path": str(REPO / "curation" / "sample_pool" / "pubmedqa.jsonl"),
                        "format": "pubmedqa",
                        "split": "test",
                        "limit": 4,
                    }
                ],
                "budgets": [8, 16],
                "forcing": [0],
                "markers": {"answer_max_tokens": 8},
            }
        )
    )
    run_dir = shared / "run"
    job_id, out = submit(cluster, "eval", str(config), "--run-dir", str(run_dir))
    assert f"Job '{job_id}' succeeded" in out, out[-3000:]
    assert "2 cells run, 0 already finished" in out
    scores = pq.read_table(run_dir / manifest(run_dir)["tables"]["eval_scores"]["path"])
    assert sorted(scores.column("budget").to_pylist()) == [8, 16]
    assert scores.column("samples").to_pylist() == [4, 4]
    assert (run_dir / "eval" / "accuracy-tiny.png").is_file()
    job_id, out = submit(cluster, "eval", str(config), "--run-dir", str(run_dir))
    assert "0 cells run, 2 already finished" in out, out[-3000:]


# ---- the worker node's raylet killed in the middle of an ingest -------------------------------------------


@pytest.fixture(scope="module")
def synth_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic pool in m1's source mix on 'shared storage' (a folder every node of this host sees)."""
    from curation.devtools.synth import generate_pool

    root = tmp_path_factory.mktemp("pool")
    summary = generate_pool(root / "data", SYNTH_ROWS, format="mixed", seed=11)
    sources = [
        {"name": info["format"], "format": info["format"], "path": str(root / "data" / name)}
        for name, info in summary["files"].items()
    ]
    for s in sources:
        if s["format"] == "pubmedqa":
            s["split"] = "all"
    # Small chunks: many Ray tasks, spread over both nodes.
    cfg = {"name": "synth", "sources": sources, "ingest": {"m1_shuffle": True, "rows_per_chunk": 8000}}
    path = root / "synth.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def reference_ingest(synth_config: Path) -> Any:
    """The same ingest in this process (`ingest_in_process`, the reference test_ingest holds the Ray stage to): the
    tables and counts the killed job must end with, without a second 120,000-row job on the cluster."""
    from curation.config import load_config
    from curation.stages.ingest import ingest_in_process

    cfg = load_config(synth_config)
    return ingest_in_process(cfg.sources, cfg.ingest)


def canonical(t: Any) -> Any:
    """A table in a canonical order and without the ingestion timestamp (it differs per run)."""
    if "ingested_at" in t.column_names:
        t = t.drop_columns(["ingested_at"])
    keys = [c for c in ("source", "source_ref", "qid", "reason") if c in t.column_names]
    return t.sort_by([(k, "ascending") for k in keys])


def worker_node_id(cluster: LocalCluster) -> str:
    (node,) = [n for n in cluster.node_states() if not n["is_head_node"] and n["state"] == "ALIVE"]
    return node["node_id"]


def running_tasks_on(cluster: LocalCluster, node_id: str) -> int:
    tasks = cluster.api(
        f"/api/v0/tasks?limit=1000&filter_keys=node_id&filter_predicates=%3D&filter_values={node_id}"
    )
    return sum(t.get("state") == "RUNNING" for t in tasks["data"]["result"]["result"])


def test_worker_raylet_killed_mid_ingest(
    cluster: LocalCluster, synth_config: Path, reference_ingest: Any, tmp_path_factory
) -> None:
    # The module's last test: the cluster has one node left afterwards.
    run_dir = tmp_path_factory.mktemp("shared") / "killed"
    worker_id = worker_node_id(cluster)
    job_id, _ = submit(
        cluster,
        "curate",
        str(synth_config),
        "--stages",
        "ingest",
        "--run-dir",
        str(run_dir),
        flags=("--no-wait",),
    )
    # Wait until the ingest has tasks running on the worker node, then kill that node's raylet.
    deadline = time.time() + 180
    while time.time() < deadline:
        if "[ingest] running" in job_logs(cluster, job_id) and running_tasks_on(cluster, worker_id) > 0:
            break
        assert job_info(cluster, job_id)["status"] in ("PENDING", "RUNNING"), job_logs(cluster, job_id)[
            -3000:
        ]
        time.sleep(0.3)
    else:
        raise AssertionError("no ingest task ran on the worker node")
    worker = next(n for n in cluster.nodes if n.role == "worker")
    cluster.kill_raylet(worker)
    killed_at = time.time()
    info = wait_job(cluster, job_id)
    logs = job_logs(cluster, job_id)
    assert info["status"] == "SUCCEEDED", logs[-4000:]
    assert info["end_time"] / 1000 > killed_at  # the job was still running when the node died
    # The GCS marks the node dead once its health checks fail (a few seconds); a short job can end before that.
    deadline = time.time() + 60
    while (state := {n["node_id"]: n["state"] for n in cluster.node_states()}[worker_id]) != "DEAD":
        assert time.time() < deadline, f"the killed worker node is still {state} 60 s after the job ended"
        time.sleep(0.5)
    # Exact counts, and the reference's tables, row for row.
    killed = manifest(run_dir)
    check_accounting(killed, ["ingest"])
    ref = reference_ingest
    record = killed["stages"]["ingest"]
    assert (record["rows_in"], record["rows_out"], record["rows_rejected"]) == (
        SYNTH_ROWS,
        ref.questions.num_rows,
        ref.rejects.num_rows,
    )
    assert record["rejected_by_reason"] == dict(ref.counts.by_reason) and record["rows_rejected"] > 0
    assert record["ingest_sources"] == ref.counts.per_source
    assert record["outputs"] == {"questions": ref.questions.num_rows, "rejects/ingest": ref.rejects.num_rows}
    assert table(run_dir, "questions").equals(canonical(ref.questions))
    assert table(run_dir, "rejects/ingest").equals(canonical(ref.rejects))

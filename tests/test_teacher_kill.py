"""kill -9 of `m1 curate` in the middle of the teacher stage, then a rerun: the same curated table as an
uninterrupted run, and no answered request paid for again beyond what was in flight at the kill.

Real processes: `m1 curate` in its own process group (SIGKILL to the whole group, Ray workers included), and
rehearsal servers in processes of their own that count successful answers per request across both runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

POOL = Path(__file__).resolve().parents[1] / "curation" / "sample_pool"
CONCURRENCY = 8


def _stats(url: str, *, per_request: bool = True) -> dict[str, Any]:
    query = "" if per_request else "?summary=1"
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats" + query, timeout=10) as resp:
        return json.load(resp)


def _reset(url: str) -> None:
    req = urllib.request.Request(url.removesuffix("/v1") + "/stats/reset", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=10).read()


def _config(tmp: Path, scorer_url: str, teacher_url: str) -> Path:
    def engine(url: str, model: str, concurrency: int) -> dict[str, Any]:
        return {
            "kind": "openai",
            "base_url": url,
            "model": model,
            "max_concurrency": concurrency,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.2,
        }

    raw = {
        "name": "kill-test",
        "sources": [
            {"name": "medqa", "format": "medqa", "path": str(POOL / "medqa.jsonl")},
            {"name": "headqa", "format": "headqa", "path": str(POOL / "headqa.json")},
        ],
        "ingest": {"m1_shuffle": True},
        "ray": {"num_cpus": 2},
        "engines": {
            "qwen7b": engine(scorer_url, "Qwen/Qwen2.5-7B-Instruct", 32),
            "teacher": engine(teacher_url, "deepseek-reasoner", CONCURRENCY),
        },
        "score": {"scorers": [{"name": "qwen7b", "engine": "qwen7b"}]},
        "teacher": {"engine": "teacher", "max_attempts": 2},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _curate(config: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-m", "curation.cli", "curate", str(config), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: the SIGKILL reaches the driver and what it started
    )


def _curated(run_dir: Path) -> list[tuple[str, str, str, str]]:
    from curation.store.runstore import RunStore

    rows = RunStore(str(run_dir), create=False).read_table("curated").to_pylist()
    return sorted((r["source"], r["qid"], r["reasoning"], r["distilled_answer_string"]) for r in rows)


def test_kill_during_teacher_then_rerun(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from curation.config import load_config
    from curation.devtools.rehearse import RehearsalConfig, spawn_rehearsal_server, stop_rehearsal_server
    from curation.stages.ingest import ingest_in_process
    from curation.store.runstore import RunStore

    # The servers need the pool before the runs start: the same questions, from the in-process ingest (the
    # reference the Ray stage is tested against in test_ingest), with no Ray cluster of its own.
    scorer_proc = teacher_proc = None
    try:
        placeholder = load_config(_config(tmp_path, "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"))
        pool = str(tmp_path / "pool.parquet")
        pq.write_table(ingest_in_process(placeholder.sources, placeholder.ingest).questions, pool)
        scorer_proc, scorer_url = spawn_rehearsal_server(
            RehearsalConfig(
                pool=pool,
                latency_ms=0,
                latency_jitter_ms=0,
                model_correct_rates={"Qwen/Qwen2.5-7B-Instruct": 0.2},
            )
        )
        teacher_proc, teacher_url = spawn_rehearsal_server(
            RehearsalConfig(
                pool=pool, latency_ms=250, latency_jitter_ms=100, reasoning_tokens_mean=80, correct_rate=0.6
            )
        )
        config = _config(tmp_path, scorer_url, teacher_url)

        clean = _curate(config, tmp_path / "clean")
        out = clean.communicate(timeout=600)[0].decode(errors="replace")
        assert clean.returncode == 0, out[-3000:]
        clean_sent = _stats(teacher_url, per_request=False)["requests_total"]
        assert clean_sent > 40
        _reset(teacher_url)

        run_dir = tmp_path / "killed"
        kills, in_flight_at_kill = 0, []
        # One kill, in the middle of the teacher stage (test_pay_once kills one engine run three times over a
        # ledger; each killed run here costs a whole `m1 curate` start-up: a Ray cluster, the stages' actors).
        for target in (15,):
            proc = _curate(config, run_dir)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                if _stats(teacher_url, per_request=False)["requests_total"] >= target:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the run finished before it could be killed"
            in_flight_at_kill.append(_stats(teacher_url, per_request=False)["in_flight"])
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            kills += 1
            time.sleep(3.0)  # workers of a dead driver must stop on their own; let any stragglers show up
        # What the ledger holds once every worker is gone, and how often the server had answered each id then.
        from curation.engines.ledger import Ledger

        in_ledger = {str(i) for i in Ledger(RunStore(str(run_dir), create=False).ledger_uri).answered_ids()}
        answered_then = _stats(teacher_url)["attempts_by_request"]
        final = _curate(config, run_dir)
        out = final.communicate(timeout=600)[0].decode(errors="replace")
        assert final.returncode == 0, out[-3000:]

        assert _curated(run_dir) == _curated(tmp_path / "clean")
        successes = _stats(teacher_url)["successes_by_request"]
        repaid = sum(n - 1 for n in successes.values() if n > 1)
        assert repaid <= kills * CONCURRENCY, (repaid, in_flight_at_kill)
        attempts_now = _stats(teacher_url)["attempts_by_request"]
        assert len(successes) == len(attempts_now)
        # Zero re-sent answered requests: no id in the ledger at the time of the rerun reached the server again.
        teacher_ids = in_ledger & set(answered_then)
        assert teacher_ids, "the killed runs left teacher answers in the ledger"
        assert {i: attempts_now[i] for i in teacher_ids} == {i: answered_then[i] for i in teacher_ids}
    finally:
        for proc in (scorer_proc, teacher_proc):
            if proc is not None:
                stop_rehearsal_server(proc)

"""Resume benchmark: a rerun over 100K requests that the ledger already answers must send nothing, fast.

The ledger is written directly (``--shards`` shards, as an engine flushing every few hundred rows leaves
it), then `run_requests` is timed on the same 100K requests against a rehearsal server in its own process;
the server must see zero requests. Also timed: a cold `Ledger.answered_ids()` (fresh Ledger object in a
fresh process) and a warm one. Goal: run_requests < 10 s.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_resume.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLD_READ = """
import sys, time
sys.path.insert(0, {root!r})
from curation.engines.ledger import Ledger
t = time.perf_counter()
n = len(Ledger({uri!r}).answered_ids())
print(n, time.perf_counter() - t)
"""


def build(n: int, shards: int, ledger_uri: str) -> list[dict]:
    """n requests, and a ledger holding a response for each, written as ``shards`` shards."""
    from curation.engines import Ledger, make_request, response_row, responses_table

    requests = [
        make_request(
            f"q{i:06d}",
            "deepseek-reasoner",
            messages=[
                {
                    "role": "user",
                    "content": f"Return your final response within \\boxed{{}}. Q{i}\nA. a\nB. b",
                }
            ],
            max_tokens=8000,
        )
        for i in range(n)
    ]
    ledger = Ledger(ledger_uri)
    per_shard = -(-n // shards)
    for start in range(0, n, per_shard):
        rows = [
            response_row(
                r, engine="openai:bench", text="\\boxed{A}", reasoning="thinking " * 40, finish_reason="stop"
            )
            for r in requests[start : start + per_shard]
        ]
        ledger.append(responses_table(rows))
    return requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=200)
    args = parser.parse_args()

    import pyarrow as pa
    import ray

    from curation.devtools.rehearse import RehearsalConfig, spawn_rehearsal_server, stop_rehearsal_server
    from curation.engines import Ledger, OpenAIEngineConfig, requests_table, run_requests

    ledger_uri = tempfile.mkdtemp(prefix="m1bench-resume-")
    t = time.perf_counter()
    requests = build(args.n, args.shards, ledger_uri)
    build_s = time.perf_counter() - t
    table = requests_table(requests)

    cold = subprocess.run(
        [sys.executable, "-c", COLD_READ.format(root=str(ROOT), uri=ledger_uri)],
        capture_output=True,
        text=True,
        check=True,
    )
    cold_n, cold_s = cold.stdout.split()
    t = time.perf_counter()
    warm_n = len(Ledger(ledger_uri).answered_ids())
    warm_s = time.perf_counter() - t

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="m1bench-", dir="/tmp"))
    proc, url = spawn_rehearsal_server(RehearsalConfig(latency_ms=50))
    try:
        cfg = OpenAIEngineConfig(base_url=url, max_concurrency=64)
        t = time.perf_counter()
        out = run_requests(table, cfg, ledger_uri=ledger_uri, progress=False)
        run_s = time.perf_counter() - t
        result = pa.concat_tables(ray.get(out.to_arrow_refs()))
        import urllib.request

        with urllib.request.urlopen(url[: -len("/v1")] + "/stats?summary=1") as resp:
            server = json.loads(resp.read())
    finally:
        stop_rehearsal_server(proc)
        ray.shutdown()
    assert result.num_rows == args.n, result.num_rows
    assert all(result.column("cached").to_pylist()), "every response must come from the ledger"
    assert server["requests_total"] == 0, f"the server saw {server['requests_total']} requests"
    report = {
        "bench": "resume",
        "n": args.n,
        "shards": args.shards,
        "ledger_build_s": round(build_s, 2),
        "answered_ids_cold_s": round(float(cold_s), 3),
        "answered_ids_warm_s": round(warm_s, 3),
        "run_requests_s": round(run_s, 2),
        "goal_s": 10.0,
        "ratio_to_goal": round(run_s / 10.0, 3),
        "server_requests": server["requests_total"],
        "cached_rows": result.num_rows,
    }
    assert int(cold_n) == warm_n == args.n
    print(
        f"{args.n:,} requests, all in the ledger ({args.shards} shards): run_requests {run_s:.2f} s "
        f"(goal < 10 s), server saw {server['requests_total']} requests; answered_ids cold {float(cold_s):.3f} s, "
        f"warm {warm_s:.3f} s"
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

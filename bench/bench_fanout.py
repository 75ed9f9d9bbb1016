"""Fan-out benchmark: how close `run_requests` (openai engine on Ray) gets to the throughput bound, and what
it costs in client CPU per request.

A rehearsal server runs in its own process with latency L (default 200 ms) and short reasoning. For each
concurrency C the bound is min(C / L, rpm / 60): C/L binds for C=64; for larger C a documented rpm binds,
because the server and the client share 2 cores and cannot serve C/L = 5,120 req/s for C=1024. Each run
sends ``seconds`` worth of requests at the bound.

Reported per C:
  * efficiency_e2e: N / (wall time of run_requests) / bound, wall time including actor start-up;
  * efficiency_steady: completions per second between the 10th (or, with rpm, the burst + C-th) and the
    90th percentile of completion times (away from start-up, the bucket's initial burst of burst_s * rpm/60
    requests, and the final drain) / bound;
  * engine CPU ms/request: CPU of the engine actors (getrusage inside the actors, after start-up);
  * client CPU ms/request: CPU of every client-side process per request: the driver, GCS, raylet and idle
    workers (psutil deltas), plus the engine actors after their start-up and the coordinator actor (both
    measured with getrusage inside the actor, since they exit with the run); the actors' one-off start-up
    CPU (process start, imports) is printed beside it;
  * baseline: a plain asyncio + aiohttp loop in this process (no SDK, no Ray, no retries, no ledger) at the
    same C and pacing, measured in the same run, as the machine's own reference.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_fanout.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def process_cpu(exclude: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) of this process and each descendant, by pid, minus ``exclude``.

    ray.init() starts GCS and the raylet as children of this driver and the raylet forks every worker, so the
    descendants are exactly this benchmark's Ray processes (other Ray clusters on the machine are not counted).
    """
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        if proc.pid in exclude:
            continue
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        out[proc.pid] = t.user + t.system
    return out


def client_cpu_s(before: dict[int, float], after: dict[int, float], totals: dict) -> float:
    """Client CPU of one run: processes alive across it (driver, GCS, raylet, idle workers) by /proc delta,
    plus what the run's own actors reported before they exited (engine actors after start-up, coordinator)."""
    alive = sum(after[pid] - before[pid] for pid in after.keys() & before.keys())
    return alive + totals.get("worker_cpu_s", 0.0) + totals.get("coordinator_cpu_s", 0.0)


def make_requests(n: int, tag: str) -> list[dict]:
    from curation.engines import make_request

    return [
        make_request(
            f"{tag}-{i}",
            "deepseek-reasoner",
            messages=[
                {"role": "user", "content": f"Benchmark question {tag} {i}: which option?\nA. one\nB. two"}
            ],
            max_tokens=256,
        )
        for i in range(n)
    ]


async def baseline(
    url: str, requests: list[dict], concurrency: int, rps: float | None
) -> tuple[float, float]:
    """(requests/s, CPU ms/request) of a bare aiohttp loop at the same concurrency and pacing."""
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    interval = 1.0 / rps if rps else 0.0
    start = time.perf_counter()

    async def one(i: int, req: dict) -> None:
        if interval:
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
        async with sem:
            body = {"model": req["model"], "messages": req["messages"], "max_tokens": 256}
            headers = {"X-M1-Request-Id": "base-" + req["request_id"]}
            async with session.post(url + "/chat/completions", json=body, headers=headers) as resp:
                data = await resp.json()
                assert data["choices"]

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        wall = time.perf_counter() - start
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return len(requests) / wall, cpu / len(requests) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="64,256,1024")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--rpm", type=float, default=36000.0, help="rpm for C > 64 (600 req/s)")
    parser.add_argument("--seconds", type=float, default=15.0, help="requests sent = bound * seconds")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--transports", default="openai-sdk,aiohttp")
    parser.add_argument(
        "--write-ahead",
        default="on",
        help="on, off or on,off: the per-answer write-ahead log (off: the baseline)",
    )
    args = parser.parse_args()

    import pyarrow as pa
    import ray

    from curation.devtools.rehearse import RehearsalConfig, spawn_rehearsal_server, stop_rehearsal_server
    from curation.engines import OpenAIEngineConfig, last_run_totals, requests_table, run_requests

    temp_dir = tempfile.mkdtemp(prefix="m1bench-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    server_cfg = RehearsalConfig(latency_ms=args.latency_ms, latency_jitter_ms=0.0, reasoning_tokens_mean=40)
    proc, url = spawn_rehearsal_server(server_cfg)
    latency_s = args.latency_ms / 1000.0
    rows = []
    try:
        # Warm-up: Ray Data's first execution imports a lot; keep it out of the measured runs.
        warm = OpenAIEngineConfig(base_url=url, max_concurrency=16, actors=args.actors)
        run_requests(
            requests_table(make_requests(64, "warm")), warm, ledger_uri=tempfile.mkdtemp(), progress=False
        )
        cases = [
            (int(c), t, w == "on")
            for c in args.concurrency.split(",")
            for t in args.transports.split(",")
            for w in args.write_ahead.split(",")
        ]
        baselines: dict[int, tuple[float, float]] = {}
        for c, transport, write_ahead in cases:
            rpm = None if c <= 64 else args.rpm
            bound = min(c / latency_s, rpm / 60.0 if rpm else float("inf"))
            binds = "C/L" if rpm is None or c / latency_s <= rpm / 60.0 else "rpm"
            n = int(bound * args.seconds)
            reqs = make_requests(n, f"c{c}-{transport}-{write_ahead}")
            cfg = OpenAIEngineConfig(
                base_url=url,
                max_concurrency=c,
                rpm=rpm,
                actors=args.actors,
                transport=transport,
                write_ahead=write_ahead,
            )
            ledger = tempfile.mkdtemp(prefix="m1bench-ledger-")
            exclude = {proc.pid}
            cpu_before = process_cpu(exclude)
            t0 = time.perf_counter()
            out = run_requests(requests_table(reqs), cfg, ledger_uri=ledger, progress=False)
            wall = time.perf_counter() - t0
            totals = last_run_totals()
            cpu = client_cpu_s(cpu_before, process_cpu(exclude), totals)
            table = pa.concat_tables(ray.get(out.to_arrow_refs()))
            assert table.num_rows == n, (table.num_rows, n)
            errors = table.num_rows - table.column("error").null_count
            created = sorted(table.column("created_at").to_pylist())
            # Steady rate: completions between the 10th and 90th percentile, away from start-up, the initial
            # burst the buckets allow, and the drain at the end.
            burst = (rpm / 60.0 * cfg.burst_s) if rpm else 0.0
            lo, hi = max(int(0.1 * n), int(burst + c)), int(0.9 * n)
            steady = (hi - lo) / (created[hi] - created[lo]).total_seconds()
            if c not in baselines:
                baselines[c] = asyncio.run(baseline(url, reqs, c, rpm / 60.0 if rpm else None))
            base_rps, base_cpu = baselines[c]
            row = {
                "concurrency": c,
                "transport": transport,
                "write_ahead": write_ahead,
                "rpm": rpm,
                "bound_rps": round(bound, 1),
                "binds": binds,
                "n": n,
                "errors": errors,
                "wall_s": round(wall, 2),
                "rps_e2e": round(n / wall, 1),
                "rps_steady": round(steady, 1),
                "efficiency_e2e": round(n / wall / bound, 3),
                "efficiency_steady": round(steady / bound, 3),
                "engine_cpu_ms_per_req": round(totals.get("worker_cpu_s", float("nan")) / n * 1e3, 3),
                "client_cpu_ms_per_req": round(cpu / n * 1e3, 3),
                "actor_startup_cpu_s": round(totals.get("startup_cpu_s", 0.0), 2),
                "baseline_rps": round(base_rps, 1),
                "baseline_cpu_ms_per_req": round(base_cpu, 3),
                "ratio_vs_baseline_rps": round(steady / base_rps, 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        stop_rehearsal_server(proc)
        ray.shutdown()
    cols = [
        ("C", "concurrency"),
        ("transport", "transport"),
        ("write-ahead", "write_ahead"),
        ("rpm", "rpm"),
        ("bound/s", "bound_rps"),
        ("binds", "binds"),
        ("N", "n"),
        ("err", "errors"),
        ("wall s", "wall_s"),
        ("rps e2e", "rps_e2e"),
        ("rps steady", "rps_steady"),
        ("eff e2e", "efficiency_e2e"),
        ("eff steady", "efficiency_steady"),
        ("engine cpu ms", "engine_cpu_ms_per_req"),
        ("client cpu ms", "client_cpu_ms_per_req"),
        ("actor start cpu s", "actor_startup_cpu_s"),
        ("base rps", "baseline_rps"),
        ("base cpu ms", "baseline_cpu_ms_per_req"),
    ]
    print()
    print(" | ".join(h for h, _ in cols))
    for row in rows:
        print(" | ".join(str(row[k]) for _, k in cols))
    print(json.dumps({"bench": "fanout", "latency_ms": args.latency_ms, "actors": args.actors, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Streaming benchmark: the driver's peak memory must not grow with the number of requests.

For each size, a fresh driver process starts its own local Ray cluster, builds the requests lazily on the
workers (``ray.data.range(n).map_batches(...)``), streams them through `map_requests` to a rehearsal server
in a process of its own, and writes the responses with ``write_parquet``; then it does it again on the same
ledger (the rerun: every answer from the ledger). Reported per size: the driver's peak RSS (ru_maxrss),
wall time, rows written and the server's request count. The goal (issue): peak at the large size <= 1.3x the
peak at the small one. Baseline for the ratio: the small size, measured in the same run.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_stream.py --sizes 50000 200000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DRIVER = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import pyarrow as pa, pyarrow.parquet as pq, ray, ray.data
from curation.engines import OpenAIEngineConfig, make_request, map_requests, requests_table

n, url, ledger, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=sys.argv[5])

def build(batch):
    return requests_table([
        make_request(f"q{{i}}", "deepseek-reasoner", max_tokens=200, messages=[
            {{"role": "user", "content": f"Case {{i}}: which option?\\nA. first\\nB. second\\nC. third"}}])
        for i in batch["id"].tolist()
    ])

result_init_rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
cfg = OpenAIEngineConfig(base_url=url, max_concurrency=64, actors=2, actor_num_cpus=0.5, transport="aiohttp")
result = {{"n": n, "after_init_rss_mib": result_init_rss}}
for run in ("first", "rerun"):
    started = time.perf_counter()
    ds = ray.data.range(n, override_num_blocks=max(8, n // 2000)).map_batches(build, batch_format="numpy")
    map_requests(ds, cfg, ledger_uri=ledger, progress=False).write_parquet(f"{{out}}/{{run}}")
    rows = pq.ParquetDataset(f"{{out}}/{{run}}").read(columns=["cached", "error"])
    result[run] = {{
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows.num_rows,
        "cached": sum(rows.column("cached").to_pylist()),
        "errors": rows.num_rows - rows.column("error").null_count,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }}
    del rows
with open(sys.argv[6], "w") as f:  # a file, not stdout: Ray may print there too
    json.dump(result, f)
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    args = parser.parse_args()
    from curation.devtools.rehearse import RehearsalConfig, spawn_rehearsal_server, stop_rehearsal_server

    results = []
    for n in args.sizes:
        # A fresh server per size, in its own process: its memory is not the driver's.
        proc, url = spawn_rehearsal_server(RehearsalConfig(latency_ms=0, reasoning_tokens_mean=50))
        ray_tmp = tempfile.mkdtemp(prefix="m1s-", dir="/tmp")  # short: Ray's socket paths have a length limit
        try:
            with tempfile.TemporaryDirectory(prefix="m1-bench-stream-") as tmp:
                script = Path(tmp) / "driver.py"
                script.write_text(textwrap.dedent(DRIVER.format(root=str(ROOT))))
                started = time.perf_counter()
                done = subprocess.run(
                    [
                        sys.executable,
                        str(script),
                        str(n),
                        url,
                        f"{tmp}/ledger",
                        f"{tmp}/out",
                        ray_tmp,
                        f"{tmp}/result.json",
                    ],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise SystemExit(f"driver for {n} failed:\n{done.stderr[-4000:]}")
                result = json.loads(Path(f"{tmp}/result.json").read_text())
                result["process_wall_s"] = round(time.perf_counter() - started, 1)
                with urllib.request.urlopen(url.removesuffix("/v1") + "/stats?summary=1") as resp:
                    result["server_requests"] = json.load(resp)["requests_total"]
        finally:
            stop_rehearsal_server(proc)
            shutil.rmtree(ray_tmp, ignore_errors=True)
        results.append(result)
        first, rerun = result["first"], result["rerun"]
        print(
            f"{n:>8,} requests: first {first['wall_s']} s ({n / first['wall_s']:,.0f}/s), rerun {rerun['wall_s']} s "
            f"({rerun['cached']:,} from the ledger); rows {first['rows']:,}/{rerun['rows']:,}; "
            f"errors {first['errors']}; server saw {result['server_requests']:,}; "
            f"driver peak RSS {rerun['peak_rss_mib']} MiB (after ray.init {result['after_init_rss_mib']}, "
            f"after the first pass {first['peak_rss_mib']})",
            flush=True,
        )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = large["rerun"]["peak_rss_mib"] / small["rerun"]["peak_rss_mib"]
        print(
            f"driver peak RSS: {large['n']:,} requests / {small['n']:,} requests = {ratio:.2f}x "
            f"(goal <= 1.3x; {large['n'] / small['n']:.0f}x the requests)"
        )


if __name__ == "__main__":
    main()

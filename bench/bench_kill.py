"""Pay-once under kill -9: answers paid for twice per kill, against the requests in flight at the kill.

The issue's measurement, reproduced: a fault-injecting OpenAI-compatible server on loopback (the rehearsal
server, 30% of attempts fail: 429, 500, reset connections) that counts successful answers per request across
runs; a driver with its own local Ray cluster sends N requests at concurrency C and is killed with SIGKILL to
its whole process group at a random moment, K times; then reruns finish the job. Both configurations run in
the same process, in turn:

* ``baseline``: the old behaviour (no write-ahead segment, Parquet flush every 2 s, workers unaware of their
  driver's death);
* ``pay-once``: the defaults (write-ahead segment per worker, workers stop when the driver is gone).

Printed per kill: in-flight at the kill, requests reaching the server after it, answers served during the run
but not in the ledger once its workers were gone, and answers paid again by a later run.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_kill.py            # 2,000 requests, C=64, 5 kills
    .venv/bin/python bench/bench_kill.py --requests 1000 --kills 3 --only pay-once
    .venv/bin/python bench/bench_kill.py --s3 --only pay-once   # the ledger on a loopback S3 server (moto)

With ``--s3`` the ledger lives on an S3-compatible server started on loopback (moto_server), as in an
``s3://`` run directory: the write-ahead segments then live on the node's local disk (``$M1_WAL_DIR``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import test_pay_once as harness  # noqa: E402 - the test's harness, run bigger

BASELINE = {"write_ahead": False, "stop_with_driver": False, "flush_every_s": 2.0}


def run(name: str, overrides: dict, args: argparse.Namespace) -> dict:
    srv = harness.faulty_server(latency_ms=args.latency_ms, fault_share=args.faults)
    url = srv.start()
    tmp = Path(tempfile.mkdtemp(prefix=f"m1-bench-kill-{name}-"))
    try:
        cfg = {
            "base_url": url,
            "max_concurrency": args.concurrency,
            "actors": 2,
            "actor_num_cpus": 0.25,
            "max_attempts": 8,
            "backoff_base_s": 0.02,
            "backoff_max_s": 0.2,
            **overrides,
        }
        outcome = harness.run_with_kills(
            tmp,
            srv,
            harness.kill_requests(args.requests, f"bench-{name}"),
            cfg,
            kills=args.kills,
            seed=args.seed,
            kill_after=(0.5, 3.0),
            ledger_uri=f"{args.s3_root}/kill-{name}/ledger" if args.s3_root else None,
        )
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    where = f"ledger on {args.s3_root}" if args.s3_root else "local ledger"
    print(f"\n{name} ({where}): {args.requests} requests, concurrency {args.concurrency}, {args.kills} kills")
    print(
        f"  {'kill':>4} {'at s':>6} {'in flight':>9} {'arrived after':>13} {'> 0.25 s after':>14} "
        f"{'unrecorded':>10} {'re-paid':>7}"
    )
    for i, r in enumerate(outcome.kills, 1):
        print(
            f"  {i:>4} {r.at_s:>6.2f} {r.in_flight:>9} {r.new_after_kill:>13} {r.late:>14} "
            f"{r.unrecorded:>10} {r.repaid:>7}"
        )
    print(
        f"  served {outcome.served_total} answers for {args.requests} requests; "
        f"{outcome.repaid_total} requests answered more than once (max {outcome.max_answers} times); "
        f"final errors {outcome.final_errors}; {outcome.wall_s} s"
    )
    return {"name": name, **json.loads(json.dumps(outcome, default=lambda o: o.__dict__))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--faults", type=float, default=0.3)
    parser.add_argument("--latency-ms", type=float, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=["baseline", "pay-once"])
    parser.add_argument("--json", type=Path, help="write the outcomes here")
    parser.add_argument("--s3", action="store_true", help="the ledger on a loopback S3 server (moto_server)")
    args = parser.parse_args()
    results = []
    with contextlib.ExitStack() as stack:
        args.s3_root = None
        if args.s3:
            sys.path.insert(0, str(ROOT / "bench"))
            from _s3 import loopback_s3

            args.s3_root = stack.enter_context(loopback_s3())
            os.environ["M1_WAL_DIR"] = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="m1-bench-wal-")
            )
        for name, overrides in (("baseline", BASELINE), ("pay-once", {})):
            if args.only in (None, name):
                results.append(run(name, overrides, args))
    if len(results) == 2:
        base, new = results
        per_kill = [sum(r["repaid"] for r in x["kills"]) / len(x["kills"]) for x in (base, new)]
        in_flight = sum(r["in_flight"] for r in new["kills"]) / len(new["kills"])
        after = [sum(r["new_after_kill"] for r in x["kills"]) / len(x["kills"]) for x in (base, new)]
        print(
            f"\nre-paid per kill: baseline {per_kill[0]:.1f}, pay-once {per_kill[1]:.1f} "
            f"(mean in flight at the kill {in_flight:.1f}); requests reaching the server after a kill: "
            f"baseline {after[0]:.1f}, pay-once {after[1]:.1f}; "
            f"baseline/pay-once re-paid ratio {per_kill[0] / max(per_kill[1], 1e-9):.1f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

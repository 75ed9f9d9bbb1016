"""Which processes a command's CPU went to: every process on the machine sampled from /proc while it runs.

    python bench/proc_cpu.py -- .venv/bin/pytest -q -n 2 --dist loadscope --no-loadscope-reorder

Every 0.2 s it reads each process's CPU ticks and command line (a Ray worker is named by the first task or actor
it is seen running, e.g. ``ray::MapWorker(MapBatches(OpenAIBatchWorker))``); at the end it prints the machine's
busy CPU over the run (/proc/stat) and the CPU summed by kind of process, most first. Processes that start and end
between two samples are missed (their CPU is in the busy total only), and a process seen before the command
started counts only what it spent after. Stop 29's table in BENCHMARKS.md ("The test suite's wall time") was
read this way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter

HZ = os.sysconf("SC_CLK_TCK")
SITE = re.compile(r"\S*/site-packages/")


def busy_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / HZ


def read(pid: str) -> tuple[int, int, str] | None:
    """(start time, CPU ticks, command line) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]), int(fields[11]) + int(fields[12]), cmd


def kind(cmd: str) -> str:
    """A process's kind: its Ray task or actor name, else its program (and module or script)."""
    if cmd.startswith("ray::"):
        return re.sub(r"\.\w+$", "", cmd.split()[0])
    cmd = SITE.sub("", cmd)
    words = cmd.split()
    if not words:
        return "(kernel or unnamed)"
    if "python" in os.path.basename(words[0]) and len(words) > 1:
        rest = " ".join(words[1:3]) if words[1] in ("-m", "-c", "-u") else words[1]
        return f"python {rest}"[:90]
    return os.path.basename(words[0])


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print(__doc__)
        return 2
    seen: dict[tuple[str, int], list] = {}  # (pid, start) -> [first ticks, last ticks, kind, at start?]
    done = threading.Event()

    def sample(first: bool) -> None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            got = read(pid)
            if got is None:
                continue
            start, ticks, cmd = got
            entry = seen.get((pid, start))
            if entry is None:
                seen[(pid, start)] = [ticks, ticks, kind(cmd), first]
            else:
                entry[1] = ticks
                if entry[2].endswith(("default_worker.py", "setup_worker.py")) or entry[2] == "ray::IDLE":
                    entry[2] = kind(cmd)  # a Ray worker takes the name of what it runs

    def loop() -> None:
        while not done.wait(0.2):
            sample(False)

    sample(True)
    busy0, t0 = busy_seconds(), time.monotonic()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    rc = subprocess.call(args)
    done.set()
    thread.join()
    sample(False)
    busy, wall = busy_seconds() - busy0, time.monotonic() - t0
    by_kind: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for first_ticks, last_ticks, name, at_start in seen.values():
        by_kind[name] += (last_ticks - first_ticks if at_start else last_ticks) / HZ
        count[name] += 1
    print(f"rc {rc}, wall {wall:.0f} s, busy CPU {busy:.0f} s, sampled {sum(by_kind.values()):.0f} s")
    for name, cpu in by_kind.most_common(40):
        print(f"{cpu:8.1f} s {count[name]:5d}  {name}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

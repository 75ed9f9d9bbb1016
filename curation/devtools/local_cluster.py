"""A real multi-node Ray cluster on one machine, started through cluster/start-node.sh (tests, benchmarks).

Each node is one `cluster/start-node.sh ... --block` process in a process group of its own, with its own temp
dir and free loopback ports; :meth:`LocalCluster.stop` ends exactly those groups (never `ray stop`, which
would stop every Ray process on the machine). Nodes start with a PATH that lacks the venv, as a node started
by hand might: the script itself must put the venv on PATH for jobs to find `python`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
START_NODE = REPO / "cluster" / "start-node.sh"
# A PATH without the project's venv: what `ray job submit` entrypoints see unless start-node.sh fixes it.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free right now and not handed out before by this process (the OS may offer a just-released
    port again, and two Ray components on one port fail the node's start)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _node_ports() -> list[str]:
    names = (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    return [f"{n}={free_port()}" for n in names]


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL what is left after 5 s (gcs_server ignores SIGTERM; raylets exit within ~2 s)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            proc.poll()  # reap the leader, or the group never looks empty
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


@dataclass
class Node:
    role: str
    proc: subprocess.Popen[bytes]
    temp_dir: str
    log: Path


@dataclass
class LocalCluster:
    """Head plus ``workers`` nodes of ``cpus`` CPUs each, on loopback."""

    workers: int = 1
    cpus: int = 1
    venv: Path = field(default_factory=lambda: REPO / ".venv")
    object_store_bytes: int = 512 * 1024**2
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        """The job API address (what `ray job submit --address` takes)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def node_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "RAY_ADDRESS", "PYTHONPATH") and not k.startswith("PYTEST")
        }
        env.update(
            PATH=BARE_PATH,
            VENV=str(self.venv),
            RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0",
            # No hub downloads in tests and benchmarks; every job inherits the node's environment.
            HF_HUB_OFFLINE="1",
        )
        env.update(self.env)
        return env

    def _start(self, role: str, args: list[str]) -> Node:
        temp_dir = tempfile.mkdtemp(prefix=f"m1{role[0]}-", dir="/tmp")
        log = Path(temp_dir) / "start-node.log"
        cmd = [
            "bash",
            str(START_NODE),
            role,
            *args,
            "--block",
            f"--num-cpus={self.cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            f"--temp-dir={temp_dir}",
            *_node_ports(),
        ]
        env = self.node_env()
        if role == "head":  # start-node.sh reads the head's two public ports from PORT and DASH
            env.update(PORT=str(self.gcs_port), DASH=str(self.dashboard_port))
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
            )
        node = Node(role, proc, temp_dir, log)
        self.nodes.append(node)
        return node

    def start(self, timeout: float = 120) -> LocalCluster:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        try:
            self._start("head", [f"--ray-client-server-port={free_port()}"])
            self._wait(lambda: self.alive_nodes() >= 1, timeout, "the head")
            for _ in range(self.workers):
                self._start("worker", [self.gcs_address])
            self._wait(lambda: self.alive_nodes() >= 1 + self.workers, timeout, "the worker nodes")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise RuntimeError(
                        f"{node.role} node exited: {node.log.read_text(errors='replace')[-3000:]}"
                    )
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{what} did not come up within {timeout} s")

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.address}{path}", timeout=10) as resp:
            return json.loads(resp.read())

    def node_states(self) -> list[dict[str, Any]]:
        """Nodes as the state API lists them (node_id, node_ip, state ALIVE/DEAD, is_head_node, ...)."""
        return self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]

    def alive_nodes(self) -> int:
        return sum(n.get("state") == "ALIVE" for n in self.node_states())

    def pids(self, node: Node, name: str) -> list[int]:
        """PIDs of the processes called ``name`` (e.g. raylet) that belong to ``node``'s process group."""
        import psutil

        found = []
        for proc in psutil.process_iter(["pid", "name"]):
            try:
                if proc.info["name"] == name and os.getpgid(proc.info["pid"]) == node.proc.pid:
                    found.append(proc.info["pid"])
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL ``node``'s raylet (the node dies; its tasks must be retried elsewhere). Returns its PID."""
        pids = self.pids(node, "raylet")
        if len(pids) != 1:
            raise RuntimeError(f"expected one raylet in {node.role} node's group, found {pids}")
        os.kill(pids[0], signal.SIGKILL)
        return pids[0]

    def stop(self) -> None:
        """End every process group this cluster started, workers first, then the head."""
        for node in reversed(self.nodes):
            stop_group(node.proc)
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

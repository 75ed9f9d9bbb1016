"""Is the driver still there? Engine workers ask before every request they send.

Ray workers live in process groups of their own and outlive a driver killed with SIGKILL by a second or more
(until their raylet or the GCS notices). A worker that kept sending in that time would pay for answers that no
one records. So the driver hands its identity (`DriverRef`) to each worker, and the worker stops issuing the
moment the driver is gone:

* same node (the common case, and every single-machine run): ``kill(pid, 0)`` before each send, and the
  process start time every tick, so a recycled pid is not mistaken for the driver;
* another node: the run's coordinator actor, which Ray kills when its owner (the driver) dies, is polled
  every ``REMOTE_TICK_S``; an unreachable coordinator, or a driver heartbeat older than ``STALE_S``, means gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

LOCAL_TICK_S = 0.05
REMOTE_TICK_S = 0.2
# A heartbeat this old means the driver is gone even if the coordinator still answers. Generous: a busy
# driver's heartbeat thread can be late, and a false alarm would cancel a healthy run.
STALE_S = 5.0
HEARTBEAT_S = 0.5


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/<pid>/stat (state first); None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    return stat[stat.rfind(b")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat); None if unknown."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


@dataclass(frozen=True)
class DriverRef:
    """Who the driver is: enough for a worker to tell, cheaply and without false alarms, that it is gone."""

    host: str
    boot_id: str
    pid: int
    start_ticks: int | None

    @classmethod
    def current(cls) -> DriverRef:
        pid = os.getpid()
        return cls(socket.gethostname(), _boot_id(), pid, process_start_ticks(pid))

    def same_node(self) -> bool:
        return self.host == socket.gethostname() and self.boot_id == _boot_id() and os.path.isdir("/proc")

    def pid_alive(self) -> bool:
        """Cheap: is a process with the driver's pid there (one syscall)?"""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        return True

    def alive_here(self) -> bool:
        """Thorough: the driver's pid exists, is not a zombie (killed, not yet reaped), and is still the same
        process (start time matches)."""
        if not self.pid_alive():
            return False
        fields = _stat_fields(self.pid)
        if fields is None:
            return os.path.isdir("/proc") is False  # no procfs: the pid check is all there is
        if fields[0] in (b"Z", b"X"):
            return False
        ticks = int(fields[19]) if len(fields) > 19 else None
        return self.start_ticks is None or ticks is None or ticks == self.start_ticks


class DriverWatch:
    """A worker's view of its driver: ``alive()`` costs one syscall; ``run()`` is the background tick."""

    def __init__(
        self, driver: DriverRef, coordinator: Any = None, on_gone: Callable[[str], None] | None = None
    ):
        self.driver = driver
        self.local = driver.same_node()
        self.coordinator = coordinator
        self.on_gone = on_gone
        self.gone: str | None = None  # why, once gone

    def alive(self) -> bool:
        if self.gone is not None:
            return False
        if self.local and not self.driver.pid_alive():
            self._mark(f"driver process {self.driver.pid} is gone")
            return False
        return True

    def _mark(self, why: str) -> None:
        if self.gone is None:
            self.gone = why
            logger.warning("m1 engine worker: %s; sending no more requests", why)
            if self.on_gone is not None:
                self.on_gone(why)

    async def check(self) -> bool:
        """One thorough check; False (and ``gone`` set) once the driver is gone."""
        if self.gone is not None:
            return False
        if self.local:
            if not self.driver.alive_here():
                self._mark(f"driver process {self.driver.pid} is gone")
            return self.gone is None
        if self.coordinator is None:
            return True
        import ray

        try:
            age = await asyncio.wait_for(self.coordinator.heartbeat_age.remote(), timeout=STALE_S)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
            self._mark("the run's coordinator is gone (its driver died)")
        except TimeoutError:
            self._mark(f"the run's coordinator did not answer for {STALE_S:g} s")
        else:
            if age is not None and age > STALE_S:
                self._mark(f"no heartbeat from the driver for {age:.1f} s")
        return self.gone is None

    async def run(self) -> None:
        tick = LOCAL_TICK_S if self.local else REMOTE_TICK_S
        while await self.check():
            await asyncio.sleep(tick)


class Heartbeat:
    """Driver side: tells the coordinator it is alive every ``HEARTBEAT_S`` from a daemon thread."""

    def __init__(self, coordinator: Any) -> None:
        import threading

        self.coordinator = coordinator
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="m1-driver-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import ray

        while not self._stop.wait(HEARTBEAT_S):
            if not ray.is_initialized():  # a call now would start a fresh local Ray (auto-init) mid-shutdown
                return
            try:
                self.coordinator.heartbeat.remote()
            except Exception:  # the coordinator going away ends the run anyway
                return

    def stop(self) -> None:
        self._stop.set()

"""Run directories created by a command: a command that fails leaves no empty run directory behind.

A run directory is created by the first command that writes it (``RunStore(uri)``). When that command fails,
before any file was written, the folders it created are removed again, whether it fails with an exception
(:func:`new_run_dir`) or ends the process from a watchdog thread (``os._exit`` while ``ray.init`` hangs:
:func:`run_exit_cleanups`). Files are never removed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_cleanups: list[Callable[[], None]] = []
_lock = threading.Lock()


def is_local(uri: str) -> bool:
    """A local path (not ``s3://``, ``gs://``, ``file://`` ...)."""
    return "://" not in uri


def remove_empty_dirs(root: str) -> None:
    """Remove ``root`` and the folders under it if they hold no file at all (never removes a file)."""
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def run_exit_cleanups() -> None:
    """Run the registered cleanups now (a watchdog calls this just before ``os._exit``)."""
    with _lock:
        pending = list(reversed(_cleanups))
    for cleanup in pending:
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


@contextmanager
def new_run_dir(run_dir: str) -> Iterator[bool]:
    """Within the block, a local ``run_dir`` that did not exist before is removed again (empty folders only) if
    the block fails or the process is ended by a watchdog. Yields whether this command creates it."""
    created = is_local(run_dir) and not os.path.lexists(run_dir)
    if not created:
        yield False
        return

    def cleanup() -> None:
        remove_empty_dirs(run_dir)

    with _lock:
        _cleanups.append(cleanup)
    try:
        yield True
    except BaseException:
        cleanup()
        raise
    finally:
        with _lock:
            _cleanups.remove(cleanup)

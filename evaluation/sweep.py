"""`m1 eval`: the grid (models x benchmarks x budgets x forcing counts) on Ray actors holding vLLM engines.

For each model, ``replicas`` Ray actors each load one engine (:class:`EvalWorker`). A task is one (benchmark,
forcing) group's missing budgets over a chunk of questions: with prefix reuse the chunk's largest-budget thinking
is generated once and the smaller budgets are derived from it. When every chunk of a group is back, the group's
cells are scored with :mod:`curation.answers` and committed to the run (``eval_responses``, ``eval_scores``)
in one atomic manifest write, so results stream in as cells finish and a killed run keeps every committed cell.
A rerun skips every cell already in ``eval_scores`` with the same settings hash; nothing finished is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.answers import extract_answer, m1_accuracy, m1_match
from curation.errors import UserError
from curation.jobenv import local_ray_env, portable_paths
from curation.store.runstore import RunStore, utc_now
from evaluation.benchmarks import load_benchmark
from evaluation.config import BenchmarkConfig, EvalConfig, EvalModel
from evaluation.runner import Generated, Sample

RESPONSES, SCORES = "eval_responses", "eval_scores"


def cell_key(model: str, benchmark: str, protocol: str, budget: int, forcing: int) -> str:
    return f"{model}|{benchmark}|{protocol}|{budget}|{forcing}"


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return path
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def settings_hash(cfg: EvalConfig, model: EvalModel, bench: BenchmarkConfig) -> str:
    """What decides a cell's answers (not prefix_reuse or replicas: they must not change any answer)."""
    model_files = {}
    if Path(model.model).is_dir():
        model_files = {p.name: _file_digest(str(p)) for p in sorted(Path(model.model).glob("*.safetensors"))}
    payload = {
        "model": model.model,
        "model_files": model_files,
        "protocol": model.protocol,
        "system": model.system,
        "dtype": model.dtype,
        "seed": model.seed,
        "benchmark": {**bench.model_dump(), "digest": _file_digest(bench.path)},
        "markers": cfg.markers.model_dump(),
        "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p},
    }
    # In a Ray job, paths under the unpacked working dir change with every upload; files are hashed by content.
    payload = portable_paths(payload)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Task:
    model: str
    benchmark: str
    protocol: str
    forcing: int
    budgets: tuple[int, ...]
    chunk: int
    samples: tuple[Sample, ...]
    prefix_reuse: bool


def grid(cfg: EvalConfig, model: EvalModel) -> list[tuple[str, int, tuple[int, ...]]]:
    """(benchmark, forcing, budgets) groups of one model's grid; other protocols collapse their axes."""
    groups = []
    for bench in cfg.benchmarks:
        if model.protocol == "no_thinking":
            groups.append((bench.name, 0, (0,)))
        elif model.protocol == "cot":
            groups.append((bench.name, 0, tuple(sorted(set(cfg.budgets)))))
        else:
            for forcing in sorted(set(cfg.forcing)):
                groups.append((bench.name, forcing, tuple(sorted(set(cfg.budgets)))))
    return groups


# ---------------------------------------------------------------------------------------------- the actor
class EvalWorker:
    """One vLLM engine (one model) and a :class:`BudgetRunner`; run as a Ray actor (``ray.remote`` below)."""

    def __init__(self, model: dict[str, Any], markers: dict[str, Any], sampling: dict[str, Any]) -> None:
        cfg = EvalModel.model_validate(model)
        # vllm reads its environment lazily: set before the import, this configures this actor's engine only.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if cfg.engine_core_process else "0"
        if cfg.gpus_per_replica == 0 and cfg.cpu_kvcache_space_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_space_gib)
        os.environ.update(cfg.env_vars)
        from evaluation.config import MarkerOptions
        from evaluation.runner import BudgetRunner, load_engine

        started = time.perf_counter()
        llm, tokenizer = load_engine(
            cfg.model,
            max_model_len=cfg.max_model_len,
            dtype=cfg.dtype,
            seed=cfg.seed,
            engine_kwargs=cfg.vllm_kwargs(),
        )
        self.runner = BudgetRunner(
            llm,
            tokenizer,
            MarkerOptions.model_validate(markers).protocol(),
            system=cfg.system,
            sampling=sampling,
            keep_ids=False,  # results cross the Ray boundary: counts and texts, not every token id
        )
        # A fresh engine's first batches are slow (allocator growth, kernel set-up per shape): one tiny sweep
        # here counts as engine load, so the first cell's wall time is the engine's steady speed.
        from evaluation.runner import Sample

        warm = Sample("warm-up", "Which of these is a warm-up question?", {"A": "yes", "B": "no"}, "A")
        self.runner.sweep([warm, warm], [8], 0, protocol=cfg.protocol)  # type: ignore[arg-type]
        self.load_s = time.perf_counter() - started

    def ready(self) -> float:
        return self.load_s

    def run(self, task: Task) -> tuple[Task, list[Generated], float]:
        started = time.perf_counter()
        results = self.runner.sweep(
            list(task.samples),
            list(task.budgets),
            task.forcing,
            protocol=task.protocol,
            prefix_reuse=task.prefix_reuse,
        )  # type: ignore[arg-type]
        return task, results, time.perf_counter() - started


# ------------------------------------------------------------------------------------------------ scoring
def score_rows(
    task_model: str,
    benchmark: str,
    protocol: str,
    results: Sequence[Generated],
    samples: dict[str, Sample],
) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        sample = samples[r.sample_id]
        extracted = extract_answer(r.answer_text, sample.options)
        m1 = m1_match(r.answer_text, sample.options)
        outcome = (
            "invalid"
            if extracted.label is None
            else "correct"
            if extracted.label == sample.answer_label
            else "wrong"
        )
        rows.append(
            {
                "cell": cell_key(task_model, benchmark, protocol, r.budget, r.forcing),
                "model": task_model,
                "benchmark": benchmark,
                "protocol": protocol,
                "budget": r.budget,
                "forcing": r.forcing,
                "sample_id": r.sample_id,
                "answer_label": sample.answer_label,
                "extracted_label": extracted.label,
                "extraction": extracted.reason,
                "outcome": outcome,
                "m1_first": m1.first,
                "m1_last": m1.last,
                "thinking_tokens": r.thinking_tokens,
                "forced": r.forced,
                "ran_out": r.ran_out,
                "answer_tokens": r.answer_tokens,
                "answer_finish": r.answer_finish,
                "prompt_tokens": r.prompt_tokens,
                "generated_tokens": r.generated_tokens,
                "derived": r.derived,
                "thinking": r.thinking_text,
                "answer": r.answer_text,
            }
        )
    return rows


def cell_scores(rows: Sequence[dict[str, Any]], *, wall_s: float, settings: str) -> list[dict[str, Any]]:
    """One eval_scores row per cell in ``rows``."""
    from curation.answers import M1Match

    by_cell: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_cell.setdefault(row["cell"], []).append(row)
    out = []
    for cell, members in by_cell.items():
        n = len(members)
        first = members[0]
        correct = sum(r["outcome"] == "correct" for r in members)
        invalid = sum(r["outcome"] == "invalid" for r in members)
        out.append(
            {
                "cell": cell,
                "model": first["model"],
                "benchmark": first["benchmark"],
                "protocol": first["protocol"],
                "budget": first["budget"],
                "forcing": first["forcing"],
                "samples": n,
                "correct": correct,
                "wrong": n - correct - invalid,
                "invalid": invalid,
                "accuracy": correct / n,
                "accuracy_m1": m1_accuracy(
                    [M1Match(r["m1_first"], r["m1_last"], "") for r in members],
                    [r["answer_label"] for r in members],
                ),
                "mean_thinking_tokens": sum(r["thinking_tokens"] for r in members) / n,
                "ran_out": sum(r["ran_out"] for r in members),
                "mean_forced": sum(r["forced"] for r in members) / n,
                "generated_tokens": sum(r["generated_tokens"] for r in members),
                "wall_s": wall_s / max(1, len(by_cell)),
                "prefix_reuse": any(r["derived"] for r in members),
                "settings_hash": settings,
                "finished_at": utc_now(),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------- store
def finished_cells(store: RunStore) -> dict[str, str]:
    """cell -> settings hash of every committed cell."""
    if not store.has_table(SCORES):
        return {}
    table = store.read_table(SCORES, columns=["cell", "settings_hash"])
    return dict(zip(table.column("cell").to_pylist(), table.column("settings_hash").to_pylist(), strict=True))


def commit_cells(store: RunStore, responses: list[dict[str, Any]], scores: list[dict[str, Any]]) -> None:
    """Append finished cells (replacing stale rows of the same cells) in one atomic manifest write."""
    import pyarrow.compute as pc

    import schemas

    cells = pa.array(sorted({s["cell"] for s in scores}), pa.string())
    versions, old_paths = [], []
    for name, rows in ((RESPONSES, responses), (SCORES, scores)):
        new = pa.Table.from_pylist(rows, schema=schemas.get(name).schema)
        parts = [new]
        if store.has_table(name):
            old_paths.append(store.tables()[name]["path"])
            old = store.read_table(name)
            parts.insert(0, old.filter(pc.invert(pc.is_in(old.column("cell"), value_set=cells))))
        versions.append(store.write_table(name, pa.concat_tables(parts)))
    store.commit(versions)
    for rel in old_paths:  # our own superseded versions only
        store.fs.delete_dir(store.path(rel))


# -------------------------------------------------------------------------------------------------- driver
def _chunks(samples: Sequence[Sample], size: int) -> list[tuple[Sample, ...]]:
    return [tuple(samples[i : i + size]) for i in range(0, len(samples), size)]


def plan_tasks(
    cfg: EvalConfig, model: EvalModel, benchmarks: dict[str, list[Sample]], done: dict[str, str]
) -> tuple[list[Task], dict[tuple[str, int], str]]:
    """The tasks still to run for ``model`` (missing or stale cells only), and each group's settings hash."""
    tasks, hashes = [], {}
    bench_cfgs = {b.name: b for b in cfg.benchmarks}
    for bench, forcing, budgets in grid(cfg, model):
        settings = settings_hash(cfg, model, bench_cfgs[bench])
        hashes[(bench, forcing)] = settings
        missing = tuple(
            b
            for b in budgets
            if done.get(cell_key(model.name, bench, model.protocol, b, forcing)) != settings
        )
        if not missing:
            continue
        for n, chunk in enumerate(_chunks(benchmarks[bench], cfg.samples_per_task)):
            tasks.append(
                Task(model.name, bench, model.protocol, forcing, missing, n, chunk, cfg.prefix_reuse)
            )
    return tasks, hashes


def check_tasks_fit(model: EvalModel, cfg: EvalConfig, tasks: Sequence[Task]) -> None:
    """With ``max_model_len`` set, refuse a budget the context cannot hold before any engine loads (minutes for
    a large model on GPUs): the model's tokenizer alone renders the prompts. Without it, the actors check against
    the context vLLM derives, once loaded."""
    if model.max_model_len is None or not tasks:
        return
    from transformers import AutoTokenizer

    from evaluation.runner import BudgetRunner

    tokenizer = AutoTokenizer.from_pretrained(model.model)
    runner = BudgetRunner(
        None, tokenizer, cfg.markers.protocol(), system=model.system, context_limit=model.max_model_len
    )
    # Each chunk of questions once, with its largest budget over the forcing counts (they share the prompts).
    largest: dict[tuple[str, int], tuple[Task, int]] = {}
    for task in tasks:
        _, budget = largest.get((task.benchmark, task.chunk), (task, 0))
        largest[(task.benchmark, task.chunk)] = (task, max(budget, *task.budgets))
    for task, budget in largest.values():
        try:
            runner.check_fits(task.samples, [budget], protocol=task.protocol)  # type: ignore[arg-type]
        except UserError as exc:
            raise UserError(f"model {model.name}: {exc}") from None


def ensure_ray(cfg: EvalConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        local_ray_env()
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=False)


def run_eval(cfg: EvalConfig, run_dir: str, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every missing cell of the grid into ``run_dir``; returns counts of cells run and skipped."""
    import ray

    store = RunStore(run_dir)
    benchmarks = {b.name: load_benchmark(b) for b in cfg.benchmarks}
    done = finished_cells(store)
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p}
    summary: dict[str, Any] = {
        "cells_run": 0,
        "cells_skipped": 0,
        "generated_tokens": 0,
        "engine_load_s": 0.0,  # actors started and engines loaded
        "sweep_s": 0.0,  # engines ready -> last cell committed (generation, scoring, commits)
        "wall_s": 0.0,
    }
    started = time.perf_counter()
    for model in cfg.models:
        tasks, hashes = plan_tasks(cfg, model, benchmarks, done)
        total = sum(len(g[2]) for g in grid(cfg, model))
        todo_cells = {(t.benchmark, t.forcing, b) for t in tasks for b in t.budgets}
        summary["cells_skipped"] += total - len(todo_cells)
        if not tasks:
            log(f"m1 eval: {model.name}: all {total} cells finished; nothing to run")
            continue
        log(f"m1 eval: {model.name}: {len(todo_cells)} of {total} cells to run in {len(tasks)} tasks")
        check_tasks_fit(model, cfg, tasks)
        ensure_ray(cfg)  # only now: a finished sweep (a rerun) starts no Ray, a too-long budget loads nothing
        worker_cls = ray.remote(num_cpus=model.cpus_per_replica, num_gpus=model.gpus_per_replica)(EvalWorker)
        actors = [
            worker_cls.remote(model.model_dump(), cfg.markers.model_dump(), sampling)
            for _ in range(min(model.replicas, len(tasks)))
        ]
        try:
            from ray.util import ActorPool

            loaded = time.perf_counter()
            ray.get([actor.ready.remote() for actor in actors])
            summary["engine_load_s"] += time.perf_counter() - loaded
            swept = time.perf_counter()
            pool = ActorPool(actors)
            for task in tasks:
                pool.submit(lambda actor, t: actor.run.remote(t), task)
            pending: dict[tuple[str, int], int] = {}
            for task in tasks:
                pending[(task.benchmark, task.forcing)] = pending.get((task.benchmark, task.forcing), 0) + 1
            collected: dict[tuple[str, int], tuple[list[Generated], float]] = {}
            while pool.has_next():
                try:
                    task, results, wall = pool.get_next_unordered()
                except ray.exceptions.RayTaskError as exc:  # a user mistake inside the actor: say it plainly
                    if isinstance(exc.cause, UserError):
                        raise UserError(f"model {model.name}: {exc.cause}") from None
                    raise
                group = (task.benchmark, task.forcing)
                acc, acc_wall = collected.get(group, ([], 0.0))
                collected[group] = (acc + results, acc_wall + wall)
                pending[group] -= 1
                if pending[group]:
                    continue
                results, wall = collected.pop(group)
                samples = {s.sample_id: s for s in benchmarks[task.benchmark]}
                rows = score_rows(model.name, task.benchmark, model.protocol, results, samples)
                scores = cell_scores(rows, wall_s=wall, settings=hashes[group])
                commit_cells(store, rows, scores)
                summary["cells_run"] += len(scores)
                summary["generated_tokens"] += sum(s["generated_tokens"] for s in scores)
                for s in sorted(scores, key=lambda s: s["budget"]):
                    log(
                        f"  {s['cell']}: accuracy {s['accuracy']:.3f} (m1 matcher {s['accuracy_m1']:.3f}), "
                        f"invalid {s['invalid']}/{s['samples']}, thinking {s['mean_thinking_tokens']:.0f} tokens"
                    )
            summary["sweep_s"] += time.perf_counter() - swept
        finally:
            for actor in actors:
                ray.kill(actor)
    summary["wall_s"] = time.perf_counter() - started
    from curation.store.catalog import write_catalog

    write_catalog(store)
    return summary


def result_dicts(results: Sequence[Generated]) -> list[dict[str, Any]]:
    """Plain dicts of runner results (for comparisons in tests and benchmarks)."""
    return [asdict(r) for r in results]


# ----------------------------------------------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> Any:
    """``m1 eval CONFIG.yaml --run-dir DIR``: run the grid's missing cells into the run directory."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate models x benchmarks x thinking budgets x forcing counts (resumes finished cells)",
        description=__doc__,
    )
    parser.add_argument("config", help="eval YAML (see curation/configs/eval_demo.yaml)")
    parser.add_argument("--run-dir", required=True, help="run directory; eval_responses/eval_scores go there")
    parser.add_argument(
        "--markdown", action="store_true", help="print the accuracy table as Markdown at the end"
    )
    parser.add_argument(
        "--matcher",
        choices=["strict", "m1"],
        default="strict",
        help="accuracy in the Markdown table: strict (INVALID counted as wrong) or the HuatuoGPT/m1 matcher",
    )
    parser.set_defaults(func=_cli)
    return parser


def _cli(args: Any) -> int:
    from curation.modelpath import check_model_path
    from curation.rundir import new_run_dir
    from evaluation.config import load_eval_config

    cfg = load_eval_config(args.config)
    for i, model in enumerate(cfg.models):  # before any Ray worker starts
        check_model_path(model.model, f"models.{i}.model ({model.name})", source=str(args.config))
    with new_run_dir(args.run_dir):  # a failing first eval leaves no empty run directory behind
        summary = run_eval(cfg, args.run_dir)
    print(
        f"m1 eval: {summary['cells_run']} cells run, {summary['cells_skipped']} already finished, "
        f"{summary['wall_s']:.1f} s"
    )
    from evaluation.report import accuracy_markdown, write_accuracy_outputs

    store = RunStore(args.run_dir, create=False)
    written = write_accuracy_outputs(store, Path(store.root) / "eval")
    print(f"m1 eval: accuracy table {written[0]}; plots {', '.join(str(p) for p in written[1:]) or 'none'}")
    if args.markdown:
        metric = "accuracy_m1" if args.matcher == "m1" else "accuracy"
        print(accuracy_markdown(store, metric=metric))
    print(
        f'query: m1 sql {args.run_dir} "SELECT model, benchmark, budget, forcing, accuracy FROM eval_scores"'
    )
    return 0
